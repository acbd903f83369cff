"""The degradation model: identity, YAML, its draws, its fit, and training with it."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, jacksboro_3s, tiny_overrides

from demsr.config import load_config
from demsr.degradation import DegradationModel, correlated_noise
from demsr.prepare import degrade
from demsr.train import Trainer

SHIPPED = REPO / "configs" / "degradation-gebco.yaml"


def test_identity_is_the_exact_block_mean(dem_test_dir: Path) -> None:
    truth = jacksboro_3s(dem_test_dir).astype(np.float32)
    truth[7, 9] = np.nan
    rng = np.random.default_rng(0)
    result = DegradationModel.identity().apply(truth, 5, rng)
    np.testing.assert_array_equal(result, degrade(truth, 5))
    assert result.dtype == np.float32 and np.isnan(result[1, 1])
    batch = np.stack([truth, truth + 1])[:, None]  # (N, 1, H, W) like a pair file
    assert DegradationModel.identity().apply(batch, 5, rng).shape == (2, 1, 68, 80)


def test_yaml_round_trip_and_unknown_keys(tmp_path: Path) -> None:
    model = DegradationModel(
        shift_mean_px=(0.5, -0.25),
        smoothing_sigma_px=1.2,
        bias_m=2.0,
        noise_rms_m=(1.0, 2.0, 3.0, 4.0, 5.0),
        noise_correlation_px=0.7,
        round_probability=1.0,
    )
    path = model.to_yaml(tmp_path / "d.yaml")
    assert DegradationModel.from_yaml(path) == model
    path.write_text(path.read_text() + "sigma_typo: 3\n")
    with pytest.raises(ValueError, match="unknown degradation key"):
        DegradationModel.from_yaml(path)
    with pytest.raises(ValueError, match="5 slope classes"):
        DegradationModel(noise_rms_m=(1.0,))
    shipped = DegradationModel.from_yaml(SHIPPED)
    assert shipped != DegradationModel.identity() and len(shipped.fitted_on) == 2


def test_draws_are_seeded_rounded_and_of_the_requested_noise(dem_test_dir: Path) -> None:
    truth = jacksboro_3s(dem_test_dir)
    model = dataclasses.replace(DegradationModel.from_yaml(SHIPPED), round_probability=1.0)
    first = model.apply(truth, 5, np.random.default_rng(3))
    again = model.apply(truth, 5, np.random.default_rng(3))
    other = model.apply(truth, 5, np.random.default_rng(4))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert np.array_equal(first, np.round(first))  # GEBCO-like whole metres
    # Noise alone, one class: its RMS is the requested one; its lag-1 correlation follows s.
    flat = np.full((500, 500), 100.0)
    noisy = DegradationModel(noise_rms_m=(4.0,) * 5, noise_correlation_px=1.0)
    residual = noisy.apply(flat, 5, np.random.default_rng(0)) - 100.0
    assert abs(float(residual.std()) - 4.0) < 0.2
    unit = correlated_noise((400, 400), 1.0, np.random.default_rng(1))
    rho = float(np.corrcoef(unit[:, :-1].ravel(), unit[:, 1:].ravel())[0, 1])
    assert abs(float(unit.std()) - 1.0) < 0.03 and abs(rho - math.exp(-1 / 4)) < 0.03


def test_training_config_uses_the_degradation(tiny_pairs: Path, tmp_path: Path) -> None:
    config = load_config(
        None,
        tiny_overrides(
            tiny_pairs, tmp_path / "run", f"data.degradation={SHIPPED}", "train.epochs=1"
        ),
    )
    trainer = Trainer(config, progress=False)
    dataset = trainer.train_set
    assert dataset.degradation == DegradationModel.from_yaml(SHIPPED)
    stored = dataset._read(0)[0]
    lowres, highres = dataset[0]
    again, _ = dataset[0]
    assert torch_equal(lowres, again)  # drawn from (seed, epoch, index)
    norm = dataset.normalisation
    lowres_m = norm.denormalise(lowres.numpy().astype(np.float64))
    stored_m = norm.denormalise(stored.astype(np.float64))
    block_mean_m = degrade(norm.denormalise(highres.numpy().astype(np.float64)), 5)
    np.testing.assert_allclose(stored_m, block_mean_m, atol=0.01)  # the file holds block means
    assert 0.5 < float(np.sqrt(np.mean((lowres_m - block_mean_m) ** 2))) < 50
    assert np.array_equal(lowres_m.round(2), np.round(lowres_m).round(2))  # whole metres
    dataset.set_epoch(1)
    assert not torch_equal(dataset[0][0], lowres)  # new draws each epoch
    assert trainer.fit().epochs_run == 1  # trains on the degraded pairs


def torch_equal(first: object, second: object) -> bool:
    import torch

    assert isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor)
    return bool(torch.equal(first, second))
