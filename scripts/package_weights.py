"""Package a trained run as the shipped ``lite`` weights, with a ``release`` record.

The record is read from the runs themselves, not typed in: steps, wall time and best validation
RMSE from each run's metrics.csv (for a fine-tuned checkpoint, its land parent's run too), the
land degradation model by value, the held-out scores from ``scripts/evaluate_heldout.py
--json``, and the machine it ran on.

    python scripts/package_weights.py RUNS/land-lite-bf16.safetensors HELDOUT.json \
        -o src/demsr/weights/lite.safetensors [--run RUNS/land-lite]
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
    parser.add_argument("checkpoint", type=Path, help="the released run's best.safetensors")
    parser.add_argument("heldout", type=Path, help="scripts/evaluate_heldout.py --json output")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument(
        "--run",
        type=Path,
        help="the checkpoint's run folder, with its metrics.csv (default: the checkpoint's folder)",
    )
    args = parser.parse_args()

    model = load_checkpoint(args.checkpoint)
    parent = model.metadata["provenance"]["parent"]
    run = run_summary(args.run or args.checkpoint.parent)
    # a fine-tuned model: its land parent's run, then its own; a land model: its run alone
    runs = (
        {"land": run_summary(Path(parent["path"]).parent), "finetune": run}
        if parent
        else {"land": run}
    )
    land_training = load_checkpoint(parent["path"]) if parent else model
    heldout = json.loads(args.heldout.read_text())
    # the degradation the land inputs were made with, by value (the config names only its file)
    degradation_file = land_training.metadata["training"]["data"]["degradation"]
    degradation = yaml.safe_load(Path(degradation_file).read_text()) if degradation_file else None
    methods = ("model", "cubic", "bicubic_bp")
    release = {
        "name": "lite",
        "recipe": "scripts/train_lite.sh",
        "hardware": hardware(),
        "steps": {stage: summary["best_step"] for stage, summary in runs.items()},
        "wall_time_s": {stage: summary["wall_time_s"] for stage, summary in runs.items()},
        "valid_rmse_m": {stage: summary["valid_rmse_m"] for stage, summary in runs.items()},
        "runs": runs,
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
