"""Raster io: readers for GDAL formats, zipped rasters, NetCDF and Zarr grids; the finaliser that
turns a tiled prediction into a COG, CF NetCDF or Zarr product."""

from __future__ import annotations

import shutil
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from demsr.io import (
    RasterError,
    RasterLayout,
    finalise_output,
    height_standard_name,
    open_raster,
    read_raster,
    write_geotiff,
)

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


def presented(file_values: np.ndarray) -> np.ndarray:
    """What a reader must show for the 0..360, south-up global grid: north-up, -180..180."""
    return np.concatenate([file_values[:, 180:], file_values[:, :180]], axis=1)[::-1]


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


# ---------------------------------------------------------------------------------------------
# GDAL readers
# ---------------------------------------------------------------------------------------------


def test_geotiff_reader_matches_rasterio_window_by_window(dem_test_dir: Path) -> None:
    path = dem_test_dir / RELIEF
    with rasterio.open(path) as src:
        truth = src.read(1).astype(np.float32)
        truth[truth == src.nodata] = np.nan
        transform, crs = src.transform, src.crs
    with open_raster(path) as reader:
        assert reader.shape == (600, 600)
        assert reader.transform == transform
        assert reader.crs == crs
        assert reader.nodata == -32768.0
        assert reader.layout.kind == "gdal" and reader.layout.driver == "GTiff"
        window = Window(250, 100, 300, 170)
        block = reader.read(window)
        assert block.dtype == np.float32 and block.shape == (170, 300)
        np.testing.assert_array_equal(block, truth[100:270, 250:550])
        assert reader.window_transform(window) == transform @ Affine.translation(250, 100)
        np.testing.assert_array_equal(reader.read(), truth)
        with pytest.raises(ValueError, match="not inside the raster"):
            reader.read(Window(590, 0, 20, 10))


def test_esri_ascii_grid(tmp_path: Path, dem_test_dir: Path) -> None:
    source = dem_test_dir / "landlab_west_bijou_1s.tif"
    ascii_grid = tmp_path / "bijou.asc"
    rasterio.shutil.copy(source, ascii_grid, driver="AAIGrid")
    expected = read_raster(source)
    with open_raster(ascii_grid) as reader:
        assert reader.layout.driver == "AAIGrid"
        assert reader.transform.almost_equals(expected.transform)
        np.testing.assert_array_equal(reader.read(), expected.data)


def test_zipped_srtm_hgt_opens_through_vsizip(tmp_path: Path, dem_train_dir: Path) -> None:
    source = read_raster(dem_train_dir / "srtm3_N13E120.tif")
    assert source.shape == (1201, 1201)
    raw = np.where(np.isnan(source.data), -32768, source.data).astype(">i2")
    archive = tmp_path / "N13E120.hgt.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as handle:
        handle.writestr("N13E120.hgt", raw.tobytes())
    with open_raster(archive) as reader:
        assert reader.layout.driver == "SRTMHGT"
        assert reader.path == str(archive)
        assert reader.crs is not None and reader.crs.to_epsg() == 4326
        assert reader.transform.almost_equals(source.transform)
        np.testing.assert_array_equal(
            reader.read(Window(600, 0, 601, 300)), source.data[:300, 600:]
        )


def test_zipped_geotiff_with_sidecars(tmp_path: Path, dem_test_dir: Path) -> None:
    source = dem_test_dir / "landlab_srtmgl3_frontrange.tif"
    archive = tmp_path / "frontrange.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.write(source, "dem/frontrange.tif")
        handle.writestr("dem/README.txt", "not a raster")
    np.testing.assert_array_equal(read_raster(archive).data, read_raster(source).data)


@pytest.mark.parametrize(
    ("members", "message"),
    [
        (["a.tif", "b.hgt"], r"exactly one raster \(.*\); found 2: a.tif, b.hgt"),
        (["notes.txt"], "found 0"),
        (["../evil.tif"], "unsafe member name '../evil.tif'"),
        (["/abs/evil.tif"], "unsafe member name"),
    ],
)
def test_refused_zips(tmp_path: Path, members: list[str], message: str) -> None:
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for member in members:
            handle.writestr(member, b"\0" * 16)
    with pytest.raises(RasterError, match=message) as info:
        open_raster(archive)
    assert str(archive) in str(info.value)


def test_clear_errors_name_the_file(tmp_path: Path, dem_test_dir: Path) -> None:
    relief = dem_test_dir / RELIEF
    with pytest.raises(RasterError, match=r"band 2 does not exist \(the file has 1\)") as info:
        open_raster(relief, band=2)
    assert str(relief) in str(info.value)

    text = tmp_path / "notes.tif"
    text.write_text("this is not a raster\n")
    with pytest.raises(RasterError, match=f"{text}: cannot be read as a raster"):
        open_raster(text)

    fake_nc = tmp_path / "fake.nc"
    fake_nc.write_text("this is not a NetCDF file\n")
    with pytest.raises(RasterError, match=f"{fake_nc}: cannot be read"):
        open_raster(fake_nc)

    with pytest.raises(RasterError, match="no such file"):
        open_raster(tmp_path / "missing.tif")
    with pytest.raises(RasterError, match="is a directory, not a Zarr store"):
        open_raster(tmp_path)

    rotated = tmp_path / "rotated.tif"
    raster = read_raster(dem_test_dir / "landlab_west_bijou_1s.tif")
    write_geotiff(rotated, raster.data, raster.transform @ Affine.rotation(10), raster.crs)
    with pytest.raises(RasterError, match=f"{rotated}: transform is rotated or not north-up"):
        open_raster(rotated)


# ---------------------------------------------------------------------------------------------
# NetCDF and Zarr grids
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# finalise_output
# ---------------------------------------------------------------------------------------------


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


@pytest.mark.parametrize(
    ("datum", "name"),
    [
        ("egm96", "surface_altitude"),
        ("EGM2008", "surface_altitude"),
        (None, "surface_altitude"),
        ("wgs84", "height_above_reference_ellipsoid"),
        ("WGS 84 ellipsoid", "height_above_reference_ellipsoid"),
    ],
)
def test_height_standard_name(datum: str | None, name: str) -> None:
    assert height_standard_name(datum) == name


def test_layout_round_trips_through_a_dict() -> None:
    layout = RasterLayout(kind="netcdf", variable="elevation", lon_0_360=True)
    assert RasterLayout.from_mapping(layout.as_dict()) == layout
    with pytest.raises(ValueError, match="unknown raster layout keys: colour"):
        RasterLayout.from_mapping({"kind": "gdal", "colour": "red"})
