"""Self-ensemble prediction and its calibrated per-cell uncertainty.

The self-ensemble runs the network on the 8 flips/rotations of its input (the symmetries of the
square, :func:`demsr.datasets.dihedral`), maps each output back and averages them: the mean is
usually a little more accurate than one pass, at 8 times the compute. The 8 members also
disagree, and their spread (standard deviation) says something about where the model is
unsure; but it is a weak proxy of the actual error (a few times smaller, and not proportional to
it), so the uncertainty that ``demsr predict --ensemble`` writes is a *calibrated* function of
it and of the input's slope (:class:`UncertaintyCalibration`)::

    sigma = sqrt(spread_coef_m[k] * spread + floor_m[k] ** 2)

where ``k`` is the class of the low-res input's slope (Horn's method on its metric cell sizes,
the edge cells repeated) under each output cell: ``< 2``, ``2-5``, ``5-10``, ``10-20``,
``20-30`` and ``>= 30`` degrees (:data:`SLOPE_EDGES_DEG`). The truth is unknown at prediction
time, so the classes come from the input. Per class, ``spread_coef_m`` and ``floor_m**2`` are
fitted by non-negative least squares of the squared errors of the ensemble mean on ``spread``
and 1 (:func:`fit_calibration`): then the mean of ``sigma**2`` over a class equals the mean
squared error on the data it was fitted on, i.e. ``sigma`` is a one-sigma estimate of the
error, in metres. The squared error grows about linearly with the spread, not with its square
(in the flattest class of a candidate model's validation rasters, the RMSE is about 2 m where
the spread is 0.2 m, 9 m at 1.3 m and 16 m at 3.7 m, i.e. e^2 ~ 70 m x spread): a multiple of
the spread itself overstates the error where the members disagree most.
``scripts/calibrate_uncertainty.py`` fits it on a model's validation rasters and records it in
the checkpoint (:data:`CALIBRATION_KEY`), like the bf16 error (:mod:`demsr.precision`); a
checkpoint without one cannot predict with ``--ensemble``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from demsr.checkpoint import Checkpoint, copy_with_metadata
from demsr.datasets import dihedral, undo_dihedral
from demsr.metrics import slope_deg

ENSEMBLE_SIZE = 8
"""Members of the self-ensemble: the 8 symmetries of the square."""

CALIBRATION_KEY = "ensemble_uncertainty"
"""Checkpoint metadata key of the fitted :class:`UncertaintyCalibration`."""

CALIBRATION_SCRIPT = "scripts/calibrate_uncertainty.py"
"""The script that fits a checkpoint's calibration (named in the error without one)."""

SLOPE_EDGES_DEG: tuple[float, ...] = (2.0, 5.0, 10.0, 20.0, 30.0)
"""Edges of the input-slope classes: < 2, 2-5, 5-10, 10-20, 20-30, >= 30 degrees."""

UNCERTAINTY_NAME = "elevation_uncertainty"
"""The uncertainty's NetCDF/Zarr variable (in a GeoTIFF: band 2, described ``uncertainty``)."""


class CalibrationMissing(ValueError):
    """A checkpoint without a recorded uncertainty calibration, asked for ``--ensemble``."""


def dihedral_members(
    run: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor
) -> Iterator[torch.Tensor]:
    """``run`` on each of the 8 flips/rotations of ``inputs`` (..., h, w), each output mapped
    back onto the input's orientation (..., H, W)."""
    for variant in range(ENSEMBLE_SIZE):
        yield undo_dihedral(run(dihedral(inputs, variant)), variant)


def ensemble_mean_spread(
    run: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation (population, over the 8 members) of :func:`dihedral_members`,
    accumulated in float64 and returned as float32 tensors of the outputs' shape."""
    total: torch.Tensor | None = None
    squares: torch.Tensor | None = None
    for member in dihedral_members(run, inputs):
        values = member.double()
        total = values if total is None else total + values
        squares = values * values if squares is None else squares + values * values
    assert total is not None and squares is not None
    mean = total / ENSEMBLE_SIZE
    variance = torch.clamp(squares / ENSEMBLE_SIZE - mean * mean, min=0.0)
    return mean.float(), torch.sqrt(variance).float()


def input_slope_deg(
    lowres_m: np.ndarray, dx_m: np.ndarray | float, dy_m: np.ndarray | float
) -> np.ndarray:
    """Slope in degrees of a (rows, cols) low-res DEM in metres (finite), every cell included:
    Horn's method on the array with its edge cells repeated once. ``dx_m``/``dy_m`` are the cell
    sizes, scalars or per-row arrays of shape (rows,)."""
    values = np.asarray(lowres_m, dtype=np.float64)
    rows = values.shape[0]
    padded = np.pad(values, 1, mode="edge")
    dx = np.pad(np.broadcast_to(np.asarray(dx_m, np.float64), (rows,)), 1, mode="edge")
    dy = np.pad(np.broadcast_to(np.asarray(dy_m, np.float64), (rows,)), 1, mode="edge")
    return np.asarray(slope_deg(padded, dx, dy)[1:-1, 1:-1])


def slope_class_labels(edges_deg: Iterable[float] = SLOPE_EDGES_DEG) -> list[str]:
    """``<2``, ``2-5``, ..., ``>=30`` for the classes cut at ``edges_deg``."""
    edges = [f"{edge:g}" for edge in edges_deg]
    middle = [f"{a}-{b}" for a, b in zip(edges[:-1], edges[1:], strict=True)]
    return [f"<{edges[0]}", *middle, f">={edges[-1]}"]


def slope_classes(slope_deg_values: np.ndarray, edges_deg: Iterable[float]) -> np.ndarray:
    """Class index (0 .. len(edges)) of each slope: the number of edges at or below it."""
    return np.searchsorted(np.asarray(tuple(edges_deg)), slope_deg_values, side="right")


@dataclass(frozen=True)
class UncertaintyCalibration:
    """``sigma = sqrt(spread_coef_m[k] * spread + floor_m[k]**2)`` per input-slope class
    ``k`` (see the module's docstring); ``fitted_on`` names the rasters, ``cells`` counts the
    cells of each class that the fit used."""

    slope_edges_deg: tuple[float, ...]
    spread_coef_m: tuple[float, ...]
    floor_m: tuple[float, ...]
    fitted_on: tuple[str, ...] = ()
    cells: tuple[int, ...] = ()
    method: str = field(
        default="nnls of squared ensemble-mean errors on spread and 1 per input-slope class"
    )

    def __post_init__(self) -> None:
        classes = len(self.slope_edges_deg) + 1
        if len(self.spread_coef_m) != classes or len(self.floor_m) != classes:
            raise ValueError(
                f"uncertainty calibration: {classes} slope classes need {classes} spread "
                f"coefficients and floors, got {len(self.spread_coef_m)} and {len(self.floor_m)}"
            )
        values = (*self.slope_edges_deg, *self.spread_coef_m, *self.floor_m)
        if not all(math.isfinite(v) for v in values) or min(values) < 0:
            raise ValueError("uncertainty calibration: values must be finite and >= 0")
        if list(self.slope_edges_deg) != sorted(self.slope_edges_deg):
            raise ValueError("uncertainty calibration: slope edges must increase")

    def sigma_m(self, spread_m: np.ndarray, slope_deg_values: np.ndarray) -> np.ndarray:
        """The calibrated uncertainty (float32 metres) of cells with ensemble spread
        ``spread_m`` and input slope ``slope_deg_values`` (same shape; NaN stays NaN)."""
        index = slope_classes(slope_deg_values, self.slope_edges_deg)
        coef = np.asarray(self.spread_coef_m, np.float64)[index]
        floor = np.asarray(self.floor_m, np.float64)[index]
        spread = np.asarray(spread_m, np.float64)
        return np.sqrt(coef * spread + floor**2).astype(np.float32)

    def describe(self) -> str:
        """One line for a product's tags."""
        terms = ", ".join(
            f"{label}: a {coef:.3g} m, b {floor:.3g} m"
            for label, coef, floor in zip(
                slope_class_labels(self.slope_edges_deg),
                self.spread_coef_m,
                self.floor_m,
                strict=True,
            )
        )
        where = ", ".join(self.fitted_on) or "unnamed rasters"
        return (
            "sqrt(a_k * spread + b_k^2) metres, spread = std of the 8 flips/rotations, k = class "
            f"of the input's slope in degrees ({terms}); least squares on the squared errors of "
            f"{where}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "slope_edges_deg": list(self.slope_edges_deg),
            "spread_coef_m": list(self.spread_coef_m),
            "floor_m": list(self.floor_m),
            "fitted_on": list(self.fitted_on),
            "cells": list(self.cells),
            "method": self.method,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> UncertaintyCalibration:
        try:
            return cls(
                slope_edges_deg=tuple(float(v) for v in values["slope_edges_deg"]),
                spread_coef_m=tuple(float(v) for v in values["spread_coef_m"]),
                floor_m=tuple(float(v) for v in values["floor_m"]),
                fitted_on=tuple(str(v) for v in values.get("fitted_on", ())),
                cells=tuple(int(v) for v in values.get("cells", ())),
                method=str(values.get("method", "")),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"uncertainty calibration: missing or bad entry ({exc})") from None


def recorded_calibration(checkpoint: Checkpoint) -> UncertaintyCalibration:
    """The calibration recorded in ``checkpoint``; :class:`CalibrationMissing` (one line naming
    the script to run) when it has none, ValueError when it is malformed."""
    record = checkpoint.metadata.get(CALIBRATION_KEY)
    if record is None:
        name = checkpoint.path or "this checkpoint"
        raise CalibrationMissing(
            f"{name}: no ensemble uncertainty calibration recorded; run python "
            f"{CALIBRATION_SCRIPT} CHECKPOINT -o CALIBRATED.safetensors and predict with that"
        )
    if not isinstance(record, dict):
        raise ValueError(f"{checkpoint.path}: malformed {CALIBRATION_KEY} metadata")
    return UncertaintyCalibration.from_dict(record)


@dataclass
class CalibrationSamples:
    """Sums per input-slope class that :func:`fit_calibration` needs, accumulated raster by
    raster (cells with a truth only): the normal equations of squared error on (spread, 1)."""

    slope_edges_deg: tuple[float, ...] = SLOPE_EDGES_DEG
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        classes = len(self.slope_edges_deg) + 1
        self.count = np.zeros(classes)
        self.sum_s = np.zeros(classes)
        self.sum_s2 = np.zeros(classes)
        self.sum_e2 = np.zeros(classes)
        self.sum_e2s = np.zeros(classes)

    def add(
        self, name: str, error_m: np.ndarray, spread_m: np.ndarray, slope_deg_values: np.ndarray
    ) -> None:
        """Add one raster's cells: ensemble-mean error, spread and input slope (NaN: skipped)."""
        valid = np.isfinite(error_m) & np.isfinite(spread_m) & np.isfinite(slope_deg_values)
        index = slope_classes(slope_deg_values[valid], self.slope_edges_deg)
        e2 = np.asarray(error_m, np.float64)[valid] ** 2
        spread = np.asarray(spread_m, np.float64)[valid]
        classes = len(self.count)
        self.count += np.bincount(index, minlength=classes)
        self.sum_s += np.bincount(index, weights=spread, minlength=classes)
        self.sum_s2 += np.bincount(index, weights=spread * spread, minlength=classes)
        self.sum_e2 += np.bincount(index, weights=e2, minlength=classes)
        self.sum_e2s += np.bincount(index, weights=e2 * spread, minlength=classes)
        self.names.append(name)


def _nnls_2(n: float, s: float, s2: float, e2: float, e2s: float) -> tuple[float, float]:
    """Least squares of e^2 on (a * s + c) with a, c >= 0, from the sums over the cells (n, s,
    s^2, e^2, e^2 * s)."""
    determinant = n * s2 - s * s
    if determinant > 0:
        a = (n * e2s - s * e2) / determinant
        c = (e2 - a * s) / n
        if a >= 0 and c >= 0:
            return a, c
    # One of the two is 0 at the constrained optimum: the better of the two one-term fits.
    only_c = (0.0, e2 / n)
    only_a = (max(e2s / s2, 0.0), 0.0) if s2 > 0 else only_c

    def cost(a: float, c: float) -> float:  # sum (e^2 - a s - c)^2 less the constant sum e^4
        return a * a * s2 + c * c * n + 2 * a * c * s - 2 * a * e2s - 2 * c * e2

    return min((only_c, only_a), key=lambda ac: cost(*ac))


def fit_calibration(samples: CalibrationSamples, min_cells: int = 20_000) -> UncertaintyCalibration:
    """The calibration that fits ``samples`` (see the module's docstring). A class with fewer
    than ``min_cells`` cells takes the fit of the nearest lower class that has enough (or of
    the nearest class above for the first): too few cells say nothing about it."""
    classes = len(samples.count)
    fitted: list[tuple[float, float] | None] = []
    for k in range(classes):
        if samples.count[k] < min_cells:
            fitted.append(None)
            continue
        fitted.append(
            _nnls_2(
                samples.count[k],
                samples.sum_s[k],
                samples.sum_s2[k],
                samples.sum_e2[k],
                samples.sum_e2s[k],
            )
        )
    if all(fit is None for fit in fitted):
        raise ValueError(
            f"too few cells to fit an uncertainty calibration ({int(samples.count.sum())})"
        )
    filled: list[tuple[float, float]] = []
    for k in range(classes):
        fit = fitted[k]
        if fit is None:
            lower = [f for f in fitted[:k] if f is not None]
            fit = lower[-1] if lower else next(f for f in fitted[k:] if f is not None)
        filled.append(fit)
    return UncertaintyCalibration(
        slope_edges_deg=tuple(samples.slope_edges_deg),
        spread_coef_m=tuple(float(a) for a, _ in filled),
        floor_m=tuple(math.sqrt(float(c)) for _, c in filled),
        fitted_on=tuple(samples.names),
        cells=tuple(int(n) for n in samples.count),
    )


def record_calibration(
    checkpoint: str | os.PathLike[str],
    output: str | os.PathLike[str],
    calibration: UncertaintyCalibration,
) -> Path:
    """Write ``checkpoint`` (weights and metadata unchanged, no optimizer state) to ``output``
    with ``calibration`` recorded under :data:`CALIBRATION_KEY`."""
    return copy_with_metadata(checkpoint, output, {CALIBRATION_KEY: calibration.to_dict()})
