"""The wall time of a plan follows from the throughput per rank, and none is invented for
hardware without a recorded figure."""

from __future__ import annotations

from pathlib import Path

import pytest
from plan_cases import SOURCE

from demsr.plan.prediction import plan_prediction


def test_time_follows_from_the_throughput(plan_checkpoint: Path, dem_test_dir: Path) -> None:
    source = dem_test_dir / SOURCE
    one = plan_prediction(source, plan_checkpoint, device="cpu", tile_px=16, throughput_mpx_s=0.5)
    four = plan_prediction(
        source, plan_checkpoint, device="cpu", tile_px=16, ranks=4, throughput_mpx_s=0.5
    )
    output_mpx = 67 * 129 * 25 / 1e6
    assert one.time.tile_loop == pytest.approx(output_mpx / 0.5)
    assert four.tiles_per_rank == (12, 11, 11, 11)  # 5 x 9 tiles, dealt round-robin
    busiest = max(four.tiles_per_rank) / four.tiles
    assert four.time.tile_loop == pytest.approx(output_mpx * busiest / 0.5)
    assert four.time.total == pytest.approx(four.time.tile_loop + sum(four.time.one_time.values()))
    assert "0.5 output Mpx/s per rank (given)" in four.describe()


def test_no_gpu_figure_is_invented(sparse_global_grid: Path) -> None:
    plan = plan_prediction(sparse_global_grid, device="cuda", ranks=8, tile_px=512, batch_size=8)
    assert plan.time.tile_loop is None and plan.time.total is None
    text = plan.describe()
    assert "time     unknown: no recorded figure for lite on cuda" in text
    assert "--measure" in text and "--throughput" in text
    assert "GPU memory" in text
    given = plan_prediction(sparse_global_grid, device="cuda", ranks=8, throughput_mpx_s=40.0)
    assert given.time.tile_loop == pytest.approx(216_000 * 432_000 / 1e6 / 8 / 40.0, rel=1e-3)
