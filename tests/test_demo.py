"""``demsr demo``: the shipped model on the bundled tile, with GeoTIFF, figure and metric table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from matplotlib.image import imread

from demsr.cli import main
from demsr.demo import OUTPUT_NAMES, bundled_dem


def run(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def test_demo_writes_geotiff_figure_and_metric_table(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    code, text = run("demo", "-o", out, "--no-progress")
    assert code == 0, text
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_NAMES)  # no leftovers
    for name in OUTPUT_NAMES:
        assert str(out / name) in text

    # the GeoTIFF: the bundled tile's grid (cropped to whole 5 x 5 blocks), EPSG:4326, 3"
    with rasterio.open(bundled_dem()) as truth, rasterio.open(out / "superresolved.tif") as dem:
        assert truth.crs.to_epsg() == 4326
        assert dem.crs.to_epsg() == 9707  # WGS 84 + EGM96 height (EPSG:5773)
        assert dem.shape == (1200, 1200)
        assert dem.transform.almost_equals(truth.transform)
        assert dem.tags()["vertical_datum"] == "egm96"
        values = dem.read(1)
        reference = truth.read(1)[:1200, :1200].astype(np.float64)
    assert np.isfinite(values).all()
    rmse_here = float(np.sqrt(np.mean((values - reference) ** 2)))

    # the metric table agrees with the GeoTIFF, and the model beats bicubic on this unseen tile
    metrics = json.loads((out / "metrics.json").read_text())
    model, bicubic = metrics["methods"]["model"], metrics["methods"]["bicubic"]
    assert model["rmse"] == pytest.approx(rmse_here, rel=1e-4)
    assert model["rmse"] < bicubic["rmse"] and model["slope_rmse_deg"] < bicubic["slope_rmse_deg"]
    table = (out / "metrics.md").read_text()
    assert "| model |" in table and "| bicubic |" in table and "slope RMSE deg" in table
    assert f"{model['rmse']:.3f}" in text  # printed too

    picture = imread(out / "comparison.png")
    assert picture.ndim == 3 and min(picture.shape[:2]) > 300

    # a second run refuses to replace the outputs and leaves them as they were
    before = (out / "metrics.json").read_bytes()
    code, text = run("demo", "-o", out, "--no-progress")
    assert code == 1 and "already exists (use --overwrite" in text
    assert (out / "metrics.json").read_bytes() == before


def test_demo_on_another_dem_and_failures_leave_nothing(dem_test_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    (tmp_path / "mine").mkdir()
    (out / "notes.txt").write_text("keep me")
    dem = dem_test_dir / "landlab_srtmgl3_frontrange.tif"
    code, text = run("demo", "-o", out, "--dem", dem, "--no-progress")
    assert code == 0, text
    with rasterio.open(out / "superresolved.tif") as result, rasterio.open(dem) as source:
        assert result.shape == (140, 240)  # 144 rows cropped to whole blocks
        assert result.res == pytest.approx(source.res)
    assert (out / "notes.txt").read_text() == "keep me"

    broken = tmp_path / "broken.tif"
    broken.write_text("not a raster")
    empty = tmp_path / "empty"
    code, text = run("demo", "-o", empty, "--dem", broken, "--no-progress")
    assert code == 1 and text.strip().splitlines()[-1].startswith("demsr: error: ")
    assert not empty.exists()  # the folder it created is gone again, with its temporary folder

    code, text = run("demo", "-o", empty, "--checkpoint", tmp_path / "none.safetensors")
    assert code == 1 and "none.safetensors: no such checkpoint file" in text
