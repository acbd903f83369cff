"""The tile engine: a model run over a low-res grid tile by tile, seamlessly, nodata-aware.

:func:`predict_array` (an array in memory) and :func:`demsr.predict.predict_raster` (a raster
file of any size) both run it. The grid is cut into tiles (:mod:`demsr.tiling`); each tile reads
its core plus a margin of ``SuperResolver.margin_px`` low-res cells (the network's receptive
field plus the trend removal's reach), so the core's output equals that of a whole-grid run up
to float32 rounding, and no seams appear. Memory depends on the tile size and batch size only,
never on the grid's size.

Nodata: before the network runs, nodata cells are filled with their nearest valid neighbour (so
that they do not drag the surrounding prediction towards an arbitrary value), and the output cells
whose low-res parent is nodata are set back to nodata. A tile fills from a window grown by
``floor(sqrt(2) * margin_px)`` cells beyond its read window: every filled cell that can influence
a valid output cell has a valid cell within that distance (the output's own parent), so the
fill, and hence the output, is the same as the whole grid's (ties between equally near valid
cells aside). Tiles whose core holds no valid cell are skipped: they never reach the network.

A process keeps the checkpoint file :func:`~demsr.predict.predict_raster` loaded last, and its
prepared networks, for its next raster (:func:`kept_checkpoint`, :func:`kept_network`).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from affine import Affine
from rasterio.windows import Window

from demsr.checkpoint import Checkpoint, as_checkpoint
from demsr.ensemble import (
    UncertaintyCalibration,
    ensemble_mean_spread,
    input_slope_deg,
    recorded_calibration,
)
from demsr.grid import Grid
from demsr.io import RasterError, fill_nearest, to_float32_heights
from demsr.model import (
    SuperResolver,
    network_autocast,
    prepare_for_inference,
    resolve_device,
)
from demsr.overlap import read_ahead
from demsr.precision import PrecisionChoice, choose_precision, recorded_bf16_bound
from demsr.tiling import (
    Tile,
    batch_tiles,
    expand_window,
    scale_window,
    tile_grid,
    wrapped_segments,
)


def require_two_cells(rows: int, cols: int, name: str) -> None:
    """A RasterError for an input less than 2 cells wide or high: one cell says nothing about
    the relief inside it, and the network would invent some."""
    if rows < 2 or cols < 2:
        raise RasterError(
            f"{name}: {rows} x {cols} cells is too small to super-resolve (at least 2 x 2 needed)"
        )


def upscale_mask(valid: np.ndarray, scale: int) -> np.ndarray:
    """Each low-res cell's flag repeated over its scale x scale high-res footprint."""
    return np.repeat(np.repeat(valid, scale, axis=0), scale, axis=1)


def fill_margin_px(margin_px: int) -> int:
    """Cells beyond a read window that nearest-valid filling must see: ``floor(sqrt(2) * m)``.

    A filled cell q within ``m`` cells (Chebyshev) of a valid cell p has a valid cell within
    Euclidean distance ``|p - q| <= sqrt(2) * m``, hence within that many cells along each axis.
    """
    return math.isqrt(2 * margin_px * margin_px)


def wrapping(
    read: Callable[[Window], np.ndarray], wrap_cols: int | None
) -> Callable[[Window], np.ndarray]:
    """``read`` extended to windows past a global grid's western or eastern edge, whose
    columns continue across the antimeridian (every ``wrap_cols`` columns); ``read`` itself
    when the grid does not wrap."""
    if wrap_cols is None:
        return read

    def read_wrapped(window: Window) -> np.ndarray:
        row, height = int(window.row_off), int(window.height)
        segments = wrapped_segments(int(window.col_off), int(window.width), wrap_cols)
        parts = [read(Window(start, row, stop - start, height)) for start, stop in segments]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    return read_wrapped


@dataclass
class Network:
    """The model as prediction runs it: ``run`` is ``resolver`` prepared for fast inference
    (channels-last, maybe compiled), at ``precision`` (resolved: fp32 or bf16) on ``device``."""

    resolver: SuperResolver
    run: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device
    choice: PrecisionChoice
    ensemble: Ensemble | None = None

    @property
    def precision(self) -> str:
        return self.choice.precision

    @classmethod
    def prepare(
        cls,
        resolver: SuperResolver,
        device: torch.device,
        precision: str,
        compile: bool,
        bf16_bound_m: float | None = None,
    ) -> Network:
        """``precision`` ``auto`` is bf16 only with a recorded ``bf16_bound_m`` on a device
        with native bf16 (:func:`demsr.precision.choose_precision`)."""
        choice = choose_precision(precision, device, bf16_bound_m)
        prepared = prepare_for_inference(resolver, device, compile=compile)
        return cls(resolver, prepared, device, choice)

    @classmethod
    def of_checkpoint(
        cls, checkpoint: Checkpoint, device: torch.device, precision: str, compile: bool
    ) -> Network:
        """:meth:`prepare` for ``checkpoint``'s network, with the bf16 bound it records."""
        return cls.prepare(
            checkpoint.build_resolver(device),
            device,
            precision,
            compile,
            recorded_bf16_bound(checkpoint),
        )


@dataclass
class _TileInput:
    """A tile ready for the network: filled read window (float32 metres, all finite) and the
    validity of its core cells."""

    tile: Tile
    lowres_m: np.ndarray
    core_valid: np.ndarray


def _prepare_tile(
    tile: Tile,
    read_lowres: Callable[[Window], np.ndarray],
    fill_px: int,
    grid: Grid,
    wrap_cols: int | None,
) -> _TileInput | None:
    """Read and fill one tile of ``grid`` (wrapping every ``wrap_cols`` columns, if set); None
    when its core holds no valid cell."""
    values = read_lowres(tile.read)
    valid = np.isfinite(values)
    core_valid = valid[tile.core_in_read.toslices()]
    if not core_valid.any():
        return None
    if not valid.all():
        rows, cols = grid.shape
        wide = expand_window(tile.read, fill_px, rows, cols, wrap_cols=wrap_cols)
        filled = fill_nearest(read_lowres(wide) if wide != tile.read else values)
        row = int(tile.read.row_off - wide.row_off)
        col = int(tile.read.col_off - wide.col_off)
        values = filled[row : row + values.shape[0], col : col + values.shape[1]]
    return _TileInput(tile, np.ascontiguousarray(values, dtype=np.float32), core_valid)


def _run_batch(network: Network, batch: list[_TileInput]) -> list[tuple[Tile, np.ndarray]]:
    """Run tiles of one read shape through the network; each core's (h*s, w*s) metres, NaN
    where the low-res parent is nodata ((2, h*s, w*s) with the ensemble: mean, uncertainty)."""
    if network.ensemble is not None:
        return _run_batch_ensemble(network, network.ensemble, batch)
    scale = network.resolver.scale
    inputs = torch.from_numpy(np.stack([item.lowres_m for item in batch]))[:, None]
    with (
        torch.inference_mode(),
        network_autocast(network.device, network.precision),
    ):
        output = network.run(inputs.to(network.device))
    highres = output[:, 0].float().cpu().numpy()
    results = []
    for item, tile_highres in zip(batch, highres, strict=True):
        core = scale_window(item.tile.core_in_read, scale)
        values = np.array(tile_highres[core.toslices()], dtype=np.float32)
        values[~upscale_mask(item.core_valid, scale)] = np.nan
        results.append((item.tile, values))
    return results


@dataclass(frozen=True)
class Ensemble:
    """The self-ensemble of a run (``--ensemble``): its uncertainty calibration and the low-res
    grid's cell sizes in metres, per row (for the input's slope, :mod:`demsr.ensemble`)."""

    calibration: UncertaintyCalibration
    dx_m: np.ndarray
    dy_m: np.ndarray


def _run_batch_ensemble(
    network: Network, ensemble: Ensemble, batch: list[_TileInput]
) -> list[tuple[Tile, np.ndarray]]:
    """:func:`_run_batch` over the 8 flips/rotations of each padded tile: each core's
    (2, h*s, w*s) mean and calibrated uncertainty in metres, NaN where the parent is nodata.

    A flipped tile with its margin is the flipped raster's tile, so the core's mean and spread
    equal a whole-raster ensemble's; the input slope of the core reads the tile's own (filled)
    margin, or the repeated edge cells where the tile meets the raster's edge, as the whole
    raster does."""
    scale = network.resolver.scale
    inputs = torch.from_numpy(np.stack([item.lowres_m for item in batch]))[:, None]
    with (
        torch.inference_mode(),
        network_autocast(network.device, network.precision),
    ):
        mean, spread = ensemble_mean_spread(network.run, inputs.to(network.device))
    mean_m = mean[:, 0].cpu().numpy()
    spread_m = spread[:, 0].cpu().numpy()
    results = []
    for index, item in enumerate(batch):
        read = item.tile.read
        rows = slice(int(read.row_off), int(read.row_off + read.height))
        slope = input_slope_deg(item.lowres_m, ensemble.dx_m[rows], ensemble.dy_m[rows])
        core_lowres = item.tile.core_in_read.toslices()
        core = scale_window(item.tile.core_in_read, scale).toslices()
        sigma = ensemble.calibration.sigma_m(
            spread_m[index][core], upscale_mask(slope[core_lowres], scale)
        )
        values = np.stack([mean_m[index][core], sigma]).astype(np.float32)
        values[:, ~upscale_mask(item.core_valid, scale)] = np.nan
        results.append((item.tile, values))
    return results


def predict_batches(
    network: Network,
    batches: Iterable[list[Tile]],
    read_lowres: Callable[[Window], np.ndarray],
    grid: Grid,
    wrap_cols: int | None,
) -> Generator[list[tuple[Tile, np.ndarray | None]], None, None]:
    """Predict batches of tiles of ``grid`` (of one read shape each, see ``batch_tiles``),
    yielding for each batch its (tile, core output) pairs; None marks a tile without valid
    cells, which never reaches the network. ``read_lowres`` reads windows inside the grid
    (float32 metres, NaN = nodata); with ``wrap_cols`` set, windows past its western or eastern
    edge are read across the antimeridian (:func:`wrapping`). The next batch is read while the
    network runs on this one (:func:`demsr.overlap.read_ahead`): ``read_lowres`` runs in a
    background thread, one call at a time."""
    fill_px = fill_margin_px(network.resolver.margin_px)
    read_lowres = wrapping(read_lowres, wrap_cols)

    def prepare(batch: list[Tile]) -> tuple[list[Tile], list[_TileInput | None]]:
        return batch, [_prepare_tile(tile, read_lowres, fill_px, grid, wrap_cols) for tile in batch]

    prepared_batches = read_ahead(batches, prepare)
    with contextlib.closing(prepared_batches):  # closed with this generator, not by the GC
        for batch, prepared in prepared_batches:
            ready = [item for item in prepared if item is not None]
            results: list[tuple[Tile, np.ndarray | None]] = [
                (tile, None) for tile, item in zip(batch, prepared, strict=True) if item is None
            ]
            if ready:
                results.extend(_run_batch(network, ready))
            yield results


def predict_array(
    model: SuperResolver | Checkpoint | str | os.PathLike[str],
    lowres_m: np.ndarray,
    device: torch.device | str = "cpu",
    tile_px: int | None = None,
    batch_size: int = 4,
    precision: str = "auto",
    compile: bool = False,
    wrap_cols: int | None = None,
) -> np.ndarray:
    """Super-resolve a (rows, cols) DEM in metres (NaN = nodata) to (rows*s, cols*s) metres.

    ``model`` is a :class:`~demsr.model.SuperResolver` (metres in, metres out), a loaded
    :class:`~demsr.checkpoint.Checkpoint` or a checkpoint file; s is its scale. ``lowres_m``
    is any array of heights (converted to float32; non-finite cells are nodata and the caller's
    array is not changed); north-up like a raster, row 0 in the north. Output cells whose
    low-res parent is nodata are NaN (all of them if no cell is valid); the other cells are
    predicted from the nearest valid values. ``device`` is ``cpu``, ``cuda[:N]`` or ``auto``.
    ``tile_px`` None runs the whole array at once (network memory grows with its area);
    otherwise tiles of ``tile_px`` cells with ``resolver.margin_px`` of context run in batches
    of ``batch_size`` and give the same values to float32 rounding in fp32 (in bf16, whose
    rounding depends on the tile's shape, within the model's bf16 error: up to 0.5 m on the
    test DEMs for the shipped model, 3 cm or less on average). ``precision`` ``auto``
    (the default) runs the network's residual blocks in bf16 where the device computes bf16
    natively (a recent GPU, a CPU with AMX or AVX512-BF16) and ``model`` is a checkpoint that
    records its measured bf16 error (:mod:`demsr.precision`), else fp32 (a bare
    ``SuperResolver`` records none); the elevations stay float32. ``compile`` uses
    ``torch.compile`` (see :func:`~demsr.model.prepare_for_inference`). ``wrap_cols`` makes
    the array wrap east-west every that many columns (a global grid, see
    :func:`demsr.tiling.global_period`): cells by its western and eastern edges see their
    neighbours across the antimeridian.
    """
    lowres_m = _lowres_array(lowres_m)
    torch_device = resolve_device(device) if isinstance(device, str) else device
    if isinstance(model, SuperResolver):
        network = Network.prepare(model, torch_device, precision, compile)
    else:
        network = Network.of_checkpoint(as_checkpoint(model), torch_device, precision, compile)
    return _predict_in_memory(network, lowres_m, tile_px, batch_size, wrap_cols)[0]


def _lowres_array(lowres_m: np.ndarray) -> np.ndarray:
    """``lowres_m`` as an array; a ValueError unless it is (rows, cols)."""
    lowres_m = np.asarray(lowres_m)
    if lowres_m.ndim != 2:
        raise ValueError(f"expected a (rows, cols) array, got shape {lowres_m.shape}")
    return lowres_m


def _predict_in_memory(
    network: Network,
    lowres_m: np.ndarray,
    tile_px: int | None,
    batch_size: int,
    wrap_cols: int | None,
) -> np.ndarray:
    """:func:`predict_array`'s tiles: (bands, rows*s, cols*s) metres, NaN = nodata (one band,
    or the ensemble's two)."""
    resolver = network.resolver
    rows, cols = lowres_m.shape
    scale = resolver.scale
    if tile_px is None:
        # One tile; a wrapping array still needs its context across the edges.
        margin = 0 if wrap_cols is None else resolver.margin_px
        tiles = tile_grid(rows, cols, max(rows, cols), margin, wrap_cols=wrap_cols)
    else:
        tiles = tile_grid(rows, cols, tile_px, resolver.margin_px, wrap_cols=wrap_cols)

    def read_lowres(window: Window) -> np.ndarray:
        return to_float32_heights(lowres_m[window.toslices()], copy=True)

    bands = 1 if network.ensemble is None else 2
    highres_m = np.full((bands, rows * scale, cols * scale), np.nan, np.float32)
    grid = Grid((rows, cols), Affine.identity())  # an array: no georeferencing
    batches = predict_batches(network, batch_tiles(tiles, batch_size), read_lowres, grid, wrap_cols)
    with contextlib.closing(batches):  # the read-ahead thread ends here, whatever happens
        for batch in batches:
            for tile, values in batch:
                if values is not None:
                    highres_m[(slice(None),) + scale_window(tile.core, scale).toslices()] = values
    return highres_m


def predict_array_ensemble(
    model: Checkpoint | str | os.PathLike[str],
    lowres_m: np.ndarray,
    cell_size_m: tuple[np.ndarray | float, np.ndarray | float],
    device: torch.device | str = "cpu",
    tile_px: int | None = None,
    batch_size: int = 4,
    precision: str = "auto",
    compile: bool = False,
    wrap_cols: int | None = None,
    calibration: UncertaintyCalibration | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`predict_array` with the self-ensemble: the mean of the 8 flips/rotations of the
    prediction and its calibrated uncertainty (one-sigma estimated error), both (rows*s,
    cols*s) float32 metres, NaN where the low-res parent is nodata (:mod:`demsr.ensemble`).

    ``cell_size_m`` is the low-res grid's (x, y) cell size in metres, scalars or per-row
    arrays of shape (rows,) (:func:`demsr.metrics.cell_sizes_m` of a geographic grid), for the
    input slope that classes the cells. ``calibration`` None takes the one recorded in
    ``model`` (:class:`~demsr.ensemble.CalibrationMissing` when it has none). 8 times the
    compute of :func:`predict_array`; the other arguments are its own, and tiled output equals
    whole-array output for both arrays, as there.
    """
    lowres_m = _lowres_array(lowres_m)
    rows = lowres_m.shape[0]
    checkpoint = as_checkpoint(model)
    if calibration is None:
        calibration = recorded_calibration(checkpoint)
    dx_m, dy_m = (np.broadcast_to(np.asarray(size, np.float64), (rows,)) for size in cell_size_m)
    torch_device = resolve_device(device) if isinstance(device, str) else device
    network = Network.of_checkpoint(checkpoint, torch_device, precision, compile)
    network.ensemble = Ensemble(calibration, dx_m, dy_m)
    mean_m, sigma_m = _predict_in_memory(network, lowres_m, tile_px, batch_size, wrap_cols)
    return mean_m, sigma_m


@dataclass
class _Kept:
    """The checkpoint file a process predicted with last, and its prepared networks."""

    key: tuple[str, int, int]
    checkpoint: Checkpoint
    networks: dict[tuple[str, str, bool], Network]


_kept: list[_Kept] = []  # at most one


def kept_checkpoint(value: Checkpoint | str | os.PathLike[str]) -> Checkpoint:
    """``as_checkpoint(value)``, kept for the next prediction in this process: a checkpoint
    file (or shipped model's name) is loaded again only when its path, size or modification
    time changed. A loaded :class:`Checkpoint` is used as it is, and not kept."""
    if isinstance(value, Checkpoint):
        return value
    from demsr.pretrained import resolve_checkpoint

    resolved = resolve_checkpoint(value)
    try:
        stat = Path(resolved).stat()
    except OSError:
        return as_checkpoint(resolved)  # its own error
    key = (str(Path(resolved).resolve()), stat.st_size, stat.st_mtime_ns)
    if _kept and _kept[0].key == key:
        return _kept[0].checkpoint
    checkpoint = as_checkpoint(resolved)
    _kept[:] = [_Kept(key, checkpoint, {})]
    return checkpoint


def kept_network(
    checkpoint: Checkpoint, device: torch.device, precision: str, compile: bool
) -> Network:
    """The network of ``checkpoint`` prepared for ``device``, ``precision`` and ``compile``;
    kept with a checkpoint :func:`kept_checkpoint` keeps, so that predicting many rasters in
    one process builds (and compiles) it once."""
    kept = next((item for item in _kept if item.checkpoint is checkpoint), None)
    key = (str(device), precision, compile)
    if kept is not None and key in kept.networks:
        return kept.networks[key]
    network = Network.of_checkpoint(checkpoint, device, precision, compile)
    if kept is not None:
        kept.networks[key] = network
    return network
