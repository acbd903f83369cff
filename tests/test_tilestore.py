"""The partial store of a tiled prediction: written chunk by chunk, read back block by block."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.windows import Window


def test_the_partial_store_reads_back_block_by_block_decoding_each_chunk_once(
    tmp_path: Path,
) -> None:
    from demsr.grid import Grid
    from demsr.tilestore import OutputGrid, TileStore

    grid = OutputGrid(Grid((30, 25), Affine.identity()), nodata=None, chunk_px=7, tags={})
    store = TileStore.create(tmp_path / "out.partial.zarr", {}, grid)
    values = np.random.default_rng(0).normal(size=grid.shape).astype(np.float32)
    expected = np.full(grid.shape, np.nan, np.float32)
    for row in range(0, 30, 7):
        for col in range(0, 25, 7):
            if (row + col) % 14 == 0:  # some chunks never written: NaN
                continue
            window = Window(col, row, min(7, 25 - col), min(7, 30 - row))
            store.write(window, values[window.toslices()])
            expected[window.toslices()] = values[window.toslices()]
    for cache_bytes, decoded in ((10**6, 5 * 4), (0, None)):
        with store.reader(cache_bytes=cache_bytes) as reader:
            blocks = np.full(grid.shape, -1.0, np.float32)
            for row in range(0, 30, 8):  # blocks straddling the chunks, row by row
                for col in range(0, 25, 8):
                    window = Window(col, row, min(8, 25 - col), min(8, 30 - row))
                    blocks[window.toslices()] = reader.read(window)
            np.testing.assert_array_equal(blocks, expected)
            if decoded is not None:
                assert reader.cache.decoded == decoded  # type: ignore[attr-defined]
            else:  # four chunks kept: still fewer decodes than blocks x chunks touched
                assert 20 < reader.cache.decoded < 4 * 16  # type: ignore[attr-defined]
