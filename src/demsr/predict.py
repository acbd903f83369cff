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

:func:`predict_raster` writes into ``<output>.partial.tif`` and records finished tiles in
``<output>.partial.json`` after every batch, so an interrupted run resumes where it stopped
(``resume=True``). Once every tile is done, :func:`demsr.io.finalise_output` turns the partial
into the product (COG, CF NetCDF or Zarr) and deletes it.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window
from rasterio.windows import transform as window_transform
from tqdm import tqdm

from demsr import __version__
from demsr.checkpoint import Checkpoint, as_checkpoint, checkpoint_sha256
from demsr.io import (
    RasterError,
    atomic_path,
    fill_nearest,
    fill_nodata,
    finalise_output,
    fsync_file,
    gtiff_profile,
    open_raster,
    output_format,
    refuse_existing,
    remove_stale_temporaries,
    require_writable_folder,
    to_float32_heights,
)
from demsr.model import (
    SuperResolver,
    network_autocast,
    prepare_for_inference,
    resolve_device,
    resolve_precision,
)
from demsr.tiling import (
    Tile,
    TileTransform,
    batch_tiles,
    expand_window,
    scale_window,
    tile_count,
    tile_grid,
)

log = logging.getLogger(__name__)


MANIFEST_FORMAT = "demsr-partial-prediction"
MANIFEST_VERSION = 1


def partial_block_px(tile_out_px: int) -> int:
    """Block edge of the partial GeoTIFF: the largest of 512..16 dividing a tile's output side,
    so that each tile writes whole blocks and never rewrites a block a finished tile wrote
    (256 when none divides it)."""
    for block_px in (512, 256, 128, 64, 32, 16):
        if tile_out_px % block_px == 0:
            return block_px
    return 256


def upscale_mask(valid: np.ndarray, scale: int) -> np.ndarray:
    """Each low-res cell's flag repeated over its scale x scale high-res footprint."""
    return np.repeat(np.repeat(valid, scale, axis=0), scale, axis=1)


def fill_margin_px(margin_px: int) -> int:
    """Cells beyond a read window that nearest-valid filling must see: ``floor(sqrt(2) * m)``.

    A filled cell q within ``m`` cells (Chebyshev) of a valid cell p has a valid cell within
    Euclidean distance ``|p - q| <= sqrt(2) * m``, hence within that many cells along each axis.
    """
    return math.isqrt(2 * margin_px * margin_px)


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
    precision: str

    @classmethod
    def prepare(
        cls, resolver: SuperResolver, device: torch.device, precision: str, compile: bool
    ) -> _Network:
        mode = resolve_precision(precision, device)
        return cls(resolver, prepare_for_inference(resolver, device, compile=compile), device, mode)


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
    shape: tuple[int, int],
) -> _TileInput | None:
    """Read and fill one tile; None when its core holds no valid cell."""
    values = read_lowres(tile.read)
    valid = np.isfinite(values)
    core_valid = valid[tile.core_in_read.toslices()]
    if not core_valid.any():
        return None
    if not valid.all():
        wide = expand_window(tile.read, fill_px, *shape)
        filled = fill_nearest(read_lowres(wide) if wide != tile.read else values)
        row = int(tile.read.row_off - wide.row_off)
        col = int(tile.read.col_off - wide.col_off)
        values = filled[row : row + values.shape[0], col : col + values.shape[1]]
    return _TileInput(tile, np.ascontiguousarray(values, dtype=np.float32), core_valid)


def _run_batch(network: _Network, batch: list[_TileInput]) -> list[tuple[Tile, np.ndarray]]:
    """Run tiles of one read shape through the network; each core's (h*s, w*s) metres, NaN
    where the low-res parent is nodata."""
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


def _predict_batches(
    network: _Network,
    batches: Iterable[list[Tile]],
    read_lowres: Callable[[Window], np.ndarray],
    shape: tuple[int, int],
) -> Iterator[list[tuple[Tile, np.ndarray | None]]]:
    """Predict batches of tiles (of one read shape each, see ``batch_tiles``), yielding for
    each batch its (tile, core output) pairs; None marks a tile without valid cells, which never
    reaches the network."""
    fill_px = fill_margin_px(network.resolver.margin_px)
    for batch in batches:
        prepared = [_prepare_tile(tile, read_lowres, fill_px, shape) for tile in batch]
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
    natively (a recent GPU, a CPU with AMX or AVX512-BF16; within 0.2 m of float32 on real
    DEMs, BENCHMARKS.md), else fp32; the elevations stay float32. ``compile`` uses
    ``torch.compile`` (see :func:`~demsr.model.prepare_for_inference`).
    """
    lowres_m = np.asarray(lowres_m)
    if lowres_m.ndim != 2:
        raise ValueError(f"expected a (rows, cols) array, got shape {lowres_m.shape}")
    rows, cols = lowres_m.shape
    torch_device = resolve_device(device) if isinstance(device, str) else device
    if isinstance(model, SuperResolver):
        resolver = model
    else:
        resolver = as_checkpoint(model).build_resolver(torch_device)
    network = _Network.prepare(resolver, torch_device, precision, compile)
    scale = resolver.scale
    if tile_px is None:
        tiles = tile_grid(rows, cols, max(rows, cols), 0)
    else:
        tiles = tile_grid(rows, cols, tile_px, resolver.margin_px)

    def read_lowres(window: Window) -> np.ndarray:
        return to_float32_heights(lowres_m[window.toslices()], copy=True)

    highres_m = np.full((rows * scale, cols * scale), np.nan, np.float32)
    batches = _predict_batches(network, batch_tiles(tiles, batch_size), read_lowres, (rows, cols))
    for batch in batches:
        for tile, values in batch:
            if values is not None:
                highres_m[scale_window(tile.core, scale).toslices()] = values
    return highres_m


# --------------------------------------------------------------------------------------------
# Rasters: partial GeoTIFF + manifest, resumable
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


def partial_paths(output_path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(partial GeoTIFF, manifest) of a prediction into ``output_path``, next to it."""
    output = Path(output_path)
    return (
        output.with_name(output.name + ".partial.tif"),
        output.with_name(output.name + ".partial.json"),
    )


def _read_manifest(manifest: Path) -> tuple[dict[str, Any], set[int], set[int]]:
    """A manifest's settings and its finished and empty tile indices. Raises OSError, or
    ValueError / KeyError / TypeError (json.JSONDecodeError is a ValueError) when it cannot be
    read or is not a manifest."""
    document = json.loads(manifest.read_text())
    finished = {int(i) for i in document["finished"]}
    empty = {int(i) for i in document["empty"]}
    return document["settings"], finished, empty


def partial_progress(output_path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(finished tiles, all tiles) of the interrupted run that a prediction into ``output_path``
    left to ``--resume``; None when it left none (or an unreadable manifest)."""
    partial, manifest = partial_paths(output_path)
    if not (partial.exists() and manifest.exists()):
        return None
    try:
        settings, finished, _ = _read_manifest(manifest)
        rows, cols = settings["shape"]
        return len(finished), tile_count(int(rows), int(cols), int(settings["tile_px"]))
    except (OSError, KeyError, TypeError, ValueError):
        return None


def _write_manifest(
    path: Path, settings: dict[str, Any], finished: set[int], empty: set[int]
) -> None:
    document = {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "settings": settings,
        "finished": sorted(finished),
        "empty": sorted(empty),
    }
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(document, separators=(",", ":")) + "\n")


def _resume_state(
    partial: Path, manifest: Path, settings: dict[str, Any], resume: bool
) -> tuple[set[int], set[int]] | None:
    """Finished and empty tile indices of a partial run to continue; None to start afresh.

    Refuses a partial run unless ``resume``, and one whose settings differ from ``settings``.
    """
    if manifest.exists() and not partial.exists():
        log.warning("%s: removing a stale manifest (its partial output is gone)", manifest)
        manifest.unlink()
    if not partial.exists():
        if resume:
            log.info("no partial result at %s; starting from the first tile", partial)
        return None
    if not resume:
        raise FileExistsError(
            f"{partial}: an earlier run left a partial result; pass --resume (resume=True) to "
            f"continue it, or --overwrite to start again"
        )
    if not manifest.exists():
        raise RasterError(
            f"{partial}: cannot resume, its manifest {manifest.name} is missing; delete "
            f"{partial.name} to start again"
        )
    try:
        recorded, finished, empty = _read_manifest(manifest)
    except (KeyError, TypeError, ValueError) as exc:
        raise RasterError(
            f"{manifest}: unreadable manifest ({exc}); delete {partial.name} and "
            f"{manifest.name} to start again"
        ) from None
    expected = json.loads(json.dumps(settings))
    for key in sorted(set(expected) | set(recorded)):
        if recorded.get(key) != expected.get(key):
            raise RasterError(
                f"{partial}: cannot resume, {key} differs from the interrupted run "
                f"(was {recorded.get(key)!r}, now {expected.get(key)!r}); rerun with the same "
                f"settings or delete {partial.name} and {manifest.name} to start again"
            )
    return finished, empty


def _create_partial(
    path: Path,
    shape: tuple[int, int],
    transform: Affine,
    crs: CRS | None,
    nodata: float,
    tags: Mapping[str, str],
    block_px: int,
) -> None:
    """An empty tiled float32 GeoTIFF; unwritten blocks stay absent (sparse) until written."""
    profile = gtiff_profile(
        shape, transform, crs, nodata, block_px=block_px, BIGTIFF="IF_SAFER", SPARSE_OK="TRUE"
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.update_tags(**tags)
        dst.set_band_unit(1, "metre")


class _PartialWriter:
    """Writes tiles' outputs into the partial GeoTIFF; :meth:`commit` makes them durable.

    The dataset is reopened after each commit: closing it is what flushes GDAL's blocks.
    """

    def __init__(
        self,
        partial: Path,
        manifest: Path,
        settings: dict[str, Any],
        finished: set[int],
        empty: set[int],
        scale: int,
        transform: Affine,
        crs: CRS | None,
        nodata: float,
        transform_output: TileTransform | None,
    ) -> None:
        self.partial, self.manifest, self.settings = partial, manifest, settings
        self.finished, self.empty = finished, empty
        self.scale, self.transform, self.crs, self.nodata = scale, transform, crs, nodata
        self.transform_output = transform_output
        self.committed = len(finished)
        self._dataset: Any = None

    def write(self, tile: Tile, values: np.ndarray | None) -> None:
        """Write one tile's core output ((h*s, w*s) metres, NaN = nodata; None: all nodata)."""
        window = scale_window(tile.core, self.scale)
        shape = (int(window.height), int(window.width))
        if values is None:
            values = np.full(shape, np.nan, np.float32)
            self.empty.add(tile.index)
        elif self.transform_output is not None:
            changed = self.transform_output(
                values, window, window_transform(window, self.transform), self.crs
            )
            changed = np.asarray(changed, dtype=np.float32)
            if changed.shape != shape:
                raise ValueError(
                    f"transform_output returned shape {changed.shape} for a {shape} tile"
                )
            values = np.where(np.isnan(values), np.float32(np.nan), changed)
        values = fill_nodata(values, self.nodata)
        if self._dataset is None:
            self._dataset = rasterio.open(self.partial, "r+")
        self._dataset.write(values, 1, window=window)
        self.finished.add(tile.index)

    def commit(self) -> None:
        """Flush the written tiles to disk, then record them in the manifest."""
        self.close()
        fsync_file(self.partial)
        _write_manifest(self.manifest, self.settings, self.finished, self.empty)
        self.committed = len(self.finished)

    def close(self) -> None:
        if self._dataset is not None:
            self._dataset.close()
            self._dataset = None


def predict_raster(
    checkpoint: Checkpoint | str | os.PathLike[str],
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    band: int = 1,
    device: str = "auto",
    tile_px: int = 128,
    batch_size: int = 1,
    precision: str = "auto",
    compile: bool = False,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    transform_input: TileTransform | None = None,
    transform_output: TileTransform | None = None,
    fmt: str | None = None,
    output_dtype: str = "float32",
    tags: Mapping[str, str] | None = None,
    variable: str | None = None,
    crs: CRS | str | None = None,
) -> Path:
    """Super-resolve one band of a raster of any size into a georeferenced product, tile by tile.

    The output has the input's CRS and bounds, its pixel size divided by the model's scale, and
    the input's nodata value (NaN if it declares none) wherever the input has none; tags record
    ``units=metre``, the model config, the checkpoint's SHA-256 and the demsr version, plus
    ``tags`` (e.g. ``vertical_datum``). The product's format is ``fmt`` or the output's
    extension (COG ``.tif``, CF NetCDF ``.nc``, Zarr ``.zarr``; see
    :func:`demsr.io.finalise_output`, which also takes ``output_dtype`` float32 or int16).

    Tiles of ``tile_px`` low-res cells (plus the model's margin) run in batches of
    ``batch_size``; memory depends on these only. ``precision`` and ``compile`` as in
    :func:`predict_array`. Finished tiles go to ``<output>.partial.tif`` and are recorded in
    ``<output>.partial.json`` after every batch (a run stopped before the first is recorded
    removes both; :func:`partial_progress` says what a stopped run kept). ``resume=True``
    continues such a partial run when its settings (checkpoint, input file, band, tile size,
    margin, precision, hooks) match; without it an existing partial run is refused. An
    existing output is refused unless ``overwrite``, and is replaced only once the new one is
    complete.

    ``transform_input`` / ``transform_output`` (see :data:`TileTransform`) change each tile's
    low-res input before the network and its high-res output before writing (e.g. a vertical
    datum shift). ``variable`` names a NetCDF/Zarr input's elevation variable and ``crs`` gives
    the CRS of an input without one (see :func:`demsr.io.open_raster`); an input without a CRS
    is refused otherwise. Every input cell is read once before the first tile
    (:meth:`~demsr.io.RasterReader.summarise`), so that a truncated file, an undeclared nodata
    value or a band without valid cells fails at once, leaving nothing behind.
    """
    if tile_px < 1 or batch_size < 1:
        raise ValueError(f"tile_px and batch_size must be >= 1, got {tile_px} and {batch_size}")
    output = Path(output_path)
    partial, manifest = partial_paths(output)
    refuse_existing(output, overwrite=overwrite)
    require_writable_folder(output.parent)
    fmt = output_format(output, fmt)  # an unknown format fails now, not after the prediction
    checkpoint = as_checkpoint(checkpoint)
    torch_device = resolve_device(device)
    network = _Network.prepare(
        checkpoint.build_resolver(torch_device), torch_device, precision, compile
    )
    mode = network.precision
    scale, margin = network.resolver.scale, network.resolver.margin_px

    with open_raster(input_path, band, variable, crs=crs) as source:
        rows, cols = source.shape
        if source.crs is None:
            raise RasterError(
                f"{source.path}: has no CRS; give it with --crs (crs=), e.g. --crs EPSG:4326, so "
                "that the output is georeferenced"
            )
        summary = source.summarise(progress)
        if summary.valid_cells == 0:
            raise RasterError(f"{source.path}: band {band} holds no valid cells")
        log.debug("input %s", summary.describe())
        nodata = float(np.float32(np.nan if source.nodata is None else source.nodata))
        output_transform = source.transform @ Affine.scale(1 / scale)
        sha256 = checkpoint_sha256(checkpoint)
        settings: dict[str, Any] = {
            "checkpoint_sha256": sha256,
            "input": _input_identity(input_path),
            "band": band,
            "variable": variable,
            "crs": None if crs is None else source.crs.to_string(),
            "shape": [rows, cols],
            "scale": scale,
            "tile_px": tile_px,
            "margin_px": margin,
            "precision": mode,
            "compile": compile,  # compiled kernels round differently from eager ones
            # Batch composition and the device change float32 rounding: keep them for resume.
            "batch_size": batch_size,
            "device": torch_device.type,
            "transform_input": _describe_hook(transform_input),
            "transform_output": _describe_hook(transform_output),
        }
        provenance = {
            **dict(tags or {}),
            "units": "metre",
            "demsr_version": __version__,
            "checkpoint_sha256": sha256,
            "model_config": json.dumps(checkpoint.model_config.to_dict(), sort_keys=True),
            "elevation_scaling": json.dumps(checkpoint.scaling.to_dict(), sort_keys=True),
            "source": source.path,
            "source_band": str(band),
            "tile_px": str(tile_px),
            "margin_px": str(margin),
            "precision": mode,
        }
        remove_stale_temporaries(output, manifest)
        if overwrite and not resume:
            partial.unlink(missing_ok=True)
            manifest.unlink(missing_ok=True)
        state = _resume_state(partial, manifest, settings, resume)
        if state is None:
            _create_partial(
                partial,
                (rows * scale, cols * scale),
                output_transform,
                source.crs,
                nodata,
                provenance,
                partial_block_px(tile_px * scale),
            )
            state = (set(), set())
            _write_manifest(manifest, settings, *state)
        finished, empty = state
        tiles = tile_grid(rows, cols, tile_px, margin)
        # Batches come from the whole grid, so that a resumed run batches as the first did.
        batches = [
            [tile for tile in batch if tile.index not in finished]
            for batch in batch_tiles(tiles, batch_size)
        ]
        if finished:
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

        writer = _PartialWriter(
            partial,
            manifest,
            settings,
            finished,
            empty,
            scale,
            output_transform,
            source.crs,
            nodata,
            transform_output,
        )
        layout = source.layout
        _run_tiles(
            network,
            [batch for batch in batches if batch],
            read_lowres,
            (rows, cols),
            writer,
            total=len(tiles),
            progress=progress,
        )

    if len(empty) == len(tiles):
        partial.unlink()
        manifest.unlink()
        raise RasterError(f"{os.fspath(input_path)}: band {band} holds no valid cells")
    # The product appears only when complete; if this fails the partial stays, and a rerun
    # with resume finalises it again without predicting anything.
    result = finalise_output(
        partial,
        output,
        fmt,
        dtype=output_dtype,
        metadata=provenance,
        layout=layout,
        progress=progress,
    )
    manifest.unlink()
    log.info("wrote %s (%d x %d, x%d)", result, cols * scale, rows * scale, scale)
    return result


def _run_tiles(
    network: _Network,
    batches: list[list[Tile]],
    read_lowres: Callable[[Window], np.ndarray],
    shape: tuple[int, int],
    writer: _PartialWriter,
    *,
    total: int,
    progress: bool,
) -> None:
    """Predict ``batches`` into ``writer``, committing after every batch, with a progress bar."""
    scale = network.resolver.scale
    todo = sum(len(batch) for batch in batches)
    bar = tqdm(
        total=total,
        initial=total - todo,
        unit="tile",
        desc="predict",
        disable=not progress,
        dynamic_ncols=True,
    )
    started = time.perf_counter()
    written_px = 0
    try:
        for batch in _predict_batches(network, batches, read_lowres, shape):
            for tile, values in batch:
                writer.write(tile, values)
                written_px += int(tile.core.height * tile.core.width) * scale * scale
            writer.commit()
            elapsed = max(time.perf_counter() - started, 1e-9)
            bar.update(len(batch))
            bar.set_postfix_str(f"{written_px / elapsed / 1e6:.2f} Mpx/s out")
    except BaseException:
        writer.close()
        if writer.committed == 0:  # nothing worth resuming: leave nothing behind
            writer.partial.unlink(missing_ok=True)
            writer.manifest.unlink(missing_ok=True)
        # Not a warning: the CLI reports it in its one-line error (partial_progress).
        log.debug("stopped with %d of %d tiles done", writer.committed, total)
        raise
    finally:
        bar.close()
    elapsed = time.perf_counter() - started
    log.info("predicted %d tiles (%.1f output Mpx) in %.1f s", todo, written_px / 1e6, elapsed)
