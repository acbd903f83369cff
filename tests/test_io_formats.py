"""finalise_output: a tiled prediction turned into a COG, CF NetCDF or Zarr product."""

from __future__ import annotations

import errno
import shutil
import tracemalloc
from pathlib import Path
from typing import Any

import io_helpers
import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine
from io_helpers import GLOBAL_LAT, GLOBAL_LON_360, LIDAR, RELIEF
from rasterio.crs import CRS

from demsr.io import RasterError, finalise_output, open_raster, read_raster, write_geotiff

# the fixtures shared with the other io tests (io_helpers)
global_values = io_helpers.global_values
gebco_0_360_nc = io_helpers.gebco_0_360_nc


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


@pytest.mark.parametrize("source", [RELIEF, LIDAR])
def test_finalise_cog(tmp_path: Path, dem_test_dir: Path, source: str) -> None:
    partial = tmp_path / "prediction.partial.tif"
    data, transform, crs = make_partial(partial, dem_test_dir / source)
    output = finalise_output(partial, tmp_path / "out.tif", metadata=METADATA)
    assert output == tmp_path / "out.tif"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]  # partial and temps gone
    with rasterio.open(output) as cog:
        assert cog.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert cog.tags(ns="IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"
        assert cog.block_shapes == [(512, 512)]
        assert len(cog.overviews(1)) >= 1
        # EGM96 heights: the horizontal CRS + EGM96 height (EPSG:5773)
        assert cog.crs == CRS.from_user_input(f"EPSG:{crs.to_epsg()}+5773")
        assert cog.transform == transform
        assert cog.dtypes == ("float32",) and np.isnan(cog.nodata)
        assert cog.units == ("m",)
        assert {k: cog.tags()[k] for k in METADATA} == METADATA
        np.testing.assert_array_equal(cog.read(1), data)


def test_a_cog_staged_compressed_or_not_is_the_same_to_the_byte(
    tmp_path: Path, dem_test_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The staging file is uncompressed only where twice its size is free; either way the COG
    driver compresses the product anew, so the bytes are the same."""
    import demsr.io.formats as formats

    products_by_mode = {}
    for uncompressed in (True, False):
        monkeypatch.setattr(formats, "_stage_uncompressed", lambda *_, u=uncompressed: u)
        folder = tmp_path / str(uncompressed)
        folder.mkdir()
        make_partial(folder / "prediction.partial.tif", dem_test_dir / RELIEF)
        output = finalise_output(folder / "prediction.partial.tif", folder / "out.tif")
        assert sorted(p.name for p in folder.iterdir()) == ["out.tif"]
        products_by_mode[uncompressed] = output.read_bytes()
    assert products_by_mode[True] == products_by_mode[False]

    monkeypatch.undo()
    free = shutil.disk_usage(tmp_path).free
    side = int((free * 3 / 8 / 4) ** 0.5)  # staging with overviews ~ free / 2
    assert formats._stage_uncompressed((side // 2, side // 2), 1, "float32", tmp_path)
    assert not formats._stage_uncompressed((side * 2, side * 2), 1, "float32", tmp_path)


def test_no_room_for_an_uncompressed_staging_file_falls_back_to_a_compressed_one(
    tmp_path: Path,
    dem_test_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Free space is not a quota: an uncompressed staging file that fails to write is written
    again compressed, and the product is the same."""
    import demsr.io.formats as formats

    make_partial(tmp_path / "reference.partial.tif", dem_test_dir / RELIEF)
    reference = finalise_output(tmp_path / "reference.partial.tif", tmp_path / "reference.tif")

    real_write = formats._write_staging
    tried: list[str] = []

    def quota(src: Any, staging: Path, profile: dict[str, Any], *args: Any) -> None:
        tried.append(profile["compress"])
        if profile["compress"] == "none":
            staging.write_bytes(b"II*\0 a partial file")
            raise OSError(errno.EDQUOT, "Disk quota exceeded", str(staging))
        real_write(src, staging, profile, *args)

    monkeypatch.setattr(formats, "_stage_uncompressed", lambda *_: True)
    monkeypatch.setattr(formats, "_write_staging", quota)
    folder = tmp_path / "quota"
    folder.mkdir()
    make_partial(folder / "prediction.partial.tif", dem_test_dir / RELIEF)
    output = finalise_output(folder / "prediction.partial.tif", folder / "out.tif")
    assert tried == ["none", "deflate"]
    assert "writing it compressed" in caplog.text
    assert sorted(p.name for p in folder.iterdir()) == ["out.tif"]
    assert output.read_bytes() == reference.read_bytes()


def cell_centres(transform: Affine, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = shape
    xs = transform.c + (np.arange(cols) + 0.5) * transform.a
    ys = transform.f + (np.arange(rows) + 0.5) * transform.e
    return xs, ys


def open_product(path: Path) -> xr.Dataset:
    if path.suffix == ".zarr":
        return xr.open_zarr(path, decode_times=False)
    return xr.open_dataset(path, decode_times=False)


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


@pytest.mark.parametrize("suffix", [".tif", ".nc", ".zarr"])
def test_finalise_int16(tmp_path: Path, dem_test_dir: Path, suffix: str) -> None:
    partial = tmp_path / "partial.tif"
    data, _, _ = make_partial(partial, dem_test_dir / RELIEF, upscale=1)
    data[0, :4] = [10.4, 10.6, -3.5, -2.5]  # numpy rounds halves to even
    write_geotiff(partial, data, read_raster(partial).transform, read_raster(partial).crs)
    output = finalise_output(partial, tmp_path / f"out{suffix}", dtype="int16")
    expected = np.where(np.isnan(data), -32768, np.rint(data)).astype(np.int16)
    assert list(expected[0, :4]) == [10, 11, -4, -2]
    if suffix == ".tif":
        with rasterio.open(output) as src:
            assert src.dtypes == ("int16",) and src.nodata == -32768
            np.testing.assert_array_equal(src.read(1), expected)
    else:
        with open_product(output) as product:
            elevation = product["elevation"]
            assert elevation.encoding["dtype"] == np.int16
            assert elevation.encoding["_FillValue"] == -32768
            masked = np.where(expected == -32768, np.nan, expected)
            np.testing.assert_array_equal(elevation.values, masked)


def test_int16_refuses_out_of_range_and_leaves_no_trace(tmp_path: Path, dem_test_dir: Path) -> None:
    partial = tmp_path / "partial.tif"
    data, transform, crs = make_partial(partial, dem_test_dir / RELIEF, upscale=1)
    data[599, 599] = 40000.0  # in the last block
    write_geotiff(partial, data, transform, crs)
    for suffix in (".tif", ".nc", ".zarr"):
        with pytest.raises(RasterError, match=rf"{partial}: elevations reach .*40000.0 m"):
            finalise_output(partial, tmp_path / f"out{suffix}", dtype="int16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["partial.tif"]


def test_finalise_rejects_unknown_formats_and_dtypes(tmp_path: Path, dem_test_dir: Path) -> None:
    partial = tmp_path / "partial.tif"
    make_partial(partial, dem_test_dir / "landlab_west_bijou_1s.tif", upscale=1)
    with pytest.raises(RasterError, match="unknown output format 'png'"):
        finalise_output(partial, tmp_path / "out.tif", fmt="png")
    with pytest.raises(
        RasterError, match=r"cannot tell the output format from the extension '\.png'"
    ):
        finalise_output(partial, tmp_path / "out.png")
    with pytest.raises(RasterError, match="unsupported output dtype 'uint8'"):
        finalise_output(partial, tmp_path / "out.tif", dtype="uint8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["partial.tif"]
    # an explicit format wins over the extension
    output = finalise_output(partial, tmp_path / "out.dem", fmt="netcdf")
    with xr.open_dataset(output) as product:
        assert product.attrs["Conventions"] == "CF-1.8"


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
