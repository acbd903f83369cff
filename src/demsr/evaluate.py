"""Compare a model with classical interpolation on the same low-res inputs.

Three kinds of input (:func:`load_inputs` picks by the arguments):

- an HDF5 pair file (``test/test.h5``): the model and the baselines upsample each low-res patch;
- a high-res raster: it is cropped to whole ``scale`` x ``scale`` blocks and degraded by block
  mean (as training pairs are made), and the result is compared with the raster itself;
- a low-res raster plus a high-res reference raster covering the same bounds on a grid
  ``scale`` times finer.

Arrays in memory work the same way (:func:`inputs_from_arrays`). Entry points:
:func:`evaluate_pairs`, :func:`evaluate_raster` and :func:`evaluate_array` score a checkpoint
and the baselines; :func:`score` scores predictions made elsewhere.

Baselines are GDAL's resampling kernels through rasterio (bilinear, cubic = bicubic, cubic
spline, Lanczos), with pixel-area registration: each low-res cell is the block mean of its
scale x scale high-res footprint, so low-res cell centres sit at high-res coordinate
``(i + 0.5) * scale``, as in the training pairs; and ``bicubic_backprojection`` (PyTorch's
bicubic, a = -0.75, then 4 back-projection steps: the network-free base of the model shipped
before, and the strongest parameter-free method here).

All methods are scored on the same cells: those where the truth and every method have a value.
Metrics are in metres (see :mod:`demsr.metrics`): RMSE, MAE, bias, max absolute error, PSNR and
SSIM (both with the truth's max - min over the scored cells as data range, reported), slope RMSE
and aspect error (Horn's method on true metric cell sizes). Breakdowns: land (truth > 0 m) and
sea (truth <= 0 m; SRTM writes the sea as 0 m), and classes of the truth's slope. Against a real
coarse product, cells within 2 product cells of its 0 m line are scored apart as coast (and left
out of land and sea).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from affine import Affine
from rasterio.enums import Resampling
from rasterio.warp import reproject
from rasterio.windows import Window
from tqdm import tqdm

from demsr.checkpoint import Checkpoint, as_checkpoint
from demsr.datasets import read_pair_file
from demsr.ensemble import ensemble_mean_spread
from demsr.grid import Grid
from demsr.io import (
    RasterError,
    atomic_path,
    integer_scale,
    locate_grid,
    open_raster,
    read_raster,
    same_crs,
)
from demsr.metrics import (
    ASPECT_MIN_SLOPE_DEG,
    SLOPE_CLASSES_DEG,
    angle_difference_deg,
    cell_sizes_m,
    psnr_from_rmse,
    root_mean_square,
    slope_aspect_deg,
    ssim,
)
from demsr.model import SuperResolver, prepare_for_inference, resolve_device
from demsr.predict import predict_array
from demsr.prepare import crop_to_blocks, degrade

log = logging.getLogger(__name__)

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
MODEL = "model"
PAIR_SUFFIXES = (".h5", ".hdf5", ".he5")
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
    from demsr.model import backproject, upsample_bicubic

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


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


@dataclass
class EvaluationInputs:
    """Low-res inputs, the high-res truth and the truth's cell sizes.

    ``lowres`` is (N, h, w) and ``highres`` (N, h*scale, w*scale), float32 metres with NaN
    nodata (one image for a raster, one per pair for a pair file). ``dx_m``/``dy_m`` are (N, H)
    east-west / north-south sizes of each high-res row in metres, or None when unknown (slope
    and aspect are then left out). ``transform`` and ``crs`` describe the high-res grid of a
    raster input (None for pairs).
    """

    lowres: np.ndarray
    highres: np.ndarray
    scale: int
    source: str
    kind: str  # "pairs" or "raster"
    units: str = "m"
    dx_m: np.ndarray | None = None
    dy_m: np.ndarray | None = None
    transform: Affine | None = None
    crs: Any = None
    coast: np.ndarray | None = None  # (N, H, W) bool: cells scored as "coast", apart

    def __post_init__(self) -> None:
        if self.lowres.ndim != 3 or self.highres.ndim != 3:
            raise ValueError("lowres and highres must be (N, rows, cols) arrays")
        expected = (self.lowres.shape[0], *(n * self.scale for n in self.lowres.shape[1:]))
        if self.highres.shape != expected:
            raise ValueError(
                f"{self.source}: high-res shape {self.highres.shape[1:]} is not the low-res "
                f"shape {self.lowres.shape[1:]} x {self.scale}"
            )


def _pair_cell_sizes(
    path: str,
    files: Sequence[str],
    windows: np.ndarray | None,
    highres_px: int,
    provenance: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-pair cell sizes from the source rasters a pair file names, if they can be read (for
    pairs from a real product: from the product's sub-grid, which the file records)."""
    if windows is None or not files:
        return None
    grids: dict[int, tuple[Affine, Any]] = {}
    subgrids = {
        str(Path(entry["fine"])): (Affine(*entry["subgrid_transform"]), entry["product_crs"])
        for entry in (provenance or {}).get("pairs", [])
    }
    for index in np.unique(windows[:, 0]):
        source = files[int(index)]
        if str(Path(source)) in subgrids:
            grids[int(index)] = subgrids[str(Path(source))]
            continue
        try:
            with open_raster(source) as reader:
                grids[int(index)] = (reader.transform, reader.crs)
        except (RasterError, OSError):
            log.warning("%s: source raster %s cannot be read", path, source)
            return None
    dx = np.empty((len(windows), highres_px))
    dy = np.empty((len(windows), highres_px))
    for number, (index, row_off, *_rest) in enumerate(windows):
        transform, crs = grids[int(index)]
        dx[number], dy[number] = cell_sizes_m(transform, crs, highres_px, int(row_off))
    return dx, dy


def inputs_from_pairs(
    path: str | os.PathLike[str], cell_size_m: tuple[float, float] | None = None
) -> EvaluationInputs:
    """The pairs of an HDF5 pair file, in metres.

    Cell sizes for slope and aspect: ``cell_size_m`` (x, y) if given, else from the source
    rasters the file records (each pair's rows on its own grid), else unknown.
    """
    pairs = read_pair_file(path)
    if pairs.units != "m":
        log.warning(
            "%s does not say how its values map to metres (a published file?); the model is fed "
            "its values as metres and errors are in the file's units",
            path,
        )
    inputs = EvaluationInputs(
        lowres=pairs.normalisation.denormalise(pairs.lowres[:, 0].astype(np.float64)).astype(
            np.float32
        ),
        highres=pairs.normalisation.denormalise(pairs.highres[:, 0].astype(np.float64)).astype(
            np.float32
        ),
        scale=pairs.scale,
        source=os.fspath(path),
        kind="pairs",
        units=pairs.units,
    )
    count, rows = len(pairs), pairs.highres_patch_px
    if cell_size_m is not None:
        inputs.dx_m = np.full((count, rows), float(cell_size_m[0]))
        inputs.dy_m = np.full((count, rows), float(cell_size_m[1]))
    elif pairs.units == "m":
        sizes = _pair_cell_sizes(
            os.fspath(path),
            pairs.metadata.source_files,
            pairs.source_windows,
            rows,
            pairs.metadata.provenance,
        )
        if sizes is None:
            log.warning(
                "%s: cell sizes unknown (source rasters not found); slope and aspect are left "
                "out (give --cell-size-m)",
                path,
            )
        else:
            inputs.dx_m, inputs.dy_m = sizes
    return inputs


def inputs_from_raster(path: str | os.PathLike[str], scale: int, band: int = 1) -> EvaluationInputs:
    """A high-res raster and its block mean over ``scale`` x ``scale`` cells.

    Rows and columns beyond the last whole block (at the bottom and right) are left out.
    """
    raster = read_raster(path, band=band)
    highres = crop_to_blocks(raster.data, scale, path)
    rows, cols = highres.shape
    if (rows, cols) != raster.shape:
        log.info("%s: cropped to %dx%d cells (whole %dx%d blocks)", path, rows, cols, scale, scale)
    dx, dy = cell_sizes_m(raster.transform, raster.crs, rows)
    return EvaluationInputs(
        lowres=degrade(highres, scale)[None],
        highres=highres[None],
        scale=scale,
        source=os.fspath(path),
        kind="raster",
        dx_m=dx[None],
        dy_m=dy[None],
        transform=raster.transform,
        crs=raster.crs,
    )


def inputs_from_rasters(
    lowres_path: str | os.PathLike[str], highres_path: str | os.PathLike[str], band: int = 1
) -> EvaluationInputs:
    """A low-res raster and its high-res reference, on a grid an integer ``scale`` finer.

    The reference must have the low-res CRS, cells aligned with the low-res cells' edges and
    cover them; a larger one (e.g. the raster ``demsr degrade`` cropped to whole blocks) is read
    over the low-res bounds only.
    """
    with (
        open_raster(lowres_path, band=band) as low_reader,
        open_raster(highres_path, band=band) as reader,
    ):
        if not same_crs(low_reader.crs, reader.crs):
            raise ValueError(f"{lowres_path} vs {highres_path}: the rasters have different CRSs")
        scale = integer_scale(low_reader, reader)
        if scale < 2:
            raise ValueError(
                f"{lowres_path}: its cells are not at least twice as large as {highres_path}'s"
            )
        lowres = low_reader.read()
        highres_grid = Grid.of(low_reader).refine(scale)
        transform, shape = highres_grid.transform, highres_grid.shape
        row_off, col_off = locate_grid(reader, transform, shape, os.fspath(lowres_path))
        window = Window(col_off, row_off, shape[1], shape[0])
        highres = reader.read(window)
        transform = reader.window_transform(window)
        crs = reader.crs
    dx, dy = cell_sizes_m(transform, crs, shape[0])
    return EvaluationInputs(
        lowres=lowres[None],
        highres=highres[None],
        scale=scale,
        source=f"{lowres_path} -> {highres_path}",
        kind="raster",
        dx_m=dx[None],
        dy_m=dy[None],
        transform=transform,
        crs=crs,
    )


def inputs_from_product(
    lowres_path: str | os.PathLike[str],
    highres_path: str | os.PathLike[str],
    scale: int,
    band: int = 1,
    *,
    fine_datum: str = "egm96",
    product_datum: str = "egm96",
) -> EvaluationInputs:
    """A real coarse product and a fine DEM put onto its x ``scale`` sub-grid by
    :func:`demsr.products.fine_on_product_grid` (resampled, aggregated or reprojected; the fine
    DEM's nodata and 0 m sea are not scored). Coast cells (within
    :data:`demsr.products.COAST_DISTANCE_PX` product cells of its 0 m line) are scored apart."""
    from demsr.products import fine_on_product_grid

    pair = fine_on_product_grid(
        highres_path,
        lowres_path,
        scale,
        band=band,
        fine_datum=fine_datum,
        product_datum=product_datum,
    )
    dx, dy = cell_sizes_m(pair.transform, pair.crs, pair.highres.shape[0])
    return EvaluationInputs(
        lowres=pair.lowres[None],
        highres=pair.highres[None],
        scale=scale,
        source=f"{lowres_path} -> {highres_path} ({pair.resampling} onto the product's sub-grid)",
        kind="raster",
        dx_m=dx[None],
        dy_m=dy[None],
        transform=pair.transform,
        crs=pair.crs,
        coast=pair.coast()[None],
    )


def _on_exact_subgrid(
    lowres_path: str | os.PathLike[str], highres_path: str | os.PathLike[str], band: int
) -> bool:
    """True when ``highres_path`` lies on the low-res raster's exact sub-grid of some integer
    scale >= 2 (same CRS, cells aligned, covering it): it is then read as it is."""
    with (
        open_raster(lowres_path, band=band) as low_reader,
        open_raster(highres_path, band=band) as reader,
    ):
        if not same_crs(low_reader.crs, reader.crs):
            return False
        try:
            scale = integer_scale(low_reader, reader)
            if scale < 2:
                return False
            highres_grid = Grid.of(low_reader).refine(scale)
            locate_grid(reader, highres_grid.transform, highres_grid.shape, os.fspath(lowres_path))
        except ValueError:
            return False
    return True


def inputs_from_arrays(
    highres_m: np.ndarray,
    lowres_m: np.ndarray | None = None,
    *,
    scale: int | None = None,
    transform: Affine | None = None,
    crs: Any = None,
    cell_size_m: tuple[float, float] | None = None,
    source: str = "arrays",
) -> EvaluationInputs:
    """A high-res truth and its low-res input from arrays: (H, W) or (N, H, W) metres, NaN
    nodata, north-up (row 0 in the north).

    With ``lowres_m`` ((h, w) or (N, h, w), H = h * scale and W = w * scale for one integer
    scale, which ``scale`` must match when given) both are used as they are. Without it,
    ``highres_m`` is cropped to whole ``scale`` x ``scale`` blocks (bottom and right) and its
    block mean is the input, as for a raster (:func:`inputs_from_raster`); ``scale`` is then
    required. Cell sizes for slope and aspect come from ``transform`` (the affine transform of
    the high-res grid, as :class:`demsr.io.Raster` holds it) with ``crs`` (None: the transform
    is in metres), or from ``cell_size_m`` (x, y); with neither, slope and aspect are left out.
    """
    highres = np.asarray(highres_m, dtype=np.float32)
    if highres.ndim == 2:
        highres = highres[None]
    if highres.ndim != 3:
        raise ValueError(f"expected (H, W) or (N, H, W) high-res heights, got {highres.shape}")
    if lowres_m is None:
        if scale is None:
            raise ValueError("give scale (the model's) to degrade the high-res heights")
        highres = crop_to_blocks(highres, scale, source)
        lowres = degrade(highres, scale)
    else:
        lowres = np.asarray(lowres_m, dtype=np.float32)
        if lowres.ndim == 2:
            lowres = lowres[None]
        if lowres.ndim != 3 or lowres.shape[0] != highres.shape[0]:
            raise ValueError(
                f"low-res shape {lowres.shape} does not match high-res shape {highres.shape}"
            )
        found = highres.shape[1] // max(lowres.shape[1], 1)
        if found < 2 or highres.shape[1:] != (lowres.shape[1] * found, lowres.shape[2] * found):
            raise ValueError(
                f"high-res shape {highres.shape[1:]} is not the low-res shape "
                f"{lowres.shape[1:]} times one integer scale >= 2"
            )
        if scale is not None and scale != found:
            raise ValueError(f"the arrays are x{found}, not x{scale}")
        scale = found
    inputs = EvaluationInputs(
        lowres=np.ascontiguousarray(lowres),
        highres=np.ascontiguousarray(highres),
        scale=scale,
        source=source,
        kind="raster",
        transform=transform,
        crs=crs,
    )
    count, rows = highres.shape[0], highres.shape[1]
    if transform is not None:
        dx, dy = cell_sizes_m(transform, crs, rows)
        inputs.dx_m, inputs.dy_m = np.tile(dx, (count, 1)), np.tile(dy, (count, 1))
    elif cell_size_m is not None:
        inputs.dx_m = np.full((count, rows), float(cell_size_m[0]))
        inputs.dy_m = np.full((count, rows), float(cell_size_m[1]))
    return inputs


def load_inputs(
    path: str | os.PathLike[str],
    scale: int,
    lowres_path: str | os.PathLike[str] | None = None,
    band: int = 1,
    cell_size_m: tuple[float, float] | None = None,
    *,
    fine_datum: str = "egm96",
    lowres_datum: str = "egm96",
) -> EvaluationInputs:
    """Pairs (``.h5``), a high-res raster to degrade, or ``lowres_path`` + high-res ``path``:
    read as it is when ``path`` lies on the low-res raster's exact sub-grid in the same vertical
    datum (:func:`inputs_from_rasters`), else put onto it (:func:`inputs_from_product`: a real
    coarse product and any fine DEM under it, heights converted from ``fine_datum`` to
    ``lowres_datum``)."""
    if Path(path).suffix.lower() in PAIR_SUFFIXES:
        if lowres_path is not None:
            raise ValueError(f"{path}: a pair file holds its own low-res inputs; drop --lowres")
        inputs = inputs_from_pairs(path, cell_size_m)
    elif (
        lowres_path is not None
        and fine_datum == lowres_datum
        and _on_exact_subgrid(lowres_path, path, band)
    ):
        inputs = inputs_from_rasters(lowres_path, path, band=band)
    elif lowres_path is not None:
        inputs = inputs_from_product(
            lowres_path,
            path,
            scale,
            band=band,
            fine_datum=fine_datum,
            product_datum=lowres_datum,
        )
    else:
        inputs = inputs_from_raster(path, scale, band=band)
    if inputs.scale != scale:
        raise ValueError(f"{inputs.source}: the data are x{inputs.scale}, the model is x{scale}")
    return inputs


# --------------------------------------------------------------------------------------------
# Predictions
# --------------------------------------------------------------------------------------------


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
    tile_px: int | None = 128,
    ensemble: bool = False,
    progress: bool = True,
) -> np.ndarray:
    """The model's (N, H, W) prediction in metres (NaN over nodata inputs).

    Pairs without nodata run in batches; rasters (and pairs with nodata) run through the tiled
    :func:`demsr.predict.predict_array`. ``ensemble`` averages the 8 flips/rotations. The
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
        return predict_array(resolver, lowres, torch_device, tile_px=tile_px, precision="fp32")

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


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """Metrics of each method (``model`` and baselines) on one set of inputs.

    ``methods[name]`` holds ``rmse``, ``mae``, ``bias``, ``max_abs_error`` (metres), ``psnr_db``,
    ``ssim``, ``slope_rmse_deg`` and ``aspect_mae_deg`` (None when cell sizes are unknown).
    ``breakdown[group][name]`` holds ``cells``, ``rmse``, ``mae``, ``bias`` and
    ``slope_rmse_deg`` for the groups ``land``, ``coast`` (inputs with a coast mask), ``sea`` and
    ``slope a-b deg`` (truth's slope).
    """

    source: str
    kind: str
    images: int
    scale: int
    units: str
    cells: int
    data_range_m: float
    methods: dict[str, dict[str, float | None]] = field(default_factory=dict)
    breakdown: dict[str, dict[str, dict[str, float | None]]] = field(default_factory=dict)
    checkpoint: str | None = None
    self_ensemble: bool = False

    @property
    def pairs(self) -> int:
        return self.images

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "images": self.images,
            "scale": self.scale,
            "units": self.units,
            "cells": self.cells,
            "psnr_ssim_data_range_m": self.data_range_m,
            "checkpoint": self.checkpoint,
            "self_ensemble": self.self_ensemble,
            "aspect_min_slope_deg": ASPECT_MIN_SLOPE_DEG,
            "methods": self.methods,
            "breakdown": self.breakdown,
        }

    def tables(self) -> list[tuple[str, list[str], list[list[str]]]]:
        """The results as (title, header, rows) tables of formatted numbers: all metrics per
        method, then the RMSE of each method per group (land, sea, slope classes)."""
        header = ["method", "RMSE m", "MAE m", "bias m", "max abs err m", "PSNR dB", "SSIM"]
        header += ["slope RMSE deg", "aspect MAE deg"]
        columns = [
            ("rmse", 3),
            ("mae", 3),
            ("bias", 3),
            ("max_abs_error", 2),
            ("psnr_db", 2),
            ("ssim", 4),
            ("slope_rmse_deg", 3),
            ("aspect_mae_deg", 2),
        ]
        rows = [
            [name] + [_number(values.get(key), digits) for key, digits in columns]
            for name, values in self.methods.items()
        ]
        tables = [("Metrics", header, rows)]
        if self.breakdown:
            names = list(self.methods)
            header = ["group", "cells"] + [f"{name} RMSE m" for name in names]
            rows = []
            for group, by_method in self.breakdown.items():
                cells = next(iter(by_method.values()))["cells"]
                rows.append(
                    [group, f"{cells:,}"] + [_number(by_method[name]["rmse"], 3) for name in names]
                )
            tables.append(("RMSE by group", header, rows))
        return tables

    def caption(self) -> str:
        """One line saying what was scored and how."""
        ensemble = ", model with x8 self-ensemble" if self.self_ensemble else ""
        return (
            f"{self.source}: {self.images} {'pairs' if self.kind == 'pairs' else 'raster(s)'}, "
            f"x{self.scale}, {self.cells:,} cells scored, errors in {self.units}; PSNR/SSIM data "
            f"range {self.data_range_m:.1f} m (truth max - min); aspect where the truth's slope "
            f">= {ASPECT_MIN_SLOPE_DEG:g} deg{ensemble}"
        )

    def table(self) -> str:
        """Plain-text tables for the terminal."""
        text = [self.caption()]
        for _title, header, rows in self.tables():
            text += ["", _plain_table(header, rows)]
        return "\n".join(text)

    def markdown(self) -> str:
        """The same tables as Markdown."""
        text = [f"*{self.caption()}*"]
        for title, header, rows in self.tables():
            text += ["", f"{title}:", "", _markdown_table(header, rows)]
        return "\n".join(text) + "\n"

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return Path(path)

    def write_markdown(self, path: str | os.PathLike[str]) -> Path:
        with atomic_path(path) as tmp:
            tmp.write_text(self.markdown())
        return Path(path)


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _plain_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _slopes(values: np.ndarray, inputs: EvaluationInputs) -> tuple[np.ndarray, np.ndarray]:
    """Slope and aspect (degrees) of (N, H, W) values on the inputs' cell sizes."""
    assert inputs.dx_m is not None and inputs.dy_m is not None
    slopes = np.empty(values.shape)
    aspects = np.empty(values.shape)
    for index, image in enumerate(values):
        slopes[index], aspects[index] = slope_aspect_deg(
            image, inputs.dx_m[index], inputs.dy_m[index]
        )
    return slopes, aspects


def _errors_summary(errors: np.ndarray) -> dict[str, float | None]:
    if errors.size == 0:
        return {"rmse": None, "mae": None, "bias": None}
    return {
        "rmse": root_mean_square(errors),
        "mae": float(np.mean(np.abs(errors))),
        "bias": float(np.mean(errors)),
    }


def score(
    inputs: EvaluationInputs,
    predictions: dict[str, np.ndarray],
    checkpoint: str | None = None,
    self_ensemble: bool = False,
) -> Evaluation:
    """Metrics of each named (N, H, W) prediction against ``inputs.highres``.

    Every method is scored on the same cells: where the truth and all predictions are finite.
    ``checkpoint`` and ``self_ensemble`` (the model averaged its 8 flips/rotations) are recorded.
    """
    truth = inputs.highres.astype(np.float64)
    valid = np.isfinite(truth)
    for name, values in predictions.items():
        if values.shape != truth.shape:
            raise ValueError(f"{name}: prediction {values.shape} vs truth {truth.shape}")
        valid &= np.isfinite(values)
    if not valid.any():
        raise ValueError(f"{inputs.source}: no cell has a value in the truth and every prediction")
    truth = np.where(valid, truth, np.nan)
    data_range = float(np.nanmax(truth) - np.nanmin(truth))
    result = Evaluation(
        source=inputs.source,
        kind=inputs.kind,
        images=len(truth),
        scale=inputs.scale,
        units=inputs.units,
        cells=int(valid.sum()),
        data_range_m=data_range,
        checkpoint=checkpoint,
        self_ensemble=self_ensemble,
    )
    has_slope = inputs.dx_m is not None and inputs.units == "m"
    inland = valid if inputs.coast is None else valid & ~inputs.coast
    groups: dict[str, np.ndarray] = {"land": inland & (truth > 0)}
    if inputs.coast is not None:
        groups["coast"] = valid & inputs.coast
    groups["sea"] = inland & (truth <= 0)
    if has_slope:
        truth_slope, truth_aspect = _slopes(truth, inputs)
        for lower, upper in SLOPE_CLASSES_DEG:
            groups[f"slope {lower:g}-{upper:g} deg"] = (
                valid & (truth_slope >= lower) & (truth_slope < upper)
            )
    for name, values in predictions.items():
        values = np.where(valid, values, np.nan)
        errors = values - truth
        valid_errors = errors[valid]
        rmse_m = root_mean_square(valid_errors)
        metrics: dict[str, float | None] = {
            **_errors_summary(valid_errors),
            "max_abs_error": float(np.max(np.abs(valid_errors))),
            "psnr_db": psnr_from_rmse(rmse_m, data_range) if data_range > 0 else None,
            "ssim": _ssim_or_none(values, truth, data_range),
            "slope_rmse_deg": None,
            "aspect_mae_deg": None,
        }
        slope_error: np.ndarray | None = None
        slope_finite: np.ndarray | None = None
        if has_slope:
            slope, aspect = _slopes(values, inputs)
            slope_error = slope - truth_slope
            slope_finite = np.isfinite(slope_error)
            if slope_finite.any():
                metrics["slope_rmse_deg"] = root_mean_square(slope_error[slope_finite])
            steep = slope_finite & (truth_slope >= ASPECT_MIN_SLOPE_DEG)
            if steep.any():
                metrics["aspect_mae_deg"] = float(
                    np.mean(angle_difference_deg(aspect[steep], truth_aspect[steep]))
                )
        result.methods[name] = metrics
        for group, mask in groups.items():
            if not mask.any():
                continue
            entry: dict[str, float | None] = {
                "cells": int(mask.sum()),
                **_errors_summary(errors[mask]),
            }
            if slope_error is not None and slope_finite is not None:
                finite = mask & slope_finite
                entry["slope_rmse_deg"] = (
                    root_mean_square(slope_error[finite]) if finite.any() else None
                )
            result.breakdown.setdefault(group, {})[name] = entry
    return result


def _ssim_or_none(values: np.ndarray, truth: np.ndarray, data_range: float) -> float | None:
    if data_range <= 0:
        return None
    try:
        return ssim(values, truth, data_range)
    except ValueError:  # no window fits the valid cells
        return None


def predict_methods(
    models: Mapping[str, Checkpoint | str | os.PathLike[str]],
    inputs: EvaluationInputs,
    baselines: Iterable[str] = tuple(BASELINES),
    ensemble: bool = False,
    device: str = "auto",
    batch_size: int = 16,
    tile_px: int | None = 128,
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
    tile_px: int | None = 128,
    progress: bool = True,
) -> Evaluation:
    """Score a checkpoint (as ``model``) and the named baselines on ``inputs`` (see
    :func:`load_inputs`)."""
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
    tile_px: int | None = 128,
    progress: bool = True,
) -> Evaluation:
    """:func:`evaluate` on a high-res raster file: against its own block mean over the model's
    scale (:func:`inputs_from_raster`), or against ``lowres_path``, a low-res raster on a grid
    that many times coarser (:func:`inputs_from_rasters`). Nodata cells are not scored."""
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
    tile_px: int | None = 128,
    progress: bool = True,
) -> Evaluation:
    """:func:`evaluate` on arrays in metres (NaN = nodata, not scored): the high-res truth
    (H, W) or (N, H, W) and its low-res input, by default its block mean over the model's scale
    (see :func:`inputs_from_arrays`, which also says how ``transform``, ``crs`` and
    ``cell_size_m`` give the cell sizes that slope and aspect errors need)."""
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
