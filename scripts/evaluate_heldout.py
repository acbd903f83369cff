"""Score a model against bicubic (and Lanczos) on whole rasters it never saw in training.

Also scored: ``bicubic_bp``, bicubic interpolation followed by the same 4 back-projection steps
the shipped model ends with, without any network: what the learnt part adds on top of it.

Each high-res raster is degraded x5 by block mean and super-resolved back (as ``demsr evaluate
CHECKPOINT RASTER`` does). Land is scored on cells above 0 m; sea on cells at or below 0 m of
the bathymetry grids only (SRTM writes the sea as a flat 0 m, which is not seafloor). The pooled
rows combine all cells of a group (root of the cell-weighted mean square); slope RMSE is in
degrees (Horn's method on metric cell sizes).

    python scripts/evaluate_heldout.py [--checkpoint lite] [--json out.json] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from demsr.checkpoint import Checkpoint, as_checkpoint
from demsr.evaluate import MODEL, EvaluationInputs, inputs_from_raster, predict_methods, score
from demsr.io import fill_nearest
from demsr.model import backproject, upsample_bicubic

REPO = Path(__file__).resolve().parents[1]
# Whole tiles held out of the shipped model's training and fine-tuning (scripts/train_lite.sh).
LAND = [
    "train/srtm3_N37W004.tif",  # Sierra Nevada, Spain (the demo tile)
    "train/srtm3_N42E012.tif",  # Apennines, Italy
    "train/srtm3_N54W003.tif",  # Lake District / Morecambe Bay, England
    "train/srtm3_N14E121.tif",  # Laguna de Bay, Sierra Madre, Luzon
    "train/srtm3_N49W123.tif",  # Vancouver, Coast Mountains, Fraser delta
    "test/landlab_srtmgl3_frontrange.tif",  # Colorado Front Range (SRTMGL3)
    "test/mpl_jacksboro_3s.tif",  # Jacksboro fault, Tennessee
    "test/pysheds_hydrosheds_3s.tif",  # Dallas-Fort Worth, flat (HydroSHEDS)
]
SEA = [
    "train/okushiri_OK24_24s.tif",  # Sea of Japan, 24" regional grid
    "test/mpl_topobathy_pnw.tif",  # Salish Sea, 2' x 1.3' ETOPO-like grid
]
METHODS = (MODEL, "bicubic", "lanczos", "bicubic_bp")
BACKPROJECTION_ITERATIONS = 4


def bicubic_backprojected(inputs: EvaluationInputs, like: np.ndarray) -> np.ndarray:
    """Bicubic + back-projection of the (nodata-filled) low-res input; NaN where ``like`` is."""
    lowres = torch.from_numpy(fill_nearest(inputs.lowres[0]).astype(np.float64))[None, None]
    upsampled = upsample_bicubic(lowres, inputs.scale)
    values = backproject(upsampled, lowres, BACKPROJECTION_ITERATIONS)[0].numpy()
    return np.where(np.isnan(like), np.nan, values).astype(np.float32)


def _pool(rows: list[dict], method: str, key: str) -> float:
    cells = sum(row["cells"] for row in rows)
    return math.sqrt(sum(row["cells"] * row[method][key] ** 2 for row in rows) / cells)


def score_rasters(
    checkpoint: Checkpoint, data: Path, names: list[str], group: str, device: str
) -> list[dict]:
    rows = []
    for name in names:
        inputs = inputs_from_raster(data / name, scale=5)
        # one 240 x 240 SRTM tile is one network tile (the margin would otherwise dominate)
        predictions = predict_methods(
            {MODEL: checkpoint}, inputs, METHODS[1:3], device=device, tile_px=256, progress=False
        )
        predictions["bicubic_bp"] = bicubic_backprojected(inputs, predictions[MODEL])
        result = score(inputs, predictions)
        by_method = result.breakdown.get(group)
        if not by_method:
            continue
        row: dict = {"raster": Path(name).name, "cells": by_method[MODEL]["cells"]}
        for method in METHODS:
            row[method] = {
                "rmse": by_method[method]["rmse"],
                "slope_rmse_deg": by_method[method]["slope_rmse_deg"],
            }
        rows.append(row)
        print(
            f"{group:4s} {row['raster']:36s} cells {row['cells']:>9,}  RMSE model "
            f"{row[MODEL]['rmse']:8.3f}  bicubic {row['bicubic']['rmse']:8.3f}  ratio "
            f"{row[MODEL]['rmse'] / row['bicubic']['rmse']:.3f}",
            flush=True,
        )
    pooled: dict = {"raster": "pooled", "cells": sum(row["cells"] for row in rows)}
    for method in METHODS:
        pooled[method] = {key: _pool(rows, method, key) for key in ("rmse", "slope_rmse_deg")}
    return rows + [pooled]


def markdown(results: dict[str, list[dict]]) -> str:
    lines = [
        "| group | raster | cells | model RMSE m | bicubic RMSE m | Lanczos RMSE m | bicubic + "
        "back-proj. RMSE m | model / bicubic | model slope RMSE deg | bicubic slope RMSE deg | "
        "bicubic + back-proj. slope RMSE deg |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for group, rows in results.items():
        for row in rows:
            bold = "**" if row["raster"] == "pooled" else ""
            lines.append(
                f"| {group} | {bold}{row['raster']}{bold} | {row['cells']:,} | "
                f"{row[MODEL]['rmse']:.3f} | {row['bicubic']['rmse']:.3f} | "
                f"{row['lanczos']['rmse']:.3f} | {row['bicubic_bp']['rmse']:.3f} | "
                f"{bold}{row[MODEL]['rmse'] / row['bicubic']['rmse']:.3f}{bold} | "
                f"{row[MODEL]['slope_rmse_deg']:.3f} | {row['bicubic']['slope_rmse_deg']:.3f} | "
                f"{row['bicubic_bp']['slope_rmse_deg']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="lite", help="file or shipped model name")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument(
        "--data",
        type=Path,
        default=REPO.parent / "shared" / "data" / "dem",
        help="folder holding train/ and test/ (default: ../shared/data/dem)",
    )
    args = parser.parse_args()
    checkpoint = as_checkpoint(args.checkpoint)
    start = time.perf_counter()
    results = {
        "land": score_rasters(checkpoint, args.data, LAND, "land", args.device),
        "sea": score_rasters(checkpoint, args.data, SEA, "sea", args.device),
    }
    table = markdown(results)
    print(table)
    print(f"{time.perf_counter() - start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"checkpoint": checkpoint.path, **results}, indent=2))
    if args.markdown:
        args.markdown.write_text(table)


if __name__ == "__main__":
    main()
