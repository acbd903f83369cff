"""Reading ahead and writing behind: order, values and errors as without them."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from demsr.overlap import WriteBehind, in_background, read_ahead


@pytest.fixture
def ctrl_c_raises() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt in this test, as in a terminal, even where the test run
    started with SIGINT ignored (a shell's background job)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _ctrl_c_once_main_waits_in(function: str) -> None:
    """A real SIGINT to the main thread (as Ctrl-C sends) once it is inside ``function``,
    waiting: not earlier, however busy the machine (a timed guess of when it gets there is not
    enough on a loaded one)."""
    main = threading.main_thread().ident
    assert main is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        frame = sys._current_frames().get(main)
        while frame is not None and frame.f_code.co_name != function:
            frame = frame.f_back
        if frame is not None:
            break
        time.sleep(0.002)
    else:
        raise AssertionError(f"the main thread never reached {function}")
    time.sleep(0.02)  # from entering it to the wait itself
    signal.pthread_kill(main, signal.SIGINT)


def test_read_ahead_yields_every_item_in_order_prepared_in_another_thread() -> None:
    threads: list[str] = []

    def prepare(item: int) -> int:
        threads.append(threading.current_thread().name)
        time.sleep(0.001 * (item % 3))  # uneven work must not reorder anything
        return item * item

    assert list(read_ahead(range(10), prepare)) == [i * i for i in range(10)]
    assert all(name.startswith("demsr-read") for name in threads)
    assert list(read_ahead([], prepare)) == []


def test_read_ahead_prepares_one_item_ahead_at_most() -> None:
    prepared: list[int] = []
    for got in read_ahead(range(6), lambda item: prepared.append(item) or item):
        time.sleep(0.01)  # time enough for the thread to run ahead as far as it may
        assert max(prepared) <= got + 1


def test_read_ahead_raises_an_error_where_its_item_would_have_come() -> None:
    def prepare(item: int) -> int:
        if item == 3:
            raise OSError("read error in tile 3")
        return item

    got = []
    with pytest.raises(OSError, match="tile 3"):
        for item in read_ahead(range(6), prepare):
            got.append(item)
    assert got == [0, 1, 2]


def test_closing_read_ahead_early_stops_its_thread() -> None:
    prepared: list[int] = []
    items = read_ahead(range(100), lambda item: prepared.append(item) or item)
    assert next(items) == 0
    items.close()
    assert max(prepared) <= 1  # the one in hand at most; the rest never started
    assert not any(t.name.startswith("demsr-read") for t in threading.enumerate())


def test_a_ctrl_c_while_read_ahead_stops_is_raised_once_the_read_in_hand_has_ended(
    ctrl_c_raises: None,
) -> None:
    """The caller's source must not close under a running read, and the Ctrl-C is not lost."""
    started, ended = threading.Event(), []

    def prepare(item: int) -> int:
        if item == 1:
            started.set()
            _ctrl_c_once_main_waits_in("_stop")  # while the caller waits for this read
            time.sleep(0.2)
            ended.append(item)
        return item

    items = read_ahead(range(5), prepare)
    assert next(items) == 0
    assert started.wait(5)
    with pytest.raises(KeyboardInterrupt):
        items.close()
    assert ended == [1]
    assert not any(t.name.startswith("demsr-read") for t in threading.enumerate())


def test_write_behind_writes_in_order_one_at_a_time_and_hands_each_back() -> None:
    written: list[int] = []
    with WriteBehind(written.append) as behind:
        finished = []
        for item in range(5):
            if behind.in_flight:
                finished.append(behind.finish())
            behind.submit(item)
        finished.append(behind.finish())
    assert written == finished == list(range(5))
    with pytest.raises(RuntimeError, match="no write in flight"):
        behind.finish()


def test_write_behind_refuses_a_second_write_in_flight_and_raises_a_failed_one() -> None:
    def write(item: int) -> None:
        if item == 1:
            raise OSError("disk full")

    with WriteBehind(write) as behind:
        behind.submit(0)
        with pytest.raises(RuntimeError, match="before submitting"):
            behind.submit(1)
        assert behind.finish() == 0
        behind.submit(1)
        with pytest.raises(OSError, match="disk full"):
            behind.finish()
        assert not behind.in_flight


def test_a_ctrl_c_while_write_behind_closes_is_raised_once_the_write_has_ended(
    ctrl_c_raises: None,
) -> None:
    ended: list[int] = []

    def write(item: int) -> None:
        _ctrl_c_once_main_waits_in("_stop")  # while the caller leaves the block
        time.sleep(0.2)
        ended.append(item)

    with pytest.raises(KeyboardInterrupt), WriteBehind(write) as behind:
        behind.submit(7)
    assert ended == [7]
    assert not any(t.name.startswith("demsr-write") for t in threading.enumerate())


def test_in_background_runs_beside_the_caller_and_hands_back_its_result_or_error() -> None:
    started, release = threading.Event(), threading.Event()

    def work() -> str:
        started.set()
        assert release.wait(5)  # the caller goes on while this waits
        return threading.current_thread().name

    future = in_background(work)
    assert started.wait(5) and not future.done()
    release.set()
    assert future.result(5).startswith("demsr-background")
    assert threading.current_thread().name not in future.result()

    failed = in_background(lambda: 1 // 0)
    with pytest.raises(ZeroDivisionError):
        failed.result(5)
