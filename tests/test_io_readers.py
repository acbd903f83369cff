"""Raster readers: GDAL formats (GeoTIFF, ESRI ASCII, SRTM .hgt), zipped rasters, and the
one-line errors that name the file."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from io_helpers import RELIEF
from rasterio.windows import Window

from demsr.io import RasterError, open_raster, read_raster, write_geotiff


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
