"""The lite preset, trained briefly on real SRTM tiles, beats bicubic on held-out blocks, and
beats where it started (bicubic + back-projection, configs/lite.yaml's silent initial network).

Slow (a few minutes on 2 CPU cores): run with ``pytest -m slow`` (``make test`` does).
"""

from __future__ import annotations

from pathlib import Path

import pytest

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
