"""Prediction on xarray DataArrays: the grid, CRS and values ``demsr predict`` gives the same
raster, in the input's orientation; clear errors for arrays without a CRS or a regular grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from click.testing import CliRunner
from conftest import DEM_TEST, write_untrained_checkpoint
from rasterio.windows import Window

import demsr
from demsr.cli import main
from demsr.engine import predict_array
from demsr.io import read_raster

rioxarray = pytest.importorskip("rioxarray")

GEOGRAPHIC = DEM_TEST / "landlab_west_bijou_1s.tif"  # 67 x 129, EPSG:4326, int16, nodata -32768


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_untrained_checkpoint(tmp_path_factory.mktemp("xr") / "m.safetensors")


@pytest.fixture(scope="module")
def projected(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40 x 50 crop of a 1 m lidar DEM in UTM (EPSG:26915)."""
    path = tmp_path_factory.mktemp("xr") / "utm.tif"
    with rasterio.open(DEM_TEST / "lidar_pkg_1m.tif") as src:
        window = Window(100, 200, 50, 40)
        profile = {**src.profile, "width": 50, "height": 40}
        profile["transform"] = src.window_transform(window)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(src.read(1, window=window), 1)
    return path


def _predict_cli(checkpoint: Path, source: Path, output: Path) -> None:
    args = ["predict", checkpoint, source, output, "--device", "cpu", "--precision", "fp32"]
    result = CliRunner().invoke(main, [*map(str, args), "--no-progress"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("source", ["geographic", "projected"])
def test_grid_crs_and_values_match_demsr_predict(
    source: str, checkpoint: Path, projected: Path, tmp_path: Path
) -> None:
    path = GEOGRAPHIC if source == "geographic" else projected
    dem = rioxarray.open_rasterio(path)  # (band, y, x), nodata as _FillValue, spatial_ref
    result = demsr.predict_dataarray(checkpoint, dem, precision="fp32")

    _predict_cli(checkpoint, path, tmp_path / "out.tif")
    written = rioxarray.open_rasterio(tmp_path / "out.tif", masked=True).squeeze("band", drop=True)
    assert result.dims == ("y", "x") and result.shape == written.shape == (
        dem.sizes["y"] * 5,
        dem.sizes["x"] * 5,
    )
    cell = abs(float(written["x"][1] - written["x"][0]))  # to float64 rounding:
    for axis in ("x", "y"):
        np.testing.assert_allclose(result[axis], written[axis], rtol=1e-15, atol=1e-9 * cell)
    assert result.rio.crs == dem.rio.crs  # read back by rioxarray from the grid mapping
    assert result.rio.transform().almost_equals(written.rio.transform(), precision=1e-9 * cell)
    expected = predict_array(checkpoint, read_raster(path).data, precision="fp32")
    np.testing.assert_array_equal(result.values, expected)  # NaN where nodata, like predict's
    np.testing.assert_allclose(result.values, written.values, atol=1e-3)  # tiled by predict
    assert result.attrs["units"] == "m"
    assert np.isnan(result.attrs["_FillValue"]) and np.isnan(result.rio.nodata)
    assert result.attrs["checkpoint_sha256"] == written.attrs["checkpoint_sha256"]
    assert result.attrs["source"].startswith("demsr DEM-SRNet super-resolution")


def test_south_up_input_gives_south_up_output(checkpoint: Path) -> None:
    """A south-up grid (latitudes ascending, as in GEBCO files) is predicted as the same grid
    north-up and handed back south-up; lon/lat without a grid mapping are EPSG:4326."""
    raster = read_raster(GEOGRAPHIC)
    rows, cols = raster.data.shape
    t = raster.transform
    lat = t.f + t.e * (np.arange(rows) + 0.5)
    lon = t.c + t.a * (np.arange(cols) + 0.5)
    north_up = xr.DataArray(raster.data, dims=("lat", "lon"), coords={"lat": lat, "lon": lon})
    south_up = north_up.isel(lat=slice(None, None, -1))
    down = demsr.predict_dataarray(checkpoint, north_up, precision="fp32")
    up = demsr.predict_dataarray(checkpoint, south_up, precision="fp32")
    assert up.dims == ("lat", "lon")
    assert bool((np.diff(up["lat"].values) > 0).all())
    np.testing.assert_array_equal(up["lat"].values, down["lat"].values[::-1])
    np.testing.assert_array_equal(up.values, down.values[::-1])
    assert up.rio.crs.to_epsg() == 4326


def test_units_nodata_and_an_explicit_crs(checkpoint: Path) -> None:
    """Heights in feet come back in feet; a _FillValue cell is nodata; crs= gives the CRS."""
    raster = read_raster(GEOGRAPHIC)
    metres = np.nan_to_num(raster.data, nan=1500.0)
    metres[10, 20] = -9999.0 / 0.3048
    t = raster.transform
    coords = {
        "y": t.f + t.e * (np.arange(metres.shape[0]) + 0.5),
        "x": t.c + t.a * (np.arange(metres.shape[1]) + 0.5),
    }
    feet = xr.DataArray(
        metres / 0.3048, dims=("y", "x"), coords=coords, attrs={"units": "ft", "_FillValue": -9999}
    )
    feet.values[10, 20] = -9999.0
    result = demsr.predict_dataarray(checkpoint, feet, crs="EPSG:4326", precision="fp32")
    metres[10, 20] = np.nan
    expected = predict_array(checkpoint, metres.astype(np.float32), precision="fp32")
    assert result.attrs["units"] == "ft"
    assert np.isnan(result.values[50:55, 100:105]).all()
    np.testing.assert_allclose(result.values, expected / 0.3048, rtol=1e-5, equal_nan=True)
    assert result.rio.crs.to_epsg() == 4326


def test_arrays_without_a_crs_or_a_regular_grid_are_refused(checkpoint: Path) -> None:
    values = np.full((20, 20), 100.0, np.float32)
    steps = np.arange(20) * 30.0 + 15.0
    plain = xr.DataArray(values, dims=("y", "x"), coords={"y": steps[::-1], "x": steps})
    with pytest.raises(ValueError, match="no CRS: give crs="):
        demsr.predict_dataarray(checkpoint, plain)
    uneven = plain.assign_coords(x=steps**1.1)
    with pytest.raises(ValueError, match="coordinate 'x' is not regularly spaced"):
        demsr.predict_dataarray(checkpoint, uneven, crs="EPSG:32611")
    with pytest.raises(ValueError, match="no 1-D coordinate"):
        demsr.predict_dataarray(checkpoint, xr.DataArray(values, dims=("y", "x")), crs="EPSG:32611")
    with pytest.raises(ValueError, match="one y dimension"):
        demsr.predict_dataarray(checkpoint, plain.rename(x="column"), crs="EPSG:32611")
    with pytest.raises(ValueError, match="select one band"):
        demsr.predict_dataarray(checkpoint, xr.concat([plain, plain], "band"), crs="EPSG:32611")


def test_api_page_xarray_example_runs_as_pasted(tmp_path: Path) -> None:
    import os
    import re
    import subprocess
    import sys

    from conftest import REPO

    text = (REPO / "docs" / "python-api.md").read_text()
    [code] = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "predict_dataarray" in b]
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=tmp_path,
        env={**os.environ, "MPLBACKEND": "Agg"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "('y', 'x') (200, 200) EPSG:4326 RMSE" in done.stdout
    with (
        rasterio.open(tmp_path / "superres.tif") as product,
        rasterio.open(demsr.bundled_dem()) as dem,
    ):
        window = dem.window_transform(Window(600, 800, 200, 200))
        assert product.crs == dem.crs and product.shape == (200, 200)
        assert product.transform.almost_equals(window, precision=1e-9)
