"""Reading and writing overlapped with computing: one background thread each.

Prediction reads a batch of tiles, runs the network on it and writes the result. The network
holds the CPU cores (or the GPU) through torch, which releases Python's lock while it computes;
reading (GDAL's decoding, the nodata fill) and writing (compressing the store's chunks) do most
of their work outside it too. :func:`read_ahead` reads the next batch while the network runs on
this one, and :class:`WriteBehind` writes a batch while the network runs on the next, so that
the network waits for neither. :func:`in_background` starts one piece of such work (hashing
the checkpoint file) while the caller goes on. Order, values and errors are as without them.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def in_background(function: Callable[[], R], name: str = "demsr-background") -> Future[R]:
    """``function()`` started in a background thread; its result (or error) comes from the
    future's ``result()``. For work that spends its time outside Python's lock (reading a file,
    hashing it), which then runs beside the caller's."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
    try:
        return pool.submit(function)
    finally:
        pool.shutdown(wait=False)  # the thread ends with its one task


def read_ahead(items: Iterable[T], prepare: Callable[[T], R]) -> Generator[R, None, None]:
    """``prepare(item)`` for each of ``items`` in order, the next one prepared in a background
    thread while the caller uses this one. An error raised by ``prepare`` is raised where its
    result would have been yielded.

    When the caller stops early (closes the iterator, or an error or Ctrl-C ends its loop), the
    item not yet started is dropped and the one being prepared is waited for, so that nothing
    still reads from the source once this returns; a Ctrl-C during that wait is raised after
    it. Close it explicitly (``contextlib.closing``) rather than leaving it to the garbage
    collector, which would swallow such a Ctrl-C."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="demsr-read")
    pending: list[Future[R]] = []
    try:
        for item in items:
            pending.append(pool.submit(prepare, item))
            if len(pending) == 2:
                yield pending.pop(0).result()
        while pending:
            yield pending.pop(0).result()
    finally:
        _stop(pool, pending)


def _stop(pool: ThreadPoolExecutor, pending: Sequence[Future[Any]], cancel: bool = True) -> None:
    """Cancel what of ``pending`` has not started (unless ``cancel`` is False: then it runs),
    wait for the rest; an interrupt during the wait is raised once the thread has finished.

    The wait is on the futures, not on the thread: Python 3.11's ``Thread.join``, interrupted
    by a real Ctrl-C, takes the thread for ended while it still runs (its next join returns
    at once), so the read in hand would go on after the caller closed its source."""
    for future in pending if cancel else ():
        future.cancel()
    interrupted: BaseException | None = None
    while True:
        try:
            wait_for(pending)
            pool.shutdown(wait=True)  # the thread has nothing left: it ends at once
            break
        except KeyboardInterrupt as exc:  # wait on: the source must not close under a read
            interrupted = exc
    if interrupted is not None:
        raise interrupted


class WriteBehind(Generic[T]):
    """One write at a time in a background thread: :meth:`submit` starts ``write(item)`` once
    the previous write is done and handed back by :meth:`finish`, so at most one item is in
    flight. :meth:`finish` waits for it and returns it (raising its error, if any); the caller
    then records it as done. Use as a context manager; leaving it waits for the write in flight
    without finishing it (the caller decides, e.g. on an error, whether to record it), and a
    Ctrl-C during that wait is raised once the write has ended."""

    def __init__(self, write: Callable[[T], object]) -> None:
        self._write = write
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="demsr-write")
        self._pending: tuple[T, Future[object]] | None = None

    @property
    def in_flight(self) -> bool:
        return self._pending is not None

    def submit(self, item: T) -> None:
        if self._pending is not None:
            raise RuntimeError("finish() the write in flight before submitting another")
        self._pending = (item, self._pool.submit(self._write, item))

    def finish(self) -> T:
        """Wait for the write in flight; return its item, or raise its error."""
        if self._pending is None:
            raise RuntimeError("no write in flight")
        item, future = self._pending
        try:
            future.result()
        finally:
            if future.done():  # not when the wait itself was interrupted (Ctrl-C)
                self._pending = None
        return item

    def __enter__(self) -> WriteBehind[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        # The store must not close under a write.
        _stop(self._pool, [] if self._pending is None else [self._pending[1]], cancel=False)
