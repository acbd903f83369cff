"""Faults in real processes: training killed (SIGKILL) at random points, and prediction killed
in each phase of its run (the tile loop, the finished store, the COG's staging file, overviews
and copy, the NetCDF and Zarr writes), resume exactly where uninterrupted runs end and leave no
temporary file; Ctrl-C (SIGINT) says what it kept.

Prediction is stopped at named points (:mod:`demsr.stops`, ``DEMSR_STOP_AT``), not after a
delay, so each test reaches its phase on any machine. Training's kill times are drawn from
``DEMSR_FAULT_SEED`` (default 8), printed in failure messages so that a failing draw can be
replayed. Slow (about two minutes on 2 CPU cores): ``-m slow``.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import (
    REPO,
    read_metrics_rows,
    set_options,
    tiny_overrides,
    write_untrained_checkpoint,
)

from demsr.checkpoint import load_checkpoint, load_training_state
from demsr.partial import partial_path
from demsr.stops import SIGNAL_ENV, STOP_ENV
from demsr.tilestore import read_done
from demsr.train import BEST, LAST

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("DEMSR_FAULT_SEED", "8"))


def demsr_command(*args: Any) -> list[str]:
    return [sys.executable, "-m", "demsr", *map(str, args)]


def _default_sigint() -> None:
    # A shell starts background jobs with SIGINT ignored, and Python then never turns Ctrl-C
    # into KeyboardInterrupt: give the child the terminal's default, as a user's shell does.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(command: list[str], log: Path, **environment: str) -> subprocess.Popen[bytes]:
    """Start ``command`` with its stderr in ``log`` (read after it ends), ``environment`` added
    to the environment."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), **environment}
    env.pop(STOP_ENV, None)
    env.update(environment)
    with open(log, "wb") as handle:
        return subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=handle,
            env=env,
            preexec_fn=_default_sigint,  # noqa: PLW1509 - no threads start before it runs
        )


def finish(process: subprocess.Popen[bytes], log: Path, timeout: float = 300) -> str:
    """Wait for ``process``; its stderr, asserting it succeeded."""
    code = process.wait(timeout=timeout)
    assert code == 0, log.read_text()
    return log.read_text()


def wait_until(condition: Callable[[], bool], process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 240
    while not condition():
        assert process.poll() is None, f"the process ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def kill_after(process: subprocess.Popen[bytes], delay_s: float, sig: int) -> bool:
    """Send ``sig`` after ``delay_s``; whether it reached the process before it ended."""
    try:
        process.wait(timeout=delay_s)
        return False
    except subprocess.TimeoutExpired:
        process.send_signal(sig)
        process.wait(timeout=120)
        return True


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# -- training ----------------------------------------------------------------------------------


def test_training_killed_at_random_points_resumes_to_the_same_weights(
    tiny_pairs: Path, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    settings = ("train.epochs=6", "train.deterministic=true", "data.augment=true")

    def train(run: Path, *extra: str) -> list[str]:
        overrides = tiny_overrides(tiny_pairs, run, *settings)
        return demsr_command("train", *set_options(overrides), "--no-progress", *extra)

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    reference = start(train(straight), tmp_path / "straight.log")  # alongside, on its own

    delays = [rng.uniform(0.0, 4.0), rng.uniform(2.0, 8.0)]
    draw = f"DEMSR_FAULT_SEED={SEED}, kills after {delays[0]:.2f} s, then {delays[1]:.2f} s"
    # The first kill must land before the last epoch; on a fast machine a late draw may not:
    # the run then starts over with the delay quartered (the kill's point stays random).
    for attempt in range(4):
        victim = start(train(killed), tmp_path / f"killed-1-{attempt}.log")
        wait_until((killed / LAST).exists, victim, "the first checkpoint")
        killed_in_time = kill_after(victim, delays[0] / 4**attempt, signal.SIGKILL)
        if killed_in_time and load_training_state(killed / LAST).epoch < 6:
            break
        if not killed_in_time:
            finish(victim, tmp_path / f"killed-1-{attempt}.log")
        shutil.rmtree(killed)
    else:
        pytest.fail(f"no kill landed before the last epoch in 4 tries ({draw})")
    assert victim.returncode == -signal.SIGKILL
    epoch_killed = load_training_state(killed / LAST).epoch
    assert epoch_killed < 6, draw

    again = start(train(killed, "--resume"), tmp_path / "killed-2.log")
    if not kill_after(again, delays[1], signal.SIGKILL):  # a second kill, if still running
        assert again.returncode == 0, (tmp_path / "killed-2.log").read_text()
    finish(start(train(killed, "--resume"), tmp_path / "killed-3.log"), tmp_path / "killed-3.log")
    finish(reference, tmp_path / "straight.log")

    for name in (LAST, BEST):
        a, b = load_checkpoint(straight / name), load_checkpoint(killed / name)
        assert a.metadata["epoch"] == b.metadata["epoch"], draw
        for key, tensor in a.state_dict.items():
            assert torch.equal(tensor, b.state_dict[key]), f"{name} {key} ({draw})"
    state_a, state_b = load_training_state(straight / LAST), load_training_state(killed / LAST)
    assert (state_a.epoch, state_a.global_step) == (state_b.epoch, state_b.global_step) == (6, 48)
    for index, values in state_a.optimizer["state"].items():
        for key, tensor in values.items():
            assert torch.equal(tensor, state_b.optimizer["state"][index][key]), draw

    def metrics(run: Path) -> list[dict[str, str]]:
        return [
            {k: v for k, v in row.items() if k != "epoch_seconds"} for row in read_metrics_rows(run)
        ]

    assert metrics(killed) == metrics(straight), draw
    assert leftovers(killed) == [], draw  # no temporary file survives a resume


def test_window_training_killed_mid_epoch_resumes_from_its_timed_checkpoint(
    tmp_path: Path,
) -> None:
    from test_train import raster_overrides

    settings = (
        "train.epochs=2",
        "train.max_steps_per_epoch=30",
        "train.checkpoint_every_s=0",  # a checkpoint after every step
        "train.deterministic=true",
    )

    def train(run: Path, *extra: str) -> list[str]:
        overrides = raster_overrides(run, *settings)
        return demsr_command("train", *set_options(overrides), "--no-progress", *extra)

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    reference = start(train(straight), tmp_path / "straight.log")
    victim = start(train(killed), tmp_path / "killed-1.log")

    def in_the_middle_of_an_epoch() -> bool:
        try:
            state = load_training_state(killed / LAST)
        except (FileNotFoundError, ValueError):
            return False
        return state.epoch_steps >= 5

    wait_until(in_the_middle_of_an_epoch, victim, "a mid-epoch checkpoint")
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=120)
    state = load_training_state(killed / LAST)
    assert 0 < state.epoch_steps < 30 and state.global_step < 60
    finish(start(train(killed, "--resume"), tmp_path / "killed-2.log"), tmp_path / "killed-2.log")
    finish(reference, tmp_path / "straight.log")
    for name in (LAST, BEST):
        a, b = load_checkpoint(straight / name), load_checkpoint(killed / name)
        for key, tensor in a.state_dict.items():
            assert torch.equal(tensor, b.state_dict[key]), f"{name} {key}"
    assert load_training_state(killed / LAST).global_step == 60
    assert leftovers(killed) == []


# -- prediction --------------------------------------------------------------------------------

SOURCE = "landlab_srtmgl3_frontrange.tif"  # 144 x 240 cells: 60 tiles of 24, 8 batches of 8
SUFFIXES = {"cog": ".tif", "netcdf": ".nc", "zarr": ".zarr"}


@pytest.fixture(scope="module")
def predict_setup(tmp_path_factory: pytest.TempPathFactory, dem_test_dir: Path) -> dict[str, Any]:
    """An untrained checkpoint, the command line, and the uninterrupted runs' outputs."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    checkpoint = write_untrained_checkpoint(folder / "model.safetensors", channels=4)

    def command(output: Path, *extra: str) -> list[str]:
        source = dem_test_dir / SOURCE
        options = ("--tile-px", "24", "--batch-size", "8", "--device", "cpu", "--no-progress")
        return demsr_command("predict", checkpoint, source, output, *options, *extra)

    references = {}
    for fmt, suffix in SUFFIXES.items():
        reference = folder / f"out{suffix}"
        finish(start(command(reference), folder / "log"), folder / "log")
        references[fmt] = reference
    return {"command": command, "references": references}


def finished_tiles(output: Path) -> int:
    return len(read_done(partial_path(output))[0])


def product_values(path: Path) -> tuple[Any, ...]:
    """What a user reads from a NetCDF or Zarr product: the grid's values, coordinates and
    attributes, without the time of writing."""
    import xarray as xr

    with xr.open_zarr(path) if path.suffix == ".zarr" else xr.open_dataset(path) as dataset:
        attributes = {k: v for k, v in dataset.attrs.items() if k != "history"}
        return (
            dataset["elevation"].values.tobytes(),
            {name: dataset[name].values.tobytes() for name in dataset.coords},
            sorted((k, str(v)) for k, v in attributes.items()),
            sorted((k, str(v)) for k, v in dataset["elevation"].attrs.items()),
        )


def same_product(fmt: str, made: Path, reference: Path) -> bool:
    if fmt == "cog":
        return made.read_bytes() == reference.read_bytes()
    return product_values(made) == product_values(reference)


PHASES = [
    ("cog", "tiles:3"),
    ("cog", "store-complete"),
    ("cog", "cog-staging"),
    ("cog", "cog-overviews"),
    ("cog", "cog-copy"),
    ("netcdf", "netcdf-blocks"),
    ("zarr", "zarr-blocks"),
]


@pytest.mark.parametrize(("fmt", "point"), PHASES)
def test_prediction_killed_in_each_phase_resumes_to_the_same_product_and_leaves_nothing(
    predict_setup: dict[str, Any], tmp_path: Path, fmt: str, point: str
) -> None:
    command, output = predict_setup["command"], tmp_path / f"out{SUFFIXES[fmt]}"
    victim = start(command(output), tmp_path / "killed.log", **{STOP_ENV: point})
    assert victim.wait(timeout=300) == -signal.SIGKILL, (tmp_path / "killed.log").read_text()
    assert not output.exists()  # never a half-written product
    assert partial_path(output).is_dir()
    if point == "tiles:3":
        assert finished_tiles(output) == 24  # three batches of 8
    else:
        assert finished_tiles(output) == 60
    if point == "cog-overviews":  # what GDAL's COG driver leaves when it builds them itself
        (tmp_path / f".{output.name}.k1ll3d0v.part.ovr.tmp").write_bytes(b"II*\0")

    log = finish(
        start(command(output, "--resume"), tmp_path / "resumed.log"), tmp_path / "resumed.log"
    )
    assert "resuming" in log
    assert same_product(fmt, output, predict_setup["references"][fmt])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["killed.log", output.name, "resumed.log"]
    )


def test_an_overwrite_killed_while_swapping_zarr_products_leaves_nothing_behind(
    predict_setup: dict[str, Any], tmp_path: Path
) -> None:
    command, output = predict_setup["command"], tmp_path / "out.zarr"
    finish(start(command(output), tmp_path / "first.log"), tmp_path / "first.log")
    victim = start(
        command(output, "--overwrite"), tmp_path / "killed.log", **{STOP_ENV: "zarr-swap"}
    )
    assert victim.wait(timeout=300) == -signal.SIGKILL
    finish(start(command(output, "--resume"), tmp_path / "resumed.log"), tmp_path / "resumed.log")
    assert same_product("zarr", output, predict_setup["references"]["zarr"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["first.log", "killed.log", "out.zarr", "resumed.log"]
    )


def test_ctrl_c_stops_prediction_in_one_line_and_resume_finishes_it(
    predict_setup: dict[str, Any], tmp_path: Path
) -> None:
    command, output = predict_setup["command"], tmp_path / "out.tif"
    victim = start(
        command(output), tmp_path / "interrupted.log", **{STOP_ENV: "tiles:3", SIGNAL_ENV: "INT"}
    )
    assert victim.wait(timeout=300) == 130
    lines = (tmp_path / "interrupted.log").read_text().strip().splitlines()
    assert lines == [
        f"demsr: interrupted; 24 of 60 tiles are kept in {output}.partial.zarr: rerun with "
        "--resume to continue"
    ]
    assert finished_tiles(output) == 24 and not output.exists()

    finish(start(command(output, "--resume"), tmp_path / "resumed.log"), tmp_path / "resumed.log")
    assert output.read_bytes() == predict_setup["references"]["cog"].read_bytes()


def wait_stopped(process: subprocess.Popen[bytes]) -> None:
    """Wait until ``process`` has stopped itself (SIGSTOP at a stop point)."""
    deadline = time.monotonic() + 240
    while Path(f"/proc/{process.pid}/stat").read_text().split(") ")[-1][0] != "T":
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)


def test_a_second_run_on_the_same_output_is_refused_while_the_first_writes(
    predict_setup: dict[str, Any], tmp_path: Path
) -> None:
    command, reference = predict_setup["command"], predict_setup["references"]["cog"]
    paused = {STOP_ENV: "tiles:1", SIGNAL_ENV: "STOP"}  # the first run halts, holding the lock
    for ending in ("continues", "is killed"):
        output = tmp_path / ending / "out.tif"
        output.parent.mkdir()
        first = start(command(output), tmp_path / f"first-{ending}.log", **paused)
        wait_stopped(first)
        host = socket.gethostname()
        for extra in ((), ("--resume",), ("--overwrite",)):
            log = tmp_path / "second.log"
            second = start(command(output, *extra), log)
            assert second.wait(timeout=120) == 1, log.read_text()
            assert log.read_text().splitlines() == [
                f"demsr: error: {partial_path(output)}: another run (process {first.pid} on "
                f"{host}) is writing this partial result; wait for it to finish or stop it, "
                "then rerun with --resume"
            ]
        assert finished_tiles(output) == 8  # the refused runs touched nothing
        if ending == "continues":
            first.send_signal(signal.SIGCONT)
            finish(first, tmp_path / f"first-{ending}.log")
        else:  # the system releases a dead process's lock: a rerun takes the store over
            first.kill()
            assert first.wait(timeout=60) == -signal.SIGKILL
            log = tmp_path / "resumed.log"
            assert "resuming" in finish(start(command(output, "--resume"), log), log)
        assert output.read_bytes() == reference.read_bytes()
        assert [p.name for p in output.parent.iterdir()] == ["out.tif"]
