"""Classical interpolation baselines the model is scored against (:mod:`demsr.evaluate`).

GDAL's resampling kernels through rasterio (bilinear, cubic = bicubic, cubic spline, Lanczos),
with pixel-area registration: each low-res cell is the block mean of its scale x scale high-res
footprint, so low-res cell centres sit at high-res coordinate ``(i + 0.5) * scale``, as in the
training pairs; and ``bicubic_backprojection`` (PyTorch's bicubic, a = -0.75, then 4
back-projection steps: the network-free base of the model shipped before, and the strongest
parameter-free method here). :data:`BASELINES` names them all; :func:`upsample_baseline` runs one.
"""

from __future__ import annotations

import numpy as np
import torch
from affine import Affine
from rasterio.enums import Resampling
from rasterio.warp import reproject

BACKPROJECTION = "bicubic_backprojection"
# Back-projection steps of the parameter-free baseline: those of the shipped lite model's base.
BACKPROJECTION_ITERATIONS = 4
# GDAL's kernels by name, then the model's own parameter-free base (None: not a GDAL kernel).
BASELINES: dict[str, Resampling | None] = {
    "bilinear": Resampling.bilinear,
    "bicubic": Resampling.cubic,
    "cubic_spline": Resampling.cubic_spline,
    "lanczos": Resampling.lanczos,
    BACKPROJECTION: None,
}
# Any CRS will do: source and destination share it, so reproject only resamples.
_PLANAR_CRS = "EPSG:3857"


def upsample_backprojection(
    lowres: np.ndarray, scale: int, iterations: int = BACKPROJECTION_ITERATIONS
) -> np.ndarray:
    """The network-free part of a bicubic-base model: bicubic upsampling then ``iterations``
    back-projection steps (:func:`demsr.model.upsample_bicubic`, :func:`demsr.model.backproject`:
    the block means of the result approach the input), float64 on the CPU.

    (..., h, w) -> (..., h*scale, w*scale) float32. NaN is nodata: filled from the nearest
    cell for the computation, NaN again over its footprint.
    """
    from demsr.io import fill_nearest
    from demsr.scaling import backproject, upsample_bicubic

    shape: tuple[int, ...] = np.shape(lowres)
    lead, rows, cols = shape[:-2], shape[-2], shape[-1]
    images = np.asarray(lowres, dtype=np.float64).reshape((-1, rows, cols))
    missing = ~np.isfinite(images)
    filled = np.stack(
        [
            fill_nearest(image) if hole.any() and not hole.all() else image
            for image, hole in zip(images, missing, strict=True)
        ]
    )
    with torch.no_grad():
        low = torch.from_numpy(filled)[:, None]
        high = backproject(upsample_bicubic(low, scale), low, iterations)[:, 0].numpy()
    footprint = np.repeat(np.repeat(missing, scale, axis=-2), scale, axis=-1)
    result = np.where(footprint, np.nan, high).astype(np.float32)
    return result.reshape(lead + (rows * scale, cols * scale))


def upsample_baseline(lowres: np.ndarray, scale: int, method: str = "bicubic") -> np.ndarray:
    """Upsample (..., h, w) to (..., h*scale, w*scale) with a GDAL kernel, or with bicubic +
    back-projection (:func:`upsample_backprojection`). NaN is nodata."""
    if method not in BASELINES:
        raise ValueError(f"unknown baseline {method!r}; choose from {sorted(BASELINES)}")
    resampling = BASELINES[method]
    if resampling is None:
        return upsample_backprojection(lowres, scale)
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
        resampling=resampling,
    )
    return destination.reshape(lead + (rows * scale, cols * scale))
