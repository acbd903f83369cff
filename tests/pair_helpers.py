"""Helpers of the datasets and prepare tests: tiny GeoTIFFs of rough terrain, consistent pairs
and the pair files prepare wrote."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS

from demsr.datasets import read_pair_file
from demsr.prepare import degrade, output_paths


def consistent_pairs(n: int, lowres_px: int = 4, scale: int = 5, seed: int = 0):
    """Random high-res patches (n,1,H,W) in 0..1 and their block means, float32."""
    rng = np.random.default_rng(seed)
    highres = rng.random((n, 1, lowres_px * scale, lowres_px * scale)).astype(np.float32)
    return degrade(highres, scale), highres


GEOGRAPHIC_3S = Affine(3 / 3600, 0.0, 8.0, 0.0, -3 / 3600, 47.0)


def write_dem(
    path: Path,
    values: np.ndarray,
    *,
    nodata: float | None = None,
    dtype: str = "float32",
    crs: str = "EPSG:4326",
    transform: Affine = GEOGRAPHIC_3S,
) -> Path:
    """A tiny north-up GeoTIFF with explicit CRS, transform and nodata."""
    rows, cols = values.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=cols,
        height=rows,
        count=1,
        dtype=dtype,
        crs=CRS.from_string(crs),
        transform=transform,
        nodata=nodata,
    ) as dst:
        dst.write(values.astype(dtype), 1)
    return path


def hilly(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Rough terrain: every 10 x 10 window spans far more than 10 m."""
    rng = np.random.default_rng(seed)
    return (500.0 + rng.normal(0.0, 100.0, (rows, cols))).astype(np.float32)


def read_all(out_dir: Path) -> dict:
    return {split: read_pair_file(path) for split, path in output_paths(out_dir).items()}
