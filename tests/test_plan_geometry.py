"""The tile grid of a plan: ranks share the batches of the real grid, and the grid's read windows
are the real tiles'."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from demsr.plan.geometry import grid_geometry, shard_tiles
from demsr.tiling import batch_tiles, tile_grid


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 300),
    cols=st.integers(1, 300),
    tile_px=st.integers(8, 96),
    margin_px=st.integers(0, 60),
    batch_size=st.integers(1, 6),
    ranks=st.integers(1, 9),
)
def test_ranks_share_the_batches_of_the_real_grid(
    rows: int, cols: int, tile_px: int, margin_px: int, batch_size: int, ranks: int
) -> None:
    """Per-rank counts sum to the tiles; they are those of the real grid's batches dealt
    round-robin; with batches of one, the busiest rank has ceil(tiles / ranks)."""
    sharding = shard_tiles((rows, cols), tile_px, margin_px, batch_size, ranks)
    tiles = tile_grid(rows, cols, tile_px, margin_px)
    batches = list(batch_tiles(tiles, batch_size))
    expected = [sum(len(b) for b in batches[rank::ranks]) for rank in range(ranks)]
    assert list(sharding.tiles_per_rank) == expected
    assert sum(sharding.tiles_per_rank) == len(tiles)
    if batch_size == 1:
        assert max(sharding.tiles_per_rank) == math.ceil(len(tiles) / ranks)
    largest = max(len(b) * b[0].read_shape[0] * b[0].read_shape[1] for b in batches)
    assert sharding.largest_batch[0] * sharding.largest_batch[1] == largest
    geometry = grid_geometry((rows, cols), tile_px, margin_px)
    assert geometry.window_cells == sum(t.read.width * t.read.height for t in tiles)
    assert geometry.largest_window == (
        max(t.read_shape[0] for t in tiles),
        max(t.read_shape[1] for t in tiles),
    )
