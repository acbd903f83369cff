"""CUDA paths: bf16 mixed-precision training and prediction on a GPU (skipped without one)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_overrides

from demsr.checkpoint import load_checkpoint
from demsr.config import load_config
from demsr.engine import predict_array
from demsr.train import BEST, Trainer


@pytest.mark.gpu
def test_bf16_training_on_cuda_gives_a_cpu_loadable_checkpoint(
    tiny_pairs: Path, tmp_path: Path
) -> None:
    overrides = tiny_overrides(tiny_pairs, tmp_path / "run", "train.epochs=2")
    overrides += ["train.device=cuda", "train.precision=bf16"]
    result = Trainer(load_config(None, overrides), progress=False).fit()
    assert np.isfinite(result.best_valid_rmse_m)
    checkpoint = load_checkpoint(tmp_path / "run" / BEST)
    lowres = np.linspace(100, 900, 20 * 24, dtype=np.float32).reshape(20, 24)
    on_gpu = predict_array(checkpoint.build_resolver("cuda"), lowres, "cuda", precision="fp32")
    on_cpu = predict_array(checkpoint.build_resolver("cpu"), lowres, "cpu", precision="fp32")
    assert np.abs(on_gpu - on_cpu).max() < 0.05  # metres; TF32/cuDNN vs CPU rounding
