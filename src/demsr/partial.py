"""A raster prediction's partial store, ``<output>.partial.zarr``: where it lies, what a resume
must match, opening it, one rank's tiles written into it, and the product written from it.

The store itself (a chunked Zarr array, one chunk per tile, a log of finished tiles per rank)
is :mod:`demsr.tilestore`'s. A run records its settings in the store
(:func:`recorded_settings`: the checkpoint's hash, the input's path, size and modification
time, the tile size, the hooks it ran with, ...); rank 0 opens it (:func:`open_store`) after
checking the input and the paths, and a resumed run (:func:`open_for_resume`) must record the
same settings, or is refused with the one that differs; the product carries the run's
provenance as tags (:func:`product_tags`). :class:`StoreWriter` writes a rank's
tiles (in the input's vertical unit, after the output hook) and makes each batch durable before
logging it as finished. Once every tile is done, :func:`write_product` turns the store into
the product (:func:`demsr.io.finalise_output`) and removes it. :func:`partial_progress` says
what a stopped run kept.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rasterio.windows import transform as window_transform

from demsr import __version__
from demsr.ensemble import UNCERTAINTY_NAME, UncertaintyCalibration
from demsr.io import (
    AncillaryBand,
    RasterError,
    RasterLayout,
    RasterReader,
    finalise_output,
    fsync_files,
    refuse_existing,
    remove_stale_temporaries,
    require_writable_folder,
)
from demsr.tilestore import (
    ARRAY,
    UNCERTAINTY_ARRAY,
    MemoryTileStore,
    OutputGrid,
    TileStore,
    check_not_busy,
)
from demsr.tiling import Tile, TileTransform, scale_window, tile_count

if TYPE_CHECKING:
    from rasterio.crs import CRS

    from demsr.checkpoint import Checkpoint
    from demsr.engine import Network
    from demsr.predict_settings import PredictSettings

log = logging.getLogger(__name__)


_SIMPLE = (str, int, float, bool, type(None))


def describe_hook(hook: Callable[..., Any] | None) -> str | None:
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
        return f"partial({describe_hook(hook.func)}, {', '.join(arguments)})"
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
    """The input file as a resume must find it again: its path, size and modification time."""
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


def open_for_resume(path: Path, settings: dict[str, Any], resume: bool) -> TileStore | None:
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


def recorded_settings(
    input_path: str | os.PathLike[str],
    source_crs: CRS,
    settings: PredictSettings,
    network: Network,
    sha256: str,
    shape: tuple[int, int],
    tile_px: int,
    period: int | None,
    units: str,
) -> dict[str, Any]:
    """What the partial store records of a run, and a resume must match
    (:func:`open_for_resume`)."""
    rows, cols = shape
    return {
        "checkpoint_sha256": sha256,
        "input": _input_identity(input_path),
        "band": settings.band,
        "variable": settings.variable,
        "crs": None if settings.crs is None else source_crs.to_string(),
        "shape": [rows, cols],
        "scale": network.resolver.scale,
        "tile_px": tile_px,
        "margin_px": network.resolver.margin_px,
        "wrap_cols": period,
        "precision": network.precision,
        "compile": settings.compile,  # compiled kernels round differently from eager ones
        # Batch composition and the device change float32 rounding: keep them for resume.
        "batch_size": settings.batch_size,
        "device": network.device.type,
        "transform_input": describe_hook(settings.transform_input),
        "transform_output": describe_hook(settings.transform_output),
        "units": units,
    }


def product_tags(
    checkpoint: Checkpoint,
    source: RasterReader,
    settings: PredictSettings,
    network: Network,
    sha256: str,
    tile_px: int,
    units: str,
) -> dict[str, str]:
    """The product's tags: the caller's ``tags``, then the unit, the model and the run."""
    provenance = {
        **dict(settings.tags or {}),
        "units": units,
        "demsr_version": __version__,
        "checkpoint_sha256": sha256,
        "model_config": json.dumps(checkpoint.model_config.to_dict(), sort_keys=True),
        "elevation_scaling": json.dumps(checkpoint.scaling.to_dict(), sort_keys=True),
        "source": Path(source.path).name,  # the name only: not where it lies on this machine
        "source_band": str(settings.band),
        "tile_px": str(tile_px),
        "margin_px": str(network.resolver.margin_px),
        **network.choice.tags(),
    }
    if network.ensemble is not None:
        provenance["ensemble"] = "mean of the model's 8 flips/rotations"
    return provenance


def open_store(
    source: RasterReader,
    output: Path,
    partial: Path,
    recorded: dict[str, Any],
    grid: OutputGrid,
    settings: PredictSettings,
    alone: bool,
) -> TileStore:
    """Rank 0: check the input and the paths, then continue the store at ``partial`` or create
    it (in memory, :class:`~demsr.tilestore.MemoryTileStore`, when the raster is one tile and
    this process predicts ``alone``)."""
    refuse_existing(output, overwrite=settings.overwrite)
    require_writable_folder(output.parent)
    summary = source.summarise(settings.progress)
    if summary.valid_cells == 0:
        raise RasterError(f"{source.path}: band {settings.band} holds no valid cells")
    log.debug("input %s", summary.describe())
    if partial.exists():
        check_not_busy(partial)  # before any advice to resume, or an --overwrite
    remove_stale_temporaries(output, partial)
    if settings.overwrite and not settings.resume and partial.exists():
        shutil.rmtree(partial)
    store = open_for_resume(partial, recorded, settings.resume)
    rows, cols = recorded["shape"]
    single = tile_count(rows, cols, int(recorded["tile_px"])) == 1
    if store is None and single and alone:
        return MemoryTileStore(partial, recorded, grid)  # one tile: nothing to resume
    return store if store is not None else TileStore.create(partial, recorded, grid)


def write_product(
    store: TileStore,
    output: Path,
    fmt: str,
    settings: PredictSettings,
    provenance: dict[str, str],
    layout: RasterLayout,
    calibration: UncertaintyCalibration | None,
    units: str,
) -> Path:
    """The complete ``store`` turned into the product (:func:`demsr.io.finalise_output`), then
    removed."""
    from demsr.plan.memory import default_memory_bytes

    # Decoded chunks kept while finalising: within the memory the tiles were planned for.
    cache_bytes = (settings.memory_bytes or default_memory_bytes("cpu")[0]) // len(store.grid.bands)
    with store.reader(ARRAY, cache_bytes) as reader:
        result = finalise_output(
            reader,
            output,
            fmt,
            dtype=settings.output_dtype,
            metadata=provenance,
            layout=layout,
            progress=settings.progress,
            uncertainty=_uncertainty_band(store, calibration, units, cache_bytes),
        )
    store.remove()
    return result


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


class StoreWriter:
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

    def flush(self) -> None:
        """Make the chunks written since the last commit durable (the slow part of a commit,
        which may run in a background thread while the next batch computes)."""
        fsync_files(self._chunks)
        self._chunks = []

    def commit(self) -> None:
        """Record the tiles written since the last commit as finished, their chunks flushed
        first where :meth:`flush` has not."""
        self.flush()
        self.log.record(self._pending)
        self.committed += len(self._pending)
        self._pending = []

    def close(self) -> None:
        self.log.close()
