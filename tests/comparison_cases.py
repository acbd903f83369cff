"""Comparison cases shared by the comparison and plot tests: rasters as demsr degrade and
demsr predict leave them, on a real DEM, and the CLI run on them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from click.testing import CliRunner, Result
from conftest import DEM_TEST

from demsr.cli import main
from demsr.io import read_raster, write_geotiff
from demsr.prepare import degrade

JACKSBORO = DEM_TEST / "mpl_jacksboro_3s.tif"  # 3" geographic, 344 x 403
SCALE = 5


def run(*args: object) -> Result:
    return CliRunner().invoke(main, ["-q", *(str(a) for a in args)])


def assert_one_line_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("demsr: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@dataclass
class Case:
    """Rasters as demsr degrade and demsr predict leave them, and the arrays behind them."""

    lowres_tif: Path
    truth_tif: Path  # the full raster: larger than the prediction (cropped to whole blocks)
    prediction_tif: Path
    lowres: np.ndarray
    truth: np.ndarray  # cropped to the prediction's grid
    prediction: np.ndarray
    transform: Affine  # of the high-res grid
    crs: object


def make_case(source: Path, folder: Path, noise_m: float, hole: bool) -> Case:
    raster = read_raster(source)
    rows, cols = (raster.shape[0] // SCALE) * SCALE, (raster.shape[1] // SCALE) * SCALE
    truth = raster.data[:rows, :cols]
    lowres = degrade(truth, SCALE)
    rng = np.random.default_rng(0)
    prediction = truth + rng.normal(0.0, noise_m, truth.shape).astype(np.float32)
    if hole:  # nodata in the prediction, e.g. where the input had none
        prediction[10:30, 20:60] = np.nan
    folder.mkdir(parents=True, exist_ok=True)
    lowres_tif, prediction_tif = folder / "lowres.tif", folder / "prediction.tif"
    write_geotiff(lowres_tif, lowres, raster.transform @ Affine.scale(SCALE), raster.crs)
    write_geotiff(prediction_tif, prediction, raster.transform, raster.crs)
    return Case(
        lowres_tif,
        source,
        prediction_tif,
        lowres,
        truth,
        prediction,
        raster.transform,
        raster.crs,
    )


@pytest.fixture(scope="module")
def geographic(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return make_case(JACKSBORO, tmp_path_factory.mktemp("geographic"), noise_m=4.0, hole=True)
