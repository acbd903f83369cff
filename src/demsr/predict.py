"""Super-resolve a raster file of any size into a georeferenced product, tile by tile.

:func:`predict_raster` opens the input lazily (:func:`demsr.io.open_raster`), checks it, picks
the tile size (the largest whose batch fits the memory budget, :mod:`demsr.plan`) and runs the
tile engine (:mod:`demsr.engine`, which :func:`~demsr.engine.predict_array` runs in memory)
over the batches dealt to this rank (:func:`rank_batches`). Finished tiles go into the chunked
Zarr store ``<output>.partial.zarr`` (:mod:`demsr.partial`, :mod:`demsr.tilestore`: one chunk
per tile, a log of finished tiles per rank), so an interrupted run resumes where it stopped
(``resume=True``); progress is a bar, or log lines under torchrun (:mod:`demsr.progress`).
Once every tile is done, :func:`demsr.io.finalise_output` turns the store into the product
(COG, CF NetCDF or Zarr) and the store is deleted.

Output georeferencing: the input's CRS and bounds, the pixel size divided by the scale; nodata
in the input stays nodata over its footprint in the output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rasterio.windows import Window

from demsr import distributed
from demsr.checkpoint import Checkpoint, checkpoint_sha256
from demsr.distributed import RankContext
from demsr.engine import (
    Ensemble,
    Network,
    kept_checkpoint,
    kept_network,
    predict_batches,
    require_two_cells,
)

# Re-exported: code written before the tile engine had its own module imports them from here.
from demsr.engine import predict_array as predict_array
from demsr.engine import predict_array_ensemble as predict_array_ensemble
from demsr.ensemble import UncertaintyCalibration, recorded_calibration
from demsr.grid import Grid
from demsr.io import (
    CANONICAL_UNITS,
    RasterError,
    RasterReader,
    open_raster,
    output_format,
    refuse_output_over_input,
    require_crs,
)
from demsr.metrics import cell_sizes_m
from demsr.model import resolve_device
from demsr.overlap import WriteBehind, in_background
from demsr.partial import (
    StoreWriter,
    open_store,
    partial_path,
    product_tags,
    recorded_settings,
    write_product,
)
from demsr.predict_settings import PredictSettings
from demsr.progress import Progress, log_all_ranks
from demsr.stops import stop_point
from demsr.tilestore import (
    ARRAY,
    UNCERTAINTY_ARRAY,
    OutputGrid,
    TileStore,
)
from demsr.tiling import (
    Tile,
    TileTransform,
    batch_tiles,
    deal_batches,
    global_period,
    tile_grid,
)

log = logging.getLogger(__name__)

RANK_WAIT = datetime.timedelta(hours=24)
"""How long ranks wait for each other (rank 0 for the slowest to finish its tiles)."""


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

    Tiles of ``tile_px`` low-res cells (plus the model's margin) run in batches of ``batch_size``;
    memory depends on these only. ``tile_px`` None takes the largest tile (up to
    :data:`demsr.plan.MAX_TILE_PX`, and the whole raster when it fits) whose batch fits in
    ``memory_bytes`` (None: :func:`demsr.plan.default_memory_bytes`, a share of the machine), as
    :func:`demsr.plan.choose_tile_px` works it out; a resumed run keeps the interrupted run's tile
    size, and every rank takes rank 0's. ``precision`` and ``compile`` as in
    :func:`~demsr.engine.predict_array`. A geographic input covering all longitudes wraps east-west
    (``wrap`` None; True insists, False never wraps): tiles by the antimeridian read their context
    across it, so the output has no seam there.

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

    ``resume=True`` continues a partial run (after any rank stopped) when its settings (checkpoint,
    input file, band, tile size, margin, precision, hooks, wrap) match, predicting only the tiles no
    log records; without it an existing partial run is refused. A run that stops before recording a
    tile removes the store again (alone; with several ranks the store stays).
    :func:`~demsr.partial.partial_progress` says what a stopped run kept. An existing output is
    refused unless ``overwrite``, and is replaced only once the new one is complete. Progress: a bar
    alone; with several ranks, every ``report_every_s`` seconds each rank logs its own throughput
    and ETA and rank 0 those of the whole run.

    ``transform_input`` / ``transform_output`` (see :data:`~demsr.tiling.TileTransform`) change each
    tile's low-res input before the network and its high-res output before writing (e.g. a vertical
    datum shift). ``variable`` names a NetCDF/Zarr input's elevation variable and ``crs`` gives the
    CRS of an input without one (see :func:`demsr.io.open_raster`); an input without a CRS is
    refused otherwise. A NetCDF/Zarr product mirrors a NetCDF/Zarr input's coordinate names and
    0..360 longitudes, but is written north-up (y descending) unless ``keep_row_order`` keeps an
    input's ascending rows. Rank 0 reads every input cell once before the first tile
    (:meth:`~demsr.io.RasterReader.summarise`), so that a truncated file, an undeclared nodata value
    or a band without valid cells fails at once, leaving nothing behind.

    ``ensemble`` writes the mean of the model's 8 flips/rotations (each tile flipped with its
    margin, so tiled still equals whole) and, as a second band (NetCDF/Zarr: the variable
    ``elevation_uncertainty``), its calibrated uncertainty in the product's vertical unit
    (:mod:`demsr.ensemble`; see :func:`~demsr.engine.predict_array_ensemble`): 8 times the network's
    work. The checkpoint must record a calibration (:class:`~demsr.ensemble.CalibrationMissing`
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
    fmt = output_format(output, settings.fmt)  # an unknown format fails now, not after
    checkpoint_path = None if isinstance(checkpoint, Checkpoint) else checkpoint
    refuse_output_over_input([output, partial], [input_path, checkpoint_path])
    checkpoint = kept_checkpoint(checkpoint)
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
    """:func:`predict_raster` on this rank, its arguments checked: the store opened (rank 0
    creates or resumes it), this rank's tiles predicted into it, and on rank 0, once every rank
    is done, the product written."""
    # The checkpoint file's hash (for the product's tags) is read while the network is built.
    sha256_of_file = in_background(functools.partial(checkpoint_sha256, checkpoint))
    network = kept_network(checkpoint, torch_device, settings.precision, settings.compile)
    scale, margin = network.resolver.scale, network.resolver.margin_px

    with open_raster(input_path, settings.band, settings.variable, crs=settings.crs) as source:
        rows, cols = source.shape
        require_two_cells(rows, cols, source.path)
        source_crs = require_crs(source)
        # The network works in metres (the reader converts); the product is in the input's unit.
        units = "metre"
        if source.metres_per_unit != 1.0:
            units = CANONICAL_UNITS.get(source.metres_per_unit, str(source.units))
            log.info("%s: elevations in %s, converted to metres and back", source.path, units)
        period = _global_period(source, settings.wrap)
        if period is not None:
            log.info("%s covers all longitudes: tiles wrap across the antimeridian", source.path)
        tile_px = settings.tile_px
        chosen = None  # why the tiles have their size, said once the input passed its checks
        if tile_px is None:
            resumed = partial if settings.resume else None
            tile_px, chosen = _automatic_tile_px(
                network, rows, cols, settings.batch_size, settings.memory_bytes, period, resumed
            )
        sha256 = sha256_of_file.result()
        recorded = recorded_settings(
            input_path, source_crs, settings, network, sha256, (rows, cols), tile_px, period, units
        )
        if calibration is not None:  # only then: stores of earlier versions still resume
            recorded["ensemble"] = calibration.to_dict()
            dx_m, dy_m = cell_sizes_m(source.transform, source.crs, rows)
            # A copy: the network kept for the process's next prediction stays as it was.
            network = dataclasses.replace(network, ensemble=Ensemble(calibration, dx_m, dy_m))
            log.info(
                "self-ensemble: 8 flips/rotations per tile; uncertainty calibrated on %s",
                ", ".join(calibration.fitted_on) or "unnamed rasters",
            )
        provenance = product_tags(checkpoint, source, settings, network, sha256, tile_px, units)
        lowres_grid = Grid.of(source)
        grid = OutputGrid(
            grid=lowres_grid.refine(scale),
            nodata=None if source.nodata is None else float(np.float32(source.nodata)),
            chunk_px=tile_px * scale,
            tags=provenance,
            bands=(ARRAY,) if calibration is None else (ARRAY, UNCERTAINTY_ARRAY),
        )

        created: TileStore | None = None
        with distributed.agreed():  # the others wait for rank 0, and stop if it fails
            if ctx.is_main:
                alone = not ctx.distributed
                created = open_store(source, output, partial, recorded, grid, settings, alone)
        store = created if created is not None else TileStore.open(partial)
        tile_px = int(store.settings["tile_px"])  # rank 0's (the same on rank 0 itself)
        if chosen is not None and ctx.is_main:
            log.info("%s", chosen)
        lock = store.lock(ctx.rank)
        finished, _ = store.finished()
        tiles = tile_grid(rows, cols, tile_px, margin, wrap_cols=period)
        mine = rank_batches(tiles, settings.batch_size, finished, ctx.rank, ctx.world_size)
        if finished and ctx.is_main:
            log.info("resuming %s: %d of %d tiles already done", partial, len(finished), len(tiles))

        writer = StoreWriter(
            store, ctx.rank, scale, settings.transform_output, source.metres_per_unit
        )
        layout = source.layout
        if not settings.keep_row_order:  # every GIS reads north-up grids right
            layout = dataclasses.replace(layout, lat_ascending=False)
        started = time.perf_counter()
        try:
            _run_tiles(
                network,
                mine,
                _lowres_reader(source, settings.transform_input),
                lowres_grid,
                period,
                writer,
                Progress(
                    ctx,
                    store,
                    len(tiles),
                    len(finished),
                    settings.progress,
                    settings.report_every_s,
                ),
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
            log_all_ranks(ctx, tiles, done_before, len(finished), started, scale)
        missing = len(tiles) - len(finished)
        if missing:
            raise RasterError(
                f"{partial}: {missing} of {len(tiles)} tiles are missing after every rank "
                "finished; rerun with --resume to predict them"
            )
        if len(empty) == len(tiles):
            store.remove()
            raise RasterError(f"{os.fspath(input_path)}: band {settings.band} holds no valid cells")
        # The product appears only when complete; if this fails the store stays, and a rerun
        # with resume finalises it again without predicting anything.
        stop_point("store-complete")
        result = write_product(store, output, fmt, settings, provenance, layout, calibration, units)
        log.info("wrote %s (%d x %d, x%d)", result, cols * scale, rows * scale, scale)
        return result
    finally:
        lock.release()


def _lowres_reader(
    source: RasterReader, transform_input: TileTransform | None
) -> Callable[[Window], np.ndarray]:
    """Windows of ``source`` in metres, passed through ``transform_input`` when given."""

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

    return read_lowres


def _run_tiles(
    network: Network,
    batches: list[list[Tile]],
    read_lowres: Callable[[Window], np.ndarray],
    grid: Grid,
    wrap_cols: int | None,
    writer: StoreWriter,
    progress: Progress,
    finished: set[int],
) -> None:
    """Predict ``batches`` of tiles of ``grid`` into ``writer``, committing after every batch;
    tiles in ``finished`` (recorded by an earlier run) are left out.

    A batch is written (and its chunks flushed) in a background thread while the network runs
    on the next (:class:`demsr.overlap.WriteBehind`); it is committed here, once written, before
    the next is handed over. When the run stops on an error or an interrupt, the batch being
    written is still committed, so that every batch the network finished is kept."""
    scale = network.resolver.scale
    todo = [[tile for tile in batch if tile.index not in finished] for batch in batches]
    progress.assigned = sum(len(batch) for batch in todo)

    def write(batch: list[tuple[Tile, np.ndarray | None]]) -> None:
        for tile, values in batch:
            writer.write(tile, values)
        writer.flush()

    def commit(batch: list[tuple[Tile, np.ndarray | None]]) -> None:
        writer.commit()
        progress.update(
            len(batch), sum(tile.core.height * tile.core.width for tile, _ in batch) * scale * scale
        )

    try:
        with WriteBehind(write) as behind:
            try:
                results = predict_batches(network, todo, read_lowres, grid, wrap_cols)
                # Closed here, not by the garbage collector: the read-ahead thread has ended
                # before the source closes, and a Ctrl-C while it ends is not swallowed.
                with contextlib.closing(results):
                    for batch in results:
                        if behind.in_flight:
                            commit(behind.finish())
                            stop_point("tiles")
                        behind.submit(batch)
                if behind.in_flight:
                    commit(behind.finish())
                    stop_point("tiles")
            except BaseException:
                if behind.in_flight:
                    _keep_written(behind, commit)
                raise
    finally:
        progress.close()
    progress.summarise(network.choice.describe())


def _keep_written(
    behind: WriteBehind[list[tuple[Tile, np.ndarray | None]]],
    commit: Callable[[list[tuple[Tile, np.ndarray | None]]], None],
) -> None:
    """Commit the batch in flight when a run stops on another error; a failure to write it
    is logged (the run's own error is the one reported)."""
    try:
        commit(behind.finish())
    except Exception as exc:  # noqa: BLE001 - the first error wins
        log.warning("the batch being written when the run stopped was not kept: %s", exc)


def _automatic_tile_px(
    network: Network,
    rows: int,
    cols: int,
    batch_size: int,
    memory_bytes: int | None,
    wrap_cols: int | None,
    resumed: Path | None,
) -> tuple[int, str | None]:
    """The tile size when none is given, and why: the interrupted run's when ``resumed`` names
    its partial store (so that a resume does not depend on the memory free now), else
    :func:`demsr.plan.memory.automatic_tile_px` for ``memory_bytes`` (None: the default
    share), as ``demsr plan`` chooses it."""
    from demsr.plan.memory import automatic_tile_px

    if resumed is not None and resumed.exists():
        try:
            return int(TileStore.open(resumed).settings["tile_px"]), None
        except (OSError, KeyError, TypeError, ValueError):
            pass  # open_for_resume reports the unreadable store
    resolver = network.resolver
    tile_px, budget, source = automatic_tile_px(
        (rows, cols),
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
        f"largest that fit in {budget / 2**20:.0f} MiB ({source})"
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
