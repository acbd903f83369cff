"""Measuring the throughput on real tiles of the input, on the device the plan is for."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from plan_cases import SOURCE, run_cli

from demsr.checkpoint import load_checkpoint
from demsr.plan.geometry import grid_geometry
from demsr.plan.measure import measure_throughput
from demsr.plan.prediction import plan_prediction
from demsr.predict_settings import PredictSettings


def test_measure_times_real_tiles(plan_checkpoint: Path, dem_test_dir: Path) -> None:
    plan = plan_prediction(
        dem_test_dir / SOURCE, plan_checkpoint, device="cpu", tile_px=24, measure=True
    )
    assert plan.measurement is not None and plan.measurement.window_mpx_s > 0
    assert plan.time.output_mpx_s == pytest.approx(
        plan.measurement.window_mpx_s * plan.geometry.core_share
    )
    assert plan.time.source.startswith("measured here on cpu")


def test_measure_needs_the_device(dem_test_dir: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    code, _, err = run_cli("plan", dem_test_dir / SOURCE, "--device", "cuda", "--measure")
    assert code == 1 and err.strip() == (
        "demsr: error: device 'cuda' requested but CUDA is not available"
    )


def test_measure_runs_the_settings(plan_checkpoint: Path, dem_test_dir: Path) -> None:
    """The tiles timed are those of the settings' tile size, batch size and precision; without
    a tile size, of the one the plan (and demsr predict) takes within the settings' memory."""
    source, loaded = dem_test_dir / SOURCE, load_checkpoint(plan_checkpoint)  # 67 x 129 cells
    settings = PredictSettings(device="cpu", tile_px=24, batch_size=4, precision="fp32")
    given = measure_throughput(source, loaded, settings)
    margin = loaded.build_resolver("cpu").margin_px
    region = grid_geometry((48, 48), 24, margin)  # 2 x 2 tiles of 24 fill a batch of 4
    assert (given.tiles, given.largest_window) == (4, region.largest_window)
    assert given.precision == "fp32" and given.window_mpx_s > 0
    cap = plan_prediction(source, plan_checkpoint, device="cpu", tile_px=40).memory.total
    plan = plan_prediction(source, plan_checkpoint, device="cpu", memory_bytes=cap)
    assert plan.tiles > 1  # the cap splits the raster
    automatic = measure_throughput(source, loaded, device="cpu", memory_bytes=cap)
    side = 2 * plan.tile_px
    region = grid_geometry((min(67, side), min(129, side)), plan.tile_px, plan.margin_px)
    assert (automatic.tiles, automatic.largest_window) == (region.tiles, region.largest_window)
