"""Helpers of the io tests: the test rasters they read, a coarse global grid in the GEBCO
NetCDF layout (0..360 longitudes, ascending latitudes) with a real DEM's values, and the
prediction-like partials the product tests finalise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from affine import Affine
from rasterio.crs import CRS

from demsr.io import read_raster, write_geotiff

RELIEF = "gmt_tut_relief_30s.tif"  # 600 x 600, EPSG:4326, int16 with -32768 nodata
LIDAR = "lidar_pkg_1m.tif"  # 400 x 400, EPSG:26915 (UTM 15N, metres), float32 with NaN nodata

# A coarse global grid in the GEBCO file layout: 1-degree cells, latitudes -59.5..59.5 ascending,
# longitudes 0.5..359.5, with a real DEM's values.
GLOBAL_LAT = np.arange(-59.5, 60.0, 1.0)
GLOBAL_LON_360 = np.arange(0.5, 360.0, 1.0)
GLOBAL_TRANSFORM = Affine(1.0, 0.0, -180.0, 0.0, -1.0, 60.0)


@pytest.fixture(scope="module")
def global_values(dem_test_dir: Path) -> np.ndarray:
    """(120, 360) elevations in file order (row 0 = 59.5 S, col 0 = 0.5 E), NaN holes."""
    values = read_raster(dem_test_dir / RELIEF).data[:120, :360].copy()
    values[10:14, 20:25] = np.nan  # nodata near 20 E, 49 S
    values[100, 359] = np.nan  # the last column before the seam
    return values


def global_dataset(values: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> xr.Dataset:
    return xr.Dataset(
        {"elevation": (("lat", "lon"), values, {"units": "m"})},
        coords={
            "lat": ("lat", lat, {"units": "degrees_north"}),
            "lon": ("lon", lon, {"units": "degrees_east"}),
        },
    )


def write_gebco_nc(path: Path, values: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> Path:
    """A GEBCO-like NetCDF: int16 elevation with a _FillValue, 1-D lat/lon."""
    encoding = {"elevation": {"dtype": "int16", "_FillValue": -32768}}
    global_dataset(values, lat, lon).to_netcdf(path, encoding=encoding)
    return path


@pytest.fixture
def gebco_0_360_nc(tmp_path: Path, global_values: np.ndarray) -> Path:
    return write_gebco_nc(tmp_path / "gebco.nc", global_values, GLOBAL_LAT, GLOBAL_LON_360)


def make_partial(path: Path, source: Path, upscale: int = 2) -> tuple[np.ndarray, Affine, CRS]:
    """A prediction-like tiled float32 GeoTIFF: a real DEM, upscaled, with a NaN hole."""
    raster = read_raster(source)
    data = np.kron(raster.data, np.ones((upscale, upscale), np.float32)) + np.float32(0.25)
    data[50:70, 30:90] = np.nan
    transform = raster.transform @ Affine.scale(1 / upscale)
    assert raster.crs is not None
    write_geotiff(path, data, transform, raster.crs)
    return data, transform, raster.crs


METADATA = {
    "units": "m",
    "model": "DEM-SRNet lite",
    "checkpoint_sha256": "abc123",
    "demsr_version": "0.1.0",
    "vertical_datum": "egm96",
}


def cell_centres(transform: Affine, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = shape
    xs = transform.c + (np.arange(cols) + 0.5) * transform.a
    ys = transform.f + (np.arange(rows) + 0.5) * transform.e
    return xs, ys


def open_product(path: Path) -> xr.Dataset:
    if path.suffix == ".zarr":
        return xr.open_zarr(path, decode_times=False)
    return xr.open_dataset(path, decode_times=False)
