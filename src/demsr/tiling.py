"""Tile geometry for prediction over rasters of any size: pure functions, no torch.

A raster of ``rows x cols`` low-res cells is cut into a grid of tiles. Each tile has

- a *core*: the cells whose output the tile produces. The cores partition the raster exactly:
  every cell lies in exactly one core, so every output cell is written exactly once;
- a *read window*: the cells the network sees, i.e. the tile's ``tile_px x tile_px`` block
  extended by ``margin_px`` on each side and clipped to the raster. With ``margin_px`` at least
  the network's receptive field, a core's output is the same as that of a whole-raster run.

The cores start on multiples of ``tile_px``. The last row and column of tiles would stick out
of the raster; their *block* is shifted back inside it (it ends on the raster's last cell), so
that they read as much context as the others and their read windows mostly share one shape
(which lets them batch together), while their *core* is trimmed to the cells that no earlier
tile covers. Trimming rather than writing the shifted block twice keeps writes disjoint, which a
resumable writer needs (a tile's cells never belong to a second tile).

A global grid wraps east-west (``wrap_cols``, the number of distinct columns around the
globe, see :func:`global_period`): read windows then run past its western and eastern edges
(negative ``col_off``, or beyond the last column) onto the columns across the antimeridian, and
the last column of tiles keeps its block rather than shifting it back, so a tile by the
antimeridian sees the same context as any other and the output has no seam there. Rows never
wrap (over a pole the neighbour is 180 degrees away).

Windows are ``rasterio.windows.Window`` in low-res cells (``col_off, row_off, width, height``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from affine import Affine
from rasterio.windows import Window

T = TypeVar("T")

TileTransform = Callable[[np.ndarray, Window, Affine, Any], np.ndarray]
"""``f(values_m, window, transform, crs) -> values_m``: a per-tile change of the elevations.

``values_m`` is a (rows, cols) float32 array in metres, NaN = nodata; ``window`` locates it in
its raster (low-res input cells for ``transform_input``, high-res output cells for
``transform_output``); ``transform`` is the window's own affine (cell (0, 0) is the array's
top-left cell); ``crs`` the raster's CRS. It returns an array of the same shape, NaN where it has
no value. It must act cell by cell (tiles overlap, so a cell may be seen more than once), e.g. a
vertical datum shift. ``predict_raster`` calls ``transform_input`` in its reading thread and
``transform_output`` in its writing thread (:mod:`demsr.overlap`), each one call at a time but
the two at once: what they share must be safe to use from two threads (the datum hooks' pyproj
transformer is).
"""


@dataclass(frozen=True)
class Tile:
    """One tile of a :func:`tile_grid`.

    ``index`` is the tile's position in row-major order. ``core`` is the window of cells this
    tile produces; ``read`` the window it reads (core plus context, inside the raster).
    """

    index: int
    core: Window
    read: Window

    @property
    def core_offset(self) -> tuple[int, int]:
        """(row, col) of the core's first cell inside the read window."""
        return (
            int(self.core.row_off - self.read.row_off),
            int(self.core.col_off - self.read.col_off),
        )

    @property
    def core_in_read(self) -> Window:
        """The core as a window relative to the read window (for slicing what was read)."""
        row, col = self.core_offset
        return Window(col, row, self.core.width, self.core.height)

    @property
    def read_shape(self) -> tuple[int, int]:
        """(rows, cols) of the read window."""
        return (int(self.read.height), int(self.read.width))


def tile_count(rows: int, cols: int, tile_px: int) -> int:
    """Number of tiles :func:`tile_grid` makes: ``ceil(rows / tile_px) * ceil(cols / tile_px)``."""
    return math.ceil(rows / tile_px) * math.ceil(cols / tile_px)


def expand_window(
    window: Window, margin_px: int, rows: int, cols: int, *, wrap_cols: int | None = None
) -> Window:
    """``window`` grown by ``margin_px`` cells on each side, clipped to a rows x cols raster
    (its columns not clipped when they wrap: ``wrap_cols`` set)."""
    row_start = max(0, int(window.row_off) - margin_px)
    row_stop = min(rows, int(window.row_off + window.height) + margin_px)
    col_start = int(window.col_off) - margin_px
    col_stop = int(window.col_off + window.width) + margin_px
    if wrap_cols is None:
        col_start, col_stop = max(0, col_start), min(cols, col_stop)
    return Window(col_start, row_start, col_stop - col_start, row_stop - row_start)


def global_period(transform: Affine, shape: tuple[int, int], geographic: bool) -> int | None:
    """Columns around the globe of a north-up grid that covers all longitudes, else None.

    A geographic grid whose columns span 360 degrees (to half a cell) wraps with a period of
    all its columns; one spanning 360 degrees plus a cell (a grid-registered global grid whose
    last column repeats the first meridian) wraps with a period of one column fewer.
    """
    if not geographic or transform.b != 0 or transform.a <= 0:
        return None
    cell = transform.a
    cols = shape[1]
    for period in (cols, cols - 1):
        if period > 0 and abs(period * cell - 360.0) < cell / 2:
            return period
    return None


def wrapped_segments(col_off: int, width: int, period: int) -> list[tuple[int, int]]:
    """The column ranges ``[start, stop)`` of a grid that wraps every ``period`` columns which,
    read one after the other, give columns ``col_off .. col_off + width`` (any integers)."""
    segments: list[tuple[int, int]] = []
    col, stop = col_off, col_off + width
    while col < stop:
        start = col % period
        length = min(stop - col, period - start)
        segments.append((start, start + length))
        col += length
    return segments


def scale_window(window: Window, factor: int) -> Window:
    """The window covering the same ground on a grid ``factor`` times finer."""
    return Window(
        int(window.col_off) * factor,
        int(window.row_off) * factor,
        int(window.width) * factor,
        int(window.height) * factor,
    )


def _axis_spans(
    length: int, tile_px: int, margin_px: int, wrap: bool = False
) -> list[tuple[int, int, int, int]]:
    """(core_start, core_stop, read_start, read_stop) of each tile along one axis."""
    spans = []
    for core_start in range(0, length, tile_px):
        core_stop = min(length, core_start + tile_px)
        if wrap:
            # Past the edge lie the columns across the antimeridian: nothing to clip.
            block_start = core_start
            block_stop = core_start + min(tile_px, length)
            spans.append((core_start, core_stop, block_start - margin_px, block_stop + margin_px))
            continue
        # The block is the tile's full tile_px extent, shifted back inside the raster at the end.
        block_start = max(0, min(core_start, length - tile_px))
        block_stop = min(length, block_start + tile_px)
        read_start = max(0, block_start - margin_px)
        read_stop = min(length, block_stop + margin_px)
        spans.append((core_start, core_stop, read_start, read_stop))
    return spans


def tile_grid(
    rows: int, cols: int, tile_px: int, margin_px: int, *, wrap_cols: int | None = None
) -> list[Tile]:
    """Cut a rows x cols raster into tiles of ``tile_px`` cells with ``margin_px`` of context.

    There are ``ceil(rows / tile_px) * ceil(cols / tile_px)`` tiles (see :func:`tile_count`);
    a raster smaller than one tile gives one tile covering it. The cores partition the raster;
    each read window is the tile's block (its core, or for the last row/column the ``tile_px``
    cells ending on the raster's edge) grown by ``margin_px`` on each side and clipped to the
    raster, so it always contains the core grown by ``margin_px`` (clipped). Read windows of
    interior tiles are ``tile_px + 2 * margin_px`` square; those at the edges are smaller.
    With ``wrap_cols`` (a global grid's period, :func:`global_period`) columns are not clipped:
    every read window is ``tile_px + 2 * margin_px`` wide and may reach past either edge.
    """
    if rows < 1 or cols < 1:
        raise ValueError(f"raster must have at least one cell, got {rows} x {cols}")
    if tile_px < 1:
        raise ValueError(f"tile_px must be >= 1, got {tile_px}")
    if margin_px < 0:
        raise ValueError(f"margin_px must be >= 0, got {margin_px}")
    row_spans = _axis_spans(rows, tile_px, margin_px)
    col_spans = _axis_spans(cols, tile_px, margin_px, wrap=wrap_cols is not None)
    tiles: list[Tile] = []
    for row_core_start, row_core_stop, row_read_start, row_read_stop in row_spans:
        for col_core_start, col_core_stop, col_read_start, col_read_stop in col_spans:
            core = Window(
                col_core_start,
                row_core_start,
                col_core_stop - col_core_start,
                row_core_stop - row_core_start,
            )
            read = Window(
                col_read_start,
                row_read_start,
                col_read_stop - col_read_start,
                row_read_stop - row_read_start,
            )
            tiles.append(Tile(index=len(tiles), core=core, read=read))
    return tiles


def batch_tiles(tiles: Iterable[Tile], batch_size: int) -> Iterator[list[Tile]]:
    """Group tiles with equal read shapes into batches of at most ``batch_size``.

    A batch is yielded as soon as it is full; the unfilled ones (at most one per read shape)
    come last. The grouping depends on the tiles' geometry only, never on their data, so a
    resumed run batches its tiles exactly as the interrupted run did (which keeps results
    identical bit for bit: a convolution's rounding can depend on the batch's size).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    waiting: dict[tuple[int, int], list[Tile]] = {}
    for tile in tiles:
        group = waiting.setdefault(tile.read_shape, [])
        group.append(tile)
        if len(group) == batch_size:
            del waiting[tile.read_shape]
            yield group
    yield from waiting.values()


def deal_batches(batches: Sequence[T], rank: int, ranks: int) -> Sequence[T]:
    """The batches that rank ``rank`` of ``ranks`` predicts: round-robin, rank r taking
    batches r, r + ranks, r + 2 * ranks, ... of ``batches`` (those left to predict, in the
    order of :func:`batch_tiles` over the whole grid). ``demsr predict`` deals its tiles with
    this and ``demsr plan`` counts each rank's share with it, so the two cannot disagree.
    ``batches`` may be a ``range`` (returned as one, without building a list)."""
    if ranks < 1 or not 0 <= rank < ranks:
        raise ValueError(f"rank must be in 0..ranks-1 with ranks >= 1, got {rank} of {ranks}")
    return batches[rank::ranks]
