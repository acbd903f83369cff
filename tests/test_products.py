"""Real coarse products: the fine DEM on the product's sub-grid, pairs and scores from it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from click.testing import CliRunner
from conftest import SHARED
from rasterio.crs import CRS

from demsr import products
from demsr.baselines import (
    BACKPROJECTION_ITERATIONS,
    upsample_backprojection,
    upsample_baseline,
)
from demsr.cli import main
from demsr.datasets import read_pair_file
from demsr.evaluation_inputs import inputs_from_pairs, load_inputs
from demsr.io import write_geotiff
from demsr.prepare import PrepareOptions, degrade
from demsr.products import coast_mask, fine_on_product_grid, prepare_product_pairs
from demsr.scaling import backproject, upsample_bicubic

GEBCO = SHARED / "data" / "gebco"
OBAN_PRODUCT = GEBCO / "gebco_2020_n56.53355_s56.34059_w-5.786025_e-5.562533.tif"
OBAN_FINE = SHARED / "data" / "dem" / "train" / "srtm3_N56W006.tif"
TAIWAN_PRODUCT = GEBCO / "earth_relief_15s_taiwan.nc"
TAIWAN_FINE = GEBCO / "srtmgl1_N23E121_rows0-652_1s.tif"
ARCSEC = 1 / 3600


def run(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def _fine_metres(path: Path) -> np.ndarray:
    """The fine DEM as float64 metres with its nodata and 0 m sea as NaN (read independently)."""
    with rasterio.open(path) as src:
        values = src.read(1).astype(np.float64)
        values[values == src.nodata] = np.nan
    values[values == 0] = np.nan
    return values


def test_oban_srtm3_is_resampled_half_a_cell_onto_gebco_subgrid() -> None:
    pair = fine_on_product_grid(OBAN_FINE, OBAN_PRODUCT, 5)
    assert pair.resampling == "bilinear"
    with rasterio.open(OBAN_PRODUCT) as src:
        product = src.read(1).astype(np.float64)
        product_transform = src.transform
    assert pair.lowres.shape == product.shape == (46, 54)  # the whole product is covered
    np.testing.assert_array_equal(pair.lowres, product)
    assert pair.transform.almost_equals(product_transform @ Affine.scale(1 / 5))
    # Independent: the sub-grid cell (i, j) has its centre at 57 N - (560 + i + 0.5) * 3",
    # 6 W + (255 + j + 0.5) * 3"; SRTM3 posts sit on whole multiples of 3" from 57 N, 6 W, so
    # each value is the mean of the 2 x 2 posts around it.
    fine = _fine_metres(OBAN_FINE)
    rows, cols = pair.highres.shape
    block = fine[560 : 560 + rows + 1, 255 : 255 + cols + 1]
    expected = (block[:-1, :-1] + block[1:, :-1] + block[:-1, 1:] + block[1:, 1:]) / 4
    valid = np.isfinite(expected)
    assert np.array_equal(np.isfinite(pair.highres), valid)  # nodata and sea masked, no more
    assert 0.3 < valid.mean() < 0.6  # land and sea lochs
    np.testing.assert_allclose(pair.highres[valid], expected[valid], atol=1e-3)


def test_taiwan_1_arcsec_is_area_averaged_onto_the_3_arcsec_subgrid(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(products, "_WARNED_NO_CRS", set())
    with caplog.at_level(logging.WARNING, logger="demsr.products"):
        pair = fine_on_product_grid(TAIWAN_FINE, TAIWAN_PRODUCT, 5)
    assert "geographic by convention" in caplog.text  # the GMT grid declares no CRS
    assert pair.resampling == "average"
    assert pair.crs == CRS.from_epsg(4326)
    # The window: product cells from 121 E, 24 N (rows/cols 600 of the 118.5-123.5 E, 20-26.5 N
    # grid), 43 rows down to the strip's southern edge, 240 columns to 122 E.
    assert (pair.window.row_off, pair.window.col_off) == (600, 600)
    assert pair.lowres.shape == (43, 240)
    left, top = pair.transform.c, pair.transform.f
    assert abs(left - 121.0) < 1e-9 and abs(top - 24.0) < 1e-9
    assert abs(pair.transform.a - 3 * ARCSEC) < 1e-12
    # Independent: the 1" cells have edges on half arcseconds, so a 3" cell from 3j" covers
    # 1" columns 3j .. 3j+3 with weights 1/2, 1, 1, 1/2 (and the same for rows).
    fine = _fine_metres(TAIWAN_FINE)
    rows, cols = pair.highres.shape
    weights = np.array([0.5, 1.0, 1.0, 0.5]) / 3
    expected = np.zeros((rows, cols))
    for di in range(4):
        for dj in range(4):
            expected += (
                weights[di] * weights[dj] * fine[di : di + 3 * rows : 3, dj : dj + 3 * cols : 3]
            )
    valid = np.isfinite(expected)
    assert np.array_equal(np.isfinite(pair.highres), valid)
    np.testing.assert_allclose(pair.highres[valid], expected[valid], atol=2e-3)


def _plane_raster(path: Path, transform: Affine, crs: str, shape: tuple[int, int]) -> Path:
    rows, cols = shape
    row, col = np.mgrid[0:rows, 0:cols].astype(np.float64) + 0.5
    x, y = transform.c + transform.a * col, transform.f + transform.e * row
    values = 500.0 + 5e4 * (x - transform.c) - 2e4 * (y - transform.f)  # metres, never 0
    return write_geotiff(path, values.astype(np.float32), transform, CRS.from_string(crs))


@pytest.mark.parametrize(
    ("fine_cell_arcsec", "fine_offset_arcsec", "resampling"),
    [(3.0, 1.5, "bilinear"), (1.0, 0.5, "average"), (3.0, 0.0, "nearest")],
)
def test_subgrid_registration_on_a_plane(
    tmp_path: Path, fine_cell_arcsec: float, fine_offset_arcsec: float, resampling: str
) -> None:
    """A plane is reproduced at the sub-grid's cell centres by every kernel: its values locate
    the sub-grid to a small fraction of a cell."""
    step = fine_cell_arcsec * ARCSEC
    fine_transform = Affine(
        step, 0, 10 - fine_offset_arcsec * ARCSEC, 0, -step, 46 + fine_offset_arcsec * ARCSEC
    )
    size = int(round(0.05 / step))
    fine = _plane_raster(tmp_path / "fine.tif", fine_transform, "EPSG:4326", (size, size))
    product_transform = Affine(15 * ARCSEC, 0, 10.0, 0, -15 * ARCSEC, 46.0)
    product = write_geotiff(
        tmp_path / "product.tif",
        np.full((12, 12), 100.0, np.float32),
        product_transform,
        CRS.from_epsg(4326),
    )
    pair = fine_on_product_grid(fine, product, 5)
    assert pair.resampling == resampling
    rows, cols = pair.highres.shape
    row, col = np.mgrid[0:rows, 0:cols] + 0.5
    x, y = pair.transform.c + pair.transform.a * col, pair.transform.f + pair.transform.e * row
    expected = 500.0 + 5e4 * (x - fine_transform.c) - 2e4 * (y - fine_transform.f)
    metres_per_cell = 2e4 * pair.transform.a  # the plane's smaller rise across a sub-grid cell
    assert np.isfinite(pair.highres).all()
    assert np.max(np.abs(pair.highres - expected)) / metres_per_cell < 0.01


def test_projected_fine_dem_is_reprojected_and_averaged(tmp_path: Path) -> None:
    """A 30 m UTM DEM under a 15" product: reprojected and area-averaged onto the 3" cells."""
    utm = Affine(30.0, 0, 500000.0, 0, -30.0, 5100000.0)
    fine = tmp_path / "utm.tif"
    rows, cols = 300, 300
    row, col = np.mgrid[0:rows, 0:cols] + 0.5
    x, y = utm.c + utm.a * col, utm.f + utm.e * row
    write_geotiff(
        fine,
        (1000 + 0.05 * (x - 500000) - 0.02 * (y - 5100000)).astype(np.float32),
        utm,
        CRS.from_epsg(32633),
    )
    product = write_geotiff(
        tmp_path / "product.tif",
        np.full((20, 20), 100.0, np.float32),
        Affine(15 * ARCSEC, 0, 15.0, 0, -15 * ARCSEC, 46.05),
        CRS.from_epsg(4326),
    )
    pair = fine_on_product_grid(fine, product, 5)
    assert pair.resampling == "average"
    valid = np.isfinite(pair.highres)
    assert valid.mean() > 0.5
    from pyproj import Transformer

    rows_h, cols_h = pair.highres.shape
    row, col = np.mgrid[0:rows_h, 0:cols_h] + 0.5
    lon = pair.transform.c + pair.transform.a * col
    lat = pair.transform.f + pair.transform.e * row
    ux, uy = Transformer.from_crs(4326, 32633, always_xy=True).transform(lon, lat)
    expected = 1000 + 0.05 * (ux - 500000) - 0.02 * (uy - 5100000)
    rise = 0.054 * 92  # metres per 3" cell, about
    assert np.max(np.abs(pair.highres[valid] - expected[valid])) / rise < 0.05


def test_heights_are_converted_to_the_product_datum(tmp_path: Path) -> None:
    product = write_geotiff(
        tmp_path / "product.tif",
        np.full((4, 4), 100.0, np.float32),
        Affine(15 * ARCSEC, 0, 10.0, 0, -15 * ARCSEC, 46.0),
        CRS.from_epsg(4326),
    )
    fine = write_geotiff(
        tmp_path / "fine.tif",
        np.full((20, 20), 300.0, np.float32),
        Affine(3 * ARCSEC, 0, 10.0, 0, -3 * ARCSEC, 46.0),
        CRS.from_epsg(4326),
    )
    same = fine_on_product_grid(fine, product, 5)
    converted = fine_on_product_grid(fine, product, 5, fine_datum="wgs84", product_datum="egm96")
    # EGM96's undulation near 10 E, 46 N is about +48 m: orthometric = ellipsoidal - N.
    shift = same.highres - converted.highres
    assert 45 < float(shift.mean()) < 52 and float(np.ptp(shift)) < 0.5  # N varies slowly


def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    geographic = CRS.from_epsg(4326)
    product_transform = Affine(15 * ARCSEC, 0, 10.0, 0, -15 * ARCSEC, 46.0)
    product = write_geotiff(
        tmp_path / "p.tif", np.full((8, 8), 50.0, np.float32), product_transform, geographic
    )
    fine_transform = Affine(3 * ARCSEC, 0, 10.0, 0, -3 * ARCSEC, 46.0)
    fine = write_geotiff(
        tmp_path / "f.tif", np.full((40, 40), 60.0, np.float32), fine_transform, geographic
    )
    far = write_geotiff(
        tmp_path / "far.tif",
        np.full((40, 40), 60.0, np.float32),
        Affine.translation(5, 0) @ fine_transform,
        geographic,
    )
    coarse = write_geotiff(
        tmp_path / "coarse.tif",
        np.full((10, 10), 60.0, np.float32),
        fine_transform @ Affine.scale(4),
        geographic,
    )
    odd = write_geotiff(
        tmp_path / "odd.tif",
        np.full((60, 60), 60.0, np.float32),
        fine_transform @ Affine.scale(2 / 3),
        geographic,
    )
    no_crs = write_geotiff(
        tmp_path / "nocrs.tif", np.full((8, 8), 50.0, np.float32), product_transform, None
    )
    cases = [
        (far, product, [], "do not overlap"),
        (fine, product, ["--patch-px", "16"], "smaller than one 16-cell patch"),
        (coarse, product, [], "coarser than the x5 sub-grid"),
        (odd, product, [], "not the scale 5"),
        (fine, no_crs, [], "the product has no CRS"),
    ]
    for fine_path, product_path, extra, message in cases:
        out_dir = tmp_path / f"out_{Path(fine_path).stem}_{Path(product_path).stem}"
        options = extra or ["--patch-px", "4"]
        code, out = run(
            "prepare", fine_path, "--lowres", product_path, "-o", out_dir, *options, "--no-progress"
        )
        lines = [line for line in out.strip().splitlines() if line.startswith("demsr: error")]
        assert code == 1, out
        assert len(lines) == 1 and message in lines[0], out
        assert not out_dir.exists()
    code, out = run(
        "evaluate", "lite", far, "--lowres", product, "--no-progress", "--device", "cpu"
    )
    assert code == 1 and "do not overlap" in out


def test_prepare_pairs_from_the_oban_product(tmp_path: Path) -> None:
    out = tmp_path / "pairs"
    code, text = run(
        "prepare",
        OBAN_FINE,
        "--lowres",
        OBAN_PRODUCT,
        "-o",
        out,
        "--patch-px",
        "8",
        "--fractions",
        "1,0,0",
        "--no-progress",
    )
    assert code == 0, text
    pairs = read_pair_file(out / "train" / "train.h5")
    assert len(pairs) >= 3
    provenance = pairs.metadata.provenance
    assert provenance is not None and provenance["product"] == str(OBAN_PRODUCT.resolve())
    (entry,) = provenance["pairs"]
    assert entry["fine"] == str(OBAN_FINE.resolve()) and entry["resampling"] == "bilinear"
    with h5py.File(out / "train" / "train.h5") as handle:
        assert "gebco_2020" in handle.attrs["provenance"]
    # Each pair: the product's own cells over the fine DEM on the sub-grid, as the library
    # step gives them, at the recorded window of the sub-grid.
    pair = fine_on_product_grid(OBAN_FINE, OBAN_PRODUCT, 5)
    lowres = pairs.normalisation.denormalise(pairs.lowres[:, 0].astype(np.float64))
    highres = pairs.normalisation.denormalise(pairs.highres[:, 0].astype(np.float64))
    assert pairs.source_windows is not None
    for number, (_file, row, col, size, _) in enumerate(pairs.source_windows):
        assert row % 5 == 0 and col % 5 == 0
        np.testing.assert_allclose(
            highres[number], pair.highres[row : row + size, col : col + size], atol=0.01
        )
        np.testing.assert_allclose(
            lowres[number],
            pair.lowres[row // 5 : (row + size) // 5, col // 5 : (col + size) // 5],
            atol=0.01,
        )
    inputs = inputs_from_pairs(out / "train" / "train.h5")
    assert inputs.dx_m is not None  # cell sizes from the recorded sub-grid: about 51 x 93 m
    assert 45 < float(inputs.dx_m.mean()) < 55 and 90 < float(inputs.dy_m.mean()) < 95


def test_prepare_refuses_a_stride_off_the_product_cells(tmp_path: Path) -> None:
    options = PrepareOptions(lowres_patch_px=8, stride_px=12)
    with pytest.raises(ValueError, match="not a multiple of the scale 5"):
        prepare_product_pairs([OBAN_FINE], OBAN_PRODUCT, tmp_path / "x", options, progress=False)


def test_coast_mask_marks_two_product_cells_either_side() -> None:
    lowres = np.full((6, 10), 50.0)
    lowres[:, 5:] = -20.0  # land west of column 5, sea east
    coast = coast_mask(lowres, 5)
    assert coast.shape == (30, 50)
    per_column = coast[0, ::5]
    assert per_column.tolist() == [False, False, False, True, True, True, True, False, False, False]


def test_evaluate_scores_the_taiwan_product_with_coast_and_backprojection(tmp_path: Path) -> None:
    json_path = tmp_path / "scores.json"
    code, out = run(
        "evaluate",
        "lite",
        TAIWAN_FINE,
        "--lowres",
        TAIWAN_PRODUCT,
        "--baseline",
        "bicubic",
        "--baseline",
        "bicubic_backprojection",
        "--json",
        json_path,
        "--no-progress",
        "--device",
        "cpu",
    )
    assert code == 0, out
    assert "bicubic_backprojection" in out and "coast" in out
    scores = json.loads(json_path.read_text())
    assert set(scores["methods"]) == {"model", "bicubic", "bicubic_backprojection"}
    groups = scores["breakdown"]
    assert groups["land"]["model"]["cells"] > 100_000 and groups["coast"]["model"]["cells"] > 1000
    assert "sea" not in groups  # the fine DEM's sea is 0 m: no truth there
    # Against the product, bicubic + back-projection beats plain bicubic here.
    methods = scores["methods"]
    assert methods["bicubic_backprojection"]["rmse"] < methods["bicubic"]["rmse"]


def test_backprojection_baseline_is_bicubic_then_back_projection() -> None:
    rng = np.random.default_rng(0)
    lowres = (rng.random((2, 12, 12)) * 300).astype(np.float32)
    lowres[1, 3, 4] = np.nan
    result = upsample_baseline(lowres, 5, "bicubic_backprojection")
    np.testing.assert_array_equal(result, upsample_backprojection(lowres, 5))
    with torch.no_grad():
        low = torch.from_numpy(lowres[:1].astype(np.float64))[:, None]
        expected = backproject(upsample_bicubic(low, 5), low, BACKPROJECTION_ITERATIONS)
    np.testing.assert_allclose(result[0], expected[0, 0].numpy(), rtol=0, atol=1e-3)
    assert result.shape == (2, 60, 60)
    assert np.isnan(result[1, 15:20, 20:25]).all() and np.isfinite(result[0]).all()
    # Its block means approach the input far closer than bicubic's do.
    plain = upsample_backprojection(lowres[:1], 5, iterations=0)
    off_plain = np.abs(degrade(plain, 5) - lowres[:1]).max()
    off_bp = np.abs(degrade(result[:1], 5) - lowres[:1]).max()
    assert off_bp < off_plain / 5


def test_exactly_aligned_reference_is_read_as_it_is(tmp_path: Path, dem_test_dir: Path) -> None:
    with rasterio.open(dem_test_dir / "mpl_jacksboro_3s.tif") as src:
        highres = src.read(1).astype(np.float32)[:100, :100]
        transform, crs = src.transform, src.crs
    high = write_geotiff(tmp_path / "high.tif", highres, transform, crs)
    low = write_geotiff(tmp_path / "low.tif", degrade(highres, 5), transform @ Affine.scale(5), crs)
    inputs = load_inputs(high, 5, low)
    assert inputs.coast is None
    np.testing.assert_array_equal(inputs.highres[0], highres)
    # Shifted by half a high-res cell, the same reference is resampled onto the sub-grid.
    shifted = write_geotiff(
        tmp_path / "shifted.tif",
        degrade(highres, 5)[:-1, :-1],
        Affine.translation(0.5 * transform.a, 0) @ transform @ Affine.scale(5),
        crs,
    )
    moved = load_inputs(high, 5, shifted)
    assert moved.coast is not None and moved.highres.shape == (1, 95, 95)
    expected = (highres[:95, :95] + highres[:95, 1:96]) / 2
    valid = np.isfinite(expected) & (highres[:95, :95] != 0) & (highres[:95, 1:96] != 0)
    np.testing.assert_allclose(moved.highres[0][valid], expected[valid], atol=1e-3)


def test_evaluate_converts_the_fine_dem_to_the_products_datum(tmp_path: Path) -> None:
    scores = {}
    for datum in ("egm96", "wgs84"):
        json_path = tmp_path / f"{datum}.json"
        code, out = run(
            "evaluate", "lite", OBAN_FINE, "--lowres", OBAN_PRODUCT, "--fine-datum", datum,
            "--baseline", "bicubic", "--json", json_path, "--no-progress", "--device", "cpu",
        )  # fmt: skip
        assert code == 0, out
        scores[datum] = json.loads(json_path.read_text())["methods"]["bicubic"]["bias"]
    # Read as ellipsoidal, the truth drops by the geoid undulation (about 52 m at Oban).
    assert 48 < scores["wgs84"] - scores["egm96"] < 56
