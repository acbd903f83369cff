"""The partial result of a tiled prediction: one chunked Zarr store that any number of ranks
write into, and the record of the tiles they finished.

Layout of ``<output>.partial.zarr``::

    zarr.json, elevation/      float32 (rows * scale, cols * scale), NaN = nodata; chunks of
                               one tile's output (tile_px * scale square), so that two tiles
                               never share a chunk and ranks never write the same file; the
                               chunks of tiles without valid cells are never written
    uncertainty/               with ``--ensemble`` only: the calibrated uncertainty, the same
                               grid and chunks (``OutputGrid.bands`` lists the arrays)
    demsr-run.json             the run's settings (a resume must match them) and the output's
                               georeferencing, written once when the store is created
    done/rank-00000.log        the finished tiles, one line ``<tile index> d`` (``e``: a tile
    done/rank-00001.log ...    without valid cells), appended by each rank once the tile's
                               chunk is on disk
    locks/rank-00000.lock ...  each rank's advisory lock (flock), held while it writes: a second
                               run on the same output is refused, naming the process that holds
                               it; a killed process's lock is released by the system, so a
                               rerun takes it over

A tile is finished when a log says so, whichever rank wrote it and in whichever run: a rerun
reads all the logs and predicts only the other tiles. A log line is only appended after its
chunk file has been flushed to disk (fsync), and a torn last line (a rank killed while
appending) is ignored, so the record never claims a tile that is not there.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from demsr.grid import Grid
from demsr.io import RasterLayout, RasterReader, atomic_directory

try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

STORE_FORMAT = "demsr-partial-prediction"
STORE_VERSION = 2
ARRAY = "elevation"
UNCERTAINTY_ARRAY = "uncertainty"
RUN_FILE = "demsr-run.json"
DONE_DIR = "done"
LOCK_DIR = "locks"
_DONE_LINE = re.compile(r"^(\d+) ([de])$")


@dataclass(frozen=True)
class OutputGrid:
    """The output's grid (:class:`demsr.grid.Grid`: shape, north-up transform, CRS), nodata
    (None: NaN), chunk edge in output cells and the tags (provenance) the product carries."""

    grid: Grid
    nodata: float | None
    chunk_px: int
    tags: dict[str, str]
    bands: tuple[str, ...] = (ARRAY,)

    @property
    def shape(self) -> tuple[int, int]:
        return self.grid.shape

    @property
    def transform(self) -> Affine:
        return self.grid.transform

    @property
    def crs(self) -> CRS | None:
        crs: CRS | None = self.grid.crs
        return crs

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "transform": list(self.transform)[:6],
            "crs": None if self.crs is None else self.crs.to_wkt(),
            "nodata": self.nodata,
            "chunk_px": self.chunk_px,
            "tags": self.tags,
            "bands": list(self.bands),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> OutputGrid:
        rows, cols = values["shape"]
        crs = None if values["crs"] is None else CRS.from_wkt(values["crs"])
        return cls(
            grid=Grid((int(rows), int(cols)), Affine(*values["transform"]), crs),
            nodata=None if values["nodata"] is None else float(values["nodata"]),
            chunk_px=int(values["chunk_px"]),
            tags={str(k): str(v) for k, v in values["tags"].items()},
            bands=tuple(str(band) for band in values.get("bands", [ARRAY])),
        )


class StoreError(ValueError):
    """A partial store that cannot be used (unreadable, or not a demsr partial prediction)."""


class StoreBusy(StoreError):
    """Another process is writing the partial store."""


class RankLock:
    """Rank ``rank``'s advisory lock on the store at ``path`` (``locks/rank-NNNNN.lock``):
    taken at once or a :class:`StoreBusy` naming the holder (its process id and host, which the
    holder writes into the file). The system releases it when the holder dies, however it dies.
    Where the platform has no ``flock`` (Windows) it does nothing."""

    def __init__(self, path: Path, rank: int) -> None:
        self.path = path / LOCK_DIR / f"rank-{rank:05d}.lock"
        self._fd: int | None = None
        if fcntl is None:
            return
        self.path.parent.mkdir(exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 256).decode(errors="replace").split()
            os.close(fd)
            who = f"process {holder[0]} on {holder[1]}" if len(holder) >= 2 else "another process"
            raise StoreBusy(
                f"{path}: another run ({who}) is writing this partial result; wait for it to "
                "finish or stop it, then rerun with --resume"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def check_not_busy(path: str | os.PathLike[str]) -> None:
    """A :class:`StoreBusy` if a run holds rank 0's lock on the store at ``path``."""
    RankLock(Path(path), 0).release()


class TileStore:
    """An open partial prediction (see the module's docstring); :meth:`create` or :meth:`open`."""

    def __init__(self, path: Path, settings: dict[str, Any], grid: OutputGrid) -> None:
        self.path, self.settings, self.grid = path, settings, grid
        self._arrays: dict[str, Any] = {}

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    def create(
        cls, path: str | os.PathLike[str], settings: dict[str, Any], grid: OutputGrid
    ) -> TileStore:
        """A new empty store at ``path`` (which must not exist), complete or absent."""
        import zarr

        target = Path(path)
        document = {
            "format": STORE_FORMAT,
            "format_version": STORE_VERSION,
            "settings": settings,
            "grid": grid.to_dict(),
        }
        with atomic_directory(target) as tmp:
            for band in grid.bands:
                zarr.create_array(
                    store=str(tmp),
                    name=band,
                    shape=grid.shape,
                    chunks=(min(grid.chunk_px, grid.shape[0]), min(grid.chunk_px, grid.shape[1])),
                    dtype="float32",
                    fill_value=np.float32(np.nan),
                    zarr_format=3,
                )
            (tmp / DONE_DIR).mkdir()
            (tmp / RUN_FILE).write_text(json.dumps(document, indent=1) + "\n")
        return cls(target, json.loads(json.dumps(settings)), grid)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> TileStore:
        """An existing store; :class:`StoreError` when it is not one or cannot be read."""
        target = Path(path)
        try:
            document = json.loads((target / RUN_FILE).read_text())
            if document.get("format") != STORE_FORMAT:
                raise ValueError(f"format is {document.get('format')!r}")
            if document.get("format_version") != STORE_VERSION:
                raise ValueError(f"format version {document.get('format_version')!r}")
            return cls(target, document["settings"], OutputGrid.from_dict(document["grid"]))
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise StoreError(
                f"{target}: not a readable partial prediction ({exc}); delete it to start again"
            ) from None

    def remove(self) -> None:
        shutil.rmtree(self.path)

    # -- the record of finished tiles -------------------------------------------------------

    def finished(self) -> tuple[set[int], set[int]]:
        """(finished, empty) tile indices over every rank's log; empty ones are finished too."""
        return read_done(self.path)

    def lock(self, rank: int) -> RankLock:
        """Rank ``rank``'s lock on this store, held until released (:class:`RankLock`)."""
        return RankLock(self.path, rank)

    def log_for(self, rank: int) -> DoneLog:
        return DoneLog(self.path / DONE_DIR / f"rank-{rank:05d}.log")

    # -- values ----------------------------------------------------------------------------

    @property
    def array(self) -> Any:
        return self.band_array(ARRAY)

    def band_array(self, band: str) -> Any:
        """The Zarr array of ``band`` (one of ``grid.bands``)."""
        if band not in self._arrays:
            import zarr

            self._arrays[band] = zarr.open_array(str(self.path / band), mode="r+")
        return self._arrays[band]

    def write(self, window: Window, values: np.ndarray) -> list[Path]:
        """Write one tile's output (float32 metres, NaN = nodata; (rows, cols), or (bands, rows,
        cols) for every band of ``grid.bands``) into its own chunk; the chunks' files written (to
        flush): none when the tile is all nodata."""
        chunk = self.grid.chunk_px
        row, col = int(window.row_off), int(window.col_off)
        if row % chunk or col % chunk:
            raise ValueError(f"window {window} does not start on a {chunk}-cell chunk")
        layers = values if values.ndim == 3 else values[None]
        if len(layers) != len(self.grid.bands):
            raise ValueError(f"{len(layers)} bands given for a store of {len(self.grid.bands)}")
        paths = []
        for band, layer in zip(self.grid.bands, layers, strict=True):
            self.band_array(band)[window.toslices()] = layer
            path = self.path / band / "c" / str(row // chunk) / str(col // chunk)
            if path.exists():
                paths.append(path)
        return paths

    def reader(self, band: str = ARRAY, cache_bytes: int = 0) -> RasterReader:
        """The output's ``band`` read as a raster (NaN = nodata), e.g. for
        :func:`demsr.io.finalise_output`.

        A read decodes each chunk it touches once and keeps the most recent ones (see
        :class:`ChunkCache`): at least 4, up to two rows of chunks when ``cache_bytes`` allows,
        so that reading the output in 512 x 512 blocks, row by row, decodes every chunk once
        instead of once per block.
        """
        return _StoreReader(self, band, cache_bytes)


class MemoryTileStore(TileStore):
    """A :class:`TileStore` held in memory, for a prediction that is one tile on one rank.

    It takes the tile's output and reads it back for the product like a store on disk, but
    writes nothing: no Zarr store to create, flush, lock and delete for one tile. A run that
    stops keeps nothing to resume, which loses that one tile, as a stop loses the tiles in
    progress of a larger run. ``path`` is the partial store's path, which messages and the
    product's history name as for a store on disk.
    """

    def __init__(self, path: str | os.PathLike[str], settings: dict[str, Any], grid: OutputGrid):
        super().__init__(Path(path), json.loads(json.dumps(settings)), grid)
        for band in grid.bands:
            self._arrays[band] = np.full(grid.shape, np.nan, dtype=np.float32)
        self.done: dict[int, bool] = {}  # tile index -> empty

    def remove(self) -> None:
        self._arrays = {band: np.empty((0, 0), dtype=np.float32) for band in self._arrays}

    def finished(self) -> tuple[set[int], set[int]]:
        return set(self.done), {index for index, empty in self.done.items() if empty}

    def lock(self, rank: int) -> RankLock:
        return _NoLock(self.path, rank)

    def log_for(self, rank: int) -> DoneLog:
        return _MemoryLog(self)

    def write(self, window: Window, values: np.ndarray) -> list[Path]:
        layers = values if values.ndim == 3 else values[None]
        if len(layers) != len(self.grid.bands):
            raise ValueError(f"{len(layers)} bands given for a store of {len(self.grid.bands)}")
        for band, layer in zip(self.grid.bands, layers, strict=True):
            self._arrays[band][window.toslices()] = layer
        return []


def read_done(path: str | os.PathLike[str]) -> tuple[set[int], set[int]]:
    """(finished, empty) tile indices recorded in a store's ``done`` logs."""
    finished: set[int] = set()
    empty: set[int] = set()
    folder = Path(path) / DONE_DIR
    for log_file in sorted(folder.glob("rank-*.log")):
        for line in log_file.read_text(errors="replace").splitlines():
            match = _DONE_LINE.match(line)
            if match is None:  # a torn line: its tile was not finished
                continue
            index = int(match.group(1))
            finished.add(index)
            if match.group(2) == "e":
                empty.add(index)
    return finished, empty


class DoneLog:
    """One rank's append-only record of finished tiles."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: Any = None

    def record(self, done: Iterable[tuple[int, bool]]) -> None:
        """Append ``(tile index, empty)`` lines and flush them (the tiles' chunks are already
        on disk: :meth:`demsr.partial.StoreWriter.commit`)."""
        lines = "".join(f"{index} {'e' if empty else 'd'}\n" for index, empty in done)
        if not lines:
            return
        if self._handle is None:
            self._handle = open(self.path, "ab")  # noqa: SIM115 - kept open across batches
            if self._handle.tell() > 0:
                # A rank killed while appending leaves a torn last line: start a new one.
                with open(self.path, "rb") as existing:
                    existing.seek(-1, os.SEEK_END)
                    if existing.read(1) != b"\n":
                        self._handle.write(b"\n")
        self._handle.write(lines.encode())
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class _NoLock(RankLock):
    """The lock of a store no other process can see: nothing to take."""

    def __init__(self, path: Path, rank: int) -> None:
        self.path = path / LOCK_DIR / f"rank-{rank:05d}.lock"
        self._fd = None


class _MemoryLog(DoneLog):
    """The record of finished tiles of a :class:`MemoryTileStore`."""

    def __init__(self, store: MemoryTileStore) -> None:
        super().__init__(store.path / DONE_DIR / "memory.log")
        self.store = store

    def record(self, done: Iterable[tuple[int, bool]]) -> None:
        self.store.done.update(done)


class ChunkCache:
    """The last ``capacity`` decoded chunks of a chunked array (least recently used first out).

    ``read(array, chunk_px, window)`` returns the window's values assembled from whole decoded
    chunks: the same values as ``array[window]``, but a chunk read again while it is cached is
    not decoded again.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self.decoded = 0  # chunks decoded so far
        self._chunks: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def chunk(self, array: Any, chunk_px: int, key: tuple[int, int]) -> np.ndarray:
        values = self._chunks.get(key)
        if values is not None:
            self._chunks.move_to_end(key)
            return values
        row, col = key[0] * chunk_px, key[1] * chunk_px
        values = np.asarray(array[row : row + chunk_px, col : col + chunk_px], dtype=np.float32)
        self.decoded += 1
        self._chunks[key] = values
        while len(self._chunks) > self.capacity:
            self._chunks.popitem(last=False)
        return values

    def read(self, array: Any, chunk_px: int, window: Window) -> np.ndarray:
        row_off, col_off = int(window.row_off), int(window.col_off)
        height, width = int(window.height), int(window.width)
        out = np.empty((height, width), dtype=np.float32)
        for chunk_row in range(row_off // chunk_px, (row_off + height - 1) // chunk_px + 1):
            top = max(row_off, chunk_row * chunk_px)
            bottom = min(row_off + height, (chunk_row + 1) * chunk_px)
            for chunk_col in range(col_off // chunk_px, (col_off + width - 1) // chunk_px + 1):
                left = max(col_off, chunk_col * chunk_px)
                right = min(col_off + width, (chunk_col + 1) * chunk_px)
                values = self.chunk(array, chunk_px, (chunk_row, chunk_col))
                out[top - row_off : bottom - row_off, left - col_off : right - col_off] = values[
                    top - chunk_row * chunk_px : bottom - chunk_row * chunk_px,
                    left - chunk_col * chunk_px : right - chunk_col * chunk_px,
                ]
        return out


class _StoreReader(RasterReader):
    """A partial store's output as a raster, read through a :class:`ChunkCache`."""

    def __init__(self, store: TileStore, band: str = ARRAY, cache_bytes: int = 0) -> None:
        grid = store.grid
        self.path = str(store.path)
        self.shape = grid.shape
        self.transform = grid.transform
        self.crs = grid.crs
        self.nodata = grid.nodata
        self.band_count = 1
        self.layout = RasterLayout(kind="zarr", variable=band, source_dtype="float32")
        self._store = store
        self._band = band
        chunk = grid.chunk_px
        across = -(-grid.shape[1] // chunk)
        two_rows = 2 * across + 2
        self.cache = ChunkCache(max(4, min(two_rows, cache_bytes // (4 * chunk * chunk))))

    def _read(self, row_off: int, col_off: int, height: int, width: int) -> np.ndarray:
        window = Window(col_off, row_off, width, height)
        array = self._store.band_array(self._band)
        return self.cache.read(array, self._store.grid.chunk_px, window)

    def close(self) -> None:
        self.cache = ChunkCache(1)
