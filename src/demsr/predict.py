"""Super-resolve DEM arrays and rasters with a checkpoint.

Output georeferencing: the input's CRS and bounds, the pixel size divided by the scale. Nodata in
the input stays nodata in the output over its scaled footprint: before the network runs, nodata
cells are filled with their nearest valid neighbour (so that they do not drag the surrounding
prediction towards an arbitrary value), and the output cells under them are set back to nodata.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from affine import Affine
from scipy import ndimage

from demsr.checkpoint import Checkpoint, load_checkpoint
from demsr.io import RasterError, read_raster, write_geotiff
from demsr.model import SuperResolver, resolve_device

log = logging.getLogger(__name__)


def fill_nearest(values: np.ndarray) -> np.ndarray:
    """Replace NaN cells of a (rows, cols) array by the value of the nearest valid cell."""
    invalid = np.isnan(values)
    if not invalid.any():
        return values
    if invalid.all():
        raise ValueError("the array holds no valid cells")
    indices = ndimage.distance_transform_edt(invalid, return_distances=False, return_indices=True)
    return values[tuple(indices)]


def upscale_mask(valid: np.ndarray, scale: int) -> np.ndarray:
    """Each low-res cell's flag repeated over its scale x scale high-res footprint."""
    return np.repeat(np.repeat(valid, scale, axis=0), scale, axis=1)


@torch.no_grad()
def predict_array(
    resolver: SuperResolver, lowres_m: np.ndarray, device: torch.device | str = "cpu"
) -> np.ndarray:
    """Super-resolve a (rows, cols) DEM in metres (NaN = nodata) to (rows*s, cols*s) metres.

    Output cells whose low-res parent is nodata are NaN. The whole array goes through the
    network at once (memory grows with its area).
    """
    if lowres_m.ndim != 2:
        raise ValueError(f"expected a (rows, cols) array, got shape {lowres_m.shape}")
    valid = np.isfinite(lowres_m)
    filled = fill_nearest(np.where(valid, lowres_m, np.nan).astype(np.float32))
    resolver = resolver.to(device).eval()
    output = resolver(torch.from_numpy(filled)[None, None].to(device))
    highres_m = output[0, 0].cpu().numpy().astype(np.float32, copy=False)
    highres_m[~upscale_mask(valid, resolver.scale)] = np.nan
    return highres_m


def predict_raster(
    checkpoint: Checkpoint | str | os.PathLike[str],
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    band: int = 1,
    device: str = "auto",
    overwrite: bool = False,
) -> Path:
    """Super-resolve one band of a raster into a float32 GeoTIFF.

    The output has the input's CRS and bounds and its pixel size divided by the model's scale;
    the input's nodata value (NaN if it declares none) marks nodata. The file appears only once
    complete; an existing output is refused unless ``overwrite``.
    """
    output = Path(output_path)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output}: already exists (use --overwrite to replace it)")
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = load_checkpoint(checkpoint)
    raster = read_raster(input_path, band=band)
    if not raster.valid.any():
        raise RasterError(f"{raster.path}: band {band} holds no valid cells")
    if raster.crs is None:
        log.warning("%s has no CRS; the output will have none either", raster.path)
    torch_device = resolve_device(device)
    scale = checkpoint.scale
    highres = predict_array(checkpoint.build_resolver(torch_device), raster.data, torch_device)
    transform = raster.transform @ Affine.scale(1 / scale)
    write_geotiff(output, highres, transform, raster.crs, raster.nodata)
    log.info("wrote %s (%d x %d, x%d)", output, highres.shape[1], highres.shape[0], scale)
    return output
