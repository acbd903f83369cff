"""Helpers of the io tests: the test rasters they read, and a coarse global grid in the
GEBCO NetCDF layout (0..360 longitudes, ascending latitudes) with a real DEM's values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from affine import Affine

from demsr.io import read_raster

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
