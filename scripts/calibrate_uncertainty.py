"""Fit a model's ensemble uncertainty on its validation rasters, record it, and test it held out.

``demsr predict --ensemble`` writes, beside the mean of the model's 8 flips/rotations, a
per-cell uncertainty ``sqrt(a_k * spread + b_k^2)`` whose coefficients per class of input slope
are fitted here (:mod:`demsr.ensemble`) and recorded in the checkpoint's header; a checkpoint
without them cannot predict with ``--ensemble``. Each raster (a 3" tile) is degraded x5 by
block mean (a 240 x 240 input for a 1200 x 1200 tile) and super-resolved back with
:func:`demsr.engine.predict_array`, once per flip/rotation, as one network tile, in float32.

1. Fit on the model's VALIDATION rasters, never on held-out ones: those its checkpoint's
   training config names (``data.valid_rasters``, ``data.heldout``: configs/lite-windows.yaml),
   else :data:`VALIDATION` and :data:`HELD_OUT` (the same lists), else ``--validation`` and
   ``--held-out``.
2. Write CHECKPOINT with the fit to OUTPUT (weights and the rest of the header unchanged).
3. Score on the held-out rasters: per slope class (of the input's slope, which
   the calibration uses, and of the truth's 3" slope), the RMSE of the ensemble mean against the
   RMS of the uncertainty; written as markdown with ``--report``.

    python scripts/calibrate_uncertainty.py CHECKPOINT -o OUTPUT.safetensors \
        --report benchmarks/ensemble_uncertainty.md
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from affine import Affine

from demsr.checkpoint import Checkpoint, as_checkpoint, checkpoint_sha256
from demsr.engine import predict_array, upscale_mask
from demsr.ensemble import (
    SLOPE_EDGES_DEG,
    CalibrationSamples,
    UncertaintyCalibration,
    ensemble_mean_spread,
    fit_calibration,
    input_slope_deg,
    record_calibration,
    slope_class_labels,
    slope_classes,
)
from demsr.evaluation_inputs import inputs_from_raster
from demsr.io import fill_nearest
from demsr.metrics import cell_sizes_m, slope_deg

REPO = Path(__file__).resolve().parents[1]
# The split of configs/lite-windows.yaml, for checkpoints whose header does not record their
# training data's split (a fine-tuned model records the fine-tuning's config instead).
VALIDATION = ["viewfinder_N38W119", "srtm3_N31E035", "srtm3_N43E006", "srtm3_N53W004"]
HELD_OUT = [
    "srtm3_N56W006",
    "srtm3_N27E086",
    "srtm3_N00E010",
    "srtm3_N37E015",
    "viewfinder_N36W117",
    "srtm3_S29W072",
    "srtm3_N53W003",
    "srtm3_N13E121",
    "srtm3_N37W004",
    "srtm3_N42E012",
    "srtm3_N54W003",
    "srtm3_N14E121",
    "srtm3_N49W123",
]
TARGET = 0.2  # RMS of the uncertainty within 20% of the RMSE, in every class


@dataclass
class TileResult:
    """One raster's ensemble: errors of the mean and of one pass, spread, slopes (high-res)."""

    name: str
    error_m: np.ndarray
    single_error_m: np.ndarray
    spread_m: np.ndarray
    input_slope_deg: np.ndarray
    truth_slope_deg: np.ndarray


def predict_tile(checkpoint: Checkpoint, path: Path, device: str) -> TileResult:
    """The 8-member ensemble of one raster's block mean, against the raster."""
    scale = checkpoint.scale
    inputs = inputs_from_raster(path, scale)
    lowres, truth = inputs.lowres[0], inputs.highres[0]
    resolver = checkpoint.build_resolver(device)
    members: list[np.ndarray] = []

    def run(view: torch.Tensor) -> torch.Tensor:
        values = view.numpy()
        output = predict_array(
            resolver, values, device, tile_px=max(values.shape), precision="fp32"
        )
        members.append(output)
        return torch.from_numpy(output)

    mean, spread = ensemble_mean_spread(run, torch.from_numpy(np.ascontiguousarray(lowres)))
    assert inputs.transform is not None
    lowres_transform = inputs.transform * Affine.scale(scale)
    dx_m, dy_m = cell_sizes_m(lowres_transform, inputs.crs, lowres.shape[0])
    slope = upscale_mask(input_slope_deg(fill_nearest(lowres), dx_m, dy_m), scale)
    assert inputs.dx_m is not None and inputs.dy_m is not None
    return TileResult(
        name=path.stem,
        error_m=mean.numpy() - truth,
        single_error_m=members[0] - truth,  # variant 0 is the input as it is
        spread_m=spread.numpy(),
        input_slope_deg=slope,
        truth_slope_deg=slope_deg(truth, inputs.dx_m[0], inputs.dy_m[0]),
    )


@dataclass
class ClassSums:
    """Sums of squares per slope class, for the held-out table."""

    classes: int = len(SLOPE_EDGES_DEG) + 1
    cells: np.ndarray = field(init=False)
    error2: np.ndarray = field(init=False)
    sigma2: np.ndarray = field(init=False)
    covered: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.cells, self.error2, self.sigma2, self.covered = (
            np.zeros(self.classes) for _ in "1234"
        )

    def add(self, error_m: np.ndarray, sigma_m: np.ndarray, slope: np.ndarray) -> None:
        valid = np.isfinite(error_m) & np.isfinite(sigma_m) & np.isfinite(slope)
        index = slope_classes(slope[valid], SLOPE_EDGES_DEG)
        error = error_m[valid].astype(np.float64)
        sigma = sigma_m[valid].astype(np.float64)
        self.cells += np.bincount(index, minlength=self.classes)
        self.error2 += np.bincount(index, weights=error**2, minlength=self.classes)
        self.sigma2 += np.bincount(index, weights=sigma**2, minlength=self.classes)
        self.covered += np.bincount(
            index, weights=(np.abs(error) <= sigma).astype(np.float64), minlength=self.classes
        )

    def rows(self) -> list[dict[str, float | int | str]]:
        rows: list[dict[str, float | int | str]] = []
        labels = [*slope_class_labels(SLOPE_EDGES_DEG), "all"]
        sums = [
            (self.cells[k], self.error2[k], self.sigma2[k], self.covered[k])
            for k in range(self.classes)
        ]
        sums.append((self.cells.sum(), self.error2.sum(), self.sigma2.sum(), self.covered.sum()))
        for label, (cells, error2, sigma2, covered) in zip(labels, sums, strict=True):
            if cells == 0:
                continue
            rmse, rms_sigma = math.sqrt(error2 / cells), math.sqrt(sigma2 / cells)
            rows.append(
                {
                    "class": label,
                    "cells": int(cells),
                    "rmse_m": rmse,
                    "rms_uncertainty_m": rms_sigma,
                    "ratio": rms_sigma / rmse if rmse > 0 else float("nan"),
                    "within_one_sigma": covered / cells,
                }
            )
        return rows


def _rms(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)].astype(np.float64)
    return math.sqrt(float(np.mean(finite**2)))


def calibrate(
    checkpoint_path: str,
    output: Path,
    data: Path,
    device: str,
    validation: list[str],
    held_out: list[str],
    log: Callable[[str], None] = print,
) -> dict:
    """Fit on ``validation``, record, and score on ``held_out`` (raster names in ``data``);
    returns everything the report shows."""
    overlap = sorted(set(validation) & set(held_out))
    if overlap:
        raise SystemExit(f"error: rasters both fitted on and held out: {', '.join(overlap)}")
    checkpoint = as_checkpoint(checkpoint_path)
    samples = CalibrationSamples()
    validation_rows = []
    for name in validation:
        started = time.perf_counter()
        tile = predict_tile(checkpoint, data / f"{name}.tif", device)
        samples.add(name, tile.error_m, tile.spread_m, tile.input_slope_deg)
        validation_rows.append(_raster_row(tile, None))
        log(f"validation {name}: {time.perf_counter() - started:.0f} s")
    calibration = fit_calibration(samples)
    written = record_calibration(checkpoint_path, output, calibration)
    log(f"wrote {written}")
    by_input, by_truth = ClassSums(), ClassSums()
    held_rows = []
    for name in held_out:
        started = time.perf_counter()
        tile = predict_tile(checkpoint, data / f"{name}.tif", device)
        sigma = calibration.sigma_m(tile.spread_m, tile.input_slope_deg)
        sigma[~np.isfinite(tile.error_m)] = np.nan
        by_input.add(tile.error_m, sigma, tile.input_slope_deg)
        by_truth.add(tile.error_m, sigma, tile.truth_slope_deg)
        held_rows.append(_raster_row(tile, sigma))
        log(f"held-out {name}: {time.perf_counter() - started:.0f} s")
    return {
        "checkpoint": str(checkpoint_path),
        "checkpoint_sha256": checkpoint_sha256(checkpoint),
        "calibrated": str(output),
        "calibration": calibration.to_dict(),
        "validation": validation,
        "held_out": held_out,
        "by_input_slope": by_input.rows(),
        "by_truth_slope": by_truth.rows(),
        "validation_rasters": validation_rows,
        "held_out_rasters": held_rows,
    }


def recorded_split(checkpoint: Checkpoint) -> tuple[list[str], list[str]] | None:
    """(validation, held-out) raster names of the checkpoint's own training config, if any."""
    training = checkpoint.metadata.get("training")
    data = training.get("data") if isinstance(training, dict) else None
    if not isinstance(data, dict):
        return None
    validation, held_out = data.get("valid_rasters"), data.get("heldout")
    if not validation or not held_out:
        return None
    return [str(name) for name in validation], [str(name) for name in held_out]


def _raster_row(tile: TileResult, sigma: np.ndarray | None) -> dict:
    row = {
        "raster": tile.name,
        "cells": int(np.isfinite(tile.error_m).sum()),
        "rmse_single_m": _rms(tile.single_error_m),
        "rmse_ensemble_m": _rms(tile.error_m),
        "rms_spread_m": _rms(tile.spread_m),
    }
    if sigma is not None:
        row["rms_uncertainty_m"] = _rms(sigma)
    return row


def markdown(results: dict, command: str) -> str:
    calibration = UncertaintyCalibration.from_dict(results["calibration"])
    labels = slope_class_labels(calibration.slope_edges_deg)
    lines = [
        "# Ensemble uncertainty: calibration and held-out check",
        "",
        f"Checkpoint `{Path(results['checkpoint']).name}` (SHA-256 "
        f"`{results['checkpoint_sha256'][:16]}...`), made by",
        "",
        f"    {command}",
        "",
        "`demsr predict --ensemble` writes the mean of the model's 8 flips/rotations and a "
        "per-cell uncertainty `sigma = sqrt(a_k * spread + b_k^2)` (metres), where `spread` is "
        "the standard deviation of the 8 members and `k` the class of the low-res input's slope "
        "(Horn's method at 15\", known at prediction time). `a_k` and `b_k^2` are fitted by "
        "non-negative least squares of the ensemble mean's squared errors on the model's "
        f"validation rasters ({', '.join(results['validation'])}); every raster is degraded "
        "x5 by block mean (240 x 240 cells in, the 1200 x 1200 tile out), all cells scored "
        "(SRTM's sea at 0 m included).",
        "",
        "| input slope class (deg) | cells fitted | a_k (m) | b_k (m) |",
        "|---|---:|---:|---:|",
    ]
    for label, cells, coef, floor in zip(
        labels, calibration.cells, calibration.spread_coef_m, calibration.floor_m, strict=True
    ):
        lines.append(f"| {label} | {cells:,} | {coef:.2f} | {floor:.2f} |")
    lines += [
        "",
        "Classes with fewer than 20,000 fitted cells take the coefficients of the class below.",
        "",
        f"## Held out ({len(results['held_out'])} rasters, never used to fit)",
        "",
        f"{', '.join(results['held_out'])}. Target: the RMS of the uncertainty within "
        f"{TARGET:.0%} of the RMSE of the ensemble mean in every class (ratio 0.8 to 1.2). "
        "`|error| <= sigma`: the share of cells whose error the uncertainty covers (68% for "
        "a Gaussian error).",
        "",
    ]
    for key, title in (
        ("by_input_slope", "By the input's slope (15\", the classes the calibration uses)"),
        ("by_truth_slope", "By the truth's slope (3\", unknown at prediction time)"),
    ):
        lines += [
            f"### {title}",
            "",
            "| slope class (deg) | cells | RMSE of ensemble mean (m) | RMS of uncertainty (m) | "
            "ratio | within 20% | \\|error\\| <= sigma |",
            "|---|---:|---:|---:|---:|:---:|---:|",
        ]
        for row in results[key]:
            ok = "yes" if abs(row["ratio"] - 1) <= TARGET else "**no**"
            lines.append(
                f"| {row['class']} | {row['cells']:,} | {row['rmse_m']:.2f} | "
                f"{row['rms_uncertainty_m']:.2f} | {row['ratio']:.3f} | {ok} | "
                f"{row['within_one_sigma']:.1%} |"
            )
        lines.append("")
    lines += [
        "### Per raster",
        "",
        "| raster | cells | RMSE one pass (m) | RMSE ensemble mean (m) | RMS spread (m) | "
        "RMS uncertainty (m) | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["held_out_rasters"]:
        lines.append(
            f"| {row['raster']} | {row['cells']:,} | {row['rmse_single_m']:.2f} | "
            f"{row['rmse_ensemble_m']:.2f} | {row['rms_spread_m']:.2f} | "
            f"{row['rms_uncertainty_m']:.2f} | "
            f"{row['rms_uncertainty_m'] / row['rmse_ensemble_m']:.3f} |"
        )
    lines += [
        "",
        "Validation rasters (fitted on): "
        + ", ".join(
            f"{row['raster']} RMSE {row['rmse_single_m']:.2f} -> {row['rmse_ensemble_m']:.2f} m"
            for row in results["validation_rasters"]
        )
        + ".",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint file or shipped model name")
    parser.add_argument(
        "-o", "--output", type=Path, required=True, help="calibrated checkpoint to write"
    )
    parser.add_argument("--report", type=Path, help="markdown table of the held-out check")
    parser.add_argument("--json", type=Path, help="every figure, as JSON")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--validation",
        nargs="+",
        help="rasters to fit on (names in --data) [default: the checkpoint's validation rasters]",
    )
    parser.add_argument(
        "--held-out",
        nargs="+",
        help="rasters to check on (names in --data) [default: the checkpoint's held-out rasters]",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads [default: torch's]")
    parser.add_argument(
        "--data",
        type=Path,
        default=REPO.parent / "shared" / "data" / "dem" / "train",
        help="folder of the rasters (default: ../shared/data/dem/train)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    validation, held_out = args.validation, args.held_out
    if validation is None or held_out is None:
        split = recorded_split(as_checkpoint(args.checkpoint))
        if split is None:
            print("the checkpoint records no validation/held-out split: lite-windows.yaml's")
            split = (VALIDATION, HELD_OUT)
        validation, held_out = validation or split[0], held_out or split[1]
    results = calibrate(args.checkpoint, args.output, args.data, args.device, validation, held_out)
    command = shlex.join(["python", "scripts/calibrate_uncertainty.py", *sys.argv[1:]])
    table = markdown(results, command)
    print(table)
    print(f"{time.perf_counter() - started:.0f} s")
    if args.report:
        args.report.write_text(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
