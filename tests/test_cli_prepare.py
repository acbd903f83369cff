"""`demsr prepare` and `demsr degrade` (demsr.cli.prepare): their outputs and option spellings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from cli_helpers import run, run_split


def test_degrade_is_the_block_mean_with_georeferencing(dem_test_dir: Path, tmp_path: Path) -> None:
    source = dem_test_dir / "mpl_jacksboro_3s.tif"  # 344 x 403: cropped to 344 x 400
    code, out = run("degrade", source, tmp_path / "c.tif", "--scale", "4")
    assert code == 0, out
    with rasterio.open(source) as src, rasterio.open(tmp_path / "c.tif") as dst:
        fine = src.read(1).astype(np.float64)[:344, :400]
        assert (dst.height, dst.width) == (86, 100)
        assert dst.transform.c == src.transform.c and dst.transform.f == src.transform.f
        assert dst.res == (src.res[0] * 4, src.res[1] * 4)
        expected = fine.reshape(86, 4, 100, 4).mean(axis=(1, 3))
        assert np.allclose(dst.read(1), expected, atol=1e-3)


def test_prepare_output_folder_spellings(dem_test_dir: Path, tmp_path: Path) -> None:
    source = dem_test_dir / "mpl_jacksboro_3s.tif"
    options = ["--patch-px", "8", "--stride-px", "40", "--split-block-px", "80", "--no-progress"]
    written = {}
    for spelling in ("-o", "--output-dir", "--output"):
        folder = tmp_path / spelling.strip("-")
        code, _, err = run_split("prepare", source, spelling, folder, *options)
        assert code == 0, err
        assert ("--output is deprecated, use --output-dir" in err) == (spelling == "--output")
        written[spelling] = (folder / "train" / "train.h5").read_bytes() != b""
    assert all(written.values())
    code, _, err = run_split("prepare", source, *options)
    assert code == 2 and "Missing option '-o' / '--output-dir'" in err
    code, _, err = run_split("prepare", source, "-o", tmp_path / "a", "--output", tmp_path / "b")
    assert code == 2 and "not both" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
