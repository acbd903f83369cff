"""NetCDF and Zarr grids: GEBCO-like layouts (0..360 longitudes, ascending latitudes)
presented north-up in -180..180 order, variables, bands and lazy window reads."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import io_helpers
import numpy as np
import pytest
import xarray as xr
from affine import Affine
from io_helpers import GLOBAL_LAT, GLOBAL_LON_360, GLOBAL_TRANSFORM, global_dataset, write_gebco_nc
from rasterio.crs import CRS
from rasterio.windows import Window

from demsr.io import RasterError, RasterLayout, open_raster

# the fixtures shared with the other io tests (io_helpers)
global_values = io_helpers.global_values
gebco_0_360_nc = io_helpers.gebco_0_360_nc


def presented(file_values: np.ndarray) -> np.ndarray:
    """What a reader must show for the 0..360, south-up global grid: north-up, -180..180."""
    return np.concatenate([file_values[:, 180:], file_values[:, :180]], axis=1)[::-1]


def value_at(reader_values: np.ndarray, transform: Affine, lon: float, lat: float) -> float:
    col, row = ~transform @ (lon, lat)
    return float(reader_values[int(row), int(col)])


def file_value_at(
    values: np.ndarray, lat_axis: np.ndarray, lon_axis: np.ndarray, lon: float, lat: float
) -> float:
    """The file's value at the cell centre nearest (lon, lat); lon in -180..180."""
    if lon_axis.max() > 180:
        lon %= 360
    row = int(np.argmin(np.abs(lat_axis - lat)))
    col = int(np.argmin(np.abs(lon_axis - lon)))
    return float(values[row, col])


def check_global_grid(path: Path, file_values: np.ndarray, kind: str) -> None:
    """A 0..360 ascending-latitude global grid comes out north-up in -180..180 order."""
    expected = presented(file_values)
    with open_raster(path) as reader:
        assert reader.shape == (120, 360)
        assert reader.transform.almost_equals(GLOBAL_TRANSFORM)
        assert reader.crs == CRS.from_epsg(4326)
        assert reader.layout == RasterLayout(
            kind=kind,
            variable="elevation",
            x_name="lon",
            y_name="lat",
            lon_0_360=True,
            lat_ascending=True,
            source_dtype="int16",
        )
        whole = reader.read()
        np.testing.assert_array_equal(whole, expected)
        # known cells, located by coordinates in the presented grid and in the file
        for lon, lat in [(-179.5, 59.5), (179.5, -59.5), (-0.5, 10.5), (0.5, 10.5), (-97.2, 3.3)]:
            assert value_at(whole, reader.transform, lon, lat) == file_value_at(
                file_values, GLOBAL_LAT, GLOBAL_LON_360, lon, lat
            )
        assert np.isnan(value_at(whole, reader.transform, 21.5, -48.5))  # a _FillValue cell
        # a window across the file's 360/0 seam (presented lon 0) takes two reads
        seam = reader.read(Window(170, 40, 20, 30))
        np.testing.assert_array_equal(seam, expected[40:70, 170:190])
        np.testing.assert_array_equal(reader.read(Window(179, 19, 1, 1)), [[np.nan]])
        # windows at the presented edges (180 W / 180 E) are one read each
        np.testing.assert_array_equal(reader.read(Window(0, 0, 5, 5)), expected[:5, :5])
        np.testing.assert_array_equal(reader.read(Window(355, 115, 5, 5)), expected[115:, 355:])


def test_netcdf_0_360_ascending_is_presented_north_up(
    gebco_0_360_nc: Path, global_values: np.ndarray
) -> None:
    check_global_grid(gebco_0_360_nc, global_values, "netcdf")


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_0_360_ascending_is_presented_north_up(
    tmp_path: Path, global_values: np.ndarray, zarr_format: int
) -> None:
    store = tmp_path / "gebco.zarr"
    encoding = {"elevation": {"dtype": "int16", "_FillValue": -32768}}
    global_dataset(global_values, GLOBAL_LAT, GLOBAL_LON_360).to_zarr(
        store, encoding=encoding, zarr_format=zarr_format, consolidated=zarr_format == 2
    )
    check_global_grid(store, global_values, "zarr")


def test_netcdf_descending_lat_minus_180_180(tmp_path: Path, global_values: np.ndarray) -> None:
    lon = GLOBAL_LON_360 - 180.0
    path = write_gebco_nc(tmp_path / "north_up.nc", global_values, GLOBAL_LAT[::-1], lon)
    with open_raster(path) as reader:
        assert reader.transform.almost_equals(GLOBAL_TRANSFORM)
        assert not reader.layout.lon_0_360 and not reader.layout.lat_ascending
        np.testing.assert_array_equal(
            reader.read(Window(100, 10, 50, 60)), global_values[10:70, 100:150]
        )
        assert reader.nodata == -32768.0


def test_netcdf_regional_grid_east_of_180_is_shifted(tmp_path: Path) -> None:
    lat = np.arange(10.125, 12.0, 0.25)
    lon = np.arange(200.125, 203.0, 0.25)
    values = np.add.outer(lat, lon).astype(np.float32)
    path = tmp_path / "pacific.nc"
    global_dataset(values, lat, lon).rename({"lat": "latitude", "lon": "longitude"}).to_netcdf(path)
    with open_raster(path) as reader:
        assert reader.transform.almost_equals(Affine(0.25, 0, -160.0, 0, -0.25, 12.0))
        assert reader.layout.lon_0_360 and reader.layout.x_name == "longitude"
        np.testing.assert_array_equal(reader.read(), values[::-1])


def test_netcdf_variable_choice_and_errors(tmp_path: Path, global_values: np.ndarray) -> None:
    base = global_dataset(global_values, GLOBAL_LAT, GLOBAL_LON_360 - 180)
    single = tmp_path / "z.nc"
    base.rename({"elevation": "z"}).to_netcdf(single)
    with open_raster(single) as reader:  # the only gridded variable is picked
        assert reader.layout.variable == "z"
    with pytest.raises(RasterError, match=r"no variable 'depth' \(variables: z\)") as info:
        open_raster(single, variable="depth")
    assert str(single) in str(info.value)

    several = tmp_path / "several.nc"
    base.rename({"elevation": "z"}).assign(sid=base.elevation * 0).to_netcdf(several)
    with pytest.raises(RasterError, match="several gridded ones.*variables: z, sid"):
        open_raster(several)
    with open_raster(several, variable="sid") as reader:
        assert np.nanmax(np.abs(reader.read())) == 0

    with pytest.raises(RasterError, match=f"{single}: band 2 does not exist"):
        open_raster(single, band=2)


def test_netcdf_band_counts_along_extra_dimension(
    tmp_path: Path, global_values: np.ndarray
) -> None:
    stack = np.stack([global_values, global_values + 1])
    dataset = xr.Dataset(
        {"elevation": (("time", "lat", "lon"), stack)},
        coords={"lat": GLOBAL_LAT[::-1], "lon": GLOBAL_LON_360 - 180},
    )
    path = tmp_path / "stack.nc"
    dataset.to_netcdf(path)
    with open_raster(path, band=2) as reader:
        np.testing.assert_array_equal(reader.read(), global_values + 1)
    with pytest.raises(RasterError, match="band 3 does not exist"):
        open_raster(path, band=3)


def test_netcdf_window_reads_do_not_load_the_grid(tmp_path: Path) -> None:
    lat = np.arange(-89.975, 90.0, 0.05)  # 3600 x 7200 int16 (~50 MB as float32)
    lon = np.arange(0.025, 360.0, 0.05)
    path = tmp_path / "big.nc"
    dataset = xr.Dataset(
        {"elevation": (("lat", "lon"), np.zeros((lat.size, lon.size), np.int16))},
        coords={"lat": lat, "lon": lon},
    )
    dataset.to_netcdf(path, encoding={"elevation": {"chunksizes": (256, 256)}})
    del dataset
    with open_raster(path) as reader:
        assert reader.shape == (3600, 7200)
        tracemalloc.start()
        try:
            block = reader.read(Window(3500, 1000, 200, 200))  # across the seam
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert block.shape == (200, 200)
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB for a 200 x 200 window"
