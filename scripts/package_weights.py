"""Package a fine-tuned run as the shipped ``lite`` weights, with a ``release`` record.

The record is read from the runs themselves, not typed in: steps, wall time and best validation
RMSE from each run's metrics.csv (land pre-training = the fine-tuned checkpoint's parent), the
held-out scores from ``scripts/evaluate_heldout.py --json``, and the machine it ran on.

    python scripts/package_weights.py RUNS/ocean-lite/best.safetensors HELDOUT.json \
        -o src/demsr/weights/lite.safetensors
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch
import yaml

from demsr.checkpoint import load_checkpoint
from demsr.pretrained import write_release


def run_summary(run_dir: Path) -> dict[str, Any]:
    """Steps, wall time and best validation RMSE of a training run, from its metrics.csv."""
    with open(run_dir / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    best = min(rows, key=lambda row: float(row["valid_loss"]))
    return {
        "run": run_dir.name,
        "epochs": len(rows),
        "steps": int(rows[-1]["global_step"]),
        "best_epoch": int(best["epoch"]),
        "best_step": int(best["global_step"]),
        "wall_time_s": round(sum(float(row["epoch_seconds"]) for row in rows), 1),
        "valid_rmse_m": round(float(best["valid_rmse_m"]), 4),
    }


def hardware() -> str:
    cores = os.cpu_count()
    return (
        f"{platform.machine()} CPU, {cores} cores, no GPU; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="the fine-tuned run's best.safetensors")
    parser.add_argument("heldout", type=Path, help="scripts/evaluate_heldout.py --json output")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()

    model = load_checkpoint(args.checkpoint)
    parent = model.metadata["provenance"]["parent"]
    if parent is None:
        raise SystemExit(f"{args.checkpoint}: not a fine-tuned checkpoint (no parent)")
    land = run_summary(Path(parent["path"]).parent)
    ocean = run_summary(args.checkpoint.parent)
    heldout = json.loads(args.heldout.read_text())
    # the degradation the land inputs were made with, by value (the config names only its file)
    degradation_file = load_checkpoint(parent["path"]).metadata["training"]["data"]["degradation"]
    degradation = yaml.safe_load(Path(degradation_file).read_text()) if degradation_file else None
    methods = ("model", "cubic", "bicubic_bp")
    release = {
        "name": "lite",
        "recipe": "scripts/train_lite.sh",
        "hardware": hardware(),
        "steps": {"land": land["best_step"], "ocean_finetune": ocean["best_step"]},
        "wall_time_s": {"land": land["wall_time_s"], "ocean_finetune": ocean["wall_time_s"]},
        "valid_rmse_m": {"land": land["valid_rmse_m"], "ocean_finetune": ocean["valid_rmse_m"]},
        "runs": {"land": land, "ocean_finetune": ocean},
        "land_degradation": {"file": degradation_file, "model": degradation},
        "held_out": {group: [row["raster"] for row in heldout[group]] for group in ("land", "sea")},
        "held_out_pooled": {
            group: {
                "cells": heldout[f"{group}_pooled"]["cells"],
                **{
                    f"{method}_rmse_m": round(heldout[f"{group}_pooled"][method], 4)
                    for method in methods
                },
            }
            for group in ("land", "sea")
        },
        "real_products": {
            row["raster"]: {f"{method}_rmse_m": round(row[method], 4) for method in methods}
            for row in heldout["products"]
        },
        "flat_in_flat_out_max_deviation_m": max(row["max_deviation_m"] for row in heldout["flat"]),
    }
    path = write_release(args.checkpoint, args.output, release)
    print(json.dumps(release, indent=2))
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
