"""The lite preset, trained briefly on real SRTM tiles, beats bicubic on held-out blocks, and
beats where it started (bicubic + back-projection, configs/lite.yaml's silent initial network).

Slow (a few minutes on 2 CPU cores): run with ``pytest -m slow`` (``make test`` does).

The commands chained on a small raster (prepare, train, evaluate, degrade, predict) run in the
fast suite.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import rasterio
from cli_helpers import run
from conftest import set_options, tiny_overrides

from demsr.checkpoint import save_checkpoint
from demsr.config import load_config
from demsr.evaluate import evaluate_pairs
from demsr.model import DEMSRNet, init_as_residual
from demsr.prepare import PrepareOptions, prepare_pairs
from demsr.train import BEST, Trainer

REPO = Path(__file__).resolve().parents[1]
TILES = ["srtm3_N37W004.tif", "srtm3_N42E012.tif", "srtm3_N54W003.tif", "srtm3_N14E121.tif"]


@pytest.mark.slow
def test_lite_beats_bicubic_on_held_out_blocks(dem_train_dir: Path, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs"
    report = prepare_pairs(
        [dem_train_dir / name for name in TILES],
        pairs,
        PrepareOptions(stride_px=80, split_block_px=240),
        progress=False,
    )
    assert min(report.counts.values()) > 20
    config = load_config(
        REPO / "configs" / "lite.yaml",
        [
            f"data.root_dir={pairs}",
            f"summary.output_dir={tmp_path / 'run'}",
            "train.max_steps=150",
            "train.max_steps_per_epoch=50",
            "train.device=cpu",
        ],
    )
    assert config.model.init == "residual"
    start = save_checkpoint(
        tmp_path / "start.safetensors",
        init_as_residual(DEMSRNet(config.model.build())),
        config.model.scaling(),
    )
    Trainer(config, progress=False).fit()
    test = pairs / "test" / "test.h5"
    result = evaluate_pairs(tmp_path / "run" / BEST, test, device="cpu", progress=False)
    before = evaluate_pairs(start, test, device="cpu", progress=False, baselines=[])
    model, bicubic = result.methods["model"]["rmse"], result.methods["bicubic"]["rmse"]
    initial = before.methods["model"]["rmse"]
    print(
        f"test RMSE: model {model:.3f} m, untrained {initial:.3f} m, bicubic {bicubic:.3f} m "
        f"({result.pairs} pairs)"
    )
    assert model < initial < bicubic


def test_prepare_train_evaluate_predict(dem_test_dir: Path, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs"
    code, out = run(
        "prepare",
        dem_test_dir / "mpl_jacksboro_3s.tif",
        "-o",
        pairs,
        "--patch-px",
        "8",
        "--stride-px",
        "20",
        "--split-block-px",
        "80",
        "--no-progress",
    )
    assert code == 0, out
    assert all((pairs / s / f"{s}.h5").is_file() for s in ("train", "valid", "test"))

    run_dir = tmp_path / "run"
    sets = set_options(tiny_overrides(pairs, run_dir, "train.epochs=2"))
    code, out = run("train", *sets, "--no-progress")
    assert code == 0, out
    assert "best validation RMSE" in out

    metrics_json = tmp_path / "metrics.json"
    code, out = run(
        "evaluate",
        run_dir / "best.safetensors",
        pairs / "test" / "test.h5",
        "--json",
        metrics_json,
        "--device",
        "cpu",
        "--no-progress",
    )
    assert code == 0, out
    assert "bicubic" in out and "model" in out
    metrics = json.loads(metrics_json.read_text())
    assert metrics["units"] == "m" and metrics["methods"]["bicubic"]["rmse"] > 0

    coarse = tmp_path / "coarse.tif"
    code, out = run("degrade", dem_test_dir / "mpl_jacksboro_3s.tif", coarse, "--scale", "5")
    assert code == 0, out
    fine = tmp_path / "fine.tif"
    code, out = run("predict", run_dir / "best.safetensors", coarse, fine, "--device", "cpu")
    assert code == 0, out
    with rasterio.open(coarse) as low, rasterio.open(fine) as high:
        assert (high.width, high.height) == (low.width * 5, low.height * 5)
        assert high.bounds == low.bounds
        # the input's CRS, with the output's EGM96 heights (EPSG:5773)
        assert high.crs == rasterio.crs.CRS.from_user_input(f"EPSG:{low.crs.to_epsg()}+5773")
