"""Compare a model with classical interpolation on the same low-res inputs.

Entry points: :func:`evaluate_pairs`, :func:`evaluate_raster` and :func:`evaluate_array` score a
checkpoint and the baselines (:mod:`demsr.baselines`) on a pair file, a raster or arrays;
:func:`evaluate` does so on inputs already loaded (:mod:`demsr.evaluation_inputs`); the scores
and their tables come from :mod:`demsr.scoring`, which also scores predictions made elsewhere
(:func:`demsr.scoring.score`). The model runs here (:func:`predict_inputs`) in float32 with
tiles of a fixed size (:data:`demsr.predict_settings.SCORING`), so that scores depend neither on
the hardware nor on the memory free.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from affine import Affine
from tqdm import tqdm

from demsr.baselines import BASELINES, upsample_baseline
from demsr.checkpoint import Checkpoint, as_checkpoint
from demsr.engine import predict_array
from demsr.ensemble import ensemble_mean_spread
from demsr.evaluation_inputs import (
    EvaluationInputs,
    inputs_from_arrays,
    inputs_from_pairs,
    load_inputs,
)
from demsr.model import SuperResolver, prepare_for_inference, resolve_device
from demsr.predict_settings import SCORING
from demsr.scoring import Evaluation, score

MODEL = "model"


def self_ensemble(upsample: Callable[[np.ndarray], np.ndarray], lowres: np.ndarray) -> np.ndarray:
    """Mean of ``upsample`` over the 8 flips/rotations of (..., h, w), each mapped back
    (:func:`demsr.ensemble.ensemble_mean_spread`, as ``demsr predict --ensemble``)."""

    def run(view: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(upsample(np.ascontiguousarray(view.numpy()))))

    mean, _ = ensemble_mean_spread(run, torch.from_numpy(np.ascontiguousarray(lowres)))
    return mean.numpy()


def predict_inputs(
    resolver: SuperResolver,
    inputs: EvaluationInputs,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    tile_px: int | None = SCORING.tile_px,
    ensemble: bool = False,
    progress: bool = True,
) -> np.ndarray:
    """The model's (N, H, W) prediction in metres (NaN over nodata inputs).

    Pairs without nodata run in batches; rasters (and pairs with nodata) run through the tiled
    :func:`demsr.engine.predict_array`. ``ensemble`` averages the 8 flips/rotations. The
    network runs in float32 (channels-last), so that scores describe the model itself and do
    not depend on the hardware; bf16, predict's default where the hardware has it, moves
    outputs by centimetres (BENCHMARKS.md).
    """
    torch_device = torch.device(device)
    model = prepare_for_inference(resolver, torch_device)

    def run_batch(lowres: np.ndarray) -> np.ndarray:  # (n, h, w) -> (n, H, W)
        batch = torch.from_numpy(np.ascontiguousarray(lowres, dtype=np.float32))[:, None]
        with torch.inference_mode():
            return model(batch.to(torch_device))[:, 0].float().cpu().numpy()

    def run_tiled(lowres: np.ndarray) -> np.ndarray:  # (h, w) -> (H, W)
        return predict_array(
            resolver, lowres, torch_device, tile_px=tile_px, precision=SCORING.precision
        )

    output = np.empty(inputs.highres.shape, np.float32)
    if inputs.kind == "pairs" and np.isfinite(inputs.lowres).all():
        starts = range(0, len(inputs.lowres), batch_size)
        for start in tqdm(starts, desc="model", unit="batch", disable=not progress):
            lowres = inputs.lowres[start : start + batch_size]
            output[start : start + batch_size] = (
                self_ensemble(run_batch, lowres) if ensemble else run_batch(lowres)
            )
        return output
    for index in tqdm(range(len(inputs.lowres)), desc="model", unit="image", disable=not progress):
        lowres = inputs.lowres[index]
        output[index] = self_ensemble(run_tiled, lowres) if ensemble else run_tiled(lowres)
    return output


def predict_methods(
    models: Mapping[str, Checkpoint | str | os.PathLike[str]],
    inputs: EvaluationInputs,
    baselines: Iterable[str] = tuple(BASELINES),
    ensemble: bool = False,
    device: str = "auto",
    batch_size: int = 16,
    tile_px: int | None = SCORING.tile_px,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """(N, H, W) predictions in metres of each named model, then of each named baseline."""
    names = list(baselines)
    for name in names:
        if name not in BASELINES:
            raise ValueError(f"unknown baseline {name!r}; choose from {sorted(BASELINES)}")
    torch_device = resolve_device(device)
    predictions: dict[str, np.ndarray] = {}
    for name, checkpoint in models.items():
        checkpoint = as_checkpoint(checkpoint)
        if inputs.scale != checkpoint.scale:
            raise ValueError(
                f"{inputs.source}: the data are x{inputs.scale}, {checkpoint.path or name} "
                f"is x{checkpoint.scale}"
            )
        predictions[name] = predict_inputs(
            checkpoint.build_resolver(torch_device),
            inputs,
            torch_device,
            batch_size=batch_size,
            tile_px=tile_px,
            ensemble=ensemble,
            progress=progress,
        )
    for name in names:
        predictions[name] = upsample_baseline(inputs.lowres, inputs.scale, name)
    return predictions


def evaluate(
    checkpoint: Checkpoint | str | os.PathLike[str],
    inputs: EvaluationInputs,
    baselines: Iterable[str] = tuple(BASELINES),
    ensemble: bool = False,
    device: str = "auto",
    batch_size: int = 16,
    tile_px: int | None = SCORING.tile_px,
    progress: bool = True,
) -> Evaluation:
    """Score a checkpoint (as ``model``) and the named baselines on ``inputs`` (see
    :func:`demsr.evaluation_inputs.load_inputs`)."""
    checkpoint = as_checkpoint(checkpoint)
    predictions = predict_methods(
        {MODEL: checkpoint},
        inputs,
        baselines,
        ensemble=ensemble,
        device=device,
        batch_size=batch_size,
        tile_px=tile_px,
        progress=progress,
    )
    return score(inputs, predictions, checkpoint=checkpoint.path or None, self_ensemble=ensemble)


def evaluate_pairs(
    checkpoint: Checkpoint | str | os.PathLike[str],
    pairs_path: str | os.PathLike[str],
    batch_size: int = 16,
    device: str = "auto",
    progress: bool = True,
    baselines: Iterable[str] = tuple(BASELINES),
) -> Evaluation:
    """:func:`evaluate` on an HDF5 pair file (e.g. ``test/test.h5``)."""
    return evaluate(
        checkpoint,
        inputs_from_pairs(pairs_path),
        baselines=baselines,
        device=device,
        batch_size=batch_size,
        progress=progress,
    )


def evaluate_raster(
    checkpoint: Checkpoint | str | os.PathLike[str],
    highres_path: str | os.PathLike[str],
    lowres_path: str | os.PathLike[str] | None = None,
    *,
    band: int = 1,
    baselines: Iterable[str] = tuple(BASELINES),
    device: str = "auto",
    tile_px: int | None = SCORING.tile_px,
    progress: bool = True,
) -> Evaluation:
    """:func:`evaluate` on a high-res raster file: against its own block mean over the model's
    scale (:func:`demsr.evaluation_inputs.inputs_from_raster`), or against ``lowres_path``, a
    low-res raster on a grid that many times coarser
    (:func:`demsr.evaluation_inputs.inputs_from_rasters`). Nodata cells are not scored."""
    checkpoint = as_checkpoint(checkpoint)
    inputs = load_inputs(highres_path, checkpoint.scale, lowres_path, band=band)
    return evaluate(
        checkpoint, inputs, baselines, device=device, tile_px=tile_px, progress=progress
    )


def evaluate_array(
    checkpoint: Checkpoint | str | os.PathLike[str],
    highres_m: np.ndarray,
    lowres_m: np.ndarray | None = None,
    *,
    transform: Affine | None = None,
    crs: Any = None,
    cell_size_m: tuple[float, float] | None = None,
    baselines: Iterable[str] = tuple(BASELINES),
    device: str = "auto",
    tile_px: int | None = SCORING.tile_px,
    progress: bool = True,
) -> Evaluation:
    """:func:`evaluate` on arrays in metres (NaN = nodata, not scored): the high-res truth
    (H, W) or (N, H, W) and its low-res input, by default its block mean over the model's scale
    (see :func:`demsr.evaluation_inputs.inputs_from_arrays`, which also says how ``transform``,
    ``crs`` and ``cell_size_m`` give the cell sizes that slope and aspect errors need)."""
    checkpoint = as_checkpoint(checkpoint)
    inputs = inputs_from_arrays(
        highres_m,
        lowres_m,
        scale=checkpoint.scale,
        transform=transform,
        crs=crs,
        cell_size_m=cell_size_m,
    )
    return evaluate(
        checkpoint, inputs, baselines, device=device, tile_px=tile_px, progress=progress
    )
