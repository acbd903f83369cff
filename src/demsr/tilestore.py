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
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from demsr.io import RasterLayout, RasterReader, atomic_directory, fsync_file

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
    """The output's grid: shape (rows, cols), north-up transform, CRS, nodata (None: NaN),
    chunk edge in output cells and the tags (provenance) the product carries."""

    shape: tuple[int, int]
    transform: Affine
    crs: CRS | None
    nodata: float | None
    chunk_px: int
    tags: dict[str, str]
    bands: tuple[str, ...] = (ARRAY,)

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
        return cls(
            shape=(int(rows), int(cols)),
            transform=Affine(*values["transform"]),
            crs=None if values["crs"] is None else CRS.from_wkt(values["crs"]),
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

    def reader(self, band: str = ARRAY) -> RasterReader:
        """The output's ``band`` read as a raster (NaN = nodata), e.g. for
        :func:`demsr.io.finalise_output`."""
        return _StoreReader(self, band)


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

    def record(self, done: Iterable[tuple[int, bool]], chunks: Iterable[Path]) -> None:
        """Flush ``chunks`` to disk, then append ``(tile index, empty)`` lines and flush them."""
        for chunk in chunks:
            fsync_file(chunk)
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


class _StoreReader(RasterReader):
    """A partial store's output as a raster."""

    def __init__(self, store: TileStore, band: str = ARRAY) -> None:
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

    def _read(self, row_off: int, col_off: int, height: int, width: int) -> np.ndarray:
        window = Window(col_off, row_off, width, height)
        return np.asarray(self._store.band_array(self._band)[window.toslices()], dtype=np.float32)

    def close(self) -> None:
        pass
