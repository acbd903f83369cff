"""What an evaluation scores: low-res inputs, the high-res truth and the truth's cell sizes
(:class:`EvaluationInputs`), from one of three kinds of input (:func:`load_inputs` picks by the
arguments):

- an HDF5 pair file (``test/test.h5``): the model and the baselines upsample each low-res patch;
- a high-res raster: it is cropped to whole ``scale`` x ``scale`` blocks and degraded by block
  mean (as training pairs are made), and the result is compared with the raster itself;
- a low-res raster plus a high-res reference raster covering the same bounds on a grid
  ``scale`` times finer (read as it is when it lies on the low-res raster's exact sub-grid, else
  put onto it as under a real coarse product: :func:`inputs_from_product`).

Arrays in memory work the same way (:func:`inputs_from_arrays`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from rasterio.windows import Window

from demsr.datasets import read_pair_file
from demsr.grid import Grid
from demsr.io import (
    RasterError,
    integer_scale,
    locate_grid,
    open_raster,
    read_raster,
    same_crs,
)
from demsr.metrics import cell_sizes_m
from demsr.prepare import crop_to_blocks, degrade

log = logging.getLogger(__name__)

PAIR_SUFFIXES = (".h5", ".hdf5", ".he5")


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
