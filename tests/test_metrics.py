"""Each metric against values computed by hand on small arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
from affine import Affine
from skimage.metrics import structural_similarity

from demsr.metrics import (
    angle_difference_deg,
    aspect_deg,
    bias,
    cell_sizes_m,
    mae,
    max_abs_error,
    psnr,
    rmse,
    slope_deg,
    ssim,
    texture_index,
)

# WGS84
A = 6378137.0
F = 1 / 298.257223563
E2 = F * (2 - F)


def test_error_metrics_by_hand() -> None:
    prediction = np.array([[1.0, 2.0], [3.0, np.nan]])
    truth = np.array([[1.0, 4.0], [0.0, 5.0]])
    # errors on valid cells: 0, -2, 3
    assert rmse(prediction, truth) == pytest.approx(math.sqrt(13 / 3))
    assert mae(prediction, truth) == pytest.approx(5 / 3)
    assert bias(prediction, truth) == pytest.approx(1 / 3)
    assert max_abs_error(prediction, truth) == pytest.approx(3.0)
    # PSNR over a 100 m range: 20 log10(100 / sqrt(13/3))
    assert psnr(prediction, truth, 100.0) == pytest.approx(20 * math.log10(100 / math.sqrt(13 / 3)))
    with pytest.raises(ValueError, match="shape mismatch"):
        rmse(prediction, truth[:1])
    with pytest.raises(ValueError, match="no cell is valid"):
        rmse(np.full((2, 2), np.nan), truth)


def test_ssim_matches_scikit_image_and_ignores_nodata() -> None:
    rng = np.random.default_rng(0)
    truth = np.cumsum(rng.normal(size=(40, 40)), axis=0) * 10
    prediction = truth + rng.normal(scale=3.0, size=truth.shape)
    expected = structural_similarity(prediction, truth, data_range=300.0, win_size=7)
    assert ssim(prediction, truth, 300.0) == pytest.approx(expected, rel=1e-9)
    # A nodata hole neither poisons the result nor counts: identical images stay at 1.
    holed = truth.copy()
    holed[10:15, 20:25] = np.nan
    assert ssim(holed, truth, 300.0) == pytest.approx(1.0)
    assert np.isfinite(ssim(np.where(np.isnan(holed), np.nan, prediction), truth, 300.0))
    # A stack of images is the mean over all their valid windows.
    stacked = ssim(np.stack([prediction, truth]), np.stack([truth, truth]), 300.0)
    assert stacked == pytest.approx((expected + 1.0) / 2, rel=1e-9)


def test_horn_slope_and_aspect_on_a_3x3_window() -> None:
    z = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 10.0]])  # row 0 is north
    # Horn: dz/dx = ((c + 2f + i) - (a + 2d + g)) / 8dx, dz/dy(north) = ((a+2b+c)-(g+2h+i)) / 8dy
    east = ((3 + 12 + 10) - (1 + 8 + 7)) / (8 * 10.0)
    north = ((1 + 4 + 3) - (7 + 16 + 10)) / (8 * 20.0)
    slope = slope_deg(z, 10.0, 20.0)
    assert slope[1, 1] == pytest.approx(math.degrees(math.atan(math.hypot(east, north))))
    # Up to the south-east, so the ground faces north-west-ish (downslope bearing).
    expected_aspect = math.degrees(math.atan2(-east, -north)) % 360
    assert aspect_deg(z, 10.0, 20.0)[1, 1] == pytest.approx(expected_aspect)
    assert 270 < expected_aspect < 360
    # Border cells have no 3x3 neighbourhood.
    assert np.isnan(slope[0]).all() and np.isnan(slope[:, 2]).all()


def test_aspect_points_downhill() -> None:
    rows, cols = np.mgrid[0:5, 0:5].astype(float)
    assert aspect_deg(10.0 * rows, 1.0, 1.0)[2, 2] == pytest.approx(0.0)  # rises south: faces N
    assert aspect_deg(10.0 * cols, 1.0, 1.0)[2, 2] == pytest.approx(270.0)  # rises east: faces W
    assert slope_deg(10.0 * cols, 10.0, 10.0)[2, 2] == pytest.approx(45.0)


def test_nodata_makes_its_neighbours_slope_undefined() -> None:
    z = np.arange(36, dtype=float).reshape(6, 6)
    z[2, 2] = np.nan
    slope = slope_deg(z, 1.0, 1.0)
    assert np.isnan(slope[1:4, 1:4]).all()
    assert np.isfinite(slope[4, 4])


def test_geographic_cell_sizes_on_the_wgs84_ellipsoid() -> None:
    three_arcsec = 3 / 3600
    transform = Affine(three_arcsec, 0, 0, 0, -three_arcsec, three_arcsec / 2)  # row 0 on equator
    dx, dy = cell_sizes_m(transform, "EPSG:4326", 1)
    # At the equator N = a and M = a (1 - e^2).
    assert dx[0] == pytest.approx(A * math.radians(three_arcsec), rel=1e-9)  # 92.77 m
    assert dy[0] == pytest.approx(A * (1 - E2) * math.radians(three_arcsec), rel=1e-9)
    assert dx[0] == pytest.approx(92.77, abs=0.01) and dy[0] == pytest.approx(92.14, abs=0.01)


def test_slope_on_a_geographic_grid_uses_per_row_cell_widths() -> None:
    """A surface rising 1 m per arc-second of longitude is twice as steep at 60 N as at the
    equator, since a cell there is half as wide."""
    cell = 1 / 3600
    rows, cols = 3, 4
    latitudes = [0.0, 60.0]
    slopes = []
    for latitude in latitudes:
        top = latitude + 1.5 * cell  # row 1's centre sits on the latitude
        transform = Affine(cell, 0, 0, 0, -cell, top)
        z = np.tile(np.arange(cols, dtype=float), (rows, 1))  # +1 m per cell eastward
        dx, dy = cell_sizes_m(transform, "EPSG:4326", rows)
        slopes.append(slope_deg(z, dx, dy)[1, 1])
        phi = math.radians(latitude)
        width = A / math.sqrt(1 - E2 * math.sin(phi) ** 2) * math.cos(phi) * math.radians(cell)
        assert slopes[-1] == pytest.approx(math.degrees(math.atan(1 / width)), rel=1e-9)
    assert math.tan(math.radians(slopes[1])) == pytest.approx(
        2 * math.tan(math.radians(slopes[0])), rel=0.01
    )


def test_projected_cell_sizes_in_metres() -> None:
    transform = Affine(30.0, 0, 500000, 0, -30.0, 4000000)
    dx, dy = cell_sizes_m(transform, "EPSG:32611", 5)
    assert dx.tolist() == [30.0] * 5 and dy.tolist() == [30.0] * 5
    feet = Affine(10.0, 0, 0, 0, -10.0, 0)  # EPSG:2227: California zone 3, US survey feet
    dx, _ = cell_sizes_m(feet, "EPSG:2227", 1)
    assert dx[0] == pytest.approx(10 * 1200 / 3937)
    with pytest.raises(ValueError, match="north-up"):
        cell_sizes_m(Affine(1, 0.5, 0, 0, -1, 0), "EPSG:32611", 1)


def test_angle_difference_wraps() -> None:
    assert angle_difference_deg(np.array(350.0), np.array(10.0)) == pytest.approx(20.0)
    assert angle_difference_deg(np.array(90.0), np.array(270.0)) == pytest.approx(180.0)


# --------------------------------------------------------------------------------------------
# Texture index
# --------------------------------------------------------------------------------------------


def _pattern(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """A pattern repeating every 5 cells with zero mean over a period (its 5 x 5 moving
    average is exactly 0, so it is its own residual)."""
    tile = np.random.default_rng(seed).normal(size=(5, 5))
    tile -= tile.mean()
    return np.tile(tile, (rows // 5 + 1, cols // 5 + 1))[:rows, :cols]


def test_texture_index_of_a_pure_5_cell_pattern_is_one_and_of_a_plane_zero() -> None:
    pattern = _pattern(60, 75)
    assert texture_index(pattern) == pytest.approx(1.0, abs=1e-12)
    rows, cols = np.mgrid[0:60, 0:75]
    plane = 3.0 * rows - 2.0 * cols + 100.0
    assert texture_index(plane) == pytest.approx(0.0, abs=1e-9)
    # A plane plus the pattern: the plane has no residual, so the index stays 1.
    assert texture_index(plane + pattern) == pytest.approx(1.0, abs=1e-9)


def test_texture_index_of_noise_is_small_and_grows_with_an_imprinted_grid() -> None:
    noise = np.random.default_rng(1).normal(size=(400, 400))
    clean = texture_index(noise)
    # 25 phases of about 5,600 cells each: phase means of about 1/75 of the residual's RMS.
    assert clean < 0.03
    imprinted = texture_index(noise + 0.3 * _pattern(400, 400))
    assert imprinted > 5 * clean


def test_texture_index_drops_the_edges_and_nodata() -> None:
    noise = np.random.default_rng(2).normal(size=(200, 200))
    framed = noise.copy()
    # Only within the 10 dropped rows, and beyond the reach (2 cells) of the kept ones' 5 x 5
    # moving averages.
    framed[:8] += 5 * _pattern(8, 200)
    assert texture_index(framed) == pytest.approx(texture_index(noise), abs=1e-12)
    holed = noise.copy()
    holed[50:60, 50:60] = np.nan
    value = texture_index(holed)
    assert math.isfinite(value) and value < 0.05
    with pytest.raises(ValueError, match="leaves no cell"):
        texture_index(np.zeros((20, 20)))
