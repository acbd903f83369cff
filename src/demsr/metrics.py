"""Error metrics in metres and terrain derivatives (slope, aspect) on true metric cell sizes.

Every metric is computed on valid cells only: cells finite in both the prediction and the truth
(NaN is nodata). Slope and aspect use Horn's (1981) 3 x 3 finite differences; a cell whose
3 x 3 neighbourhood holds nodata or leaves the grid has no slope (NaN).

On a geographic grid (degrees) the east-west width of a cell shrinks with the cosine of the
latitude, so cell sizes are computed per row on the CRS's ellipsoid:
``dx = N(lat) cos(lat) dlon`` and ``dy = M(lat) dlat`` (prime-vertical and meridional radii of
curvature). On a projected grid they are the pixel size in metres (grid distances; the map
projection's scale factor, 0.9996 on a UTM central meridian, is ignored).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from affine import Affine
from pyproj import CRS
from scipy import ndimage
from skimage.metrics import structural_similarity

# Slope classes (degrees of the truth's slope) for breakdowns: [lower, upper).
SLOPE_CLASSES_DEG: tuple[tuple[float, float], ...] = (
    (0.0, 2.0),
    (2.0, 5.0),
    (5.0, 15.0),
    (15.0, 30.0),
    (30.0, 90.0),
)
# Aspect is meaningless on flat ground: it is compared only where the truth is at least this steep.
ASPECT_MIN_SLOPE_DEG = 2.0
# SSIM's window (scikit-image's default for 2-D images).
SSIM_WINDOW_PX = 7


def _errors(prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    prediction = np.asarray(prediction, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if prediction.shape != truth.shape:
        raise ValueError(f"shape mismatch: prediction {prediction.shape} vs truth {truth.shape}")
    errors = prediction - truth
    errors = errors[np.isfinite(errors)]
    if errors.size == 0:
        raise ValueError("no cell is valid in both prediction and truth")
    return errors


def root_mean_square(values: np.ndarray) -> float:
    """sqrt(mean(values**2)) of a non-empty array (e.g. the valid errors)."""
    return float(np.sqrt(np.mean(values**2)))


def rmse(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Root-mean-square error over cells finite in both arrays (same units as the inputs)."""
    return root_mean_square(_errors(prediction, truth))


def mae(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Mean absolute error over cells finite in both arrays."""
    return float(np.mean(np.abs(_errors(prediction, truth))))


def bias(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Mean signed error (prediction - truth): positive when the prediction is too high."""
    return float(np.mean(_errors(prediction, truth)))


def max_abs_error(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Largest absolute error over cells finite in both arrays."""
    return float(np.max(np.abs(_errors(prediction, truth))))


def psnr(prediction: np.ndarray, truth: np.ndarray, data_range_m: float) -> float:
    """Peak signal-to-noise ratio in dB: ``20 log10(data_range_m / RMSE)``.

    ``data_range_m`` is the span of elevations the peak refers to; evaluations use the truth's
    max - min over all evaluated cells and report it, since PSNR means nothing without it.
    """
    if not data_range_m > 0:
        raise ValueError(f"data_range_m must be > 0, got {data_range_m}")
    return psnr_from_rmse(rmse(prediction, truth), data_range_m)


def psnr_from_rmse(rmse_m: float, data_range_m: float) -> float:
    """:func:`psnr` from an RMSE already computed: ``20 log10(data_range_m / rmse_m)`` dB,
    infinite for a zero RMSE."""
    if not data_range_m > 0:
        raise ValueError(f"data_range_m must be > 0, got {data_range_m}")
    return math.inf if rmse_m == 0 else 20.0 * math.log10(data_range_m / rmse_m)


def ssim(prediction: np.ndarray, truth: np.ndarray, data_range_m: float) -> float:
    """Mean structural similarity (scikit-image, 7 x 7 uniform window) over valid windows.

    ``prediction`` and ``truth`` are (H, W) or (N, H, W) (the mean over all N images). Only
    windows lying entirely on cells valid in both arrays count; invalid cells are filled with
    the truth's mean before filtering so they cannot leak NaN into valid windows.
    """
    prediction = np.asarray(prediction, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if prediction.shape != truth.shape:
        raise ValueError(f"shape mismatch: prediction {prediction.shape} vs truth {truth.shape}")
    if not data_range_m > 0:
        raise ValueError(f"data_range_m must be > 0, got {data_range_m}")
    images = prediction.reshape((-1,) + prediction.shape[-2:])
    truths = truth.reshape((-1,) + truth.shape[-2:])
    total, count = 0.0, 0
    half = SSIM_WINDOW_PX // 2
    for image, reference in zip(images, truths, strict=True):
        if min(image.shape) < SSIM_WINDOW_PX:
            continue
        valid = np.isfinite(image) & np.isfinite(reference)
        if not valid.any():
            continue
        fill = float(reference[valid].mean())
        _, ssim_map = structural_similarity(
            np.where(valid, image, fill),
            np.where(valid, reference, fill),
            data_range=data_range_m,
            win_size=SSIM_WINDOW_PX,
            full=True,
        )
        window_valid = ndimage.binary_erosion(
            valid, structure=np.ones((SSIM_WINDOW_PX, SSIM_WINDOW_PX)), border_value=0
        )
        # scikit-image leaves a border of half a window out of its mean; so do we.
        window_valid[:half, :] = window_valid[-half:, :] = False
        window_valid[:, :half] = window_valid[:, -half:] = False
        total += float(ssim_map[window_valid].sum())
        count += int(window_valid.sum())
    if count == 0:
        raise ValueError(f"no {SSIM_WINDOW_PX}x{SSIM_WINDOW_PX} window is valid in both arrays")
    return total / count


def cell_sizes_m(
    transform: Affine, crs: Any, rows: int, row_off: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """East-west and north-south cell sizes in metres of each row of a north-up grid.

    Returns two float64 arrays of shape (rows,) for rows ``row_off .. row_off + rows - 1`` of the
    grid described by ``transform``. ``crs`` is anything pyproj accepts (a rasterio CRS, an EPSG
    string); ``None`` means the grid's units are metres.
    """
    if transform.b != 0 or transform.d != 0:
        raise ValueError("cell sizes need a north-up grid (the transform is rotated)")
    rows_index = np.arange(row_off, row_off + rows, dtype=np.float64)
    if crs is None:
        return (
            np.full(rows, abs(transform.a), np.float64),
            np.full(rows, abs(transform.e), np.float64),
        )
    proj_crs = CRS.from_user_input(crs)
    if proj_crs.is_geographic:
        ellipsoid = proj_crs.ellipsoid
        if ellipsoid is None:
            raise ValueError(f"{proj_crs.name}: geographic CRS without an ellipsoid")
        a = ellipsoid.semi_major_metre
        inverse_flattening = ellipsoid.inverse_flattening
        e2 = 0.0 if inverse_flattening == 0 else (2 - 1 / inverse_flattening) / inverse_flattening
        latitude = np.radians(transform.f + (rows_index + 0.5) * transform.e)
        w = 1.0 - e2 * np.sin(latitude) ** 2
        prime_vertical = a / np.sqrt(w)
        meridional = a * (1.0 - e2) / w**1.5
        dx = prime_vertical * np.cos(latitude) * math.radians(abs(transform.a))
        dy = meridional * math.radians(abs(transform.e))
        return dx, dy
    to_metres = proj_crs.axis_info[0].unit_conversion_factor if proj_crs.axis_info else 1.0
    return (
        np.full(rows, abs(transform.a) * to_metres, np.float64),
        np.full(rows, abs(transform.e) * to_metres, np.float64),
    )


def horn_gradient(
    elevation: np.ndarray, dx_m: np.ndarray | float, dy_m: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray]:
    """Horn's gradient (dz/dx east, dz/dy north), dimensionless, of (..., H, W) in metres.

    ``dx_m`` and ``dy_m`` are the cell sizes, scalars or per-row arrays of shape (H,). Row 0 is
    north. Border cells and cells next to nodata are NaN.
    """
    z = np.asarray(elevation, dtype=np.float64)
    rows, cols = z.shape[-2:]
    dx = np.broadcast_to(np.asarray(dx_m, dtype=np.float64), (rows,))[:, None]
    dy = np.broadcast_to(np.asarray(dy_m, dtype=np.float64), (rows,))[:, None]
    east = np.full(z.shape, np.nan)
    north = np.full(z.shape, np.nan)
    if rows < 3 or cols < 3:
        return east, north

    def shifted(row: int, col: int) -> np.ndarray:  # neighbour at (row, col) offset in -1..1
        return z[..., 1 + row : rows - 1 + row, 1 + col : cols - 1 + col]

    # a b c / d e f / g h i, row 0 north
    a, b, c = shifted(-1, -1), shifted(-1, 0), shifted(-1, 1)
    d, f = shifted(0, -1), shifted(0, 1)
    g, h, i = shifted(1, -1), shifted(1, 0), shifted(1, 1)
    east[..., 1:-1, 1:-1] = ((c + 2 * f + i) - (a + 2 * d + g)) / (8 * dx[1:-1])
    north[..., 1:-1, 1:-1] = ((a + 2 * b + c) - (g + 2 * h + i)) / (8 * dy[1:-1])
    # Horn's stencil skips the centre cell; a nodata cell still has no slope.
    east[np.isnan(z)] = np.nan
    north[np.isnan(z)] = np.nan
    return east, north


def slope_aspect_deg(
    elevation: np.ndarray, dx_m: np.ndarray | float, dy_m: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray]:
    """Slope and aspect in degrees (see :func:`slope_deg`, :func:`aspect_deg`) from one Horn
    gradient of (..., H, W) elevations in metres; NaN where undefined."""
    east, north = horn_gradient(elevation, dx_m, dy_m)
    slope = np.degrees(np.arctan(np.hypot(east, north)))
    aspect = np.degrees(np.arctan2(-east, -north)) % 360.0
    return slope, aspect


def slope_deg(
    elevation: np.ndarray, dx_m: np.ndarray | float, dy_m: np.ndarray | float
) -> np.ndarray:
    """Slope in degrees (Horn's method) of (..., H, W) elevations in metres; NaN where undefined."""
    return slope_aspect_deg(elevation, dx_m, dy_m)[0]


def aspect_deg(
    elevation: np.ndarray, dx_m: np.ndarray | float, dy_m: np.ndarray | float
) -> np.ndarray:
    """Aspect in degrees clockwise from north of the downslope direction (Horn's method).

    0 faces north, 90 east; a flat cell gets an arbitrary value (compare aspect only where the
    slope is not small). NaN where the slope is undefined.
    """
    return slope_aspect_deg(elevation, dx_m, dy_m)[1]


def angle_difference_deg(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Absolute difference of two compass angles in degrees, in [0, 180]."""
    difference = np.abs(np.asarray(first) - np.asarray(second)) % 360.0
    return np.minimum(difference, 360.0 - difference)


# The texture index's moving-average window and the edge left out (output cells).
TEXTURE_WINDOW_PX = 5
TEXTURE_EDGE_PX = 10


def texture_index(
    elevation: np.ndarray,
    period_px: int = 5,
    *,
    window_px: int = TEXTURE_WINDOW_PX,
    edge_px: int = TEXTURE_EDGE_PX,
) -> float:
    """How much of a raster's small-scale relief repeats with a period of ``period_px`` cells.

    The residual ``r = z - mean_5x5(z)`` (``z`` minus its ``window_px`` x ``window_px`` moving
    average) is taken over the raster less ``edge_px`` cells on each side; its cells are sorted
    into the ``period_px**2`` phases (row mod period, column mod period, counted from the
    raster's first row and column, i.e. the position inside a low-res cell's block for an x5
    output), and the index is ``RMS(the phases' means of r) / RMS(r)``. A grid that an
    upsampler imprints on every block makes the phase means differ (the index grows towards
    1); real terrain has phase means near zero (about 0.002 on an SRTM tile). Nodata (NaN) cells
    and moving averages that reach one are left out. Returns 0 for a raster with no residual
    (a plane). ``elevation`` is (H, W) metres; ValueError when too small to leave any cell.
    """
    z = np.asarray(elevation, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"expected a (rows, cols) raster, got shape {z.shape}")
    if period_px < 1 or window_px < 1 or edge_px < 0:
        raise ValueError("period_px and window_px must be >= 1 and edge_px >= 0")
    valid = np.isfinite(z)
    filled = np.where(valid, z, 0.0)
    mean = ndimage.uniform_filter(filled, size=window_px, mode="constant")
    # A moving average is used only where its whole window holds data (and lies on the grid).
    covered = ndimage.uniform_filter(valid.astype(np.float64), size=window_px, mode="constant")
    usable = valid & (covered > 1 - 1e-9)
    residual = filled - mean
    rows, cols = z.shape
    keep = np.zeros_like(usable)
    keep[edge_px : rows - edge_px, edge_px : cols - edge_px] = True
    usable &= keep
    if not usable.any():
        raise ValueError(
            f"a {rows}x{cols} raster leaves no cell for the texture index (edges of {edge_px} "
            f"cells, a {window_px}x{window_px} window)"
        )
    row_phase = (np.arange(rows) % period_px)[:, None]
    col_phase = (np.arange(cols) % period_px)[None, :]
    phase = (row_phase * period_px + col_phase)[usable]
    values = residual[usable]
    sums = np.bincount(phase, weights=values, minlength=period_px**2)
    counts = np.bincount(phase, minlength=period_px**2)
    means = sums[counts > 0] / counts[counts > 0]
    total = root_mean_square(values)
    return 0.0 if total == 0 else root_mean_square(means) / total
