"""Score a model on whole rasters it never saw in training, tuning or selection: every table of
MODEL_CARD.md's Metrics section and the README's results, from one command.

    python scripts/evaluate_heldout.py [--checkpoint lite] [--compare CHECKPOINT]
        [--json out.json] [--markdown out.md]

Tables, each against GDAL's cubic kernel (a = -0.5) and bicubic + back-projection (PyTorch's
bicubic, a = -0.75, then 4 back-projection steps: the strongest parameter-free method here):

- **land**: the held-out SRTM/viewfinder tiles and three test rasters, degraded x5 by block mean
  and super-resolved back whole; cells above 0 m (SRTM writes the sea as a flat 0 m). Also the
  ratio to cubic of the first 10 output cells along the raster's border over that of the
  interior, and the texture index (:func:`demsr.metrics.texture_index`) of the model's output
  and of the truth.
- **sea**: the held-out bathymetry grids, block means in; cells at or below 0 m.
- **real products**: a real 15" product in, the fine DEM put onto its x5 sub-grid as the truth
  (:func:`demsr.evaluation_inputs.inputs_from_product`): GEBCO_2020 over SRTM3 N56W006 at Oban
  (the tile is held out) and SRTM15+ over SRTMGL1 in Taiwan; all cells and the coast (within 2
  product cells of the 0 m line).
- **flat in -> flat out**: constant rasters of several sizes and heights, whole and tiled.

``--compare`` adds another model's RMSE to every row (e.g. the model shipped before). Pooled
rows are the root of the cell-weighted mean square. The network runs in float32.
``--write-into FILE`` replaces the text between the lines ``<!-- heldout tables -->`` and
``<!-- end of heldout tables -->`` of FILE (MODEL_CARD.md, the docs) with the tables, and that
between ``<!-- heldout summary -->`` and ``<!-- end of heldout summary -->`` (README.md) with a
one-row-per-group summary.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from demsr.baselines import BACKPROJECTION, upsample_baseline
from demsr.checkpoint import Checkpoint, as_checkpoint
from demsr.engine import predict_array
from demsr.evaluation_inputs import EvaluationInputs, inputs_from_product, inputs_from_raster
from demsr.metrics import rmse, texture_index

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
# The held-out set of configs/lite-windows.yaml (never trained, tuned or selected on), then
# three test rasters no model was trained on.
LAND = [
    "dem/train/srtm3_N56W006.tif",  # Oban, west Highlands coast (the real-product pair's tile)
    "dem/train/srtm3_N27E086.tif",  # Everest
    "dem/train/srtm3_N00E010.tif",  # Gabon rainforest
    "dem/train/srtm3_N37E015.tif",  # Etna and Sicily
    "dem/train/viewfinder_N36W117.tif",  # Death Valley
    "dem/train/srtm3_S29W072.tif",  # Chilean coast
    "dem/train/srtm3_N53W003.tif",  # Cheshire plain
    "dem/train/srtm3_N13E121.tif",  # southern Luzon, Mindoro
    "dem/train/srtm3_N37W004.tif",  # Sierra Nevada, Spain (the demo tile)
    "dem/train/srtm3_N42E012.tif",  # Apennines
    "dem/train/srtm3_N54W003.tif",  # Lake District, Morecambe Bay
    "dem/train/srtm3_N14E121.tif",  # Laguna de Bay, Sierra Madre, Luzon
    "dem/train/srtm3_N49W123.tif",  # Vancouver, Coast Mountains, Fraser delta
    "dem/test/landlab_srtmgl3_frontrange.tif",  # Colorado Front Range (SRTMGL3)
    "dem/test/mpl_jacksboro_3s.tif",  # Jacksboro fault, Tennessee
    "dem/test/pysheds_hydrosheds_3s.tif",  # Dallas-Fort Worth, flat (HydroSHEDS)
]
SEA = [
    "dem/train/okushiri_OK24_24s.tif",  # Sea of Japan, 24" regional grid
    "dem/test/mpl_topobathy_pnw.tif",  # Salish Sea, 2' x 1.3' ETOPO-like grid
]
PRODUCTS = {
    "Oban (GEBCO_2020 over SRTM3)": (
        "gebco/gebco_2020_n56.53355_s56.34059_w-5.786025_e-5.562533.tif",
        "dem/train/srtm3_N56W006.tif",
    ),
    "Taiwan (SRTM15+ over SRTMGL1)": (
        "gebco/earth_relief_15s_taiwan.nc",
        "gebco/srtmgl1_N23E121_rows0-652_1s.tif",
    ),
}
SCALE = 5
BORDER_PX = 10
# (rows, cols, tile_px): whole (None) and tiled; heights of the abyss, the sea surface, a plateau
FLAT_SHAPES = ((1, 1, None), (7, 13, None), (40, 40, None), (150, 150, 32))
FLAT_HEIGHTS_M = (-4000.0, 0.0, 1234.5)
FLAT_TOLERANCE_M = 0.01
MODEL, PREVIOUS, CUBIC, BP = "model", "previous", "cubic", "bicubic_bp"
# marker lines between which --write-into puts the tables, and the summary (the README's)
BLOCKS = {
    "tables": ("<!-- heldout tables -->", "<!-- end of heldout tables -->"),
    "summary": ("<!-- heldout summary -->", "<!-- end of heldout summary -->"),
}


def _rmse(values: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """:func:`demsr.metrics.rmse` over the cells of ``mask``."""
    return rmse(values[mask], truth[mask])


def _predict(checkpoint: Checkpoint, lowres: np.ndarray) -> np.ndarray:
    # one 240 x 240 tile is one network tile (the margin would otherwise dominate the time)
    return predict_array(checkpoint, lowres, tile_px=256, precision="fp32")


def _predictions(models: dict[str, Checkpoint], inputs: EvaluationInputs) -> dict[str, np.ndarray]:
    lowres = inputs.lowres[0]
    predictions = {name: _predict(checkpoint, lowres) for name, checkpoint in models.items()}
    predictions[CUBIC] = upsample_baseline(lowres, SCALE, "bicubic")
    predictions[BP] = upsample_baseline(lowres, SCALE, BACKPROJECTION)
    return predictions


def score_raster(models: dict[str, Checkpoint], path: Path, group: str) -> dict[str, Any] | None:
    inputs = inputs_from_raster(path, SCALE)
    truth = inputs.highres[0].astype(np.float64)
    predictions = _predictions(models, inputs)
    valid = np.isfinite(truth)
    for values in predictions.values():
        valid &= np.isfinite(values)
    cells = valid & ((truth > 0) if group == "land" else (truth <= 0))
    if not cells.any():
        return None
    border = np.ones_like(cells)
    border[BORDER_PX:-BORDER_PX, BORDER_PX:-BORDER_PX] = False
    row: dict[str, Any] = {"raster": path.name, "cells": int(cells.sum())}
    for name, values in predictions.items():
        row[name] = _rmse(values, truth, cells)
    model, cubic = predictions[MODEL], predictions[CUBIC]
    border_ratio = _rmse(model, truth, cells & border) / _rmse(cubic, truth, cells & border)
    interior_ratio = _rmse(model, truth, cells & ~border) / _rmse(cubic, truth, cells & ~border)
    row["border_over_interior"] = border_ratio / interior_ratio
    row["texture"] = texture_index(model)
    row["truth_texture"] = texture_index(inputs.highres[0])
    return row


def score_product(models: dict[str, Checkpoint], name: str, product: str, fine: str) -> dict:
    inputs = inputs_from_product(DATA / product, DATA / fine, SCALE)
    truth = inputs.highres[0].astype(np.float64)
    predictions = _predictions(models, inputs)
    valid = np.isfinite(truth)
    for values in predictions.values():
        valid &= np.isfinite(values)
    assert inputs.coast is not None
    row: dict[str, Any] = {"raster": name, "cells": int(valid.sum())}
    coast = valid & inputs.coast[0]
    row["coast_cells"] = int(coast.sum())
    for method, values in predictions.items():
        row[method] = _rmse(values, truth, valid)
        row[f"coast_{method}"] = _rmse(values, truth, coast) if coast.any() else math.nan
    return row


def flat_in_flat_out(checkpoint: Checkpoint) -> list[dict[str, Any]]:
    rows = []
    for rows_px, cols_px, tile_px in FLAT_SHAPES:
        worst = 0.0
        for height in FLAT_HEIGHTS_M:
            lowres = np.full((rows_px, cols_px), height, np.float32)
            output = predict_array(checkpoint, lowres, tile_px=tile_px, precision="fp32")
            worst = max(worst, float(np.max(np.abs(output.astype(np.float64) - height))))
        rows.append(
            {"shape": f"{rows_px} x {cols_px}", "tile_px": tile_px, "max_deviation_m": worst}
        )
    return rows


def _pool(rows: list[dict[str, Any]], key: str, cells: str = "cells") -> float:
    total = sum(row[cells] for row in rows)
    return math.sqrt(sum(row[cells] * row[key] ** 2 for row in rows) / total)


def pooled(rows: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"raster": "pooled", "cells": sum(row["cells"] for row in rows)}
    for method in methods:
        out[method] = _pool(rows, method)
    return out


def _ratio(row: dict[str, Any], key: str, over: str) -> str:
    return f"{row[key] / row[over]:.3f}"


def markdown(results: dict[str, Any], compare: bool) -> str:
    previous = " | previous model m" if compare else ""
    previous_rule = "---:|" if compare else ""
    lines = []
    for group in ("land", "sea"):
        lines += [
            f"**{group.capitalize()}** (block means in; "
            + ("cells above 0 m" if group == "land" else "cells at or below 0 m")
            + ")",
            "",
            "| raster | cells | model RMSE m | GDAL cubic m | bicubic + back-proj. m"
            f"{previous} | model / cubic | model / bicubic + back-proj. | border / interior "
            "| texture (truth) |",
            f"|---|---:|---:|---:|---:|{previous_rule}---:|---:|---:|---|",
        ]
        for row in results[group] + [results[f"{group}_pooled"]]:
            bold = "**" if row["raster"] == "pooled" else ""
            extra = f" | {row[PREVIOUS]:.3f}" if compare else ""
            texture = (
                f"{row['texture']:.4f} ({row['truth_texture']:.4f})" if "texture" in row else "-"
            )
            border = f"{row['border_over_interior']:.3f}" if "border_over_interior" in row else "-"
            lines.append(
                f"| {bold}{row['raster']}{bold} | {row['cells']:,} | {row[MODEL]:.3f} | "
                f"{row[CUBIC]:.3f} | {row[BP]:.3f}{extra} | {bold}{_ratio(row, MODEL, CUBIC)}"
                f"{bold} | {_ratio(row, MODEL, BP)} | {border} | {texture} |"
            )
        lines.append("")
    lines += [
        "**Real products** (the product in, the fine DEM on its x5 sub-grid as the truth)",
        "",
        f"| pair | cells | model RMSE m | GDAL cubic m | bicubic + back-proj. m{previous} | "
        "model / cubic | coast cells | coast: model m | coast: cubic m | "
        "coast: bicubic + back-proj. m |",
        f"|---|---:|---:|---:|---:|{previous_rule}---:|---:|---:|---:|---:|",
    ]
    for row in results["products"]:
        extra = f" | {row[PREVIOUS]:.3f}" if compare else ""
        lines.append(
            f"| {row['raster']} | {row['cells']:,} | {row[MODEL]:.3f} | {row[CUBIC]:.3f} | "
            f"{row[BP]:.3f}{extra} | {_ratio(row, MODEL, CUBIC)} | {row['coast_cells']:,} | "
            f"{row['coast_' + MODEL]:.3f} | {row['coast_' + CUBIC]:.3f} | "
            f"{row['coast_' + BP]:.3f} |"
        )
    lines += [
        "",
        "**Flat in -> flat out** (constant rasters at "
        + ", ".join(f"{h:g}" for h in FLAT_HEIGHTS_M)
        + " m)",
        "",
        "| raster | tiles | largest deviation m |",
        "|---|---|---:|",
    ]
    for row in results["flat"]:
        tiles = "whole" if row["tile_px"] is None else f"{row['tile_px']}-cell tiles"
        lines.append(f"| {row['shape']} | {tiles} | {row['max_deviation_m']:.4f} |")
    return "\n".join(lines) + "\n"


def summary(results: dict[str, Any]) -> str:
    """One row per group: the pooled land and sea rasters and each real product."""
    rows = [
        (
            f"land: {len(results['land'])} rasters (held-out tiles, test rasters), block means in",
            results["land_pooled"],
        ),
        (f"sea: {len(results['sea'])} bathymetry grids, block means in", results["sea_pooled"]),
        *((f"real product: {row['raster']}", row) for row in results["products"]),
    ]
    lines = [
        "| rasters | model | GDAL cubic | bicubic + back-projection | model / cubic |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in rows:
        lines.append(
            f"| {name} | {row[MODEL]:.3f} | {row[CUBIC]:.3f} | {row[BP]:.3f} | "
            f"{_ratio(row, MODEL, CUBIC)} |"
        )
    return "\n".join(lines) + "\n"


def write_into(path: Path, blocks: dict[str, str]) -> None:
    """Replace the text between each pair of marker lines of :data:`BLOCKS` found in ``path``
    with that block (``blocks["tables"]``, ``blocks["summary"]``); SystemExit if none is."""
    text = path.read_text()
    found = False
    for name, (start, end) in BLOCKS.items():
        if start not in text:
            continue
        if text.count(start) != 1 or text.count(end) != 1:
            raise SystemExit(f"{path}: needs one {start!r} line and one {end!r} line")
        head, rest = text.split(start)
        _, tail = rest.split(end)
        text = f"{head}{start}\n\n{blocks[name]}\n{end}{tail}"
        found = True
    if not found:
        raise SystemExit(f"{path}: no marker line; add {BLOCKS['tables'][0]!r} and its end line")
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="lite", help="file or shipped model name")
    parser.add_argument("--compare", help="another model scored on the same rasters")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--write-into", type=Path, nargs="*", default=[], metavar="FILE")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    models = {MODEL: as_checkpoint(args.checkpoint)}
    if args.compare:
        models[PREVIOUS] = as_checkpoint(args.compare)
    methods = [*models, CUBIC, BP]
    results: dict[str, Any] = {"checkpoint": models[MODEL].path, "compare": args.compare}
    for group, names in (("land", LAND), ("sea", SEA)):
        rows = []
        for name in names:
            row = score_raster(models, DATA / name, group)
            if row is not None:
                rows.append(row)
                print(
                    f"{group} {row['raster']:34s} model/cubic {_ratio(row, MODEL, CUBIC)} "
                    f"model/bp {_ratio(row, MODEL, BP)}",
                    flush=True,
                )
        results[group] = rows
        results[f"{group}_pooled"] = pooled(rows, methods)
    results["products"] = [
        score_product(models, name, product, fine) for name, (product, fine) in PRODUCTS.items()
    ]
    results["flat"] = flat_in_flat_out(models[MODEL])
    table = markdown(results, compare=bool(args.compare))
    print(table)
    print(f"{time.perf_counter() - start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.markdown:
        args.markdown.write_text(table)
    for path in args.write_into:
        write_into(path, {"tables": table, "summary": summary(results)})


if __name__ == "__main__":
    main()
