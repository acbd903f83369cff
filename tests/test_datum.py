"""Vertical datum conversion EGM96 <-> WGS84 with the bundled EGM96 15' geoid grid."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from rasterio.windows import Window

from demsr import datum
from demsr.datum import (
    DATUMS,
    DatumError,
    GeoidGrid,
    convert_heights,
    crs_with_heights,
    datum_transform,
    load_geoid,
    resolve_input_datum,
    split_heights,
)
from demsr.io import read_raster

BUNDLED_GRID = Path(datum.__file__).parent / "data" / "egm96_15.gtx"

# NGA's EGM96 test points (lat, lon, N in metres), computed from the full spherical-harmonic
# model: the 15' grid interpolated bilinearly agrees with them within 6 cm.
NGA_TEST_POINTS = [
    (38.6281550, 269.7791550, -31.628),
    (-14.6212170, 305.0211140, -2.969),
    (46.8743190, 102.4487290, -43.575),
    (-23.6174460, 133.8747120, 15.871),
    (38.6254730, 359.9995000, 50.066),
    (-0.4667440, 0.0023000, 17.329),
]


@pytest.fixture(scope="module")
def geoid() -> GeoidGrid:
    return load_geoid()


@pytest.fixture(scope="module")
def proj_with_grid() -> Iterator[Transformer]:
    """PROJ's own EGM96 height -> WGS84 ellipsoidal height transformation, using the grid.

    PROJ resolves the grid of EPSG's transformation (``us_nga_egm96_15.tif``) to its older
    name ``egm96_15.gtx`` in the data folders it searches; without the grid it silently returns
    heights unchanged, which the fixture rules out.
    """
    import pyproj.datadir

    data_dir = pyproj.datadir.get_data_dir()
    pyproj.datadir.append_data_dir(str(BUNDLED_GRID.parent))
    try:
        transformer = Transformer.from_crs("EPSG:4326+5773", "EPSG:4979", always_xy=True)
        _, _, height = transformer.transform(0.0, 0.0, 100.0)
        assert height == pytest.approx(100.0 + 17.16, abs=0.01), "PROJ did not use the grid"
        yield transformer
    finally:
        pyproj.datadir.set_data_dir(data_dir)


def test_datums_and_grid_shape(geoid: GeoidGrid) -> None:
    assert DATUMS == ("egm96", "wgs84")
    assert geoid.shape == (721, 1440)
    assert (geoid.lat0_deg, geoid.lon0_deg, geoid.dlat_deg, geoid.dlon_deg) == (
        -90.0,
        -180.0,
        0.25,
        0.25,
    )
    assert np.isfinite(geoid.values_m).all()
    assert -108 < float(geoid.values_m.min()) < -106 and 85 < float(geoid.values_m.max()) < 86


def test_grid_matches_gdal_reading(geoid: GeoidGrid) -> None:
    # GDAL reads the GTX north-up (rows north to south), with nodes as cell centres
    with rasterio.open(BUNDLED_GRID) as src:
        gdal_values = src.read(1)
        assert src.transform == Affine(0.25, 0.0, -180.125, 0.0, -0.25, 90.125)
    np.testing.assert_array_equal(np.flipud(gdal_values), geoid.values_m)


def test_load_geoid_is_cached() -> None:
    assert load_geoid() is load_geoid()


def test_undulation_at_origin(geoid: GeoidGrid) -> None:
    assert float(geoid.undulation(0.0, 0.0)) == pytest.approx(17.16, abs=0.01)


@pytest.mark.parametrize(("lat", "lon", "expected_m"), NGA_TEST_POINTS)
def test_undulation_at_nga_test_points(
    geoid: GeoidGrid, lat: float, lon: float, expected_m: float
) -> None:
    assert float(geoid.undulation(lon, lat)) == pytest.approx(expected_m, abs=0.1)


def test_longitude_conventions_agree(geoid: GeoidGrid) -> None:
    lon_180 = np.array([-179.9, -179.99, -120.3, -0.01, 0.0, 45.7, 179.9, 179.99])
    lat = np.linspace(-60, 70, lon_180.size)
    expected = geoid.undulation(lon_180, lat)
    np.testing.assert_allclose(geoid.undulation(np.mod(lon_180, 360.0), lat), expected, atol=1e-9)
    np.testing.assert_allclose(geoid.undulation(lon_180 + 720.0, lat), expected, atol=1e-9)
    np.testing.assert_allclose(geoid.undulation(lon_180 - 360.0, lat), expected, atol=1e-9)
    # the antimeridian: +180 and -180 are one meridian, and N is continuous across it
    assert float(geoid.undulation(180.0, 10.0)) == pytest.approx(
        float(geoid.undulation(-180.0, 10.0)), abs=1e-9
    )
    across = geoid.undulation(np.array([179.999, -179.999]), 10.0)
    assert abs(float(across[1] - across[0])) < 0.01


def test_interpolation_between_nodes(geoid: GeoidGrid) -> None:
    # between the last column (179.75) and the first (-180), N is the average of the two nodes
    row = int((10.0 - geoid.lat0_deg) / geoid.dlat_deg)
    expected = 0.5 * (float(geoid.values_m[row, -1]) + float(geoid.values_m[row, 0]))
    assert float(geoid.undulation(179.875, 10.0)) == pytest.approx(expected, abs=1e-6)


def test_poles_are_clamped(geoid: GeoidGrid) -> None:
    north = geoid.undulation(np.array([0.0, 77.0, -150.0]), np.array([90.0, 90.5, 95.0]))
    south = geoid.undulation(np.array([0.0, 77.0]), np.array([-90.0, -91.0]))
    np.testing.assert_allclose(north, 13.606, atol=0.001)
    np.testing.assert_allclose(south, -29.534, atol=0.001)


def test_broadcasting_and_non_finite(geoid: GeoidGrid) -> None:
    values = geoid.undulation(np.array([[0.0, 1.0, 2.0]]), np.array([[0.0], [1.0]]))
    assert values.shape == (2, 3)
    values = geoid.undulation(np.array([0.0, np.inf, np.nan]), 0.0)
    assert values[0] == pytest.approx(17.16, abs=0.01) and np.isnan(values[1:]).all()


def geographic_grid(
    lon_deg: float, lat_deg: float, size: int = 3, cell_deg: float = 0.01
) -> Affine:
    """An EPSG:4326 transform whose centre cell (size odd) is centred on (lon_deg, lat_deg)."""
    half = size / 2 * cell_deg
    return Affine(cell_deg, 0.0, lon_deg - half, 0.0, -cell_deg, lat_deg + half)


@pytest.mark.parametrize(("lat", "lon", "expected_m"), NGA_TEST_POINTS[:3] + [(0.0, 0.0, 17.16)])
def test_egm96_to_wgs84_adds_undulation(
    geoid: GeoidGrid, lat: float, lon: float, expected_m: float
) -> None:
    heights = np.full((3, 3), 250.0, dtype=np.float32)
    transform = geographic_grid(lon, lat)
    ellipsoidal = convert_heights(heights, transform, "EPSG:4326", "egm96", "wgs84")
    assert ellipsoidal.dtype == np.float32 and ellipsoidal.shape == (3, 3)
    assert float(ellipsoidal[1, 1]) - 250.0 == pytest.approx(expected_m, abs=0.1)
    assert float(ellipsoidal[1, 1]) - 250.0 == pytest.approx(
        float(geoid.undulation(lon, lat)), abs=1e-3
    )
    orthometric = convert_heights(heights, transform, "EPSG:4326", "wgs84", "egm96")
    assert 250.0 - float(orthometric[1, 1]) == pytest.approx(expected_m, abs=0.1)


def test_round_trip_returns_input() -> None:
    rng = np.random.default_rng(0)
    heights = rng.uniform(-8000, 8000, size=(40, 50)).astype(np.float32)
    heights[3, 4] = np.nan
    transform = Affine(0.5, 0.0, 160.0, 0.0, -0.5, 30.0)  # crosses the antimeridian
    there = convert_heights(heights, transform, "EPSG:4326", "egm96", "wgs84")
    back = convert_heights(there, transform, "EPSG:4326", "wgs84", "egm96")
    assert not np.allclose(there, heights, equal_nan=True)
    np.testing.assert_allclose(back, heights, atol=1e-3)  # float32 rounding at 8000 m
    assert np.isnan(back[3, 4]) and np.isnan(there[3, 4])


def test_same_datum_is_an_unchanged_copy() -> None:
    heights = np.array([[1.0, np.nan], [3.0, 4.0]], dtype=np.float32)
    out = convert_heights(heights, Affine.identity(), None, "EGM96", "egm96")
    np.testing.assert_array_equal(out, heights)
    assert out is not heights
    assert datum_transform("wgs84", "WGS84") is None


def test_nan_stays_nan_and_bands_share_undulation() -> None:
    heights = np.full((2, 4, 5), 10.0, dtype=np.float32)
    heights[0, 1, 2] = np.nan
    out = convert_heights(heights, geographic_grid(30.0, 40.0, 5), "EPSG:4326", "egm96", "wgs84")
    assert np.isnan(out[0, 1, 2]) and np.isfinite(out).sum() == heights.size - 1
    np.testing.assert_array_equal(out[1, 0], out[0, 0])


def test_integer_heights_become_float32() -> None:
    heights = np.array([[100, 200]], dtype=np.int16)
    out = convert_heights(heights, geographic_grid(0.0, 0.0, 1), "EPSG:4326", "egm96", "wgs84")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[117.16, 217.16]], atol=0.01)


def test_projected_grid_uses_undulation_at_its_lon_lat(
    geoid: GeoidGrid, proj_with_grid: Transformer
) -> None:
    # a 3 x 3 grid of 100 m cells in UTM 33N centred on 15 E, 45 N
    lon, lat = 15.0, 45.0
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32633", always_xy=True)
    x, y = to_utm.transform(lon, lat)
    transform = Affine(100.0, 0.0, x - 150.0, 0.0, -100.0, y + 150.0)
    heights = np.zeros((3, 3), dtype=np.float32)
    out = convert_heights(heights, transform, rasterio.crs.CRS.from_epsg(32633), "egm96", "wgs84")
    assert float(out[1, 1]) == pytest.approx(float(geoid.undulation(lon, lat)), abs=1e-4)
    _, _, proj_height = proj_with_grid.transform(lon, lat, 0.0)
    assert float(out[1, 1]) == pytest.approx(proj_height, abs=1e-3)  # N = 45.54 m in Croatia
    # every cell gets N at its own centre
    cols, rows = np.meshgrid(np.arange(3) + 0.5, np.arange(3) + 0.5)
    cell_x, cell_y = transform.c + 100.0 * cols, transform.f - 100.0 * rows
    cell_lon, cell_lat = to_utm.transform(cell_x, cell_y, direction="INVERSE")
    np.testing.assert_allclose(out, geoid.undulation(cell_lon, cell_lat), atol=1e-4)


def test_compound_crs_uses_its_horizontal_part() -> None:
    heights = np.zeros((1, 1), dtype=np.float32)
    transform = geographic_grid(0.0, 0.0, 1)
    out = convert_heights(heights, transform, "EPSG:4326+5773", "egm96", "wgs84")
    assert float(out[0, 0]) == pytest.approx(17.16, abs=0.01)


def test_missing_grid_raises(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "egm96_15.gtx"
    monkeypatch.setenv("DEMSR_GEOID_GRID", str(missing))
    with pytest.raises(DatumError, match="geoid grid could not be read"):
        load_geoid()
    heights = np.zeros((2, 2), dtype=np.float32)
    with pytest.raises(DatumError, match="DEMSR_GEOID_GRID"):
        convert_heights(heights, geographic_grid(0.0, 0.0, 2), "EPSG:4326", "egm96", "wgs84")
    with pytest.raises(DatumError):
        datum_transform("egm96", "wgs84")
    assert issubclass(DatumError, ValueError)


def test_env_var_points_to_another_grid(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    copy = tmp_path / "geoid.gtx"
    copy.write_bytes(BUNDLED_GRID.read_bytes())
    monkeypatch.setenv("DEMSR_GEOID_GRID", str(copy))
    grid = load_geoid()
    assert grid is not load_geoid(BUNDLED_GRID) and str(copy) in grid.source
    assert float(grid.undulation(0.0, 0.0)) == pytest.approx(17.16, abs=0.01)


def test_corrupt_grid_raises(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gtx"
    broken.write_bytes(BUNDLED_GRID.read_bytes()[:1000])
    with pytest.raises(DatumError, match="not a GTX geoid grid"):
        load_geoid(broken)


def test_unknown_datum_and_missing_crs_raise() -> None:
    heights = np.zeros((2, 2), dtype=np.float32)
    transform = geographic_grid(0.0, 0.0, 2)
    with pytest.raises(DatumError, match="unknown vertical datum"):
        convert_heights(heights, transform, "EPSG:4326", "egm2008", "wgs84")
    with pytest.raises(DatumError, match="unknown vertical datum"):
        datum_transform("egm96", "navd88")
    with pytest.raises(DatumError, match="no CRS"):
        convert_heights(heights, transform, None, "egm96", "wgs84")


def test_datum_transform_hook_uses_tile_transform(geoid: GeoidGrid) -> None:
    to_wgs84 = datum_transform("egm96", "wgs84")
    assert to_wgs84 is not None
    tile = np.zeros((3, 3), dtype=np.float32)
    # the window is the tile's place in a larger raster; the transform is already the tile's own
    out = to_wgs84(tile, Window(500, 700, 3, 3), geographic_grid(0.0, 0.0), "EPSG:4326")
    assert float(out[1, 1]) == pytest.approx(17.16, abs=0.01)


def test_real_raster_matches_undulation_and_proj(
    dem_test_dir: Path, geoid: GeoidGrid, proj_with_grid: Transformer
) -> None:
    raster = read_raster(dem_test_dir / "mpl_jacksboro_3s.tif")
    raster.data[100:110, 200:230] = np.nan  # a void: stays a void
    ellipsoidal = convert_heights(raster.data, raster.transform, raster.crs, "egm96", "wgs84")

    rows, cols = raster.shape
    t = raster.transform
    lon = t.c + t.a * (np.arange(cols) + 0.5)
    lat = t.f + t.e * (np.arange(rows) + 0.5)
    lon_grid, lat_grid = np.meshgrid(lon, lat)
    undulation_m = geoid.undulation(lon_grid, lat_grid)
    valid = np.isfinite(raster.data)
    np.testing.assert_array_equal(np.isfinite(ellipsoidal), valid)
    difference = ellipsoidal.astype(np.float64) - raster.data
    # float32 heights of a few hundred metres: ~3e-5 m rounding
    np.testing.assert_allclose(difference[valid], undulation_m[valid], atol=1e-4)
    assert -32 < float(undulation_m.min()) < float(undulation_m.max()) < -30  # Tennessee

    # independent check: PROJ's own transformation with the same grid
    _, _, proj_heights = proj_with_grid.transform(
        lon_grid[valid], lat_grid[valid], raster.data[valid].astype(np.float64)
    )
    np.testing.assert_allclose(ellipsoidal[valid], proj_heights, atol=1e-3)


def test_undulation_matches_proj_worldwide(geoid: GeoidGrid, proj_with_grid: Transformer) -> None:
    rng = np.random.default_rng(0)
    lon = np.concatenate([rng.uniform(-180, 180, 20000), [179.99, -179.99, 180.0, 0.0, 12.5]])
    lat = np.concatenate([rng.uniform(-89.99, 89.99, 20000), [-45.0, 45.0, 60.0, 89.99, -89.99]])
    _, _, proj_undulation = proj_with_grid.transform(lon, lat, np.zeros_like(lon))
    # the same bilinear interpolation of the same grid: agreement to ~1e-12 m
    np.testing.assert_allclose(geoid.undulation(lon, lat), proj_undulation, atol=1e-6)


def test_projected_real_raster_matches_proj(
    dem_test_dir: Path, proj_with_grid: Transformer
) -> None:
    # NAD83 / UTM 15N lidar: cells located through pyproj, then N interpolated
    raster = read_raster(dem_test_dir / "lidar_pkg_1m.tif")
    ellipsoidal = convert_heights(raster.data, raster.transform, raster.crs, "egm96", "wgs84")
    valid = np.isfinite(raster.data)
    rows, cols = np.nonzero(valid)
    t = raster.transform
    x, y = t.c + t.a * (cols + 0.5), t.f + t.e * (rows + 0.5)
    lon, lat = Transformer.from_crs(raster.crs, "EPSG:4326", always_xy=True).transform(x, y)
    _, _, proj_heights = proj_with_grid.transform(lon, lat, raster.data[valid].astype(np.float64))
    np.testing.assert_allclose(ellipsoidal[valid], proj_heights, atol=1e-3)
    assert np.abs(ellipsoidal[valid] - raster.data[valid]).min() > 20  # N ~ -28 m in Minnesota


@pytest.mark.parametrize(
    ("horizontal", "datum", "epsg", "axes"),
    [
        ("EPSG:4326", "egm96", 9707, 3),  # WGS 84 + EGM96 height
        ("EPSG:4326", "wgs84", 4979, 3),  # WGS 84 (3D)
        ("EPSG:26915", "egm96", None, 3),  # NAD83 / UTM 15N + EGM96 height
        ("EPSG:26915", "wgs84", None, 3),  # NAD83 / UTM 15N with ellipsoidal height
    ],
)
def test_crs_with_heights_and_back(
    horizontal: str, datum: str, epsg: int | None, axes: int
) -> None:
    full = crs_with_heights(horizontal, datum)
    assert full.to_epsg() == epsg and len(full.axis_info) == axes
    assert full.is_compound == (datum == "egm96")
    found_horizontal, found_datum = split_heights(full.to_wkt())
    assert found_datum == datum
    assert found_horizontal.equals(ProjCRS.from_user_input(horizontal))
    # a 3D or compound CRS given as the horizontal one is reduced to its 2D part first
    assert crs_with_heights(full, datum).equals(full)


def test_split_heights_of_2d_and_other_vertical_crss() -> None:
    assert split_heights("EPSG:32633") == (ProjCRS.from_epsg(32633), None)
    horizontal, datum = split_heights("EPSG:4326+5703")  # NAVD88 height
    assert horizontal.to_epsg() == 4326 and datum == "NAVD88 height"
    with pytest.raises(DatumError, match="unusable CRS"):
        split_heights("EPSG:99999999")


def test_resolve_input_datum() -> None:
    assert resolve_input_datum(None, None, "a.tif") == "egm96"
    assert resolve_input_datum("wgs84", None, "a.tif") == "wgs84"
    assert resolve_input_datum(None, "wgs84", "a.tif") == "wgs84"
    assert resolve_input_datum("wgs84", "wgs84", "a.tif") == "wgs84"
    with pytest.raises(DatumError, match="a.tif: its CRS gives egm96 heights, not the wgs84"):
        resolve_input_datum("wgs84", "egm96", "a.tif")
    with pytest.raises(DatumError, match="a.tif: its CRS gives heights in NAVD88 height"):
        resolve_input_datum(None, "NAVD88 height", "a.tif")
