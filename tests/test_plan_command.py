"""The command line that runs a plan: ``demsr predict --dry-run`` prints the plan with the
command it would run (under torchrun for several ranks) and writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from plan_cases import SOURCE, run_cli


def test_predict_dry_run_prints_the_plan_and_writes_nothing(
    plan_checkpoint: Path, dem_test_dir: Path, tmp_path: Path
) -> None:
    source = dem_test_dir / SOURCE
    output = tmp_path / "out.nc"
    code, out, err = run_cli(
        "predict", plan_checkpoint, source, output, "--tile-px", "32", "--output-datum", "wgs84",
        "--dry-run",
    )  # fmt: skip
    assert code == 0, err
    assert "tiles    15 of 32 x 32 cells" in out and "netcdf float32" in out
    assert (
        f"run      demsr predict {plan_checkpoint} {source} {output} "
        "--tile-px 32 --output-datum wgs84"
    ) in out
    assert list(tmp_path.iterdir()) == []


def test_predict_dry_run_under_torchrun(
    plan_checkpoint: Path, dem_test_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rank 0 prints the plan for torchrun's ranks, with what an earlier run left; the others
    print nothing."""
    source, output = dem_test_dir / SOURCE, tmp_path / "out.tif"
    output.write_bytes(b"an earlier product")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "1")
    args = ["predict", plan_checkpoint, source, output, "--tile-px", "32", "--dry-run"]
    assert run_cli(*args) == (0, "", "")
    monkeypatch.setenv("RANK", "0")
    code, out, err = run_cli(*args)
    assert code == 0, err
    assert "ranks    4: 3-4 tiles each" in out  # 3 x 5 tiles dealt round-robin
    assert (
        f"torchrun --nproc_per_node 4 -m demsr predict {plan_checkpoint} {source} {output} "
        "--tile-px 32\n"
    ) in out
    assert f"note     {output} exists: demsr predict refuses it without --overwrite" in out
    assert output.read_bytes() == b"an earlier product"
