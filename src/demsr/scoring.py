"""Scores of predictions against the truth (:func:`score`) and their tables
(:class:`Evaluation`).

All methods are scored on the same cells: those where the truth and every method have a value.
Metrics are in metres (see :mod:`demsr.metrics`): RMSE, MAE, bias, max absolute error, PSNR and
SSIM (both with the truth's max - min over the scored cells as data range, reported), slope RMSE
and aspect error (Horn's method on true metric cell sizes). Breakdowns: land (truth > 0 m) and
sea (truth <= 0 m; SRTM writes the sea as 0 m), and classes of the truth's slope. Against a real
coarse product, cells within 2 product cells of its 0 m line are scored apart as coast (and left
out of land and sea).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from demsr.evaluation_inputs import EvaluationInputs
from demsr.io import atomic_path
from demsr.metrics import (
    ASPECT_MIN_SLOPE_DEG,
    SLOPE_CLASSES_DEG,
    angle_difference_deg,
    psnr_from_rmse,
    root_mean_square,
    slope_aspect_deg,
    ssim,
)


@dataclass
class Evaluation:
    """Metrics of each method (``model`` and baselines) on one set of inputs.

    ``methods[name]`` holds ``rmse``, ``mae``, ``bias``, ``max_abs_error`` (metres), ``psnr_db``,
    ``ssim``, ``slope_rmse_deg`` and ``aspect_mae_deg`` (None when cell sizes are unknown).
    ``breakdown[group][name]`` holds ``cells``, ``rmse``, ``mae``, ``bias`` and
    ``slope_rmse_deg`` for the groups ``land``, ``coast`` (inputs with a coast mask), ``sea`` and
    ``slope a-b deg`` (truth's slope).
    """

    source: str
    kind: str
    images: int
    scale: int
    units: str
    cells: int
    data_range_m: float
    methods: dict[str, dict[str, float | None]] = field(default_factory=dict)
    breakdown: dict[str, dict[str, dict[str, float | None]]] = field(default_factory=dict)
    checkpoint: str | None = None
    self_ensemble: bool = False

    @property
    def pairs(self) -> int:
        return self.images

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "images": self.images,
            "scale": self.scale,
            "units": self.units,
            "cells": self.cells,
            "psnr_ssim_data_range_m": self.data_range_m,
            "checkpoint": self.checkpoint,
            "self_ensemble": self.self_ensemble,
            "aspect_min_slope_deg": ASPECT_MIN_SLOPE_DEG,
            "methods": self.methods,
            "breakdown": self.breakdown,
        }

    def tables(self) -> list[tuple[str, list[str], list[list[str]]]]:
        """The results as (title, header, rows) tables of formatted numbers: all metrics per
        method, then the RMSE of each method per group (land, sea, slope classes)."""
        header = ["method", "RMSE m", "MAE m", "bias m", "max abs err m", "PSNR dB", "SSIM"]
        header += ["slope RMSE deg", "aspect MAE deg"]
        columns = [
            ("rmse", 3),
            ("mae", 3),
            ("bias", 3),
            ("max_abs_error", 2),
            ("psnr_db", 2),
            ("ssim", 4),
            ("slope_rmse_deg", 3),
            ("aspect_mae_deg", 2),
        ]
        rows = [
            [name] + [_number(values.get(key), digits) for key, digits in columns]
            for name, values in self.methods.items()
        ]
        tables = [("Metrics", header, rows)]
        if self.breakdown:
            names = list(self.methods)
            header = ["group", "cells"] + [f"{name} RMSE m" for name in names]
            rows = []
            for group, by_method in self.breakdown.items():
                cells = next(iter(by_method.values()))["cells"]
                rows.append(
                    [group, f"{cells:,}"] + [_number(by_method[name]["rmse"], 3) for name in names]
                )
            tables.append(("RMSE by group", header, rows))
        return tables

    def caption(self) -> str:
        """One line saying what was scored and how."""
        ensemble = ", model with x8 self-ensemble" if self.self_ensemble else ""
        return (
            f"{self.source}: {self.images} {'pairs' if self.kind == 'pairs' else 'raster(s)'}, "
            f"x{self.scale}, {self.cells:,} cells scored, errors in {self.units}; PSNR/SSIM data "
            f"range {self.data_range_m:.1f} m (truth max - min); aspect where the truth's slope "
            f">= {ASPECT_MIN_SLOPE_DEG:g} deg{ensemble}"
        )

    def table(self) -> str:
        """Plain-text tables for the terminal."""
        text = [self.caption()]
        for _title, header, rows in self.tables():
            text += ["", _plain_table(header, rows)]
        return "\n".join(text)

    def markdown(self) -> str:
        """The same tables as Markdown."""
        text = [f"*{self.caption()}*"]
        for title, header, rows in self.tables():
            text += ["", f"{title}:", "", _markdown_table(header, rows)]
        return "\n".join(text) + "\n"

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return Path(path)

    def write_markdown(self, path: str | os.PathLike[str]) -> Path:
        with atomic_path(path) as tmp:
            tmp.write_text(self.markdown())
        return Path(path)


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _plain_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _slopes(values: np.ndarray, inputs: EvaluationInputs) -> tuple[np.ndarray, np.ndarray]:
    """Slope and aspect (degrees) of (N, H, W) values on the inputs' cell sizes."""
    assert inputs.dx_m is not None and inputs.dy_m is not None
    slopes = np.empty(values.shape)
    aspects = np.empty(values.shape)
    for index, image in enumerate(values):
        slopes[index], aspects[index] = slope_aspect_deg(
            image, inputs.dx_m[index], inputs.dy_m[index]
        )
    return slopes, aspects


def _errors_summary(errors: np.ndarray) -> dict[str, float | None]:
    if errors.size == 0:
        return {"rmse": None, "mae": None, "bias": None}
    return {
        "rmse": root_mean_square(errors),
        "mae": float(np.mean(np.abs(errors))),
        "bias": float(np.mean(errors)),
    }


def score(
    inputs: EvaluationInputs,
    predictions: dict[str, np.ndarray],
    checkpoint: str | None = None,
    self_ensemble: bool = False,
) -> Evaluation:
    """Metrics of each named (N, H, W) prediction against ``inputs.highres``.

    Every method is scored on the same cells: where the truth and all predictions are finite.
    ``checkpoint`` and ``self_ensemble`` (the model averaged its 8 flips/rotations) are recorded.
    """
    truth = inputs.highres.astype(np.float64)
    valid = np.isfinite(truth)
    for name, values in predictions.items():
        if values.shape != truth.shape:
            raise ValueError(f"{name}: prediction {values.shape} vs truth {truth.shape}")
        valid &= np.isfinite(values)
    if not valid.any():
        raise ValueError(f"{inputs.source}: no cell has a value in the truth and every prediction")
    truth = np.where(valid, truth, np.nan)
    data_range = float(np.nanmax(truth) - np.nanmin(truth))
    result = Evaluation(
        source=inputs.source,
        kind=inputs.kind,
        images=len(truth),
        scale=inputs.scale,
        units=inputs.units,
        cells=int(valid.sum()),
        data_range_m=data_range,
        checkpoint=checkpoint,
        self_ensemble=self_ensemble,
    )
    has_slope = inputs.dx_m is not None and inputs.units == "m"
    inland = valid if inputs.coast is None else valid & ~inputs.coast
    groups: dict[str, np.ndarray] = {"land": inland & (truth > 0)}
    if inputs.coast is not None:
        groups["coast"] = valid & inputs.coast
    groups["sea"] = inland & (truth <= 0)
    if has_slope:
        truth_slope, truth_aspect = _slopes(truth, inputs)
        for lower, upper in SLOPE_CLASSES_DEG:
            groups[f"slope {lower:g}-{upper:g} deg"] = (
                valid & (truth_slope >= lower) & (truth_slope < upper)
            )
    for name, values in predictions.items():
        values = np.where(valid, values, np.nan)
        errors = values - truth
        valid_errors = errors[valid]
        rmse_m = root_mean_square(valid_errors)
        metrics: dict[str, float | None] = {
            **_errors_summary(valid_errors),
            "max_abs_error": float(np.max(np.abs(valid_errors))),
            "psnr_db": psnr_from_rmse(rmse_m, data_range) if data_range > 0 else None,
            "ssim": _ssim_or_none(values, truth, data_range),
            "slope_rmse_deg": None,
            "aspect_mae_deg": None,
        }
        slope_error: np.ndarray | None = None
        slope_finite: np.ndarray | None = None
        if has_slope:
            slope, aspect = _slopes(values, inputs)
            slope_error = slope - truth_slope
            slope_finite = np.isfinite(slope_error)
            if slope_finite.any():
                metrics["slope_rmse_deg"] = root_mean_square(slope_error[slope_finite])
            steep = slope_finite & (truth_slope >= ASPECT_MIN_SLOPE_DEG)
            if steep.any():
                metrics["aspect_mae_deg"] = float(
                    np.mean(angle_difference_deg(aspect[steep], truth_aspect[steep]))
                )
        result.methods[name] = metrics
        for group, mask in groups.items():
            if not mask.any():
                continue
            entry: dict[str, float | None] = {
                "cells": int(mask.sum()),
                **_errors_summary(errors[mask]),
            }
            if slope_error is not None and slope_finite is not None:
                finite = mask & slope_finite
                entry["slope_rmse_deg"] = (
                    root_mean_square(slope_error[finite]) if finite.any() else None
                )
            result.breakdown.setdefault(group, {})[name] = entry
    return result


def _ssim_or_none(values: np.ndarray, truth: np.ndarray, data_range: float) -> float | None:
    if data_range <= 0:
        return None
    try:
        return ssim(values, truth, data_range)
    except ValueError:  # no window fits the valid cells
        return None
