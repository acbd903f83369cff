"""The CF products: NetCDF and Zarr coordinates, variables, attributes and the input's layout."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import io_helpers
import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine
from io_helpers import (
    GLOBAL_LAT,
    GLOBAL_LON_360,
    LIDAR,
    METADATA,
    RELIEF,
    cell_centres,
    make_partial,
    open_product,
)
from rasterio.crs import CRS

from demsr.io import finalise_output, open_raster, read_raster, write_geotiff

# the fixtures shared with the other io tests (io_helpers)
global_values = io_helpers.global_values
gebco_0_360_nc = io_helpers.gebco_0_360_nc


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
@pytest.mark.parametrize("source", [RELIEF, LIDAR])
def test_finalise_netcdf_and_zarr(
    tmp_path: Path, dem_test_dir: Path, source: str, suffix: str
) -> None:
    partial = tmp_path / "prediction.partial.tif"
    data, transform, crs = make_partial(partial, dem_test_dir / source)
    output = finalise_output(partial, tmp_path / f"out{suffix}", metadata=METADATA)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"out{suffix}"]
    xs, ys = cell_centres(transform, data.shape)
    geographic = crs.is_geographic
    x_name, y_name = ("lon", "lat") if geographic else ("x", "y")
    with open_product(output) as product:
        elevation = product["elevation"]
        assert elevation.dims == (y_name, x_name)
        np.testing.assert_allclose(product[x_name].values, xs, rtol=0, atol=1e-9)
        np.testing.assert_allclose(product[y_name].values, ys, rtol=0, atol=1e-9)
        np.testing.assert_array_equal(elevation.values, data)
        assert elevation.dtype == np.float32
        assert np.isnan(elevation.encoding["_FillValue"])
        assert elevation.attrs["units"] == "m"
        assert elevation.attrs["standard_name"] == "surface_altitude"  # EGM96 heights
        assert elevation.attrs["grid_mapping"] == "crs"
        grid_mapping = product["crs"].attrs
        compound = CRS.from_user_input(f"EPSG:{crs.to_epsg()}+5773")
        assert CRS.from_wkt(grid_mapping["crs_wkt"]) == compound
        assert grid_mapping["geopotential_datum_name"] == "EGM96 geoid"
        if geographic:
            assert product["lat"].attrs["units"] == "degrees_north"
            assert product["lon"].attrs["standard_name"] == "longitude"
            assert grid_mapping["grid_mapping_name"] == "latitude_longitude"
            assert grid_mapping["epsg_code"] == "EPSG:9707"  # WGS 84 + EGM96 height
        else:
            assert product["x"].attrs["units"] == "m" and product["y"].attrs["units"] == "m"
            assert grid_mapping["grid_mapping_name"] == "transverse_mercator"
        assert product.attrs["Conventions"] == "CF-1.8"
        assert "checkpoint_sha256=abc123" in product.attrs["source"]
        assert "finalise_output" in product.attrs["history"]
        assert "units" not in product.attrs  # the elevation's, not the file's
        assert {k: product.attrs[k] for k in METADATA if k != "units"} == {
            k: v for k, v in METADATA.items() if k != "units"
        }
        if suffix == ".zarr":
            assert elevation.encoding["chunks"] == (512, 512)
        else:
            assert elevation.encoding["chunksizes"] == (512, 512)
    # demsr reads its own products back onto the same grid, with the datum
    with open_raster(output) as reader:
        assert reader.transform.almost_equals(transform) and reader.crs == crs
        assert reader.vertical_datum == "egm96"
        np.testing.assert_array_equal(reader.read(), data)
    if suffix == ".nc":  # and so does GDAL
        with rasterio.open(output) as src:
            assert src.crs == compound and src.transform.almost_equals(transform)


@pytest.mark.parametrize("as_dict", [False, True])
@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_finalise_mirrors_the_input_layout(
    tmp_path: Path, gebco_0_360_nc: Path, global_values: np.ndarray, suffix: str, as_dict: bool
) -> None:
    """GEBCO 0..360 / ascending file -> reader -> GeoTIFF -> product: the file's own grid."""
    partial = tmp_path / "partial.tif"
    with open_raster(gebco_0_360_nc) as reader:
        write_geotiff(partial, reader.read(), reader.transform, reader.crs)
        layout = reader.layout.as_dict() if as_dict else reader.layout
    output = finalise_output(partial, tmp_path / f"mirror{suffix}", layout=layout)
    with open_product(output) as product:
        np.testing.assert_allclose(product["lat"].values, GLOBAL_LAT, atol=1e-9)
        np.testing.assert_allclose(product["lon"].values, GLOBAL_LON_360, atol=1e-9)
        np.testing.assert_array_equal(product["elevation"].values, global_values)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gebco.nc", f"mirror{suffix}"]


def test_finalise_replaces_an_existing_zarr(tmp_path: Path, dem_test_dir: Path) -> None:
    source = dem_test_dir / "landlab_west_bijou_1s.tif"
    for offset in (0.0, 100.0):
        partial = tmp_path / "partial.tif"
        raster = read_raster(source)
        write_geotiff(partial, raster.data + offset, raster.transform, raster.crs)
        finalise_output(partial, tmp_path / "out.zarr")
    with xr.open_zarr(tmp_path / "out.zarr") as product:
        np.testing.assert_array_equal(product.elevation.values, raster.data + 100.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]


def test_finalise_streams_in_blocks(tmp_path: Path) -> None:
    rows = cols = 2048
    data = np.add.outer(np.arange(rows, dtype=np.float32), np.arange(cols, dtype=np.float32))
    partial = tmp_path / "partial.tif"
    write_geotiff(partial, data, Affine(0.001, 0, 10, 0, -0.001, 50), CRS.from_epsg(4326))
    del data  # 16 MiB
    tracemalloc.start()
    try:
        finalise_output(partial, tmp_path / "out.nc")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB while finalising a 16 MiB raster"
