"""Compare a model with classical interpolation on the same low-res inputs.

Baselines are GDAL's resampling kernels (through rasterio), applied with pixel-area registration:
each low-res cell is the block mean of its scale x scale high-res footprint, so low-res cell
centres sit at high-res coordinate (i + 0.5) * scale, as in the training pairs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from affine import Affine
from rasterio.enums import Resampling
from rasterio.warp import reproject
from tqdm import tqdm

from demsr.checkpoint import Checkpoint, load_checkpoint
from demsr.datasets import read_pair_file
from demsr.metrics import mae, rmse
from demsr.model import resolve_device

log = logging.getLogger(__name__)

BASELINES: dict[str, Resampling] = {"bicubic": Resampling.cubic}
# Any CRS will do: source and destination share it, so reproject only resamples.
_PLANAR_CRS = "EPSG:3857"


def upsample_baseline(lowres: np.ndarray, scale: int, method: str = "bicubic") -> np.ndarray:
    """Upsample (..., h, w) to (..., h*scale, w*scale) with a GDAL kernel. NaN is nodata."""
    if method not in BASELINES:
        raise ValueError(f"unknown baseline {method!r}; choose from {sorted(BASELINES)}")
    shape: tuple[int, ...] = np.shape(lowres)
    lead, rows, cols = shape[:-2], shape[-2], shape[-1]
    count = int(np.prod(lead))
    source = np.asarray(lowres, dtype=np.float32).reshape((count, rows, cols))
    destination = np.full((count, rows * scale, cols * scale), np.nan, np.float32)
    reproject(
        source,
        destination,
        src_transform=Affine.identity(),
        dst_transform=Affine.scale(1 / scale),
        src_crs=_PLANAR_CRS,
        dst_crs=_PLANAR_CRS,
        src_nodata=np.nan,
        dst_nodata=np.nan,
        resampling=BASELINES[method],
    )
    return destination.reshape(lead + (rows * scale, cols * scale))


@dataclass
class Evaluation:
    """Metrics per method (``model`` and each baseline), in metres unless ``units`` says not."""

    pairs: int
    units: str
    methods: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"pairs": self.pairs, "units": self.units, "methods": self.methods}

    def table(self) -> str:
        lines = [f"{'method':<10} {'RMSE':>10} {'MAE':>10}   ({self.units}, {self.pairs} pairs)"]
        for name, values in self.methods.items():
            lines.append(f"{name:<10} {values['rmse']:>10.3f} {values['mae']:>10.3f}")
        return "\n".join(lines)


@torch.no_grad()
def evaluate_pairs(
    checkpoint: Checkpoint | str | os.PathLike[str],
    pairs_path: str | os.PathLike[str],
    batch_size: int = 16,
    device: str = "auto",
    progress: bool = True,
) -> Evaluation:
    """RMSE and MAE of the model and of bicubic interpolation on an HDF5 pair file.

    Errors are in metres through the file's normalisation. A file without one (a published
    MindEarth file) is fed to the model as it is, and metrics are in the file's units.
    """
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = load_checkpoint(checkpoint)
    pairs = read_pair_file(pairs_path)
    if pairs.scale != checkpoint.scale:
        raise ValueError(
            f"{pairs_path}: pairs are x{pairs.scale}, the model is x{checkpoint.scale}"
        )
    if pairs.units != "m":
        log.warning(
            "%s does not say how its values map to metres (a published file?); the model is fed "
            "its values as metres and errors are in the file's units",
            pairs_path,
        )
    torch_device = resolve_device(device)
    resolver = checkpoint.build_resolver(torch_device)
    lowres_m = pairs.normalisation.denormalise(pairs.lowres.astype(np.float64))
    highres_m = pairs.normalisation.denormalise(pairs.highres.astype(np.float64))
    predictions = np.empty(highres_m.shape, dtype=np.float32)
    for start in tqdm(
        range(0, len(lowres_m), batch_size), desc="evaluate", unit="batch", disable=not progress
    ):
        batch = torch.from_numpy(lowres_m[start : start + batch_size].astype(np.float32))
        predictions[start : start + batch_size] = resolver(batch.to(torch_device)).cpu().numpy()
    result = Evaluation(pairs=len(lowres_m), units=pairs.units)
    result.methods["model"] = {
        "rmse": rmse(predictions, highres_m),
        "mae": mae(predictions, highres_m),
    }
    for name in BASELINES:
        baseline = upsample_baseline(lowres_m, pairs.scale, name)
        result.methods[name] = {"rmse": rmse(baseline, highres_m), "mae": mae(baseline, highres_m)}
    return result
