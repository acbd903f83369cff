"""Block means: :func:`degrade` (the low-res member of a synthetic pair, a fine DEM averaged over
``scale`` x ``scale`` cells), :func:`crop_to_blocks` and :func:`degrade_raster` (``demsr
degrade``: a raster's block mean written as a GeoTIFF)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from demsr.grid import Grid
from demsr.io import read_raster, refuse_existing, write_geotiff
from demsr.prepare.options import is_int

_log = logging.getLogger("demsr.prepare")  # the package's one logger, as before the split


def degrade(highres: np.ndarray, scale: int) -> np.ndarray:
    """Block mean of ``highres`` (..., H, W) over ``scale`` x ``scale`` cells -> (..., H/s, W/s).

    This is how a coarse cell averages the fine cells it covers (a 15" cell and its 5 x 5 3"
    cells). H and W must be multiples of ``scale``. A block holding any NaN (nodata) gives NaN:
    a partial block is not a valid coarse cell. The mean is accumulated in float64; the result
    is float32 for float32 or integer input and float64 for float64 input.
    """
    values = np.asarray(highres)
    if not is_int(scale) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    if values.ndim < 2:
        raise ValueError(f"expected an array (..., H, W), got shape {values.shape}")
    rows, cols = values.shape[-2:]
    if rows % scale or cols % scale:
        raise ValueError(
            f"high-res shape {rows}x{cols} is not a multiple of the scale {scale} "
            "(crop it to whole blocks first)"
        )
    out_dtype = np.result_type(values.dtype, np.float32)
    blocks = values.reshape(*values.shape[:-2], rows // scale, scale, cols // scale, scale)
    return blocks.mean(axis=(-3, -1), dtype=np.float64).astype(out_dtype, copy=False)


def crop_to_blocks(values: np.ndarray, scale: int, name: str | os.PathLike[str]) -> np.ndarray:
    """The top-left part of ``values`` (..., H, W) made of whole ``scale`` x ``scale`` blocks.

    Rows and columns beyond the last whole block (bottom and right) are left out (a view,
    nothing is copied). A raster smaller than one block is a ValueError naming ``name``.
    """
    rows, cols = values.shape[-2:]
    kept_rows, kept_cols = rows - rows % scale, cols - cols % scale
    if kept_rows == 0 or kept_cols == 0:
        raise ValueError(f"{name}: {rows}x{cols} cells is smaller than one {scale}x{scale} block")
    return values[..., :kept_rows, :kept_cols]


def degrade_raster(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    scale: int,
    band: int = 1,
    overwrite: bool = False,
) -> Path:
    """Write the block mean of a raster over ``scale`` x ``scale`` cells as a GeoTIFF.

    This makes a coarse input from a fine DEM (e.g. 3" -> 15" with scale 5), exactly as the
    training pairs are made. Rows and columns beyond the last whole block (bottom and right)
    are cropped; the output keeps the input's origin and CRS, with ``scale`` times its cell size.
    A coarse cell is nodata if any of its fine cells is.
    """
    output = Path(output_path)
    refuse_existing(output, overwrite=overwrite, inputs=[input_path])
    raster = read_raster(input_path, band=band)
    lowres = degrade(crop_to_blocks(raster.data, scale, raster.path), scale)
    grid = Grid.of(raster).coarsen(scale)  # whole blocks only, as crop_to_blocks keeps
    assert grid.shape == lowres.shape
    write_geotiff(output, lowres, grid.transform, raster.crs, raster.nodata)
    _log.info(
        "wrote %s (%d x %d cells, x%d coarser)", output, lowres.shape[1], lowres.shape[0], scale
    )
    return output
