"""Planning a prediction: the plan's tiles, output and sizes are what ``demsr predict`` does; a
global grid is planned from its metadata alone."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from plan_cases import SOURCE, count_network_tiles

import demsr.io
from demsr.plan.prediction import plan_prediction
from demsr.predict import predict_raster


@pytest.mark.parametrize(("tile_px", "batch_size", "dtype"), [(32, 1, "float32"), (24, 3, "int16")])
def test_plan_matches_what_predict_does(
    plan_checkpoint: Path,
    dem_test_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tile_px: int,
    batch_size: int,
    dtype: str,
) -> None:
    """Tiles through the network, the largest read window, the product's shape and its
    uncompressed bytes are the plan's."""
    source = dem_test_dir / SOURCE
    plan = plan_prediction(
        source, plan_checkpoint, device="cpu", tile_px=tile_px, batch_size=batch_size, dtype=dtype
    )
    seen = count_network_tiles(monkeypatch)
    output = predict_raster(
        plan_checkpoint,
        source,
        tmp_path / "out.tif",
        device="cpu",
        tile_px=tile_px,
        batch_size=batch_size,
        output_dtype=dtype,
        progress=False,
    )
    assert plan.tiles == len(seen) == math.ceil(67 / tile_px) * math.ceil(129 / tile_px)
    assert plan.read_window == max(seen, key=lambda shape: shape[0] * shape[1])
    with rasterio.open(output) as product:
        assert plan.output_shape == product.shape == (67 * 5, 129 * 5)
        assert plan.product_bytes == product.width * product.height * np.dtype(dtype).itemsize
        assert product.dtypes[0] == dtype
    assert plan.partial_bytes == 67 * 5 * 129 * 5 * 4
    assert sum(plan.tiles_per_rank) == plan.tiles


def test_a_global_grid_is_planned_from_its_metadata(
    sparse_global_grid: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GEBCO's 43,200 x 86,400 grid -> 216,000 x 432,000 cells at 3", without reading a cell."""
    assert sparse_global_grid.stat().st_size < 1_000_000

    def no_reads(*_: Any, **__: Any) -> None:
        raise AssertionError("the plan read raster cells")

    monkeypatch.setattr(demsr.io.RasterReader, "read", no_reads)
    plan = plan_prediction(sparse_global_grid, device="cpu", ranks=8, tile_px=128)  # shipped lite
    assert plan.output_shape == (216_000, 432_000)
    assert plan.tiles == 338 * 675  # ceil(43,200 / 128) x ceil(86,400 / 128)
    assert plan.read_window == (128 + 2 * plan.margin_px,) * 2
    assert sum(plan.tiles_per_rank) == plan.tiles and max(plan.tiles_per_rank) == 28_519
    assert plan.product_bytes == 216_000 * 432_000 * 4  # 373 GB of float32
    assert plan.time.tile_loop is not None and plan.time.tile_loop > 0
    text = plan.describe()
    assert "216,000 x 432,000 cells" in text and "228,150 of 128 x 128 cells" in text
    assert "torchrun --nproc_per_node 8 -m demsr predict" in text
