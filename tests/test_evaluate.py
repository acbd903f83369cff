"""Metrics and the bicubic baseline, checked against values computed by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from demsr.checkpoint import save_checkpoint
from demsr.datasets import read_pair_file
from demsr.evaluate import evaluate_pairs, upsample_baseline
from demsr.metrics import mae, rmse
from demsr.model import DEMSRNet, ElevationScaling, ModelConfig

SCALING = ElevationScaling(scale_m=1000.0, trend_sigma_px=4.0)


def test_rmse_and_mae_by_hand() -> None:
    prediction = np.array([[1.0, 2.0], [3.0, np.nan]])
    truth = np.array([[1.0, 4.0], [0.0, 5.0]])
    # errors on valid cells: 0, -2, 3
    assert rmse(prediction, truth) == pytest.approx(math.sqrt(13 / 3))
    assert mae(prediction, truth) == pytest.approx(5 / 3)
    with pytest.raises(ValueError, match="shape mismatch"):
        rmse(prediction, truth[:1])


def test_bicubic_reproduces_a_plane_with_cell_centre_registration() -> None:
    rows, cols = np.mgrid[0:12, 0:10].astype(np.float32)
    lowres = 3.0 * rows - 2.0 * cols + 100.0  # value at low-res cell centre (i + 0.5, j + 0.5)
    highres = upsample_baseline(lowres, 5)
    assert highres.shape == (60, 50)
    fine_rows, fine_cols = np.mgrid[0:60, 0:50].astype(np.float64)
    # High-res cell centre (r + 0.5) / 5 in low-res cell units; low-res centres at i + 0.5.
    expected = 3.0 * ((fine_rows + 0.5) / 5 - 0.5) - 2.0 * ((fine_cols + 0.5) / 5 - 0.5) + 100.0
    interior = (slice(10, 50), slice(10, 40))  # away from the clamped edges
    assert np.abs(highres[interior] - expected[interior]).max() < 1e-3


def test_baseline_batches_and_unknown_method() -> None:
    lowres = np.random.default_rng(0).random((3, 1, 4, 4)).astype(np.float32)
    assert upsample_baseline(lowres, 2).shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="unknown baseline"):
        upsample_baseline(lowres, 2, "nearest-ish")


def test_evaluate_pairs_reports_metres(tiny_pairs: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = DEMSRNet(ModelConfig(blocks=1, channels=4, scale=5))
    path = save_checkpoint(tmp_path / "m.safetensors", model, SCALING)
    result = evaluate_pairs(path, tiny_pairs / "test" / "test.h5", device="cpu", progress=False)
    pairs = read_pair_file(tiny_pairs / "test" / "test.h5")
    assert result.pairs == len(pairs) and result.units == "m"
    norm = pairs.normalisation
    expected = rmse(
        upsample_baseline(norm.denormalise(pairs.lowres.astype(np.float64)), 5),
        norm.denormalise(pairs.highres.astype(np.float64)),
    )
    assert result.methods["bicubic"]["rmse"] == pytest.approx(expected, rel=1e-6)
    # Bicubic of block means on 3" terrain is off by metres, not kilometres.
    assert 0.1 < result.methods["bicubic"]["rmse"] < 50
    assert set(result.methods) == {"model", "bicubic"}
    assert "bicubic" in result.table()
