"""The tile grid of a plan: how ``demsr predict`` cuts a raster's grid into tiles, and how the
tiles fall to the ranks.

Counted from the grid's shape (``demsr.grid.Grid.shape``) alone, with the functions
``demsr predict`` cuts and deals with (:mod:`demsr.tiling`), so that the two cannot disagree;
computed along each axis, so that a global grid costs milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from rasterio.windows import Window

from demsr.tiling import Tile, batch_tiles, deal_batches, tile_count, tile_grid


@dataclass(frozen=True)
class GridGeometry:
    """The tile grid of a raster grid of ``shape`` (rows, cols of low-res cells, as
    :class:`demsr.grid.Grid` holds it) as ``demsr predict`` cuts it.

    ``window_cells`` is the sum of the read windows' cells over all tiles, ``largest_window``
    the (rows, cols) of the largest one; ``core_share`` = rows x cols / ``window_cells``, the
    share of the network's work that lands in the output.
    """

    shape: tuple[int, int]
    tile_px: int
    margin_px: int
    tile_rows: int
    tile_cols: int
    largest_window: tuple[int, int]
    window_cells: int

    @property
    def cells(self) -> int:
        """The grid's cells (rows x cols)."""
        return self.shape[0] * self.shape[1]

    @property
    def tiles(self) -> int:
        return self.tile_rows * self.tile_cols

    @property
    def core_share(self) -> float:
        return self.cells / self.window_cells


def _read_spans(
    shape: tuple[int, int], tile_px: int, margin_px: int
) -> tuple[list[int], list[int]]:
    """The read windows' heights (one per row of tiles) and widths (one per column of tiles):
    a tile's read window is its row span's read rows by its column span's read columns (see
    :func:`demsr.tiling.tile_grid`)."""
    rows, cols = shape
    heights = [tile.read_shape[0] for tile in tile_grid(rows, 1, tile_px, margin_px)]
    widths = [tile.read_shape[1] for tile in tile_grid(1, cols, tile_px, margin_px)]
    return heights, widths


def grid_geometry(shape: tuple[int, int], tile_px: int, margin_px: int) -> GridGeometry:
    """The tile grid's counts and read windows for a grid of ``shape`` (rows, cols), computed
    along each axis (a tile's read window is its row span's read rows by its column span's read
    columns, see :func:`demsr.tiling.tile_grid`), so that a global grid costs milliseconds."""
    heights, widths = _read_spans(shape, tile_px, margin_px)
    geometry = GridGeometry(
        shape=shape,
        tile_px=tile_px,
        margin_px=margin_px,
        tile_rows=len(heights),
        tile_cols=len(widths),
        largest_window=(max(heights), max(widths)),
        window_cells=sum(heights) * sum(widths),
    )
    assert geometry.tiles == tile_count(*shape, tile_px)
    return geometry


@dataclass(frozen=True)
class Sharding:
    """How the tiles fall to the ranks: ``tiles_per_rank`` (rank 0 first), and the largest
    batch as (tiles, read-window cells per tile), which sets the memory."""

    tiles_per_rank: tuple[int, ...]
    largest_batch: tuple[int, int]


def shard_tiles(
    shape: tuple[int, int], tile_px: int, margin_px: int, batch_size: int, ranks: int
) -> Sharding:
    """The tiles each of ``ranks`` ranks predicts, for a grid of ``shape`` (rows, cols), when
    the batches of :func:`demsr.tiling.batch_tiles` are dealt round-robin (rank r: batches r,
    r+ranks, ...) by :func:`demsr.tiling.deal_batches`, as ``demsr predict`` deals them
    (:func:`demsr.predict.rank_batches`).

    With ``batch_size`` 1 that is ``ceil(tiles / ranks)`` for the first ``tiles % ranks`` ranks
    and ``floor`` for the others. Larger batches hold tiles of one read shape each, so some are
    not full; their sizes come from ``batch_tiles`` itself, fed one stand-in tile per read shape
    in the grid's row-major order (it groups by read shape only): a pass over the tiles, about
    a second per million.
    """
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    total = tile_count(*shape, tile_px)
    if batch_size == 1:
        geometry = grid_geometry(shape, tile_px, margin_px)
        window = geometry.largest_window[0] * geometry.largest_window[1]
        loads = [len(deal_batches(range(total), rank, ranks)) for rank in range(ranks)]
        return Sharding(tuple(loads), (1, window))
    row_heights, col_widths = _read_spans(shape, tile_px, margin_px)
    stand_ins: dict[tuple[int, int], Tile] = {}

    def tiles() -> Iterator[Tile]:
        for height in row_heights:
            for width in col_widths:
                tile = stand_ins.get((height, width))
                if tile is None:
                    window = Window(0, 0, width, height)
                    tile = stand_ins[height, width] = Tile(0, window, window)
                yield tile

    sizes, largest = [], (0, 0)
    for batch in batch_tiles(tiles(), batch_size):
        sizes.append(len(batch))
        height, width = batch[0].read_shape
        if len(batch) * height * width > largest[0] * largest[1]:
            largest = (len(batch), height * width)
    return Sharding(tuple(sum(deal_batches(sizes, rank, ranks)) for rank in range(ranks)), largest)
