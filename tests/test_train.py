"""Training: the loss goes down on real data, checkpoints carry what prediction needs, resume is
exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import read_metrics_rows, tiny_overrides

from demsr.checkpoint import load_checkpoint, load_training_state
from demsr.config import load_config
from demsr.model import ElevationScaling
from demsr.train import BEST, LAST, Trainer


def _fit(pairs: Path, run: Path, *extra: str, resume: bool = False):  # type: ignore[no-untyped-def]
    config = load_config(None, tiny_overrides(pairs, run, *extra))
    return Trainer(config, progress=False).fit(resume=resume)


def test_training_lowers_the_loss(tiny_pairs: Path, tmp_path: Path) -> None:
    result = _fit(tiny_pairs, tmp_path / "run", "train.epochs=4")
    rows = read_metrics_rows(tmp_path / "run")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert float(rows[-1]["valid_rmse_m"]) < float(rows[0]["valid_rmse_m"])
    assert result.best_valid_rmse_m == pytest.approx(
        min(float(r["valid_rmse_m"]) for r in rows), rel=1e-4
    )
    # The learning rate decays once per epoch.
    rates = [float(r["learning_rate"]) for r in rows]
    assert rates[1] == pytest.approx(rates[0] * 0.9)


def test_checkpoints_carry_what_prediction_needs(tiny_pairs: Path, tmp_path: Path) -> None:
    _fit(tiny_pairs, tmp_path / "run", "train.epochs=1")
    best = load_checkpoint(tmp_path / "run" / BEST)
    assert (best.model_config.blocks, best.model_config.channels) == (2, 8)
    assert best.scaling == ElevationScaling(0.0, 1000.0, 4.0)  # the lite defaults
    assert best.metadata["training"]["data"]["batch_size"] == 16
    sources = best.metadata["provenance"]["data"]["train_sources"]
    assert sources and sources[0].endswith("mpl_jacksboro_3s.tif")
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_resume_continues_exactly(tiny_pairs: Path, tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    _fit(tiny_pairs, straight, "train.epochs=3", "data.augment=true")
    resumed = tmp_path / "resumed"
    _fit(tiny_pairs, resumed, "train.epochs=2", "data.augment=true")
    state = load_training_state(resumed / LAST)
    assert (state.epoch, state.global_step) == (2, 16)
    result = _fit(tiny_pairs, resumed, "train.epochs=3", "data.augment=true", resume=True)
    assert result.epochs_run == 3 and result.global_step == 24
    assert [r["epoch"] for r in read_metrics_rows(resumed)] == ["1", "2", "3"]
    a, b = load_checkpoint(straight / LAST), load_checkpoint(resumed / LAST)
    for name, tensor in a.state_dict.items():
        assert torch.equal(tensor, b.state_dict[name]), name
    state_a, state_b = load_training_state(straight / LAST), load_training_state(resumed / LAST)
    for index, values in state_a.optimizer["state"].items():
        for name, tensor in values.items():
            assert torch.equal(tensor, state_b.optimizer["state"][index][name])
    assert state_a.scheduler == state_b.scheduler


def test_existing_run_is_not_overwritten(tiny_pairs: Path, tmp_path: Path) -> None:
    _fit(tiny_pairs, tmp_path / "run", "train.epochs=1")
    with pytest.raises(FileExistsError, match="--resume"):
        _fit(tiny_pairs, tmp_path / "run", "train.epochs=1")


def test_resume_without_a_run_fails(tiny_pairs: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        _fit(tiny_pairs, tmp_path / "run", resume=True)


def test_scale_mismatch_is_refused(tiny_pairs: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="x5 but the model is x4"):
        _fit(tiny_pairs, tmp_path / "run", "model.scale=4")


def test_early_stopping(tiny_pairs: Path, tmp_path: Path) -> None:
    # A learning rate far below float32 resolution leaves the weights, hence the validation loss,
    # unchanged: epoch 1 is the best, and after `patience` epochs without improvement it stops.
    result = _fit(
        tiny_pairs,
        tmp_path / "run",
        "train.epochs=20",
        "train.patience=2",
        "optimizer.learning_rate=1e-30",
    )
    assert result.stopped_early
    assert result.epochs_run == 3
    assert [r["is_best"] for r in read_metrics_rows(tmp_path / "run")] == ["1", "0", "0"]


def test_resume_refuses_changed_settings(tiny_pairs: Path, tmp_path: Path) -> None:
    _fit(tiny_pairs, tmp_path / "run", "train.epochs=1")
    with pytest.raises(ValueError, match="data.batch_size"):
        _fit(tiny_pairs, tmp_path / "run", "train.epochs=2", "data.batch_size=8", resume=True)


def test_resuming_a_run_that_stopped_early_trains_no_more(tiny_pairs: Path, tmp_path: Path) -> None:
    settings = ("train.epochs=20", "train.patience=2", "optimizer.learning_rate=1e-30")
    first = _fit(tiny_pairs, tmp_path / "run", *settings)
    again = _fit(tiny_pairs, tmp_path / "run", *settings, resume=True)
    assert first.stopped_early and again.stopped_early
    assert again.epochs_run == first.epochs_run == 3
    assert len(read_metrics_rows(tmp_path / "run")) == 3


def test_diverging_training_stops_with_a_clear_error(tiny_pairs: Path, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="diverged"):
        _fit(tiny_pairs, tmp_path / "run", "train.epochs=3", "optimizer.learning_rate=1e30")
