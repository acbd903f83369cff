"""The plan as text: ``demsr plan`` prints it."""

from __future__ import annotations

from pathlib import Path

import pytest
from plan_cases import SOURCE, run_cli


def test_plan_command_prints_the_plan(
    plan_checkpoint: Path, dem_test_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "3")  # the default number of ranks
    source = dem_test_dir / SOURCE
    args = ["plan", source, "--checkpoint", plan_checkpoint, "--tile-px", "32", "--device", "cpu"]
    code, out, err = run_cli(*args, "--format", "netcdf", "--dtype", "int16")
    assert code == 0, err
    assert "tiles    15 of 32 x 32 cells (3 x 5)" in out
    assert "ranks    3: 5 tiles each" in out
    assert "output   335 x 645 cells" in out and "netcdf int16" in out
    assert "product 432 kB uncompressed" in out  # 335 x 645 x 2 bytes
    assert (
        "run      torchrun --nproc_per_node 3 -m demsr predict "
        f"{plan_checkpoint} {source} OUTPUT.nc "
        "--dtype int16 --tile-px 32 --device cpu"
    ) in out
