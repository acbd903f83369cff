"""Calibration of the :class:`~demsr.degradation.DegradationModel` on real (product, fine DEM)
pairs (``demsr calibrate``).

:func:`fit_pair` finds, on one real pair (:class:`demsr.products.SubgridPair`), the shift and
smoothing that best explain the product minus block mean, then the bias, the noise RMS by slope
class and its correlation length from what is left; :func:`combine_fits` makes one model of
several pairs' fits. :func:`pair_statistics` gives what calibration compares: RMS, bias and the
radially averaged spectrum of product minus block mean, by slope class; :func:`calibrate` fits
the model and returns those statistics for the real pairs and for synthetic ones the fitted
model makes from the same truth (:class:`Calibration`), which ``demsr calibrate`` prints.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import optimize

from demsr.degradation import (
    NOMINAL_CELL_SIZE_M,
    DegradationModel,
    block_slope_deg,
    fill_missing,
    shift_and_smooth,
    slope_class,
)
from demsr.metrics import SLOPE_CLASSES_DEG
from demsr.prepare import degrade

log = logging.getLogger(__name__)

# Radial frequency bands of the residual spectrum, cycles per low-res cell (0.707: the corner).
SPECTRUM_BANDS: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.71)
_SHIFT_GRID_PX = np.arange(-3.0, 3.01, 0.5)  # first search of the best shift, high-res cells


# --- Statistics ---------------------------------------------------------------------------------


@dataclass
class PairStatistics:
    """Product (or synthetic) minus block mean of the truth, on land cells (block mean > 0 m,
    every high-res cell valid). Spectrum: RMS (m) of the residual in each radial frequency band
    (:data:`SPECTRUM_BANDS`, cycles per low-res cell; their squares sum to the variance)."""

    name: str
    cells: int
    rms_m: float
    bias_m: float
    by_slope: dict[str, tuple[int, float]] = field(default_factory=dict)  # class -> (cells, RMS)
    spectrum_m: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def land_cells(lowres_m: np.ndarray, block_mean_m: np.ndarray) -> np.ndarray:
    """Low-res cells scored by calibration: product and block mean known, block mean > 0 m."""
    return np.isfinite(lowres_m) & np.isfinite(block_mean_m) & (block_mean_m > 0)


def radial_spectrum_m(residual_m: np.ndarray, mask: np.ndarray) -> tuple[float, ...]:
    """RMS of ``residual_m`` (its mean over ``mask`` removed, zero outside it) per radial
    frequency band, normalised by the number of masked cells."""
    values = np.where(mask, residual_m - residual_m[mask].mean(), 0.0)
    power = np.abs(np.fft.fft2(values)) ** 2 / (values.size * mask.sum())
    fy = np.fft.fftfreq(values.shape[0])[:, None]
    fx = np.fft.fftfreq(values.shape[1])[None, :]
    radius = np.hypot(fy, fx)
    bands = []
    for lower, upper in zip(SPECTRUM_BANDS[:-1], SPECTRUM_BANDS[1:], strict=True):
        inside = (radius >= lower) & (radius < upper)
        bands.append(math.sqrt(float(power[inside].sum())))
    return tuple(bands)


def pair_statistics(
    name: str,
    lowres_m: np.ndarray,
    highres_m: np.ndarray,
    scale: int,
    cell_size_m: tuple[float, float],
    classes: Sequence[tuple[float, float]] = SLOPE_CLASSES_DEG,
) -> PairStatistics:
    """Statistics of ``lowres_m`` minus the block mean of ``highres_m`` (see
    :class:`PairStatistics`); slope classes from the truth with ``cell_size_m`` (x, y)."""
    block_mean = degrade(highres_m.astype(np.float64), scale)
    mask = land_cells(lowres_m, block_mean)
    if not mask.any():
        raise ValueError(f"{name}: no land cell with a product value and a full block of truth")
    residual = np.where(mask, lowres_m - block_mean, 0.0)
    truth = fill_missing(highres_m.astype(np.float64), ~np.isfinite(highres_m))
    slope_classes = slope_class(block_slope_deg(truth, scale, *cell_size_m), classes)
    by_slope = {}
    for index, (lower, upper) in enumerate(classes):
        inside = mask & (slope_classes == index)
        count = int(inside.sum())
        rms = float(np.sqrt(np.mean(residual[inside] ** 2))) if count else float("nan")
        by_slope[f"{lower:g}-{upper:g} deg"] = (count, rms)
    return PairStatistics(
        name=name,
        cells=int(mask.sum()),
        rms_m=float(np.sqrt(np.mean(residual[mask] ** 2))),
        bias_m=float(residual[mask].mean()),
        by_slope=by_slope,
        spectrum_m=radial_spectrum_m(residual, mask),
    )


# --- Fitting ------------------------------------------------------------------------------------


@dataclass
class PairFit:
    """What the fit found on one real pair (metres; shifts and sigma in high-res cells)."""

    name: str
    cells: int
    rms_m: float  # product minus block mean
    bias_m: float
    shift_only: tuple[float, float, float]  # (shift x, shift y, RMS after it, bias removed)
    smoothing_only: tuple[float, float]  # (sigma, RMS after it, bias removed)
    best: tuple[float, float, float, float]  # (shift x, shift y, sigma, RMS, bias removed)
    detrended_rms_m: float  # RMS with only the bias removed
    bias_after_m: float
    noise_rms_m: tuple[float, ...]
    noise_cells: tuple[int, ...]
    correlation_px: float
    integer_fraction: float

    def explained(self, rms_m: float) -> float:
        """Fraction of the bias-free residual variance that a fit leaving ``rms_m`` explains."""
        return 1.0 - (rms_m / self.detrended_rms_m) ** 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _residual_rms(
    lowres: np.ndarray,
    truth: np.ndarray,
    missing: np.ndarray,
    mask: np.ndarray,
    scale: int,
    shift_x: float,
    shift_y: float,
    sigma: float,
) -> float:
    moved = shift_and_smooth(truth, shift_x, shift_y, abs(sigma))
    block = degrade(np.where(missing, np.nan, moved), scale)
    residual = (lowres - block)[mask]
    residual = residual[np.isfinite(residual)]
    return float(np.sqrt(np.mean((residual - residual.mean()) ** 2)))


def fit_pair(
    name: str,
    lowres_m: np.ndarray,
    highres_m: np.ndarray,
    scale: int,
    cell_size_m: tuple[float, float],
    classes: Sequence[tuple[float, float]] = SLOPE_CLASSES_DEG,
) -> PairFit:
    """Fit shift, smoothing, bias and slope-dependent correlated noise on one real pair."""
    lowres = lowres_m.astype(np.float64)
    missing = ~np.isfinite(highres_m)
    truth = fill_missing(highres_m.astype(np.float64), missing)
    block_mean = degrade(np.where(missing, np.nan, truth), scale)
    mask = land_cells(lowres, block_mean)
    if mask.sum() < 50:
        raise ValueError(f"{name}: only {int(mask.sum())} land cells to calibrate on (< 50)")
    raw = (lowres - block_mean)[mask]

    def cost(params: Sequence[float], sigma: float | None = None) -> float:
        sx, sy = params[0], params[1]
        s = params[2] if sigma is None else sigma
        return _residual_rms(lowres, truth, missing, mask, scale, sx, sy, s)

    grid = [(cost((sx, sy, 0.0)), sx, sy) for sx in _SHIFT_GRID_PX for sy in _SHIFT_GRID_PX]
    _, sx0, sy0 = min(grid)
    shift_fit = optimize.minimize(
        lambda p: cost((p[0], p[1], 0.0)),
        (sx0, sy0),
        method="Nelder-Mead",
        options={"xatol": 0.02, "fatol": 1e-3},
    )
    smooth_fit = optimize.minimize_scalar(
        lambda s: cost((0.0, 0.0, abs(s))),
        bounds=(0.0, 6.0),
        method="bounded",
        options={"xatol": 0.02},
    )
    best_fit = optimize.minimize(
        cost, (*shift_fit.x, 0.5), method="Nelder-Mead", options={"xatol": 0.02, "fatol": 1e-3}
    )
    bx, by, bs = float(best_fit.x[0]), float(best_fit.x[1]), abs(float(best_fit.x[2]))
    moved = shift_and_smooth(truth, bx, by, bs)
    residual = lowres - degrade(np.where(missing, np.nan, moved), scale)
    valid = mask & np.isfinite(residual)
    bias_after = float(residual[valid].mean())
    centred = np.where(valid, residual - bias_after, np.nan)
    integer_fraction = float(np.mean(lowres[valid] == np.round(lowres[valid])))
    rounding_var = integer_fraction / 12.0  # rounding to whole metres adds 1/12 m^2
    slope_classes = slope_class(block_slope_deg(truth, scale, *cell_size_m), classes)
    noise, counts = [], []
    for index in range(len(classes)):
        inside = valid & (slope_classes == index)
        counts.append(int(inside.sum()))
        var = float(np.mean(centred[inside] ** 2)) if inside.any() else float("nan")
        noise.append(math.sqrt(max(var - rounding_var, 0.0)) if math.isfinite(var) else math.nan)
    # Fill empty classes from their neighbours (steeper classes inherit the last known RMS).
    known = [v for v in noise if math.isfinite(v)]
    noise = [v if math.isfinite(v) else (known[-1] if known else 0.0) for v in noise]
    amplitude = np.asarray(noise)[slope_classes]
    standardised = np.where(amplitude > 0, centred / np.maximum(amplitude, 1e-9), np.nan)
    products = []
    for a, b in (
        (standardised[:, :-1], standardised[:, 1:]),
        (standardised[:-1, :], standardised[1:, :]),
    ):
        both = np.isfinite(a) & np.isfinite(b)
        products.append((a[both] * b[both], a[both] ** 2, b[both] ** 2))
    num = sum(float(p[0].sum()) for p in products)
    den = math.sqrt(
        sum(float(p[1].sum()) for p in products) * sum(float(p[2].sum()) for p in products)
    )
    rho = num / den if den > 0 else 0.0
    correlation = 1.0 / (2.0 * math.sqrt(-math.log(rho))) if 0.0 < rho < 1.0 else 0.0
    return PairFit(
        name=name,
        cells=int(mask.sum()),
        rms_m=float(np.sqrt(np.mean(raw**2))),
        bias_m=float(raw.mean()),
        shift_only=(float(shift_fit.x[0]), float(shift_fit.x[1]), float(shift_fit.fun)),
        smoothing_only=(abs(float(smooth_fit.x)), float(smooth_fit.fun)),
        best=(bx, by, bs, float(best_fit.fun)),
        detrended_rms_m=float(np.sqrt(np.mean((raw - raw.mean()) ** 2))),
        bias_after_m=bias_after,
        noise_rms_m=tuple(noise),
        noise_cells=tuple(counts),
        correlation_px=correlation,
        integer_fraction=integer_fraction,
    )


def _weighted_std(values: Sequence[float], weights: Sequence[float]) -> float:
    v, w = np.asarray(values, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    mean = float(np.average(v, weights=w))
    return float(np.sqrt(np.average((v - mean) ** 2, weights=w)))


def combine_fits(
    fits: Sequence[PairFit],
    classes: Sequence[tuple[float, float]] = SLOPE_CLASSES_DEG,
    cell_size_m: float = NOMINAL_CELL_SIZE_M,
) -> DegradationModel:
    """One model from per-pair fits: means weighted by land cells; the spread between pairs
    becomes the per-patch spread (shift, bias, noise scale); noise RMS pooled by slope class."""
    weights = [f.cells for f in fits]
    shifts_x = [f.best[0] for f in fits]
    shifts_y = [f.best[1] for f in fits]
    noise = []
    for index in range(len(classes)):
        counts = np.asarray([f.noise_cells[index] for f in fits], dtype=np.float64)
        variances = np.asarray([f.noise_rms_m[index] ** 2 for f in fits])
        if counts.sum() > 0:
            noise.append(float(np.sqrt(np.average(variances, weights=counts))))
        else:
            noise.append(float(np.sqrt(np.average(variances, weights=weights))))
    # Per-patch noise scale: the spread of each pair's overall noise level around the pool.
    levels = []
    for f in fits:
        counts = np.asarray(f.noise_cells, dtype=np.float64)
        own = float(np.sqrt(np.average(np.asarray(f.noise_rms_m) ** 2, weights=counts + 1e-9)))
        pooled = float(np.sqrt(np.average(np.asarray(noise) ** 2, weights=counts + 1e-9)))
        levels.append(math.log(max(own, 1e-6) / max(pooled, 1e-6)))
    return DegradationModel(
        shift_mean_px=(
            float(np.average(shifts_x, weights=weights)),
            float(np.average(shifts_y, weights=weights)),
        ),
        shift_sigma_px=math.sqrt(
            (_weighted_std(shifts_x, weights) ** 2 + _weighted_std(shifts_y, weights) ** 2) / 2
        ),
        smoothing_sigma_px=float(np.average([f.best[2] for f in fits], weights=weights)),
        bias_m=float(np.average([f.bias_after_m for f in fits], weights=weights)),
        bias_sigma_m=_weighted_std([f.bias_after_m for f in fits], weights),
        slope_classes_deg=tuple(classes),
        noise_rms_m=tuple(noise),
        noise_correlation_px=float(np.average([f.correlation_px for f in fits], weights=weights)),
        noise_scale_sigma=_weighted_std(levels, weights) if len(fits) > 1 else 0.0,
        round_probability=float(np.average([f.integer_fraction for f in fits], weights=weights)),
        highres_cell_size_m=cell_size_m,
        fitted_on=tuple(f.name for f in fits),
    )


def synthetic_statistics(
    model: DegradationModel,
    name: str,
    lowres_m: np.ndarray,
    highres_m: np.ndarray,
    scale: int,
    cell_size_m: tuple[float, float],
    rng: np.random.Generator,
    draws: int = 8,
) -> PairStatistics:
    """:func:`pair_statistics` of ``model.apply`` on the truth, on the real pair's cells,
    averaged (in variance) over ``draws`` draws."""
    stats = []
    for _ in range(draws):
        synthetic = model.apply(highres_m, scale, rng, cell_size_m=cell_size_m).astype(np.float64)
        synthetic[~np.isfinite(lowres_m)] = np.nan
        stats.append(
            pair_statistics(name, synthetic, highres_m, scale, cell_size_m, model.slope_classes_deg)
        )
    first = stats[0]

    def rms_mean(values: Sequence[float]) -> float:
        finite = [v for v in values if math.isfinite(v)]
        return float(np.sqrt(np.mean(np.square(finite)))) if finite else math.nan

    return PairStatistics(
        name=f"{name} (synthetic, {draws} draws)",
        cells=first.cells,
        rms_m=rms_mean([s.rms_m for s in stats]),
        bias_m=float(np.mean([s.bias_m for s in stats])),
        by_slope={
            key: (count, rms_mean([s.by_slope[key][1] for s in stats]))
            for key, (count, _) in first.by_slope.items()
        },
        spectrum_m=tuple(
            rms_mean([s.spectrum_m[i] for s in stats]) for i in range(len(first.spectrum_m))
        ),
    )


def format_statistics(rows: Sequence[PairStatistics]) -> str:
    """A plain-text table: one row per pair (real, then synthetic)."""
    if not rows:
        return ""
    classes = list(rows[0].by_slope)
    bands = [
        f"{lo:g}-{hi:g}" for lo, hi in zip(SPECTRUM_BANDS[:-1], SPECTRUM_BANDS[1:], strict=True)
    ]
    header = (
        ["pair", "cells", "RMS m", "bias m"]
        + [f"RMS {c}" for c in classes]
        + [f"f {b}" for b in bands]
    )
    lines = [header]
    for row in rows:
        lines.append(
            [row.name, str(row.cells), f"{row.rms_m:.2f}", f"{row.bias_m:+.2f}"]
            + [
                "-" if count == 0 else f"{rms:.2f} ({count})"
                for count, rms in (row.by_slope[c] for c in classes)
            ]
            + [f"{v:.2f}" for v in row.spectrum_m]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
            for i, cell in enumerate(line)
        )
        for line in lines
    )


@dataclass
class Calibration:
    """The fitted model, what it found on each pair, and the statistics it matched."""

    model: DegradationModel
    fits: list[PairFit]
    real: list[PairStatistics]
    synthetic: list[PairStatistics]

    def summary(self) -> str:
        lines = ["What a shift or smoothing of the truth explains (bias removed):"]
        for f in self.fits:
            sx, sy, shift_rms = f.shift_only
            sigma, smooth_rms = f.smoothing_only
            bx, by, bs, best_rms = f.best
            shift = f"({sx:+.2f}, {sy:+.2f}) px"
            both = f"({bx:+.2f}, {by:+.2f}) px and sigma {bs:.2f} px"
            lines += [
                f"  {f.name}: {f.cells} land cells",
                f"    product - block mean: RMS {f.rms_m:.2f} m, bias {f.bias_m:+.2f} m "
                f"({f.detrended_rms_m:.2f} m RMS without the bias)",
                f"    best shift {shift}: {shift_rms:.2f} m "
                f"({100 * f.explained(shift_rms):.0f}% of the variance explained)",
                f"    best smoothing sigma {sigma:.2f} px: {smooth_rms:.2f} m "
                f"({100 * f.explained(smooth_rms):.0f}%)",
                f"    both, {both}: {best_rms:.2f} m ({100 * f.explained(best_rms):.0f}%)",
                f"    left: bias {f.bias_after_m:+.2f} m, noise correlation "
                f"{f.correlation_px:.2f} low-res cells; whole metres in "
                f"{100 * f.integer_fraction:.0f}% of the cells",
            ]
        lines += [
            "",
            "Product minus block mean of the truth (land; RMS by slope class, cells in "
            "brackets; spectrum: RMS m per band of cycles per low-res cell):",
        ]
        lines.append(format_statistics([*self.real, *self.synthetic]))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(),
            "fits": [f.to_dict() for f in self.fits],
            "real": [s.to_dict() for s in self.real],
            "synthetic": [s.to_dict() for s in self.synthetic],
        }


def calibrate(
    pairs: Sequence[tuple[str | os.PathLike[str], str | os.PathLike[str]]],
    scale: int = 5,
    *,
    seed: int = 0,
    band: int = 1,
    draws: int = 8,
) -> Calibration:
    """Fit a :class:`DegradationModel` on real (product, fine DEM) pairs, each put on the
    product's sub-grid by :func:`demsr.products.fine_on_product_grid`, and compare the
    statistics of the real pairs with those of synthetic ones the model makes from the same
    truth (``draws`` draws from ``seed``)."""
    from demsr.metrics import cell_sizes_m
    from demsr.products import fine_on_product_grid

    if not pairs:
        raise ValueError("give at least one (product, fine DEM) pair")
    subgrids, fits, sizes = [], [], []
    for product, fine in pairs:
        pair = fine_on_product_grid(fine, product, scale, band=band)
        dx, dy = cell_sizes_m(pair.transform, pair.crs, pair.highres.shape[0])
        size = (float(dx.mean()), float(dy.mean()))
        name = f"{Path(product).name} / {Path(fine).name}"
        log.info("fitting %s", name)
        fits.append(fit_pair(name, pair.lowres, pair.highres, scale, size))
        subgrids.append((name, pair))
        sizes.append(size)
    weights = [f.cells for f in fits]
    nominal = float(np.average([math.sqrt(x * y) for x, y in sizes], weights=weights))
    model = combine_fits(fits, cell_size_m=nominal)
    rng = np.random.default_rng(seed)
    real, synthetic = [], []
    for (name, pair), size in zip(subgrids, sizes, strict=True):
        real.append(pair_statistics(name, pair.lowres, pair.highres, scale, size))
        synthetic.append(
            synthetic_statistics(model, name, pair.lowres, pair.highres, scale, size, rng, draws)
        )
    return Calibration(model=model, fits=fits, real=real, synthetic=synthetic)
