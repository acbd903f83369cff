"""GeoTIFF writing: the creation profile and in-memory arrays written as GeoTIFFs."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS

from demsr.io.safety import atomic_path


def fill_nodata(values: np.ndarray, nodata: float | None) -> np.ndarray:
    """``values`` with its NaN cells set to ``nodata`` (as float32), for writing.

    The same array comes back, unchanged, when ``nodata`` is None or NaN.
    """
    if nodata is None or math.isnan(nodata):
        return values
    return np.where(np.isnan(values), np.float32(nodata), values)


def gtiff_profile(
    shape: tuple[int, int],
    transform: Affine,
    crs: CRS | None,
    nodata: float,
    *,
    dtype: str = "float32",
    block_px: int | None = None,
    **options: Any,
) -> dict[str, Any]:
    """rasterio creation profile of a single-band DEFLATE-compressed GeoTIFF of (rows, cols)
    ``shape``: floating-point predictor for float32, horizontal for integers; tiled in
    ``block_px`` squares when given (else striped); ``options`` (e.g. ``BIGTIFF``) added as is."""
    rows, cols = shape
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": cols,
        "height": rows,
        "count": 1,
        "dtype": dtype,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        "compress": "deflate",
        "predictor": 3 if dtype == "float32" else 2,
    }
    if block_px is not None:
        profile.update(tiled=True, blockxsize=block_px, blockysize=block_px)
    profile.update(options)
    return profile


def write_geotiff(
    path: str | os.PathLike[str],
    data: np.ndarray,
    transform: Affine,
    crs: CRS | None,
    nodata: float | None = None,
) -> Path:
    """Write a (rows, cols) float array as a tiled, DEFLATE-compressed float32 GeoTIFF.

    NaN cells are written as ``nodata`` (NaN itself when ``nodata`` is None). The file appears
    at ``path`` only once complete.
    """
    values = np.asarray(data, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"expected a (rows, cols) array, got shape {values.shape}")
    values = fill_nodata(values, nodata)
    fill = np.float32(np.nan if nodata is None else nodata)
    rows, cols = values.shape
    block_px = 256 if rows >= 256 and cols >= 256 else None
    profile = gtiff_profile((rows, cols), transform, crs, float(fill), block_px=block_px)
    with atomic_path(path) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(values, 1)
    return Path(path)
