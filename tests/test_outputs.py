"""Every product as GIS software reads it: COG, NetCDF and Zarr, float32 and int16, EGM96 and
WGS84 heights, from a GEBCO NetCDF (ascending latitudes) and from a projected GeoTIFF, opened
with rasterio/GDAL and with xarray + rioxarray: north-up grids, the horizontal and vertical
CRS, the pixel size, nodata and the values; the CF checkers on every NetCDF product; a Zarr
CRS that GDAL reads without CF (its ``_CRS`` attribute). The recipes of
docs/opening-outputs.md, run as written there."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
from itertools import product
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
import zarr
from affine import Affine
from cf_checks import run_cfchecks, run_compliance_checker
from click.testing import CliRunner
from conftest import write_untrained_checkpoint
from pyproj import CRS as ProjCRS
from rasterio.crs import CRS
from rasterio.windows import Window

from demsr.cli import main
from demsr.datum import split_heights
from demsr.io import INT16_NODATA, ZARR_CRS_ATTRIBUTE, open_raster, read_raster, write_geotiff

GEBCO = "gebco_2020_n56.3_s55.2_w12.2_e13.1.nc"  # int16, latitudes ascending, EPSG:4326
LIDAR = "lidar_pkg_1m.tif"  # float32, NAD83 / UTM zone 15N (EPSG:26915)
INPUTS = ("gebco", "utm")
DATUMS = ("egm96", "wgs84")
SUFFIXES = (".tif", ".nc", ".zarr")
DTYPES = ("float32", "int16")
PRODUCTS = list(product(INPUTS, DATUMS, SUFFIXES, DTYPES))


def run(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def product_id(key: tuple[str, ...]) -> str:
    return "-".join(key)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, dem_test_dir: Path) -> dict[str, Path]:
    """Two small real inputs: a 12 x 10 corner of a GEBCO NetCDF, as GEBCO writes it (south-up
    rows, int16 metres), and a 10 x 12 window of a 1 m lidar DEM in UTM."""
    folder = tmp_path_factory.mktemp("inputs")
    with xr.open_dataset(dem_test_dir.parent.parent / "gebco" / GEBCO) as gebco:
        assert float(gebco.lat[1] - gebco.lat[0]) > 0
        gebco.isel(lat=slice(0, 12), lon=slice(0, 10)).to_netcdf(folder / "gebco.nc")
    lidar = read_raster(dem_test_dir / LIDAR, window=Window(150, 150, 12, 10))
    write_geotiff(folder / "utm.tif", lidar.data, lidar.transform, lidar.crs)
    return {"gebco": folder / "gebco.nc", "utm": folder / "utm.tif"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    return write_untrained_checkpoint(folder / "m.safetensors", channels=8, bias=True)


@pytest.fixture(scope="module")
def products(
    tmp_path_factory: pytest.TempPathFactory, inputs: dict[str, Path], checkpoint: Path
) -> dict[tuple[str, ...], Path]:
    """``demsr predict`` into every format, data type and datum, once per module."""
    folder = tmp_path_factory.mktemp("products")
    made = {}
    for key in PRODUCTS:
        name, datum, suffix, dtype = key
        output = folder / f"{name}_{datum}_{dtype}{suffix}"
        code, out = run(
            "predict", checkpoint, inputs[name], output, "--output-datum", datum,
            "--dtype", dtype, "--device", "cpu", "--no-progress",
        )  # fmt: skip
        assert code == 0, out
        made[key] = output
    return made


def expected_grid(path: Path) -> tuple[Affine, CRS]:
    """The product's grid: the input's bounds (north-up), cells a fifth of the input's."""
    with open_raster(path) as reader:
        assert reader.crs is not None
        return reader.transform @ Affine.scale(1 / 5), reader.crs


def reference_values(products: dict[tuple[str, ...], Path], name: str, datum: str) -> np.ndarray:
    """The float32 COG's heights (NaN nodata), read by demsr, north-up."""
    return read_raster(products[(name, datum, ".tif", "float32")]).data


def gdal_name(path: Path) -> str:
    return f'ZARR:"{path}":/elevation' if path.suffix == ".zarr" else str(path)


def check_heights(values: np.ndarray, reference: np.ndarray, dtype: str) -> None:
    """Same cells in the same (north-up) order; int16 rounded to the metre."""
    assert values.shape == reference.shape
    np.testing.assert_array_equal(np.isnan(values), np.isnan(reference))
    tolerance = 0.5 if dtype == "int16" else 1e-4
    assert np.nanmax(np.abs(values - reference)) <= tolerance


def check_crs(crs: CRS, horizontal: CRS, datum: str, key: tuple[str, ...]) -> None:
    """The 2D part is the input's CRS; the 3D / compound CRS says the heights' datum (except a
    COG of ellipsoidal heights in a projected CRS, which GeoTIFF keys cannot hold)."""
    found_horizontal, found_datum = split_heights(crs.to_wkt())
    assert found_horizontal.equals(ProjCRS.from_wkt(horizontal.to_wkt()), ignore_axis_order=True)
    if key[0] == "utm" and key[1] == "wgs84" and key[2] == ".tif":
        assert found_datum is None
        return
    assert found_datum == datum
    proj_crs = ProjCRS.from_wkt(crs.to_wkt())
    if datum == "egm96":
        assert proj_crs.is_compound and proj_crs.sub_crs_list[1].to_epsg() == 5773
    else:
        assert len(proj_crs.axis_info) == 3  # ellipsoidal height as the third axis
        if key[0] == "gebco":
            assert proj_crs.to_epsg() == 4979


@pytest.mark.parametrize("key", PRODUCTS, ids=product_id)
def test_gdal_reads_grid_crs_nodata_and_values(
    products: dict[tuple[str, ...], Path], inputs: dict[str, Path], key: tuple[str, ...]
) -> None:
    name, datum, _, dtype = key
    transform, horizontal = expected_grid(inputs[name])
    with rasterio.open(gdal_name(products[key])) as src:
        assert src.transform.e < 0  # north-up
        assert src.transform.almost_equals(transform, precision=1e-9)
        assert src.res == pytest.approx((transform.a, -transform.e), rel=1e-9)
        check_crs(src.crs, horizontal, datum, key)
        assert src.dtypes[0] == dtype
        if dtype == "int16":
            assert src.nodata == INT16_NODATA
        else:
            assert src.nodata is not None and np.isnan(src.nodata)
        values = src.read(1, masked=True).astype(np.float32).filled(np.nan)
        if key[2] == ".tif":
            assert src.tags()["vertical_datum"] == datum
    check_heights(values, reference_values(products, name, datum), dtype)


SYSTEM_GDALINFO = shutil.which("gdalinfo")


@pytest.mark.skipif(SYSTEM_GDALINFO is None, reason="no gdalinfo (the system's GDAL) installed")
@pytest.mark.parametrize("key", [k for k in PRODUCTS if k[3] == "float32"], ids=product_id)
def test_system_gdalinfo_reads_grid_and_crs(
    products: dict[tuple[str, ...], Path], inputs: dict[str, Path], key: tuple[str, ...]
) -> None:
    """The GDAL a distribution ships (Debian 12: 3.6, as under QGIS 3.22), where installed:
    a Zarr product's CRS comes from its ``_CRS`` attribute (this GDAL reads no CF in Zarr)."""
    name, datum, _, _ = key
    transform, horizontal = expected_grid(inputs[name])
    result = subprocess.run(
        [str(SYSTEM_GDALINFO), "-json", gdal_name(products[key])],
        capture_output=True,
        text=True,
        check=True,
    )
    info = json.loads(result.stdout)
    assert Affine.from_gdal(*info["geoTransform"]).almost_equals(transform, precision=1e-9)
    check_crs(CRS.from_wkt(info["coordinateSystem"]["wkt"]), horizontal, datum, key)
    assert str(info["bands"][0]["noDataValue"]) == "NaN"


def open_with_xarray(path: Path) -> xr.DataArray:
    """The elevation as xarray + rioxarray give it (the docs' recipes)."""
    import rioxarray

    if path.suffix == ".tif":
        data_array = rioxarray.open_rasterio(path, masked=True).squeeze("band", drop=True)
        return data_array.load()
    engine = "zarr" if path.suffix == ".zarr" else None
    with xr.open_dataset(path, engine=engine, decode_coords="all") as dataset:
        return dataset["elevation"].load()


@pytest.mark.parametrize("key", PRODUCTS, ids=product_id)
def test_xarray_and_rioxarray_read_grid_crs_nodata_and_values(
    products: dict[tuple[str, ...], Path], inputs: dict[str, Path], key: tuple[str, ...]
) -> None:
    name, datum, suffix, dtype = key
    transform, horizontal = expected_grid(inputs[name])
    elevation = open_with_xarray(products[key])
    rio = elevation.rio
    assert rio.transform().e < 0  # north-up
    assert rio.transform().almost_equals(transform, precision=1e-9)
    assert rio.resolution() == pytest.approx((transform.a, transform.e), rel=1e-9)
    assert rio.crs is not None
    check_crs(rio.crs, horizontal, datum, key)
    nodata = rio.encoded_nodata
    if dtype == "int16":
        assert nodata == INT16_NODATA
    else:
        assert nodata is not None and np.isnan(nodata)
    assert elevation.encoding["dtype"] == np.dtype(dtype)
    if suffix != ".tif":
        assert elevation.attrs["units"] == "metre"
        assert elevation.attrs["standard_name"] == (
            "surface_altitude" if datum == "egm96" else "height_above_reference_ellipsoid"
        )
    values = np.asarray(elevation.values, dtype=np.float32)
    check_heights(values, reference_values(products, name, datum), dtype)


@pytest.mark.parametrize("key", PRODUCTS, ids=product_id)
def test_demsr_reads_back_the_datum_from_the_crs(
    products: dict[tuple[str, ...], Path], inputs: dict[str, Path], key: tuple[str, ...]
) -> None:
    _, horizontal = expected_grid(inputs[key[0]])
    with open_raster(products[key]) as reader:
        assert reader.crs == horizontal
        if key[0] == "utm" and key[1] == "wgs84" and key[2] == ".tif":
            assert reader.vertical_datum is None  # the tag says it; GeoTIFF keys cannot
        else:
            assert reader.vertical_datum == key[1]


NETCDF_PRODUCTS = [key for key in PRODUCTS if key[2] == ".nc"]


@pytest.mark.parametrize("key", NETCDF_PRODUCTS, ids=product_id)
def test_cf_checkers_report_no_error_and_no_warning(
    products: dict[tuple[str, ...], Path], key: tuple[str, ...]
) -> None:
    path = products[key]
    for report in (run_compliance_checker(path), run_cfchecks(path)):
        assert (report.errors, report.warnings) == (0, 0), report.messages
    with xr.open_dataset(path) as dataset:
        assert dataset.attrs["title"] and "units" not in dataset.attrs
        assert dataset.attrs["Conventions"] == "CF-1.8"


def test_cf_checkers_find_what_is_wrong(
    products: dict[tuple[str, ...], Path], tmp_path: Path
) -> None:
    """The checks above can fail: the same product with the faults of earlier versions."""
    import netCDF4

    path = tmp_path / "bad.nc"
    shutil.copy(products[("gebco", "egm96", ".nc", "float32")], path)
    with netCDF4.Dataset(path, "a") as dataset:
        dataset.delncattr("title")
        dataset["elevation"].standard_name = "elevation_above_sea"  # not a CF name
    compliance = run_compliance_checker(path)
    assert compliance.errors + compliance.warnings >= 2, compliance
    assert any("title" in message for message in compliance.messages)
    cfchecks = run_cfchecks(path)
    assert cfchecks.errors >= 1
    assert any("elevation_above_sea" in message for message in cfchecks.messages)


def strip_cf_grid_mapping(store: Path) -> None:
    """Take the CF grid mapping out of a Zarr store (the ``crs`` array and the elevation's
    ``grid_mapping``): what GDAL before 3.9 understood of it."""
    group = zarr.open_group(str(store), mode="r+", zarr_format=2)
    del group["elevation"].attrs["grid_mapping"]
    del group["crs"]
    zarr.consolidate_metadata(str(store))


@pytest.mark.parametrize("name", INPUTS)
def test_gdal_reads_the_zarr_crs_without_cf(
    products: dict[tuple[str, ...], Path], name: str, tmp_path: Path
) -> None:
    source = products[(name, "egm96", ".zarr", "float32")]
    with rasterio.open(gdal_name(source)) as src:
        expected = src.crs
    store = tmp_path / "no_cf.zarr"
    shutil.copytree(source, store)
    strip_cf_grid_mapping(store)
    with rasterio.open(gdal_name(store)) as src:
        assert src.crs == expected and ProjCRS.from_wkt(src.crs.to_wkt()).is_compound
    with open_raster(store) as reader:  # and so does demsr
        assert reader.vertical_datum == "egm96"
        assert reader.crs == CRS.from_wkt(split_heights(expected.to_wkt())[0].to_wkt())
    # the _CRS attribute is what carries it
    group = zarr.open_group(str(store), mode="r+", zarr_format=2)
    del group["elevation"].attrs[ZARR_CRS_ATTRIBUTE]
    zarr.consolidate_metadata(str(store))
    with rasterio.open(gdal_name(store)) as src:
        assert src.crs is None


def test_xarray_saves_an_opened_zarr_as_netcdf(
    products: dict[tuple[str, ...], Path], tmp_path: Path
) -> None:
    """The docs' recipe: drop GDAL's ``_CRS`` attribute (NetCDF cannot hold it) and the CRS
    still travels in the CF grid mapping."""
    source = products[("gebco", "wgs84", ".zarr", "float32")]
    with xr.open_zarr(source, decode_coords="all") as dataset:
        with pytest.raises(TypeError, match="_CRS"):
            dataset.to_netcdf(tmp_path / "refused.nc")
        dataset["elevation"].attrs.pop("_CRS", None)
        dataset.to_netcdf(tmp_path / "copy.nc")
    with xr.open_dataset(tmp_path / "copy.nc", decode_coords="all") as copy:
        assert copy["elevation"].rio.crs.to_epsg() == 4979
        np.testing.assert_array_equal(
            copy["elevation"].values, reference_values(products, "gebco", "wgs84")
        )
    with rasterio.open(tmp_path / "copy.nc") as src:
        assert src.crs.to_epsg() == 4979 and src.transform.e < 0


def test_keep_row_order_mirrors_ascending_latitudes(
    products: dict[tuple[str, ...], Path], inputs: dict[str, Path], checkpoint: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    with xr.open_dataset(products[("gebco", "egm96", ".nc", "float32")]) as north_up:
        assert bool((np.diff(north_up["lat"].values) < 0).all())
        north_up_values = north_up["elevation"].values
    for suffix in (".nc", ".zarr"):
        output = tmp_path / f"south_up{suffix}"
        code, out = run(
            "predict", checkpoint, inputs["gebco"], output, "--keep-row-order", "--device",
            "cpu", "--no-progress",
        )  # fmt: skip
        assert code == 0, out
        engine = "zarr" if suffix == ".zarr" else None
        with xr.open_dataset(output, engine=engine) as south_up:
            assert bool((np.diff(south_up["lat"].values) > 0).all())
            np.testing.assert_array_equal(south_up["elevation"].values[::-1], north_up_values)


@pytest.fixture(scope="module")
def gebco_tif(tmp_path_factory: pytest.TempPathFactory, inputs: dict[str, Path]) -> Path:
    folder = tmp_path_factory.mktemp("gebco_tif")
    raster = read_raster(inputs["gebco"])
    write_geotiff(folder / "gebco.tif", raster.data, raster.transform, raster.crs)
    return folder / "gebco.tif"


def with_crs(source: Path, destination: Path, crs: str) -> Path:
    raster = read_raster(source)
    with rasterio.open(source) as src:
        profile = src.profile
    with rasterio.open(destination, "w", **{**profile, "crs": CRS.from_user_input(crs)}) as dst:
        dst.write(raster.data, 1)
    return destination


def test_a_3d_crs_on_the_input_sets_its_datum(
    gebco_tif: Path, checkpoint: Path, tmp_path: Path
) -> None:
    """Ellipsoidal heights declared by EPSG:4979: predicted as --input-datum wgs84 is, and the
    product keeps the datum; a contradicting --input-datum is refused."""
    source = with_crs(gebco_tif, tmp_path / "ellipsoidal.tif", "EPSG:4979")
    common = ("--device", "cpu", "--no-progress")
    assert run("predict", checkpoint, source, tmp_path / "auto.tif", *common)[0] == 0
    code, out = run(
        "predict", checkpoint, gebco_tif, tmp_path / "given.tif", "--input-datum", "wgs84", *common
    )
    assert code == 0, out
    with (
        rasterio.open(tmp_path / "auto.tif") as auto,
        rasterio.open(tmp_path / "given.tif") as given,
    ):
        assert auto.crs.to_epsg() == 4979 and given.crs.to_epsg() == 4979
        np.testing.assert_array_equal(auto.read(1), given.read(1))
    code, out = run(
        "predict", checkpoint, source, tmp_path / "no.tif", "--input-datum", "egm96", *common
    )
    assert code == 1
    assert "its CRS gives wgs84 heights, not the egm96 of --input-datum" in out
    assert len(out.strip().splitlines()) == 1 and not (tmp_path / "no.tif").exists()


def test_a_compound_crs_on_the_input_sets_its_datum(
    gebco_tif: Path, checkpoint: Path, tmp_path: Path
) -> None:
    common = ("--device", "cpu", "--no-progress")
    source = with_crs(gebco_tif, tmp_path / "egm96.tif", "EPSG:4326+5773")
    code, out = run(
        "predict", checkpoint, source, tmp_path / "out.nc", *common, "--output-datum", "wgs84"
    )
    assert code == 0, out
    with rasterio.open(tmp_path / "out.nc") as product_:
        assert product_.crs.to_epsg() == 4979
    navd88 = with_crs(gebco_tif, tmp_path / "navd88.tif", "EPSG:4326+5703")
    code, out = run("predict", checkpoint, navd88, tmp_path / "navd88_out.tif", *common)
    assert code == 1 and "its CRS gives heights in NAVD88 height" in out
    assert not (tmp_path / "navd88_out.tif").exists()


def python_recipes() -> list[str]:
    """The ```python blocks of docs/opening-outputs.md."""
    text = (Path(__file__).parents[1] / "docs" / "opening-outputs.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_the_documented_python_recipes_run_as_written(
    products: dict[tuple[str, ...], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipes = python_recipes()
    assert len(recipes) == 3  # rasterio, xarray + rioxarray, Zarr -> NetCDF
    for suffix in SUFFIXES:
        source = products[("gebco", "egm96", suffix, "float32")]
        copy = shutil.copytree if source.is_dir() else shutil.copy
        copy(source, tmp_path / f"out{suffix}")
    monkeypatch.chdir(tmp_path)
    results: dict[str, dict[str, object]] = {}
    for recipe in recipes:
        namespace: dict[str, object] = {}
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(recipe, "docs/opening-outputs.md", "exec"), namespace)  # noqa: S102
        results[recipe] = namespace
    rasterio_recipe, xarray_recipe, netcdf_recipe = (results[r] for r in recipes)
    assert np.ma.isMaskedArray(rasterio_recipe["heights"])
    compound = CRS.from_epsg(9707)  # WGS 84 + EGM96 height
    for name in ("elevation", "cog"):
        assert xarray_recipe[name].rio.crs == compound  # type: ignore[attr-defined]
    zarr_elevation = xarray_recipe["zarr_store"]["elevation"]  # type: ignore[index]
    assert zarr_elevation.rio.crs == compound and zarr_elevation.rio.transform().e < 0
    with rasterio.open(tmp_path / "from_zarr.nc") as src:
        assert src.crs == compound and src.transform.e < 0
    for namespace in (xarray_recipe, netcdf_recipe):
        for value in namespace.values():
            if isinstance(value, xr.Dataset | xr.DataArray):
                value.close()


def test_a_compound_crs_given_for_an_input_without_one(gebco_tif: Path, tmp_path: Path) -> None:
    raster = read_raster(gebco_tif)
    bare = tmp_path / "bare.tif"
    write_geotiff(bare, raster.data, raster.transform, None)
    with open_raster(bare, crs="EPSG:4326+5773") as reader:
        assert reader.crs == CRS.from_epsg(4326) and reader.vertical_datum == "egm96"


def terra_available() -> bool:
    rscript = shutil.which("Rscript")
    if rscript is None:
        return False
    probe = subprocess.run(
        [rscript, "-e", "library(terra)"], capture_output=True, text=True, check=False
    )
    return probe.returncode == 0


@pytest.mark.slow  # R and terra take seconds to start
def test_the_documented_r_recipe_runs_where_terra_is_installed(
    products: dict[tuple[str, ...], Path], inputs: dict[str, Path], tmp_path: Path
) -> None:
    """The docs' R (terra) recipe, then each raster's CRS, cell size and extent as terra sees
    them (with the system's GDAL: Debian 12's terra 1.7 uses GDAL 3.6)."""
    if not terra_available():
        pytest.skip("no R with the terra package installed")
    text = (Path(__file__).parents[1] / "docs" / "opening-outputs.md").read_text()
    (recipe,) = re.findall(r"```r\n(.*?)```", text, flags=re.DOTALL)
    for suffix in SUFFIXES:
        source = products[("gebco", "egm96", suffix, "float32")]
        copy = shutil.copytree if source.is_dir() else shutil.copy
        copy(source, tmp_path / f"out{suffix}")
    checks = (
        "for (r in list(cog, nc, zarr)) cat('CHECK', grepl('EGM96 height', crs(r)), "
        "res(r), as.vector(ext(r)), '\\n')\n"
    )
    script = tmp_path / "recipe.R"
    script.write_text(recipe + checks)
    result = subprocess.run(
        [str(shutil.which("Rscript")), str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = [line.split()[1:] for line in result.stdout.splitlines() if line.startswith("CHECK")]
    assert len(lines) == 3  # COG, NetCDF, Zarr
    transform, _ = expected_grid(inputs["gebco"])
    rows, cols = read_raster(products[("gebco", "egm96", ".tif", "float32")]).shape
    left, top = transform.c, transform.f
    expected = [transform.a, -transform.e, left, left + cols * transform.a]
    expected += [top + rows * transform.e, top]
    for compound, *numbers in lines:
        assert compound == "TRUE"
        np.testing.assert_allclose([float(n) for n in numbers], expected, rtol=1e-6)


QGIS_SCRIPT = """
import json, os, sys
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
from qgis.core import (QgsApplication, QgsCoordinateReferenceSystem, QgsCoordinateTransform,
    QgsHillshadeRenderer, QgsMapRendererSequentialJob, QgsMapSettings, QgsProject,
    QgsRasterLayer)
from qgis.PyQt.QtCore import QSize
app = QgsApplication([], False)
app.initQgis()
mercator = QgsCoordinateReferenceSystem("EPSG:3857")
for source in sys.argv[1:]:
    layer = QgsRasterLayer(source, "dem", "gdal")
    extent = layer.extent()
    # a hillshade, reprojected on the fly as a map canvas would: does it land where it should?
    layer.setRenderer(QgsHillshadeRenderer(layer.dataProvider(), 1, 315, 45))
    to_mercator = QgsCoordinateTransform(layer.crs(), mercator, QgsProject.instance())
    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(mercator)
    settings.setExtent(to_mercator.transformBoundingBox(extent))
    settings.setOutputSize(QSize(50, 50))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    image = job.renderedImage()
    drawn = sum(1 for x in range(50) for y in range(50) if image.pixel(x, y) >> 24)
    print(json.dumps({
        "source": source, "valid": layer.isValid(),
        "crs": layer.crs().toWkt(QgsCoordinateReferenceSystem.WKT2_2019),
        "extent": [extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()],
        "pixel": [layer.rasterUnitsPerPixelX(), layer.rasterUnitsPerPixelY()],
        "nodata": str(layer.dataProvider().sourceNoDataValue(1)), "drawn": drawn / 2500,
    }))
app.exitQgis()
sys.stdout.flush()
os._exit(0)  # PyQGIS 3.22 crashes in the interpreter's teardown, after the work is done
"""


def pyqgis_python() -> str | None:
    """A Python that imports PyQGIS (the system's: Debian 12's python3-qgis is QGIS 3.22)."""
    for candidate in ("/usr/bin/python3", shutil.which("python3")):
        if candidate and Path(candidate).exists():
            probe = subprocess.run(
                [candidate, "-c", "import qgis.core"], capture_output=True, check=False
            )
            if probe.returncode == 0:
                return candidate
    return None


@pytest.mark.slow  # QGIS takes seconds to start
def test_qgis_opens_and_draws_every_product_where_pyqgis_is_installed(
    products: dict[tuple[str, ...], Path], inputs: dict[str, Path], tmp_path: Path
) -> None:
    python = pyqgis_python()
    if python is None:
        pytest.skip("no PyQGIS installed")
    keys = [key for key in PRODUCTS if key[3] == "float32"]
    sources = [gdal_name(products[key]) for key in keys]
    script = tmp_path / "qgis_check.py"
    script.write_text(QGIS_SCRIPT)
    # a clean environment: not this process's PROJ/GDAL data paths, which are rasterio's
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "QT_QPA_PLATFORM": "offscreen"}
    result = subprocess.run(
        [python, str(script), *sources], capture_output=True, text=True, check=True, env=env
    )
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [report["source"] for report in reports] == sources
    for key, report in zip(keys, reports, strict=True):
        transform, horizontal = expected_grid(inputs[key[0]])
        rows, cols = read_raster(products[(key[0], key[1], ".tif", "float32")]).shape
        assert report["valid"], report
        # QGIS before 3.38 knows no vertical CRS: it keeps the horizontal (or 3D) part
        found = split_heights(report["crs"])[0]
        assert found.equals(ProjCRS.from_wkt(horizontal.to_wkt()), ignore_axis_order=True)
        left, top = transform.c, transform.f
        expected = [left, top + rows * transform.e, left + cols * transform.a, top]
        np.testing.assert_allclose(report["extent"], expected, rtol=1e-9)
        np.testing.assert_allclose(report["pixel"], [transform.a, -transform.e], rtol=1e-6)
        assert report["nodata"] == "nan"
        assert report["drawn"] > 0.9, report  # drawn in place after reprojection
