"""Run configs: YAML presets, the reference's keys, type-checked overrides, unknown keys refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from demsr.config import ConfigError, RunConfig, load_config
from demsr.model import PRESETS

REPO = Path(__file__).resolve().parents[1]

# The reference's DEM-SRNet.yaml (MindEarth), as published.
REFERENCE_YAML = """
model:
  name: DEMNet
  scale: 5
  out_channels: 256
  kernel_size: 3
  in_channels: 1
data:
  name: "nasadem"
  root_dir: "./dataset/"
  patch_size: 32
  batch_size: 64
optimizer:
  name: "adam"
  learning_rate: 0.00001
  eps: 0.0000001
  finetune_lr: 0.00001
  epochs: 100
summary:
  save_checkpoint_epochs: 1
  keep_checkpoint_max: 1
train:
  name: "oop"
"""


def test_defaults_print_and_reload_identically(tmp_path: Path) -> None:
    text = RunConfig().to_yaml()
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert load_config(path).to_yaml() == text


def test_reference_yaml_loads_with_its_meaning(tmp_path: Path) -> None:
    path = tmp_path / "DEM-SRNet.yaml"
    path.write_text(REFERENCE_YAML)
    config = load_config(path, ["model.preset=paper"])
    assert config.model.build() == PRESETS["paper"]
    assert config.data.root_dir == "./dataset/"
    assert config.data.batch_size == 64
    assert config.optimizer.learning_rate == pytest.approx(1e-5)
    assert config.optimizer.eps == pytest.approx(1e-7)
    assert config.train.epochs == 100


def test_paper_config_is_the_reference_network() -> None:
    config = load_config(REPO / "configs" / "paper.yaml")
    assert config.model.build() == PRESETS["paper"]
    assert (config.data.batch_size, config.train.patience) == (64, 6)
    assert config.optimizer.learning_rate == pytest.approx(1e-4)


def test_lite_config_loads() -> None:
    assert load_config(REPO / "configs" / "lite.yaml").model.build() == PRESETS["lite"]


def test_finetune_recipe_takes_the_model_from_the_parent() -> None:
    config = load_config(REPO / "configs" / "finetune-ocean.yaml")
    assert config.model == RunConfig().model  # no model section: the parent's is used
    assert config.optimizer.finetune_learning_rate == pytest.approx(1e-5)
    assert config.finetune.freeze == "default"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochs=abc", "expected int"),
        ("train.epochs=1.5", "expected int"),
        ("train.augment=true", "unknown key"),
        ("nosection.key=1", "unknown section"),
        ("train.epochs", "section.key=value"),
        ("model.resize=cubic", "resize must be one of"),
        ("model.scale=1", "scale must be an integer >= 2"),
        ("optimizer.learning_rate=-1", "learning_rate must be > 0"),
        ("model.in_channels=3", "supports only"),
        ("data.batch_size=[1, 2]", "single value"),
        ("finetune.freeze=half", "finetune.freeze must be one of default, none, all-but-tail"),
        ("finetune.freeze_blocks=-1", "freeze_blocks must be >= 0"),
        ("finetune.freeze_prefixes=conv1", "expected a list"),
        ("finetune.freeze_prefixes=[conv1, .]", "must be module names"),
        ("optimizer.finetune_learning_rate=0", "finetune_learning_rate must be > 0"),
        (
            "optimizer.learning_rate_scaling=cubic",
            "learning_rate_scaling must be one of none, linear, sqrt",
        ),
    ],
)
def test_bad_overrides_are_refused(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_overrides_are_typed_not_evaluated() -> None:
    config = load_config(
        None,
        [
            "train.epochs=7",
            "optimizer.learning_rate=2e-4",
            "data.augment=yes",
            "summary.output_dir=__import__('os')",
        ],
    )
    assert config.train.epochs == 7
    assert config.optimizer.learning_rate == pytest.approx(2e-4)
    assert config.data.augment is True
    assert config.summary.output_dir == "__import__('os')"


def test_unknown_yaml_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"train": {"epochs": 3, "epochz": 4}}))
    with pytest.raises(ConfigError, match="epochz"):
        load_config(path)


def test_preset_fields_can_be_refined() -> None:
    config = load_config(None, ["model.preset=lite", "model.blocks=2", "model.scale=4"])
    built = config.model.build()
    assert (built.blocks, built.channels, built.scale) == (2, 64, 4)


def test_text_overrides_are_taken_as_written() -> None:
    config = load_config(
        None, ["summary.output_dir=2024-01-01", "data.root_dir=runs: a", "data.patch_size=null"]
    )
    assert config.summary.output_dir == "2024-01-01"
    assert config.data.root_dir == "runs: a"
    assert config.data.patch_size is None


def test_finetune_settings_load_from_yaml_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "finetune.yaml"
    path.write_text(yaml.safe_dump({"finetune": {"freeze": "default", "freeze_blocks": 3}}))
    config = load_config(path, ["finetune.freeze_prefixes=[conv2, body.5.res_conv1]"])
    assert config.finetune.freeze_blocks == 3
    assert config.finetune.freeze_prefixes == ["conv2", "body.5.res_conv1"]
    assert config.finetune.parent is None  # a plain training run
    with pytest.raises(ConfigError, match="freeze_blocks applies only to finetune.freeze=default"):
        load_config(path, ["finetune.freeze=none"])


def test_window_training_recipe_holds_out_tiles_of_several_terrains() -> None:
    from conftest import DEM_TRAIN

    from demsr.datasets import select_rasters
    from demsr.scaling import ElevationScaling

    config = load_config(REPO / "configs" / "lite-windows.yaml")
    assert config.data.source == "rasters"
    assert config.model.scaling() == ElevationScaling(
        scale_m=1000.0, trend_sigma_px=4.0, base="cubic", block_mean_constraint=True
    )
    assert (config.model.build().bias, config.model.build().padding) == (False, "replicate")
    # The recipe's patterns point at ../shared from the repository root; here, at DEM_TRAIN.
    patterns = [str(DEM_TRAIN / Path(pattern).name) for pattern in config.data.rasters]
    selection = select_rasters(patterns, config.data.heldout, config.data.valid_rasters)
    assert len(selection.train) + len(selection.valid) + len(selection.heldout) == 91
    assert (len(selection.heldout), len(selection.valid)) == (13, 4)
    # The tile of the real-product pair at Oban is never trained on.
    assert "srtm3_N56W006.tif" in {path.name for path in selection.heldout}


OLD_KEYS = {
    "lr_decay": ("learning_rate_decay", 0.9),
    "finetune_lr": ("finetune_learning_rate", 3e-4),
    "lr_scaling": ("learning_rate_scaling", "sqrt"),
}


@pytest.mark.parametrize("old", sorted(OLD_KEYS))
def test_old_optimizer_keys_load_with_one_deprecation_line(
    old: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    new, value = OLD_KEYS[old]
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({"optimizer": {old: value}}))
    with caplog.at_level("WARNING", logger="demsr.config"):
        from_yaml = load_config(path)
    assert getattr(from_yaml.optimizer, new) == value
    [record] = caplog.records
    assert f"optimizer.{old} is deprecated, use optimizer.{new}" in record.getMessage()
    assert "\n" not in record.getMessage()
    caplog.clear()
    with caplog.at_level("WARNING", logger="demsr.config"):
        from_override = load_config(None, [f"optimizer.{old}={value}"])
    assert getattr(from_override.optimizer, new) == value
    assert len(caplog.records) == 1 and f"use optimizer.{new}" in caplog.records[0].getMessage()
    # The old name is checked like the new one.
    with pytest.raises(ConfigError, match=f"optimizer.{new}"):
        load_config(None, [f"optimizer.{old}=abc"])


def test_printed_config_uses_the_new_key_names() -> None:
    optimizer = yaml.safe_load(RunConfig().to_yaml())["optimizer"]
    assert {"learning_rate_decay", "finetune_learning_rate", "learning_rate_scaling"} <= set(
        optimizer
    )
    assert not {"lr_decay", "finetune_lr", "lr_scaling"} & set(optimizer)
    for path in (REPO / "configs").glob("*.yaml"):
        assert "lr_decay" not in path.read_text() and "finetune_lr" not in path.read_text()
