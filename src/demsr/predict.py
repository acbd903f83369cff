"""Super-resolve DEM arrays and rasters of any size with a checkpoint, tile by tile.

The raster is cut into tiles (:mod:`demsr.tiling`); each tile reads its core plus a margin of
``SuperResolver.margin_px`` low-res cells (the network's receptive field plus the trend removal's
reach), so the core's output equals that of a whole-raster run up to float32 rounding, and no
seams appear. Memory depends on the tile size and batch size only, never on the raster's size.

Nodata: before the network runs, nodata cells are filled with their nearest valid neighbour (so
that they do not drag the surrounding prediction towards an arbitrary value), and the output cells
whose low-res parent is nodata are set back to nodata. A tile fills from a window grown by
``floor(sqrt(2) * margin_px)`` cells beyond its read window: every filled cell that can influence
a valid output cell has a valid cell within that distance (the output's own parent), so the
fill, and hence the output, is the same as the whole raster's (ties between equally near valid
cells aside). Tiles whose core holds no valid cell are skipped and written as nodata.

Output georeferencing: the input's CRS and bounds, the pixel size divided by the scale.

:func:`predict_raster` writes finished tiles into the chunked Zarr store
``<output>.partial.zarr`` (:mod:`demsr.tilestore`: one chunk per tile, a log of finished tiles
per rank), so an interrupted run resumes where it stopped (``resume=True``). Once every tile is
done, :func:`demsr.io.finalise_output` turns the store into the product (COG, CF NetCDF or Zarr)
and the store is deleted.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rasterio.windows import Window
from rasterio.windows import transform as window_transform
from tqdm import tqdm

from demsr import __version__, distributed
from demsr.checkpoint import Checkpoint, as_checkpoint, checkpoint_sha256
from demsr.distributed import RankContext
from demsr.ensemble import (
    UNCERTAINTY_NAME,
    UncertaintyCalibration,
    ensemble_mean_spread,
    input_slope_deg,
    recorded_calibration,
)
from demsr.grid import Grid
from demsr.io import (
    CANONICAL_UNITS,
    AncillaryBand,
    RasterError,
    RasterReader,
    fill_nearest,
    finalise_output,
    open_raster,
    output_format,
    refuse_existing,
    refuse_output_over_input,
    remove_stale_temporaries,
    require_crs,
    require_writable_folder,
    to_float32_heights,
)
from demsr.metrics import cell_sizes_m
from demsr.model import (
    SuperResolver,
    network_autocast,
    prepare_for_inference,
    resolve_device,
)
from demsr.precision import PrecisionChoice, choose_precision, recorded_bf16_bound
from demsr.predict_settings import PredictSettings
from demsr.stops import stop_point
from demsr.tilestore import (
    ARRAY,
    UNCERTAINTY_ARRAY,
    MemoryTileStore,
    OutputGrid,
    TileStore,
    check_not_busy,
)
from demsr.tiling import (
    Tile,
    TileTransform,
    batch_tiles,
    deal_batches,
    expand_window,
    global_period,
    scale_window,
    tile_count,
    tile_grid,
    wrapped_segments,
)

log = logging.getLogger(__name__)
# Each rank's own progress (throughput, ETA): logged by every rank, where other messages are
# left to rank 0 (see demsr.cli.configure_logging).
progress_log = logging.getLogger("demsr.progress")


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


@dataclass(frozen=True)
class _Grid:
    """The low-res raster tiles are cut from: its size, and its period when it wraps east-west
    (see :func:`demsr.tiling.global_period`)."""

    rows: int
    cols: int
    wrap_cols: int | None = None

    def expand(self, window: Window, margin_px: int) -> Window:
        return expand_window(window, margin_px, self.rows, self.cols, wrap_cols=self.wrap_cols)


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


# --------------------------------------------------------------------------------------------
# Tile engine: shared by predict_array (in memory) and predict_raster (windowed file io)
# --------------------------------------------------------------------------------------------


@dataclass
class _Network:
    """The model as prediction runs it: ``run`` is ``resolver`` prepared for fast inference
    (channels-last, maybe compiled), at ``precision`` (resolved: fp32 or bf16) on ``device``."""

    resolver: SuperResolver
    run: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device
    choice: PrecisionChoice
    ensemble: _Ensemble | None = None

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
    ) -> _Network:
        """``precision`` ``auto`` is bf16 only with a recorded ``bf16_bound_m`` on a device
        with native bf16 (:func:`demsr.precision.choose_precision`)."""
        choice = choose_precision(precision, device, bf16_bound_m)
        prepared = prepare_for_inference(resolver, device, compile=compile)
        return cls(resolver, prepared, device, choice)


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
    grid: _Grid,
) -> _TileInput | None:
    """Read and fill one tile; None when its core holds no valid cell."""
    values = read_lowres(tile.read)
    valid = np.isfinite(values)
    core_valid = valid[tile.core_in_read.toslices()]
    if not core_valid.any():
        return None
    if not valid.all():
        wide = grid.expand(tile.read, fill_px)
        filled = fill_nearest(read_lowres(wide) if wide != tile.read else values)
        row = int(tile.read.row_off - wide.row_off)
        col = int(tile.read.col_off - wide.col_off)
        values = filled[row : row + values.shape[0], col : col + values.shape[1]]
    return _TileInput(tile, np.ascontiguousarray(values, dtype=np.float32), core_valid)


def _run_batch(network: _Network, batch: list[_TileInput]) -> list[tuple[Tile, np.ndarray]]:
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
class _Ensemble:
    """The self-ensemble of a run (``--ensemble``): its uncertainty calibration and the low-res
    grid's cell sizes in metres, per row (for the input's slope, :mod:`demsr.ensemble`)."""

    calibration: UncertaintyCalibration
    dx_m: np.ndarray
    dy_m: np.ndarray


def _run_batch_ensemble(
    network: _Network, ensemble: _Ensemble, batch: list[_TileInput]
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


def _predict_batches(
    network: _Network,
    batches: Iterable[list[Tile]],
    read_lowres: Callable[[Window], np.ndarray],
    grid: _Grid,
) -> Iterator[list[tuple[Tile, np.ndarray | None]]]:
    """Predict batches of tiles (of one read shape each, see ``batch_tiles``), yielding for
    each batch its (tile, core output) pairs; None marks a tile without valid cells, which never
    reaches the network."""
    fill_px = fill_margin_px(network.resolver.margin_px)
    for batch in batches:
        prepared = [_prepare_tile(tile, read_lowres, fill_px, grid) for tile in batch]
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
    of ``batch_size`` and give the same values to float32 rounding in fp32 (to millimetres in
    bf16, whose rounding depends on the tile's shape). ``precision`` ``auto``
    (the default) runs the network's residual blocks in bf16 where the device computes bf16
    natively (a recent GPU, a CPU with AMX or AVX512-BF16) and ``model`` is a checkpoint that
    records its measured bf16 error (:mod:`demsr.precision`), else fp32 (a bare
    ``SuperResolver`` records none); the elevations stay float32. ``compile`` uses
    ``torch.compile`` (see :func:`~demsr.model.prepare_for_inference`). ``wrap_cols`` makes
    the array wrap east-west every that many columns (a global grid, see
    :func:`demsr.tiling.global_period`): cells by its western and eastern edges see their
    neighbours across the antimeridian.
    """
    lowres_m = np.asarray(lowres_m)
    if lowres_m.ndim != 2:
        raise ValueError(f"expected a (rows, cols) array, got shape {lowres_m.shape}")
    torch_device = resolve_device(device) if isinstance(device, str) else device
    bound = None
    if isinstance(model, SuperResolver):
        resolver = model
    else:
        checkpoint = as_checkpoint(model)
        resolver = checkpoint.build_resolver(torch_device)
        bound = recorded_bf16_bound(checkpoint)
    network = _Network.prepare(resolver, torch_device, precision, compile, bound)
    return _predict_in_memory(network, lowres_m, tile_px, batch_size, wrap_cols)[0]


def _predict_in_memory(
    network: _Network,
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
    grid = _Grid(rows, cols, wrap_cols)
    batches = _predict_batches(
        network, batch_tiles(tiles, batch_size), wrapping(read_lowres, wrap_cols), grid
    )
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
    lowres_m = np.asarray(lowres_m)
    if lowres_m.ndim != 2:
        raise ValueError(f"expected a (rows, cols) array, got shape {lowres_m.shape}")
    rows = lowres_m.shape[0]
    checkpoint = as_checkpoint(model)
    if calibration is None:
        calibration = recorded_calibration(checkpoint)
    dx_m, dy_m = (np.broadcast_to(np.asarray(size, np.float64), (rows,)) for size in cell_size_m)
    torch_device = resolve_device(device) if isinstance(device, str) else device
    network = _Network.prepare(
        checkpoint.build_resolver(torch_device),
        torch_device,
        precision,
        compile,
        recorded_bf16_bound(checkpoint),
    )
    network.ensemble = _Ensemble(calibration, dx_m, dy_m)
    mean_m, sigma_m = _predict_in_memory(network, lowres_m, tile_px, batch_size, wrap_cols)
    return mean_m, sigma_m


# --------------------------------------------------------------------------------------------
# Rasters: a partial Zarr store any number of ranks write into, resumable
# --------------------------------------------------------------------------------------------


_SIMPLE = (str, int, float, bool, type(None))


def _describe_hook(hook: Callable[..., Any] | None) -> str | None:
    """What the manifest records of a transform hook, so that a resume with another one fails.

    A function: its qualified name plus the plain values (str, numbers, bools) it closes over,
    e.g. ``demsr.datum.datum_transform.<locals>.convert_tile(source='egm96', target='wgs84')``;
    a ``functools.partial``: its function and plain arguments; another object: its repr when
    its class defines one (a dataclass's repr states its settings), else its class's name.
    """
    if hook is None:
        return None
    if isinstance(hook, functools.partial):
        arguments = [repr(a) for a in hook.args if isinstance(a, _SIMPLE)]
        arguments += [f"{k}={v!r}" for k, v in hook.keywords.items() if isinstance(v, _SIMPLE)]
        return f"partial({_describe_hook(hook.func)}, {', '.join(arguments)})"
    name = getattr(hook, "__qualname__", None)
    if name is not None:
        captured = []
        code = getattr(hook, "__code__", None)
        cells = getattr(hook, "__closure__", None) or ()
        for variable, cell in zip(getattr(code, "co_freevars", ()), cells, strict=False):
            try:
                value = cell.cell_contents
            except ValueError:  # a cell not yet bound
                continue
            if isinstance(value, _SIMPLE):
                captured.append(f"{variable}={value!r}")
        return f"{getattr(hook, '__module__', '')}.{name}({', '.join(captured)})"
    if type(hook).__repr__ is not object.__repr__:
        return repr(hook)
    return f"{type(hook).__module__}.{type(hook).__qualname__}"


def _input_identity(path: str | os.PathLike[str]) -> dict[str, Any]:
    local = Path(path)
    if not local.exists():  # e.g. a GDAL /vsi... path
        return {"path": os.fspath(path)}
    stat = local.stat()
    return {"path": str(local.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def partial_path(output_path: str | os.PathLike[str]) -> Path:
    """The partial store of a prediction into ``output_path``, next to it:
    ``<output>.partial.zarr`` (see :mod:`demsr.tilestore`)."""
    output = Path(output_path)
    return output.with_name(output.name + ".partial.zarr")


def partial_progress(output_path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(finished tiles, all tiles) of the interrupted run that a prediction into ``output_path``
    left to ``--resume``; None when it left none (or an unreadable one)."""
    path = partial_path(output_path)
    if not path.is_dir():
        return None
    try:
        store = TileStore.open(path)
        rows, cols = store.settings["shape"]
        total = tile_count(int(rows), int(cols), int(store.settings["tile_px"]))
        return len(store.finished()[0]), total
    except (OSError, KeyError, TypeError, ValueError):
        return None


def _open_for_resume(path: Path, settings: dict[str, Any], resume: bool) -> TileStore | None:
    """The partial store of an interrupted run to continue; None to start afresh.

    Refuses a partial run unless ``resume``, and one whose settings differ from ``settings``.
    """
    if not path.exists():
        if resume:
            log.info("no partial result at %s; starting from the first tile", path)
        return None
    if not resume:
        raise FileExistsError(
            f"{path}: an earlier run left a partial result; pass --resume (resume=True) to "
            f"continue it, or --overwrite to start again"
        )
    store = TileStore.open(path)
    recorded = store.settings
    expected = json.loads(json.dumps(settings))
    for key in sorted(set(expected) | set(recorded)):
        if recorded.get(key) != expected.get(key):
            raise RasterError(
                f"{path}: cannot resume, {key} differs from the interrupted run "
                f"(was {recorded.get(key)!r}, now {expected.get(key)!r}); rerun with the same "
                f"settings or delete {path.name} to start again"
            )
    return store


class _StoreWriter:
    """Writes one rank's tiles into the partial store; :meth:`commit` makes them durable and
    records them as finished (chunks flushed first, then the rank's log line)."""

    def __init__(
        self,
        store: TileStore,
        rank: int,
        scale: int,
        transform_output: TileTransform | None,
        metres_per_unit: float = 1.0,
    ) -> None:
        self.store, self.scale, self.transform_output = store, scale, transform_output
        self.metres_per_unit = metres_per_unit
        self.log = store.log_for(rank)
        self.committed = 0
        self._pending: list[tuple[int, bool]] = []
        self._chunks: list[Path] = []

    def write(self, tile: Tile, values: np.ndarray | None) -> None:
        """Write one tile's core output ((h*s, w*s) metres, NaN = nodata; None: all nodata;
        (2, h*s, w*s) with the ensemble: the elevation, then its uncertainty, which the output
        transform (a datum shift) leaves alone and the unit conversion scales)."""
        window = scale_window(tile.core, self.scale)
        shape = (int(window.height), int(window.width))
        if values is None:
            self._pending.append((tile.index, True))
            return
        uncertainty = None
        if values.ndim == 3:
            values, uncertainty = values
        if self.transform_output is not None:
            grid = self.store.grid
            changed = self.transform_output(
                values, window, window_transform(window, grid.transform), grid.crs
            )
            changed = np.asarray(changed, dtype=np.float32)
            if changed.shape != shape:
                raise ValueError(
                    f"transform_output returned shape {changed.shape} for a {shape} tile"
                )
            values = np.where(np.isnan(values), np.float32(np.nan), changed)
        if uncertainty is not None:
            values = np.stack([values, uncertainty])
        if self.metres_per_unit != 1.0:  # back into the input's vertical unit
            values = values / np.float32(self.metres_per_unit)
        self._chunks.extend(self.store.write(window, values))
        self._pending.append((tile.index, False))

    def commit(self) -> None:
        self.log.record(self._pending, self._chunks)
        self.committed += len(self._pending)
        self._pending, self._chunks = [], []

    def close(self) -> None:
        self.log.close()


def _automatic_tile_px(
    network: _Network,
    rows: int,
    cols: int,
    batch_size: int,
    memory_bytes: int | None,
    wrap_cols: int | None,
    resumed: Path | None,
) -> tuple[int, str | None]:
    """The tile size when none is given, and why: the interrupted run's when ``resumed`` names
    its partial store (so that a resume does not depend on the memory free now), else
    :func:`demsr.plan.choose_tile_px` for ``memory_bytes`` (None: the default share)."""
    from demsr.plan import choose_tile_px, default_memory_bytes

    if resumed is not None and resumed.exists():
        try:
            return int(TileStore.open(resumed).settings["tile_px"]), None
        except (OSError, KeyError, TypeError, ValueError):
            pass  # _open_for_resume reports the unreadable store
    source = "given"
    if memory_bytes is None:
        memory_bytes, source = default_memory_bytes(network.device.type)
    resolver = network.resolver
    tile_px = choose_tile_px(
        rows,
        cols,
        resolver.margin_px,
        resolver.net.config,
        sum(p.numel() for p in resolver.parameters()),
        batch_size,
        network.device.type,
        memory_bytes,
        wrap=wrap_cols is not None,
    )
    return tile_px, (
        f"tiles of {tile_px} cells (margin {resolver.margin_px}), batches of {batch_size}: the "
        f"largest that fit in {memory_bytes / 2**20:.0f} MiB ({source})"
    )


def rank_batches(
    tiles: Iterable[Tile], batch_size: int, finished: Iterable[int], rank: int, ranks: int
) -> list[list[Tile]]:
    """The batches of ``tiles`` (the whole grid) that rank ``rank`` of ``ranks`` predicts:
    :func:`~demsr.tiling.batch_tiles` over the whole grid, so that a resumed run (on any
    number of ranks) batches its tiles exactly as the first did; the batches not all in
    ``finished`` (tile indices) dealt round-robin by :func:`~demsr.tiling.deal_batches`."""
    done = set(finished)
    remaining = [
        batch for batch in batch_tiles(tiles, batch_size) if not all(t.index in done for t in batch)
    ]
    return list(deal_batches(remaining, rank, ranks))


def _global_period(source: RasterReader, wrap: bool | None) -> int | None:
    """Columns around the globe when the input wraps east-west (``wrap`` None: when it covers
    all longitudes), else None."""
    if wrap is False:
        return None
    crs = source.crs
    period = global_period(
        source.transform, source.shape, bool(crs is not None and crs.is_geographic)
    )
    if wrap and period is None:
        raise RasterError(
            f"{source.path}: cannot wrap east-west: it is not a geographic grid covering 360 "
            "degrees of longitude"
        )
    return period


def predict_raster(
    checkpoint: Checkpoint | str | os.PathLike[str],
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    settings: PredictSettings | None = None,
    *,
    ranks: RankContext | None = None,
    **options: Any,
) -> Path:
    """Super-resolve one band of a raster of any size into a georeferenced product, tile by tile.

    The options are ``settings`` (:class:`~demsr.predict_settings.PredictSettings`; None: the
    defaults) with any of its fields given as keywords (``options``) replacing them, e.g.
    ``predict_raster(ckpt, src, dst, tile_px=256)``; the paragraphs below name the fields.

    The output has the input's CRS and bounds, its pixel size divided by the model's scale, and
    the input's nodata value (NaN if it declares none) wherever the input has none; tags record
    ``units=metre``, the model config, the checkpoint's SHA-256 and the demsr version, plus
    ``tags`` (e.g. ``vertical_datum``). The product's format is ``fmt`` or the output's
    extension (COG ``.tif``, CF NetCDF ``.nc``, Zarr ``.zarr``; see
    :func:`demsr.io.finalise_output`, which also takes ``output_dtype`` float32 or int16).

    Tiles of ``tile_px`` low-res cells (plus the model's margin) run in batches of
    ``batch_size``; memory depends on these only. ``tile_px`` None takes the largest tile (up to
    :data:`demsr.plan.MAX_TILE_PX`, and the whole raster when it fits) whose batch fits in
    ``memory_bytes`` (None: :func:`demsr.plan.default_memory_bytes`, a share of the machine), as
    :func:`demsr.plan.choose_tile_px` works it out; a resumed run keeps the interrupted run's
    tile size, and every rank takes rank 0's. ``precision`` and ``compile`` as in
    :func:`predict_array`. A geographic input covering all longitudes wraps east-west (``wrap``
    None; True insists, False never wraps): tiles by the antimeridian read their context across
    it, so the output has no seam there.

    Several ranks (``ranks``, default: torchrun's environment, see :mod:`demsr.distributed`)
    share the tiles: batches go round-robin to the ranks, and each writes its tiles into one
    partial Zarr store, ``<output>.partial.zarr``, whose chunks are single tiles' outputs, and
    records them in its own log there after every batch (:mod:`demsr.tilestore`). Rank 0
    creates the store, waits for the others and writes the product. A batch's values do not
    depend on the rank that runs it, so the product equals a single process's bit for bit.
    A raster that is one tile, in one process, is held in memory instead
    (:class:`~demsr.tilestore.MemoryTileStore`: no store, nothing to resume). A process keeps
    the checkpoint file it loaded last and its prepared network for its next prediction (loaded
    again when the file changes).

    ``resume=True`` continues a partial run (after any rank stopped) when its settings
    (checkpoint, input file, band, tile size, margin, precision, hooks, wrap) match, predicting
    only the tiles no log records; without it an existing partial run is refused. A run that
    stops before recording a tile removes the store again (alone; with several ranks the store
    stays). :func:`partial_progress` says what a stopped run kept. An existing output is
    refused unless ``overwrite``, and is replaced only once the new one is complete. Progress:
    a bar alone; with several ranks, every ``report_every_s`` seconds each rank logs its own
    throughput and ETA and rank 0 those of the whole run.

    ``transform_input`` / ``transform_output`` (see :data:`TileTransform`) change each tile's
    low-res input before the network and its high-res output before writing (e.g. a vertical
    datum shift). ``variable`` names a NetCDF/Zarr input's elevation variable and ``crs`` gives
    the CRS of an input without one (see :func:`demsr.io.open_raster`); an input without a CRS
    is refused otherwise. A NetCDF/Zarr product mirrors a NetCDF/Zarr input's coordinate names
    and 0..360 longitudes, but is written north-up (y descending) unless ``keep_row_order``
    keeps an input's ascending rows. Rank 0 reads every input cell once before the first tile
    (:meth:`~demsr.io.RasterReader.summarise`), so that a truncated file, an undeclared nodata
    value or a band without valid cells fails at once, leaving nothing behind.

    ``ensemble`` writes the mean of the model's 8 flips/rotations (each tile flipped with its
    margin, so tiled still equals whole) and, as a second band (NetCDF/Zarr: the variable
    ``elevation_uncertainty``), its calibrated uncertainty in the product's vertical unit
    (:mod:`demsr.ensemble`; see :func:`predict_array_ensemble`): 8 times the network's work.
    The checkpoint must record a calibration (:class:`~demsr.ensemble.CalibrationMissing`
    otherwise) and ``output_dtype`` must be float32, both checked before anything is written.
    """
    settings = PredictSettings.of(settings, **options)
    tile_px, batch_size, memory_bytes = settings.tile_px, settings.batch_size, settings.memory_bytes
    if (tile_px is not None and tile_px < 1) or batch_size < 1:
        raise ValueError(f"tile_px and batch_size must be >= 1, got {tile_px} and {batch_size}")
    if memory_bytes is not None and memory_bytes <= 0:
        raise ValueError(f"memory_bytes must be > 0, got {memory_bytes}")
    ctx = ranks if ranks is not None else distributed.context()
    output = Path(output_path)
    partial = partial_path(output)
    # An unknown format fails now, not after the prediction.
    fmt = output_format(output, settings.fmt)
    checkpoint_path = None if isinstance(checkpoint, Checkpoint) else checkpoint
    refuse_output_over_input([output, partial], [input_path, checkpoint_path])
    checkpoint = _kept_checkpoint(checkpoint)
    calibration = (
        _ensemble_calibration(checkpoint, settings.output_dtype) if settings.ensemble else None
    )
    torch_device = resolve_device(distributed.rank_device(settings.device, ctx))
    # Ranks only synchronise (no tensors travel): gloo, with time for the slowest rank.
    with distributed.process_group(ctx, torch_device, timeout=RANK_WAIT, backend="gloo"):
        return _predict_raster(
            ctx,
            checkpoint,
            input_path,
            output,
            partial,
            fmt,
            torch_device,
            settings,
            calibration=calibration,
        )


def _ensemble_calibration(checkpoint: Checkpoint, output_dtype: str) -> UncertaintyCalibration:
    """The calibration an ``ensemble`` run needs, checked before anything is written."""
    if output_dtype != "float32":
        raise ValueError(
            f"the ensemble's uncertainty needs a float32 product, not {output_dtype} "
            "(drop --dtype int16)"
        )
    return recorded_calibration(checkpoint)


def _uncertainty_band(
    store: TileStore, calibration: UncertaintyCalibration | None, units: str, cache_bytes: int = 0
) -> AncillaryBand | None:
    """The product's uncertainty band (read from ``store``), described; None without one."""
    if calibration is None:
        return None
    attrs = {
        "long_name": "estimated error of the elevation (one sigma)",
        "units": units,
        "uncertainty": "calibrated one-sigma error estimate of the ensemble-mean elevation",
        "calibration": calibration.describe(),
        "calibration_cells": ", ".join(str(n) for n in calibration.cells),
    }
    reader = store.reader(UNCERTAINTY_ARRAY, cache_bytes)
    return AncillaryBand(reader, UNCERTAINTY_NAME, "uncertainty", attrs)


RANK_WAIT = datetime.timedelta(hours=24)
"""How long ranks wait for each other (rank 0 for the slowest to finish its tiles)."""


@dataclass
class _Kept:
    """The checkpoint file a process predicted with last, and its prepared networks."""

    key: tuple[str, int, int]
    checkpoint: Checkpoint
    networks: dict[tuple[str, str, bool], _Network]


_kept: list[_Kept] = []  # at most one


def _kept_checkpoint(value: Checkpoint | str | os.PathLike[str]) -> Checkpoint:
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


def _kept_network(
    checkpoint: Checkpoint, device: torch.device, precision: str, compile: bool
) -> _Network:
    """The network of ``checkpoint`` prepared for ``device``, ``precision`` and ``compile``;
    kept with a checkpoint :func:`_kept_checkpoint` keeps, so that predicting many rasters in
    one process builds (and compiles) it once."""
    kept = next((item for item in _kept if item.checkpoint is checkpoint), None)
    key = (str(device), precision, compile)
    if kept is not None and key in kept.networks:
        return kept.networks[key]
    network = _Network.prepare(
        checkpoint.build_resolver(device),
        device,
        precision,
        compile,
        recorded_bf16_bound(checkpoint),
    )
    if kept is not None:
        kept.networks[key] = network
    return network


def _predict_raster(
    ctx: RankContext,
    checkpoint: Checkpoint,
    input_path: str | os.PathLike[str],
    output: Path,
    partial: Path,
    fmt: str,
    torch_device: torch.device,
    settings: PredictSettings,
    calibration: UncertaintyCalibration | None = None,
) -> Path:
    band, variable, crs, wrap = settings.band, settings.variable, settings.crs, settings.wrap
    tile_px, batch_size, memory_bytes = settings.tile_px, settings.batch_size, settings.memory_bytes
    precision, compile, resume = settings.precision, settings.compile, settings.resume
    transform_input, transform_output = settings.transform_input, settings.transform_output
    progress = settings.progress
    network = _kept_network(checkpoint, torch_device, precision, compile)
    mode = network.precision
    scale, margin = network.resolver.scale, network.resolver.margin_px

    with open_raster(input_path, band, variable, crs=crs) as source:
        rows, cols = source.shape
        require_two_cells(rows, cols, source.path)
        source_crs = require_crs(source)
        # The network works in metres (the reader converts); the product is in the input's unit.
        units = "metre"
        if source.metres_per_unit != 1.0:
            units = CANONICAL_UNITS.get(source.metres_per_unit, str(source.units))
            log.info("%s: elevations in %s, converted to metres and back", source.path, units)
        period = _global_period(source, wrap)
        if period is not None:
            log.info("%s covers all longitudes: tiles wrap across the antimeridian", source.path)
        chosen = None  # why the tiles have their size, said once the input passed its checks
        if tile_px is None:
            tile_px, chosen = _automatic_tile_px(
                network, rows, cols, batch_size, memory_bytes, period, partial if resume else None
            )
        sha256 = checkpoint_sha256(checkpoint)
        recorded: dict[str, Any] = {
            "checkpoint_sha256": sha256,
            "input": _input_identity(input_path),
            "band": band,
            "variable": variable,
            "crs": None if crs is None else source_crs.to_string(),
            "shape": [rows, cols],
            "scale": scale,
            "tile_px": tile_px,
            "margin_px": margin,
            "wrap_cols": period,
            "precision": mode,
            "compile": compile,  # compiled kernels round differently from eager ones
            # Batch composition and the device change float32 rounding: keep them for resume.
            "batch_size": batch_size,
            "device": torch_device.type,
            "transform_input": _describe_hook(transform_input),
            "transform_output": _describe_hook(transform_output),
            "units": units,
        }
        if calibration is not None:  # only then: stores of earlier versions still resume
            recorded["ensemble"] = calibration.to_dict()
            dx_m, dy_m = cell_sizes_m(source.transform, source.crs, rows)
            # A copy: the network kept for the process's next prediction stays as it was.
            network = dataclasses.replace(network, ensemble=_Ensemble(calibration, dx_m, dy_m))
            log.info(
                "self-ensemble: 8 flips/rotations per tile; uncertainty calibrated on %s",
                ", ".join(calibration.fitted_on) or "unnamed rasters",
            )
        provenance = {
            **dict(settings.tags or {}),
            "units": units,
            "demsr_version": __version__,
            "checkpoint_sha256": sha256,
            "model_config": json.dumps(checkpoint.model_config.to_dict(), sort_keys=True),
            "elevation_scaling": json.dumps(checkpoint.scaling.to_dict(), sort_keys=True),
            "source": Path(source.path).name,  # the name only: not where it lies on this machine
            "source_band": str(band),
            "tile_px": str(tile_px),
            "margin_px": str(margin),
            **network.choice.tags(),
        }
        if calibration is not None:
            provenance["ensemble"] = "mean of the model's 8 flips/rotations"
        output_grid = Grid((rows, cols), source.transform).refine(scale)
        grid = OutputGrid(
            shape=output_grid.shape,
            transform=output_grid.transform,
            crs=source.crs,
            nodata=None if source.nodata is None else float(np.float32(source.nodata)),
            chunk_px=tile_px * scale,
            tags=provenance,
            bands=(ARRAY,) if calibration is None else (ARRAY, UNCERTAINTY_ARRAY),
        )

        def open_store() -> TileStore:
            """Rank 0: check the input and the paths, then continue or create the store."""
            refuse_existing(output, overwrite=settings.overwrite)
            require_writable_folder(output.parent)
            summary = source.summarise(progress)
            if summary.valid_cells == 0:
                raise RasterError(f"{source.path}: band {band} holds no valid cells")
            log.debug("input %s", summary.describe())
            if partial.exists():
                check_not_busy(partial)  # before any advice to resume, or an --overwrite
            remove_stale_temporaries(output, partial)
            if settings.overwrite and not resume and partial.exists():
                shutil.rmtree(partial)
            store = _open_for_resume(partial, recorded, resume)
            single = tile_count(rows, cols, int(recorded["tile_px"])) == 1
            if store is None and single and not ctx.distributed:
                return MemoryTileStore(partial, recorded, grid)  # one tile: nothing to resume
            return store if store is not None else TileStore.create(partial, recorded, grid)

        created: TileStore | None = None
        with distributed.agreed():  # the others wait for rank 0, and stop if it fails
            if ctx.is_main:
                created = open_store()
        store = created if created is not None else TileStore.open(partial)
        tile_px = int(store.settings["tile_px"])  # rank 0's (the same on rank 0 itself)
        if chosen is not None and ctx.is_main:
            log.info("%s", chosen)
        lock = store.lock(ctx.rank)
        finished, _ = store.finished()
        tiles = tile_grid(rows, cols, tile_px, margin, wrap_cols=period)
        mine = rank_batches(tiles, batch_size, finished, ctx.rank, ctx.world_size)
        if finished and ctx.is_main:
            log.info("resuming %s: %d of %d tiles already done", partial, len(finished), len(tiles))

        def read_lowres(window: Window) -> np.ndarray:
            values = source.read(window)
            if transform_input is None:
                return values
            changed = transform_input(values, window, source.window_transform(window), source.crs)
            changed = np.asarray(changed, dtype=np.float32)
            if changed.shape != values.shape:
                raise ValueError(
                    f"transform_input returned shape {changed.shape} for a {values.shape} window"
                )
            return changed

        writer = _StoreWriter(store, ctx.rank, scale, transform_output, source.metres_per_unit)
        layout = source.layout
        if not settings.keep_row_order:  # every GIS reads north-up grids right
            layout = dataclasses.replace(layout, lat_ascending=False)
        started = time.perf_counter()
        try:
            _run_tiles(
                network,
                mine,
                wrapping(read_lowres, period),
                _Grid(rows, cols, period),
                writer,
                _Progress(ctx, store, len(tiles), len(finished), progress, settings.report_every_s),
                finished,
            )
        except BaseException:
            writer.close()
            if not ctx.distributed and not finished and writer.committed == 0:
                store.remove()  # nothing worth resuming: leave nothing behind
            # Not a warning: the CLI reports it in its one-line error (partial_progress).
            log.debug("stopped with %d tiles of this rank recorded", writer.committed)
            lock.release()
            raise
        writer.close()

    try:  # the lock is held until the product is written (or this fails)
        if ctx.distributed:
            log.info("waiting for the other ranks to finish their tiles")
            distributed.barrier()
            if not ctx.is_main:
                return output
        done_before = finished
        finished, empty = store.finished()
        if ctx.distributed:
            new_px = sum(
                int(t.core.width * t.core.height) for t in tiles if t.index not in done_before
            )
            seconds = time.perf_counter() - started
            log.info(
                "all %d ranks: %d of %d tiles done, %d in this run: %.1f output Mpx in %s "
                "(%.2f Mpx/s)",
                ctx.world_size,
                len(finished),
                len(tiles),
                len(finished) - len(done_before),
                new_px * scale * scale / 1e6,
                _duration(seconds),
                new_px * scale * scale / 1e6 / max(seconds, 1e-9),
            )
        missing = len(tiles) - len(finished)
        if missing:
            raise RasterError(
                f"{partial}: {missing} of {len(tiles)} tiles are missing after every rank "
                "finished; rerun with --resume to predict them"
            )
        if len(empty) == len(tiles):
            store.remove()
            raise RasterError(f"{os.fspath(input_path)}: band {band} holds no valid cells")
        # The product appears only when complete; if this fails the store stays, and a rerun
        # with resume finalises it again without predicting anything.
        stop_point("store-complete")
        from demsr.plan import default_memory_bytes

        # Decoded chunks kept while finalising: within the memory the tiles were planned for.
        cache_bytes = (memory_bytes or default_memory_bytes("cpu")[0]) // len(grid.bands)
        with store.reader(ARRAY, cache_bytes) as reader:
            result = finalise_output(
                reader,
                output,
                fmt,
                dtype=settings.output_dtype,
                metadata=provenance,
                layout=layout,
                progress=progress,
                uncertainty=_uncertainty_band(store, calibration, units, cache_bytes),
            )
        store.remove()
        log.info("wrote %s (%d x %d, x%d)", result, cols * scale, rows * scale, scale)
        return result
    finally:
        lock.release()


class _Progress:
    """Progress of one rank's tiles: a bar when alone; with several ranks, a log line every
    ``every_s`` seconds with this rank's throughput and ETA, and on rank 0 the whole run's
    (read from every rank's log in the store)."""

    def __init__(
        self,
        ctx: RankContext,
        store: TileStore,
        total: int,
        done_before: int,
        bar: bool,
        every_s: float,
    ) -> None:
        self.ctx, self.store, self.total, self.done_before = ctx, store, total, done_before
        self.every_s = every_s
        self.started = self.last_report = time.perf_counter()
        self.tiles = 0
        self.pixels = 0
        self.assigned = 0
        self.bar = tqdm(
            total=total,
            initial=done_before,
            unit="tile",
            desc="predict",
            disable=not bar or ctx.distributed,
            dynamic_ncols=True,
        )

    def update(self, tiles: int, pixels: int) -> None:
        self.tiles += tiles
        self.pixels += pixels
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        self.bar.update(tiles)
        self.bar.set_postfix_str(f"{self.pixels / elapsed / 1e6:.2f} Mpx/s out")
        now = time.perf_counter()
        if self.ctx.distributed and now - self.last_report >= self.every_s:
            self.last_report = now
            self.report()

    def report(self) -> None:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = self.tiles / elapsed
        left = self.assigned - self.tiles
        progress_log.info(
            "[%s] %d of %d tiles, %.2f Mpx/s out, ETA %s",
            self.ctx.describe(),
            self.tiles,
            self.assigned,
            self.pixels / elapsed / 1e6,
            _duration(left / rate) if rate > 0 else "unknown",
        )
        if self.ctx.is_main:
            done = len(self.store.finished()[0])
            overall = (done - self.done_before) / elapsed
            log.info(
                "all %d ranks: %d of %d tiles (%.0f%%), %.2f tiles/s, ETA %s",
                self.ctx.world_size,
                done,
                self.total,
                100.0 * done / max(self.total, 1),
                overall,
                _duration((self.total - done) / overall) if overall > 0 else "unknown",
            )

    def close(self) -> None:
        self.bar.close()


def _duration(seconds: float) -> str:
    """``1 h 02 min``, ``3 min 05 s`` or ``12 s``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def _run_tiles(
    network: _Network,
    batches: list[list[Tile]],
    read_lowres: Callable[[Window], np.ndarray],
    grid: _Grid,
    writer: _StoreWriter,
    progress: _Progress,
    finished: set[int],
) -> None:
    """Predict ``batches`` into ``writer``, committing after every batch; tiles in ``finished``
    (recorded by an earlier run) are left out."""
    scale = network.resolver.scale
    todo = [[tile for tile in batch if tile.index not in finished] for batch in batches]
    progress.assigned = sum(len(batch) for batch in todo)
    started = time.perf_counter()
    written_px = 0
    try:
        for batch in _predict_batches(network, todo, read_lowres, grid):
            batch_px = 0
            for tile, values in batch:
                writer.write(tile, values)
                batch_px += int(tile.core.height * tile.core.width) * scale * scale
            writer.commit()
            stop_point("tiles")
            written_px += batch_px
            progress.update(len(batch), batch_px)
    finally:
        progress.close()
    elapsed = time.perf_counter() - started
    (progress_log if progress.ctx.distributed else log).info(
        "%spredicted %d tiles (%.1f output Mpx) in %.1f s, %.2f Mpx/s; %s",
        f"[{progress.ctx.describe()}] " if progress.ctx.distributed else "",
        progress.assigned,
        written_px / 1e6,
        elapsed,
        written_px / 1e6 / max(elapsed, 1e-9),
        network.choice.describe(),
    )
