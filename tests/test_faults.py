"""Faults in real processes: training and prediction killed (SIGKILL) at a random point and
resumed end exactly where uninterrupted runs end; Ctrl-C (SIGINT) says what it kept.

The kill times are drawn from ``DEMSR_FAULT_SEED`` (default 8), printed in failure messages so
that a failing draw can be replayed. Slow (a minute and a half on 2 CPU cores): ``-m slow``.
"""

from __future__ import annotations

import os
import random
import signal
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
from demsr.predict import partial_path
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


def start(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` with its stderr in ``log`` (read after it ends)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
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

    victim = start(train(killed), tmp_path / "killed-1.log")
    wait_until((killed / LAST).exists, victim, "the first checkpoint")
    delays = [rng.uniform(0.0, 4.0), rng.uniform(2.0, 8.0)]
    draw = f"DEMSR_FAULT_SEED={SEED}, kills after {delays[0]:.2f} s, then {delays[1]:.2f} s"
    assert kill_after(victim, delays[0], signal.SIGKILL), f"finished before the kill ({draw})"
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

SOURCE = "landlab_srtmgl3_frontrange.tif"  # 144 x 240 cells: 60 tiles of 24


@pytest.fixture(scope="module")
def predict_setup(tmp_path_factory: pytest.TempPathFactory, dem_test_dir: Path) -> dict[str, Any]:
    """An untrained checkpoint, the command line, and the uninterrupted run's output."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    checkpoint = write_untrained_checkpoint(folder / "model.safetensors", channels=4)

    def command(output: Path, *extra: str) -> list[str]:
        source = dem_test_dir / SOURCE
        options = ("--tile-size", "24", "--device", "cpu", "--no-progress")
        return demsr_command("predict", checkpoint, source, output, *options, *extra)

    reference = folder / "out.tif"
    finish(start(command(reference), folder / "log"), folder / "log")
    return {"command": command, "reference": reference.read_bytes()}


def finished_tiles(output: Path) -> int:
    return len(read_done(partial_path(output))[0])


def test_prediction_killed_at_a_random_point_resumes_to_identical_bytes(
    predict_setup: dict[str, Any], tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    command, output = predict_setup["command"], tmp_path / "out.tif"
    victim = start(command(output), tmp_path / "killed.log")
    wait_until(lambda: finished_tiles(output) >= 3, victim, "three finished tiles")
    delay = rng.uniform(0.0, 2.0)
    draw = f"DEMSR_FAULT_SEED={SEED}, killed {delay:.2f} s after the third tile"
    assert kill_after(victim, delay, signal.SIGKILL), f"finished before the kill ({draw})"
    assert not output.exists(), draw  # never a half-written product

    log = finish(
        start(command(output, "--resume"), tmp_path / "resumed.log"), tmp_path / "resumed.log"
    )
    assert "resuming" in log, draw
    assert output.read_bytes() == predict_setup["reference"], draw
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed.log", "out.tif", "resumed.log"]


def test_ctrl_c_stops_prediction_in_one_line_and_resume_finishes_it(
    predict_setup: dict[str, Any], tmp_path: Path
) -> None:
    command, output = predict_setup["command"], tmp_path / "out.tif"
    victim = start(command(output), tmp_path / "interrupted.log")
    wait_until(lambda: finished_tiles(output) >= 3, victim, "three finished tiles")
    assert kill_after(victim, 0.0, signal.SIGINT)
    assert victim.returncode == 130
    lines = (tmp_path / "interrupted.log").read_text().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("demsr: interrupted; ") and lines[0].endswith(
        f"of 60 tiles are kept in {output}.partial.zarr: rerun with --resume to continue"
    )
    kept = finished_tiles(output)
    assert f"; {kept} of 60" in lines[0] and not output.exists()

    finish(start(command(output, "--resume"), tmp_path / "resumed.log"), tmp_path / "resumed.log")
    assert output.read_bytes() == predict_setup["reference"]
