"""`demsr plan` (demsr.cli.plan): bad input fails in one line and writes nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from plan_cases import SOURCE, run_cli
from rasterio.transform import from_origin

from demsr.io import write_geotiff


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["plan", "{tmp}/missing.tif"], "{tmp}/missing.tif: no such file"),
        (["plan", "{tmp}/notes.tif"], "{tmp}/notes.tif: cannot be read as a raster"),
        (["plan", "{tmp}/no_crs.tif"], "{tmp}/no_crs.tif: has no CRS; give it with --crs"),
        (["plan", "{source}", "--device", "tpu:0"], "unknown device 'tpu:0'"),
        (["plan", "{source}", "--checkpoint", "{tmp}/none.safetensors"], "no such checkpoint"),
        (["predict", "{source}", "{tmp}/out.xyz", "--dry-run"], "cannot tell the output format"),
    ],
)
def test_bad_input_fails_in_one_line(
    dem_test_dir: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "notes.tif").write_text("not a raster\n")
    write_geotiff(
        tmp_path / "no_crs.tif", np.zeros((4, 4), np.float32), from_origin(0, 4, 1, 1), None
    )
    names = {"tmp": str(tmp_path), "source": str(dem_test_dir / SOURCE)}
    before = set(tmp_path.iterdir())
    code, out, err = run_cli(*[arg.format(**names) for arg in args])
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith("demsr: error: ") and message.format(**names) in lines[0], err
    assert set(tmp_path.iterdir()) == before
