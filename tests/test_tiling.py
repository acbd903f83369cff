"""Tile geometry: cores partition the raster, read windows hold the context, the count formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.windows import Window

from demsr.tiling import batch_tiles, expand_window, scale_window, tile_count, tile_grid


@st.composite
def grids(draw: st.DrawFn) -> tuple[int, int, int, int]:
    """(rows, cols, tile_px, margin_px) with at most 12 x 12 tiles, to keep examples cheap."""
    tile_px = draw(st.integers(min_value=1, max_value=64))
    rows = draw(st.integers(min_value=1, max_value=min(400, 12 * tile_px)))
    cols = draw(st.integers(min_value=1, max_value=min(400, 12 * tile_px)))
    margin_px = draw(st.integers(min_value=0, max_value=80))
    return rows, cols, tile_px, margin_px


def _slices(window: Window) -> tuple[slice, slice]:
    rows, cols = window.toslices()
    return rows, cols


@settings(max_examples=200, deadline=None)
@given(grids())
def test_cores_cover_every_cell_exactly_once(grid: tuple[int, int, int, int]) -> None:
    rows, cols, tile_px, margin_px = grid
    hits = np.zeros((rows, cols), np.int32)
    for tile in tile_grid(rows, cols, tile_px, margin_px):
        assert 1 <= tile.core.height <= tile_px and 1 <= tile.core.width <= tile_px
        hits[_slices(tile.core)] += 1
    assert (hits == 1).all()


@settings(max_examples=200, deadline=None)
@given(grids())
def test_read_windows_hold_core_and_margin_inside_the_raster(
    grid: tuple[int, int, int, int],
) -> None:
    rows, cols, tile_px, margin_px = grid
    for tile in tile_grid(rows, cols, tile_px, margin_px):
        read = tile.read
        assert read.row_off >= 0 and read.col_off >= 0
        assert read.row_off + read.height <= rows and read.col_off + read.width <= cols
        needed = expand_window(tile.core, margin_px, rows, cols)
        assert read.row_off <= needed.row_off and read.col_off <= needed.col_off
        assert read.row_off + read.height >= needed.row_off + needed.height
        assert read.col_off + read.width >= needed.col_off + needed.width
        # The core sits where core_offset says inside the read window.
        row, col = tile.core_offset
        assert (read.row_off + row, read.col_off + col) == (tile.core.row_off, tile.core.col_off)
        assert tile.core_in_read.height == tile.core.height
        # Read windows never exceed the tile plus its margin on both sides.
        assert read.height <= tile_px + 2 * margin_px and read.width <= tile_px + 2 * margin_px


@settings(max_examples=200, deadline=None)
@given(grids())
def test_count_matches_the_formula(grid: tuple[int, int, int, int]) -> None:
    rows, cols, tile_px, margin_px = grid
    tiles = tile_grid(rows, cols, tile_px, margin_px)
    expected = math.ceil(rows / tile_px) * math.ceil(cols / tile_px)
    assert len(tiles) == expected == tile_count(rows, cols, tile_px)
    assert [tile.index for tile in tiles] == list(range(expected))


def test_raster_smaller_than_one_tile_gives_one_tile() -> None:
    (tile,) = tile_grid(7, 5, 256, 40)
    assert tile.core == Window(0, 0, 5, 7) == tile.read
    assert tile.core_offset == (0, 0)


def test_last_tile_is_shifted_back_and_its_core_trimmed() -> None:
    tiles = tile_grid(10, 4, 4, 1)
    last = tiles[-1]
    assert last.core == Window(0, 8, 4, 2)  # trimmed to the rows no other tile covers
    assert last.read == Window(0, 5, 4, 5)  # block rows 6..9 plus one row of margin
    assert last.core_offset == (3, 0)


def test_scale_window() -> None:
    assert scale_window(Window(2, 3, 4, 5), 5) == Window(10, 15, 20, 25)


@pytest.mark.parametrize("args", [(0, 5, 4, 0), (5, 0, 4, 0), (5, 5, 0, 0), (5, 5, 4, -1)], ids=str)
def test_invalid_arguments_are_refused(args: tuple[int, int, int, int]) -> None:
    with pytest.raises(ValueError):
        tile_grid(*args)


@settings(max_examples=100, deadline=None)
@given(grids(), st.integers(min_value=1, max_value=9))
def test_batches_hold_each_tile_once_with_one_read_shape(
    grid: tuple[int, int, int, int], batch_size: int
) -> None:
    tiles = tile_grid(*grid)
    batches = list(batch_tiles(tiles, batch_size))
    assert sorted(tile.index for batch in batches for tile in batch) == list(range(len(tiles)))
    for batch in batches:
        assert 1 <= len(batch) <= batch_size
        assert len({tile.read_shape for tile in batch}) == 1
    assert batches == list(batch_tiles(tiles, batch_size))  # geometry alone decides
