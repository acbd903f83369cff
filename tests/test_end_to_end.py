"""The lite preset, trained briefly on real SRTM tiles, beats bicubic on held-out blocks.

Slow (a few minutes on 2 CPU cores): run with ``pytest -m slow`` (``make test`` does).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from demsr.config import load_config
from demsr.evaluate import evaluate_pairs
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
    Trainer(config, progress=False).fit()
    result = evaluate_pairs(
        tmp_path / "run" / BEST, pairs / "test" / "test.h5", device="cpu", progress=False
    )
    model, bicubic = result.methods["model"]["rmse"], result.methods["bicubic"]["rmse"]
    print(f"test RMSE: model {model:.3f} m, bicubic {bicubic:.3f} m ({result.pairs} pairs)")
    assert model < bicubic
