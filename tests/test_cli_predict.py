"""`demsr predict` (demsr.cli.predict): datum, format and dtype options, NetCDF layouts, a
raster without a CRS and a partial run left behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from cli_helpers import run
from conftest import write_untrained_checkpoint


def test_predict_options_datum_format_and_dtype(dem_test_dir: Path, tmp_path: Path) -> None:
    from demsr.datum import load_geoid

    checkpoint = write_untrained_checkpoint(tmp_path / "m.safetensors", channels=8, bias=True)
    source = dem_test_dir / "mpl_topobathy_pnw.tif"  # land and sea, EPSG:4326
    common = ["--device", "cpu", "--no-progress", "--tile-px", "40"]
    code, out = run("predict", checkpoint, source, tmp_path / "egm96.tif", *common)
    assert code == 0, out
    code, out = run(
        "predict", checkpoint, source, tmp_path / "wgs84.tif", "--output-datum", "wgs84", *common
    )
    assert code == 0, out
    with rasterio.open(tmp_path / "egm96.tif") as a, rasterio.open(tmp_path / "wgs84.tif") as b:
        assert a.tags()["vertical_datum"] == "egm96" and b.tags()["vertical_datum"] == "wgs84"
        rows, cols = np.mgrid[0 : a.height : 97, 0 : a.width : 89]
        lon, lat = a.transform @ (cols + 0.5, rows + 0.5)
        undulation = load_geoid().undulation(lon, lat)
        difference = b.read(1)[rows, cols] - a.read(1)[rows, cols]
    assert np.abs(difference - undulation).max() < 1e-2  # metres; N is about -17 m here

    code, out = run("predict", checkpoint, source, tmp_path / "out.nc", "--dtype", "int16", *common)
    assert code == 0, out
    import xarray as xr

    with (
        xr.open_dataset(tmp_path / "out.nc") as product,
        rasterio.open(tmp_path / "egm96.tif") as reference,
    ):
        assert product["elevation"].shape == (reference.height, reference.width)
        assert float(product["lon"][0]) == pytest.approx(
            reference.transform.c + reference.res[0] / 2
        )
        expected = np.round(reference.read(1))
        assert np.abs(product["elevation"].values - expected).max() <= 1


def test_gebco_layout_netcdf_comes_out_north_up_and_in_place(
    dem_test_dir: Path, tmp_path: Path
) -> None:
    """A 0..360-longitude, south-up NetCDF gives the same DEM as the north-up GeoTIFF it was
    made from, in the same place; a NetCDF output keeps its 0..360 longitudes and is north-up
    unless --keep-row-order mirrors its ascending latitudes."""
    import xarray as xr

    checkpoint = write_untrained_checkpoint(tmp_path / "m.safetensors", channels=8, bias=True)
    source = dem_test_dir / "mpl_topobathy_pnw.tif"  # 126..122 W, 48..50 N
    with rasterio.open(source) as src:
        values = src.read(1).astype(np.float32)
        t = src.transform
        lon = t.c + t.a * (np.arange(src.width) + 0.5)
        lat = t.f + t.e * (np.arange(src.height) + 0.5)
    gebco = xr.Dataset(
        {"elevation": (("lat", "lon"), values[::-1])},
        coords={"lat": lat[::-1], "lon": lon % 360},
    )
    gebco.to_netcdf(tmp_path / "gebco.nc")

    common = ["--device", "cpu", "--no-progress", "--tile-px", "48"]
    assert run("predict", checkpoint, source, tmp_path / "ref.tif", *common)[0] == 0
    code, out = run("predict", checkpoint, tmp_path / "gebco.nc", tmp_path / "from_nc.tif", *common)
    assert code == 0, out
    with rasterio.open(tmp_path / "ref.tif") as ref, rasterio.open(tmp_path / "from_nc.tif") as got:
        assert got.transform.e < 0  # north-up
        assert np.allclose(tuple(got.bounds), tuple(ref.bounds), atol=1e-9)
        assert got.crs.to_epsg() == 9707  # WGS 84 + EGM96 height
        assert np.allclose(got.read(1), ref.read(1), atol=1e-3)

    code, out = run("predict", checkpoint, tmp_path / "gebco.nc", tmp_path / "out.nc", *common)
    assert code == 0, out
    with (
        xr.open_dataset(tmp_path / "out.nc") as product,
        rasterio.open(tmp_path / "ref.tif") as ref,
    ):
        assert float(product["lon"].min()) > 180  # 0..360 kept
        assert bool((np.diff(product["lat"].values) < 0).all())  # north-up
        assert np.allclose(product["elevation"].values, ref.read(1), atol=1e-3)
    output = tmp_path / "mirror.nc"
    code, out = run(
        "predict", checkpoint, tmp_path / "gebco.nc", output, "--keep-row-order", *common
    )
    assert code == 0, out
    with xr.open_dataset(output) as product, rasterio.open(tmp_path / "ref.tif") as ref:
        assert float(product["lon"].min()) > 180
        assert bool((np.diff(product["lat"].values) > 0).all())  # ascending kept on request
        assert np.allclose(product["elevation"].values[::-1], ref.read(1), atol=1e-3)


def test_no_crs_fails_before_writing_crs_option_and_overwrite_clears_a_partial(
    dem_test_dir: Path, tmp_path: Path
) -> None:
    from demsr.io import read_raster, write_geotiff

    checkpoint = write_untrained_checkpoint(tmp_path / "m.safetensors", seed=None)
    raster = read_raster(dem_test_dir / "landlab_west_bijou_1s.tif")
    no_crs = write_geotiff(tmp_path / "no_crs.tif", raster.data, raster.transform, None)
    output = tmp_path / "out.tif"
    code, out = run(
        "predict",
        checkpoint,
        no_crs,
        output,
        "--input-datum",
        "wgs84",
        "--device",
        "cpu",
        "--no-progress",
    )
    assert code == 1 and "has no CRS" in out and len(out.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "no_crs.tif"]

    # --crs supplies it. A partial run left behind is refused without --resume, and cleared by
    # --overwrite.
    (tmp_path / "out.tif.partial.zarr" / "done").mkdir(parents=True)
    common = ["--crs", "EPSG:4326", "--device", "cpu", "--no-progress"]
    code, out = run("predict", checkpoint, no_crs, output, *common)
    assert code == 1 and "--resume" in out
    code, out = run("predict", checkpoint, no_crs, output, *common, "--overwrite")
    assert code == 0, out
    with rasterio.open(output) as dst:
        assert dst.crs.to_epsg() == 9707 and dst.width == raster.shape[1] * 5  # + EGM96 height
    assert not (tmp_path / "out.tif.partial.zarr").exists()
