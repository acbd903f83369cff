"""Which precision a model runs in, and the measured bf16 error that allows bf16.

bf16 keeps 8 bits of mantissa. demsr keeps elevations in float32 and runs only the residual
blocks in bf16 (:mod:`demsr.model`), so for the shipped model bf16 is within 0.2 m of float32;
but the error depends on the model's weights and its elevation scaling (a model trained with the
published 0..1 scaling of -11000..9000 m would be off by metres). So ``--precision auto`` picks
bf16 only for a model whose bf16 error has been measured on real DEMs and recorded in its
checkpoint (``bf16_error``: :func:`measure_bf16_error`, :func:`record_bf16_error`), and only on a
device that computes bf16 natively; every other model runs in float32.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from demsr.checkpoint import Checkpoint, as_checkpoint, copy_with_metadata
from demsr.layers import ring_padding
from demsr.model import bf16_supported, check_precision

log = logging.getLogger(__name__)

BF16_ERROR_KEY = "bf16_error"
"""Checkpoint metadata key of the measured bf16 error (see :func:`measure_bf16_error`)."""


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run uses (``fp32`` or ``bf16``), why, and the model's recorded bf16
    error bound in metres (None: never measured)."""

    precision: str
    reason: str
    bf16_bound_m: float | None

    def describe(self) -> str:
        bound = (
            "no bf16 error recorded for this model"
            if self.bf16_bound_m is None
            else f"recorded bf16 error of this model <= {self.bf16_bound_m:.3f} m"
        )
        return f"precision {self.precision} ({self.reason}; {bound})"

    def tags(self) -> dict[str, str]:
        """What the output's tags say of it."""
        bound = "not measured" if self.bf16_bound_m is None else f"{self.bf16_bound_m:.4f}"
        return {"precision": self.precision, "bf16_error_bound_m": bound}


def recorded_bf16_bound(checkpoint: Checkpoint) -> float | None:
    """The largest bf16 error (metres) recorded in ``checkpoint``; None when none is."""
    record = checkpoint.metadata.get(BF16_ERROR_KEY)
    if not isinstance(record, dict):
        return None
    value = record.get("max_abs_m")
    return float(value) if isinstance(value, int | float) else None


def choose_precision(
    requested: str, device: torch.device, bf16_bound_m: float | None
) -> PrecisionChoice:
    """``auto``: bf16 where ``device`` computes it natively and the model has a recorded bf16
    error (``bf16_bound_m``), else fp32. ``fp32`` and ``bf16`` are kept, with a warning for
    bf16 on a model without a recorded error or on a device that emulates it."""
    if requested == "auto":
        if not bf16_supported(device):
            return PrecisionChoice("fp32", f"auto: {device.type} has no native bf16", bf16_bound_m)
        if bf16_bound_m is None:
            return PrecisionChoice("fp32", "auto: bf16 not measured for this model", None)
        return PrecisionChoice("bf16", f"auto: native bf16 on {device.type}", bf16_bound_m)
    check_precision(requested)
    if requested == "bf16":
        if not bf16_supported(device):
            log.warning("%s has no native bf16: it is emulated, usually slower than fp32", device)
        if bf16_bound_m is None:
            log.warning(
                "bf16 error of this model was never measured: its output may be off by more "
                "than float32's (see scripts/record_bf16_error.py)"
            )
    return PrecisionChoice(requested, "as asked", bf16_bound_m)


def measure_bf16_error(
    checkpoint: Checkpoint | str | os.PathLike[str],
    dems: Sequence[str | os.PathLike[str]],
    device: str = "cpu",
    max_cells: int = 400,
) -> dict[str, Any]:
    """The model's bf16 output against its float32 output on real DEMs: each DEM's top-left
    ``max_cells`` square is block-averaged by the model's scale (a coarse input), super-resolved
    in both precisions, and compared (bf16 with replicate padding applied both ways,
    :func:`demsr.layers.ring_padding`: each figure is the worse way's); returns ``max_abs_m``
    (over every DEM), ``rms_m`` (pooled), the DEMs' names and per-DEM figures, the torch
    version and device."""
    from demsr.engine import predict_array
    from demsr.io import read_raster
    from demsr.prepare import crop_to_blocks, degrade

    model = as_checkpoint(checkpoint)
    torch_device = torch.device(device)
    resolver = model.build_resolver(torch_device)
    modes = ("never", "always")  # both ways of padding (ring_padding): bf16 rounds them apart
    per_dem: dict[str, dict[str, float]] = {}
    worst, squares, cells = 0.0, dict.fromkeys(modes, 0.0), 0
    for path in dems:
        raster = read_raster(path)
        data = raster.data[:max_cells, :max_cells]
        lowres = degrade(crop_to_blocks(data, model.scale, raster.path), model.scale)
        fp32 = predict_array(resolver, lowres, torch_device, precision="fp32")
        valid = np.isfinite(fp32)
        if not valid.any():
            continue
        figures = {"max_abs_m": 0.0, "rms_m": 0.0}
        for mode in modes:
            with ring_padding(mode):
                bf16 = predict_array(resolver, lowres, torch_device, precision="bf16")
            difference = np.abs(bf16 - fp32)[valid].astype(np.float64)
            if not np.isfinite(difference).all():  # never a bound that hides a failed cell
                raise ValueError(
                    f"{path}: the bf16 output is not finite where the float32 output is"
                )
            squares[mode] += float(np.sum(difference**2))
            figures["max_abs_m"] = max(figures["max_abs_m"], float(difference.max()))
            figures["rms_m"] = max(figures["rms_m"], float(np.sqrt(np.mean(difference**2))))
        per_dem[Path(path).name] = {key: round(value, 4) for key, value in figures.items()}
        worst = max(worst, figures["max_abs_m"])
        cells += int(valid.sum())
    if cells == 0:
        raise ValueError("no valid cells in the DEMs given to measure the bf16 error on")
    return {
        "max_abs_m": round(worst, 4),
        "rms_m": round(max(float(np.sqrt(squares[mode] / cells)) for mode in modes), 4),
        "dems": per_dem,
        "torch": torch.__version__,
        "device": torch_device.type,
    }


def record_bf16_error(
    checkpoint: str | os.PathLike[str],
    output: str | os.PathLike[str],
    measured: dict[str, Any],
) -> Path:
    """Write ``checkpoint`` (weights and metadata, no optimizer state) to ``output`` with the
    ``measured`` bf16 error recorded under :data:`BF16_ERROR_KEY`."""
    return copy_with_metadata(checkpoint, output, {BF16_ERROR_KEY: measured})
