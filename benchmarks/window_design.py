"""Short comparison runs of design choices on random-window training
(``configs/lite-windows.yaml``), scored on the recipe's held-out tiles against GDAL cubic.

Each variant is the recipe with a few settings changed; it trains for ``--steps`` steps on one
CPU thread (float32), from the same seed and the same windows, then every variant's
``best.safetensors`` (selected on the validation rasters, never on the held-out ones) is scored
on the held-out tiles: each tile's 5 x 5 block means in, the tile out, whole (no tiling). Short
runs: evidence about the choices' direction and their side effects (flat in -> flat out,
borders, texture), not the accuracy a long run reaches::

    .venv/bin/python benchmarks/window_design.py train --steps 240 --out ../runs/design
    .venv/bin/python benchmarks/window_design.py score --out ../runs/design \\
        --record benchmarks/window_design.md

Scores per held-out tile: RMSE of the model, of GDAL cubic and of the model's parameter-free
part (its base and consistency step with a silent network), over cells valid in the truth; the
ratio to cubic of the 10 output cells along the raster's border, against that of the interior;
the texture index (``demsr.metrics.texture_index``); and whether a constant raster (1x1, 7x13,
40x40) comes back the same constant within 1 cm.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from demsr.baselines import upsample_baseline
from demsr.checkpoint import load_checkpoint
from demsr.config import load_config
from demsr.datasets import select_rasters
from demsr.engine import predict_array
from demsr.evaluation_inputs import inputs_from_raster
from demsr.metrics import texture_index
from demsr.model import DEMSRNet, SuperResolver, init_as_residual
from demsr.pretrained import resolve_checkpoint
from demsr.train import BEST, Trainer

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "lite-windows.yaml"
SHIPPED = [
    "model.bias=true",
    "model.padding=zeros",
    "model.base=bicubic",
    "model.backprojection_iterations=4",
    "model.block_mean_constraint=false",
]
VARIANTS: dict[str, list[str]] = {
    # Today's lite recipe (biases, zero padding, PyTorch bicubic base, 4 back-projection steps).
    "shipped_options": SHIPPED,
    # The recipe: no biases, replicate padding, cubic (a = -0.5) base, exact block-mean layer.
    "recipe": [],
    # The same with 4 back-projection steps (cubic kernel) instead of the exact layer.
    "backprojection": ["model.block_mean_constraint=false", "model.backprojection_iterations=4"],
    # The recipe with the slope term of the loss.
    "slope_loss": ["train.gradient_loss_weight=1.0"],
    # Biases kept, with replicate padding (flat in -> flat out through the exact layer).
    "biases_replicate": ["model.bias=true"],
}
SHIPPED_MODEL = "shipped lite"
BORDER_PX = 10
FLAT_SHAPES = ((1, 1), (7, 13), (40, 40))


def train(variant: str, steps: int, out: Path, steps_per_epoch: int) -> None:
    torch.set_num_threads(1)
    overrides = [
        *VARIANTS[variant],
        f"summary.output_dir={out / variant}",
        f"train.max_steps={steps}",
        f"train.max_steps_per_epoch={steps_per_epoch}",
        "train.device=cpu",
        "train.precision=fp32",
        "train.checkpoint_every_s=300",
        "data.valid_windows=64",
    ]
    config = load_config(RECIPE, overrides)
    started = time.perf_counter()
    result = Trainer(config, progress=False).fit()
    seconds = time.perf_counter() - started
    (out / variant / "run.json").write_text(
        json.dumps(
            {
                "variant": variant,
                "overrides": VARIANTS[variant],
                "steps": result.global_step,
                "seconds": seconds,
                "best_valid_rmse_m": result.best_valid_rmse_m,
            }
        )
    )


def _rmse(values: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    keep = mask & np.isfinite(values) & np.isfinite(truth)
    return float(np.sqrt(np.mean((values[keep] - truth[keep]) ** 2)))


def _flat_ok(resolver: SuperResolver) -> bool:
    for shape in FLAT_SHAPES:
        with torch.no_grad():
            output = resolver(torch.full((1, 1, *shape), 1234.5))
        if (output - 1234.5).abs().max().item() >= 0.01:
            return False
    return True


def _parameter_free(resolver: SuperResolver) -> SuperResolver:
    """The resolver's base and consistency step with a silent network."""
    net = init_as_residual(DEMSRNet(resolver.net.config))
    return SuperResolver(net, resolver.scaling).eval()


def score(out: Path, tiles: list[Path], extra: dict[str, Path] | None = None) -> dict[str, Any]:
    torch.set_num_threads(1)
    inputs = {tile.name: inputs_from_raster(tile, 5) for tile in tiles}
    cubic = {name: upsample_baseline(i.lowres[0], 5, "bicubic") for name, i in inputs.items()}
    results: dict[str, Any] = {}
    checkpoints = {variant: out / variant / BEST for variant in VARIANTS}
    # For reference: the shipped model as it is (trained on fixed pairs, not on these windows).
    checkpoints[SHIPPED_MODEL] = Path(resolve_checkpoint("lite"))
    checkpoints.update(extra or {})  # e.g. a long run of the recipe
    for variant, path in checkpoints.items():
        if not path.exists():
            continue
        resolver = load_checkpoint(path).build_resolver()
        rows: dict[str, Any] = {}
        for name, item in inputs.items():
            truth = item.highres[0]
            lowres = item.lowres[0]
            model = predict_array(resolver, lowres, precision="fp32")
            plain = predict_array(_parameter_free(resolver), lowres, precision="fp32")
            everywhere = np.ones_like(truth, dtype=bool)
            border = everywhere.copy()
            border[BORDER_PX:-BORDER_PX, BORDER_PX:-BORDER_PX] = False
            rows[name] = {
                "rmse_m": _rmse(model, truth, everywhere),
                "cubic_rmse_m": _rmse(cubic[name], truth, everywhere),
                "parameter_free_rmse_m": _rmse(plain, truth, everywhere),
                "border_ratio": _rmse(model, truth, border) / _rmse(cubic[name], truth, border),
                "interior_ratio": _rmse(model, truth, ~border) / _rmse(cubic[name], truth, ~border),
                "texture_index": texture_index(model),
                "truth_texture_index": texture_index(truth),
            }
        record = path.parent / "run.json"
        info = json.loads(record.read_text()) if variant in VARIANTS else {"variant": variant}
        results[variant] = {**info, "flat_in_flat_out": _flat_ok(resolver), "tiles": rows}
    return results


def table(results: dict[str, Any]) -> str:
    lines = [
        "| variant | steps | train min | valid RMSE m | pooled / cubic | pooled / parameter-free "
        "| worst tile / cubic | border / interior ratio | max texture | flat in -> flat out |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, result in results.items():
        tiles = result["tiles"].values()
        pooled = np.sqrt(np.mean([t["rmse_m"] ** 2 for t in tiles]))
        pooled_cubic = np.sqrt(np.mean([t["cubic_rmse_m"] ** 2 for t in tiles]))
        pooled_free = np.sqrt(np.mean([t["parameter_free_rmse_m"] ** 2 for t in tiles]))
        worst = max(t["rmse_m"] / t["cubic_rmse_m"] for t in tiles)
        border = max(t["border_ratio"] / t["interior_ratio"] for t in tiles)
        texture = max(t["texture_index"] for t in tiles)
        trained = (
            f"{result['steps']} | {result['seconds'] / 60:.1f} | {result['best_valid_rmse_m']:.2f}"
            if "steps" in result
            else "- | - | -"
        )
        lines.append(
            f"| {variant} | {trained} | {pooled / pooled_cubic:.3f} | "
            f"{pooled / pooled_free:.3f} | {worst:.3f} | {border:.3f} | {texture:.4f} | "
            f"{'yes' if result['flat_in_flat_out'] else 'no'} |"
        )
    lines += ["", "Per tile (model RMSE / GDAL cubic RMSE, texture index):", ""]
    names = list(next(iter(results.values()))["tiles"])
    lines.append("| tile | cubic RMSE m | " + " | ".join(results) + " |")
    lines.append("|---|---|" + "---|" * len(results))
    for name in names:
        first = next(iter(results.values()))["tiles"][name]
        cells = [
            f"{r['tiles'][name]['rmse_m'] / r['tiles'][name]['cubic_rmse_m']:.3f} "
            f"({r['tiles'][name]['texture_index']:.4f})"
            for r in results.values()
        ]
        lines.append(f"| {name} | {first['cubic_rmse_m']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("train", "score"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--steps-per-epoch", type=int, default=80)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--record", type=Path)
    parser.add_argument(
        "--extra",
        nargs="*",
        default=[],
        metavar="NAME=CHECKPOINT",
        help="more checkpoints to score beside the variants (e.g. a long run's best)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.action == "train":
        for variant in args.variants:
            train(variant, args.steps, args.out, args.steps_per_epoch)
        return
    config = load_config(RECIPE)
    tiles = select_rasters(config.data.rasters, config.data.heldout, config.data.valid_rasters)
    extra = dict(item.split("=", 1) for item in args.extra)
    results = score(args.out, tiles.heldout, {k: Path(v) for k, v in extra.items()})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scores.json").write_text(json.dumps(results, indent=1))
    text = table(results)
    print(text)
    if args.record:
        args.record.write_text(text)


if __name__ == "__main__":
    main()
