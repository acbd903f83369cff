"""The memory of a rank and the tile size it allows: the chosen tile is the largest that fits,
``demsr plan`` and ``demsr predict`` choose the same one, and too small a cap fails in one
line."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st
from plan_cases import SOURCE, count_network_tiles, run_cli

from demsr.checkpoint import load_checkpoint
from demsr.model import ModelConfig
from demsr.plan.memory import MAX_TILE_PX, choose_tile_px, estimate_memory
from demsr.plan.prediction import plan_prediction
from demsr.predict import predict_raster

LITE = ModelConfig(blocks=16, channels=64, scale=5)
LITE_PARAMETERS = 1_200_000


def memory_for(tile_px: int, rows: int, cols: int, margin_px: int, batch_size: int = 1) -> int:
    """What estimate_memory says a batch of tiles of ``tile_px`` needs (lite's shape)."""
    side = tile_px + 2 * margin_px
    window = min(rows, side) * min(cols, side)
    return estimate_memory(LITE, LITE_PARAMETERS, (batch_size, window), "cpu").total


@settings(max_examples=80, deadline=None)
@given(
    rows=st.integers(2, 5000),
    cols=st.integers(2, 5000),
    margin_px=st.integers(0, 120),
    batch_size=st.integers(1, 4),
    memory_mib=st.integers(400, 8000),
)
def test_the_chosen_tile_is_the_largest_that_fits(
    rows: int, cols: int, margin_px: int, batch_size: int, memory_mib: int
) -> None:
    """Within the cap by the memory estimate; no fewer tiles along either axis would fit; the
    whole raster is one tile when it fits; never above MAX_TILE_PX."""
    budget = memory_mib * 2**20
    try:
        tile_px = choose_tile_px(
            rows, cols, margin_px, LITE, LITE_PARAMETERS, batch_size, "cpu", budget
        )
    except ValueError as error:
        assert "raise --memory" in str(error)
        assert memory_for(1, rows, cols, margin_px, batch_size) > budget
        return
    assert 1 <= tile_px <= MAX_TILE_PX
    assert memory_for(tile_px, rows, cols, margin_px, batch_size) <= budget
    row_tiles, col_tiles = math.ceil(rows / tile_px), math.ceil(cols / tile_px)
    # One tile fewer along an axis needs a larger tile, which does not fit (or passes the cap).
    for tiles, length in ((row_tiles, rows), (col_tiles, cols)):
        if tiles > 1:
            larger = math.ceil(length / (tiles - 1))
            assert (
                larger > MAX_TILE_PX
                or memory_for(larger, rows, cols, margin_px, batch_size) > budget
            )
    # The tile is no larger than its tile counts need: the last tiles are not mostly overlap.
    assert tile_px == max(math.ceil(rows / row_tiles), math.ceil(cols / col_tiles))
    if memory_for(max(rows, cols), rows, cols, margin_px, batch_size) <= budget:
        if max(rows, cols) <= MAX_TILE_PX:
            assert row_tiles == col_tiles == 1


def test_plan_and_predict_choose_the_same_tiles(
    plan_checkpoint: Path, dem_test_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --tile-px both take the largest tile --memory allows: the same read windows go
    through the network as the plan says, the product records that tile size, and the plan's
    command line carries the cap."""
    source = dem_test_dir / SOURCE  # 67 x 129
    whole = plan_prediction(source, plan_checkpoint, device="cpu", memory_bytes=2**40)
    assert whole.tile_px == 129 and whole.tiles == 1  # the raster fits: one tile, no margin
    assert whole.geometry.core_share == 1.0
    # A cap that allows a 50-cell tile but not 51 (a 50 + 2 x margin window, clipped) -> 2 x 3
    # tiles of max(ceil(67 / 2), ceil(129 / 3)) = 43 cells.
    margin, parameters = whole.margin_px, whole.parameters
    config = load_checkpoint(plan_checkpoint).model_config

    def memory(tile_px: int) -> int:
        window = min(67, tile_px + 2 * margin) * min(129, tile_px + 2 * margin)
        return estimate_memory(config, parameters, (1, window), "cpu").total

    needed = memory(50)
    assert memory(51) > needed
    capped = plan_prediction(source, plan_checkpoint, device="cpu", memory_bytes=needed)
    assert capped.tile_px == 43 and capped.tiles == 2 * 3
    assert capped.memory.total <= needed
    assert f"--memory {needed / 2**20:g}MiB" in capped.describe()
    seen = count_network_tiles(monkeypatch)
    output = predict_raster(
        plan_checkpoint,
        source,
        tmp_path / "out.tif",
        device="cpu",
        memory_bytes=needed,
        progress=False,
    )
    assert len(seen) == capped.tiles
    assert max(seen, key=lambda shape: shape[0] * shape[1]) == capped.read_window
    with rasterio.open(output) as product:
        assert product.tags()["tile_px"] == "43"


def test_too_small_a_memory_cap_fails_in_one_line(dem_test_dir: Path, tmp_path: Path) -> None:
    source = dem_test_dir / SOURCE
    for command in (["plan", source], ["predict", source, tmp_path / "out.tif"]):
        code, _, err = run_cli(*command, "--device", "cpu", "--memory", "100MiB")
        assert code == 1 and err.count("\n") == 1, err
        assert "a memory cap of 100 MiB is below the" in err and "raise --memory" in err
    code, _, err = run_cli("plan", source, "--memory", "lots")
    assert code == 2 and "'lots' is not a memory size" in err
    assert list(tmp_path.iterdir()) == []
