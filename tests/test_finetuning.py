"""Fine-tuning (demsr.finetuning, through Trainer.finetune): a trained checkpoint continues on
new pairs with frozen layers, records its parent, and resumes exactly (from the same parent
only)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import read_metrics_rows, tiny_overrides
from safetensors import safe_open
from safetensors.torch import save_file

from demsr.checkpoint import load_checkpoint, save_checkpoint
from demsr.config import load_config
from demsr.model import DEMSRNet, ModelConfig, freeze_preset_prefixes
from demsr.train import BEST, LAST, Trainer, TrainResult, freeze_parameters

# Fine-tuning runs in these tests use a learning rate at which 8 steps visibly move the weights.
FAST = "optimizer.finetune_learning_rate=0.002"


def _finetune(
    pairs: Path, run: Path, parent: Path, *extra: str, resume: bool = False, **freeze: object
) -> TrainResult:
    config = load_config(None, tiny_overrides(pairs, run, *extra))
    return Trainer(config, progress=False).finetune(parent, resume=resume, **freeze)  # type: ignore[arg-type]


def _names(config: ModelConfig, prefixes: list[str]) -> set[str]:
    return set(freeze_parameters(DEMSRNet(config), prefixes))


def test_frozen_layers_keep_the_parents_weights_and_the_rest_learn(
    tiny_pairs: Path, parent: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="demsr.train"):
        _finetune(tiny_pairs, tmp_path / "run", parent, "train.epochs=1", FAST)
    before = load_checkpoint(parent).state_dict
    after = load_checkpoint(tmp_path / "run" / LAST)
    # The default preset of a 2-block model: conv1 and the first block.
    frozen = [name for name in before if name.startswith(("conv1.", "body.0."))]
    assert len(frozen) == 6  # weights and biases of conv1, body.0.res_conv1, body.0.res_conv2
    for name, tensor in before.items():
        if name in frozen:
            assert torch.equal(after.state_dict[name], tensor), name
        else:
            assert not torch.equal(after.state_dict[name], tensor), name
    frozen_count = sum(before[name].numel() for name in frozen)
    total = sum(t.numel() for t in before.values())
    assert after.metadata["frozen"] == {"prefixes": ["conv1", "body.0"], "parameters": frozen_count}
    assert f"{total - frozen_count} trainable, {frozen_count} frozen parameters" in caplog.text
    assert "model section is ignored" not in caplog.text  # the config's model is the parent's


@pytest.mark.parametrize(
    "preset, blocks, extra, expected",
    [
        ("default", None, [], {"conv1", "body.0", "body.1"}),  # half of 4 blocks
        ("default", 3, [], {"conv1", "body.0", "body.1", "body.2"}),
        ("default", 0, [], {"conv1"}),
        ("none", None, [], set()),
        ("none", None, ["conv2", "body.3.res_conv1"], {"conv2", "body.3.res_conv1"}),
        ("all-but-tail", None, [], {"conv1", "body.0", "body.1", "body.2", "body.3", "conv2"}),
        ("default", 1, ["conv_up."], {"conv1", "body.0", "conv_up"}),
    ],
)
def test_freeze_presets_and_prefixes_pick_the_right_layers(
    preset: str, blocks: int | None, extra: list[str], expected: set[str]
) -> None:
    config = ModelConfig(blocks=4, channels=4, bias=True)
    frozen = _names(config, [*freeze_preset_prefixes(config, preset, blocks), *extra])
    all_names = {name for name, _ in DEMSRNet(config).named_parameters()}
    assert frozen == {n for n in all_names if any(n.startswith(p + ".") for p in expected)}


def test_a_prefix_is_a_whole_module_name() -> None:
    config = ModelConfig(blocks=12, channels=2)
    # body.1 is block 1, not blocks 10 and 11.
    assert _names(config, ["body.1"]) == {"body.1.res_conv1.weight", "body.1.res_conv2.weight"}
    assert _names(config, ["conv1.weight"]) == {"conv1.weight"}
    with pytest.raises(ValueError, match=r"'conv' matches no parameter .*body.0 .. body.11"):
        _names(config, ["conv"])


@pytest.mark.parametrize(
    "preset, blocks, message",
    [
        ("default", 5, r"frozen blocks must be in 0..4"),
        ("none", 2, "only to the default preset"),
        ("some", None, "freeze preset must be one of"),
    ],
)
def test_bad_freeze_settings_are_refused(preset: str, blocks: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        freeze_preset_prefixes(ModelConfig(blocks=4, channels=4), preset, blocks)


def test_unknown_prefix_and_freezing_everything_are_errors(
    tiny_pairs: Path, parent: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="freeze prefix 'conv3' matches no parameter"):
        _finetune(tiny_pairs, tmp_path / "a", parent, freeze_prefixes=["conv3"])
    with pytest.raises(ValueError, match="every parameter is frozen"):
        _finetune(
            tiny_pairs,
            tmp_path / "b",
            parent,
            freeze="all-but-tail",
            freeze_prefixes=["conv_up", "conv_out"],
        )
    with pytest.raises(ValueError, match=r"frozen blocks must be in 0..2"):
        _finetune(tiny_pairs, tmp_path / "c", parent, freeze_blocks=3)
    assert not (tmp_path / "a" / LAST).exists()


def test_the_new_checkpoint_records_its_parent_and_the_settings(
    tiny_pairs: Path, parent: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The model and its scaling come from the parent, whatever the config's model section says.
    config = load_config(
        None,
        [
            f"data.root_dir={tiny_pairs}",
            f"summary.output_dir={tmp_path / 'run'}",
            "data.batch_size=16",
            "train.max_steps_per_epoch=4",
            "train.epochs=1",
            "train.device=cpu",
            "model.blocks=4",
        ],
    )
    with caplog.at_level(logging.WARNING, logger="demsr.train"):
        Trainer(config, progress=False).finetune(parent, freeze="all-but-tail")
    assert "the config's model section is ignored" in caplog.text
    child = load_checkpoint(tmp_path / "run" / BEST)
    parent_checkpoint = load_checkpoint(parent)
    assert child.model_config == parent_checkpoint.model_config
    assert child.scaling == parent_checkpoint.scaling
    record = child.metadata["provenance"]["parent"]
    assert record["path"] == str(parent.resolve())
    assert record["sha256"] == hashlib.sha256(parent.read_bytes()).hexdigest()
    assert record["epoch"] == parent_checkpoint.metadata["epoch"]
    assert record["metrics"] == parent_checkpoint.metadata["metrics"]
    sources = record["provenance"]["data"]["train_sources"]
    assert sources and sources[0].endswith("mpl_jacksboro_3s.tif")
    # The parent's error on these validation pairs before any step (same pairs as it trained
    # on here, so its best validation RMSE).
    assert record["valid_rmse_m"] == pytest.approx(
        parent_checkpoint.metadata["metrics"]["best_valid_rmse_m"], rel=1e-4
    )
    training = child.metadata["training"]
    assert training["finetune"]["freeze"] == "all-but-tail"
    assert training["model"]["blocks"] == 2 and training["model"]["channels"] == 8
    # The learning rate is optimizer.finetune_learning_rate, 1e-5 by default.
    assert float(read_metrics_rows(tmp_path / "run")[0]["learning_rate"]) == pytest.approx(1e-5)
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.finetune.parent == str(parent) and saved.model.blocks == 2


def test_resume_is_exact_and_refuses_another_parent_or_freeze(
    tiny_pairs: Path, parent: Path, tmp_path: Path
) -> None:
    settings = ("train.epochs=2", FAST, "data.augment=true")
    _finetune(tiny_pairs, tmp_path / "straight", parent, *settings)
    resumed = tmp_path / "resumed"
    _finetune(tiny_pairs, resumed, parent, "train.epochs=1", *settings[1:])
    result = _finetune(tiny_pairs, resumed, parent, *settings, resume=True)
    assert (result.epochs_run, result.global_step) == (2, 16)
    assert [r["epoch"] for r in read_metrics_rows(resumed)] == ["1", "2"]
    a, b = load_checkpoint(tmp_path / "straight" / LAST), load_checkpoint(resumed / LAST)
    for name, tensor in a.state_dict.items():
        assert torch.equal(tensor, b.state_dict[name]), name
    assert b.metadata["provenance"]["parent"]["valid_rmse_m"] == pytest.approx(
        a.metadata["provenance"]["parent"]["valid_rmse_m"]
    )

    # Another parent with the same shape but other weights (its file's SHA-256 differs).
    other = load_checkpoint(parent)
    model = other.build_model()
    with torch.no_grad():
        model.conv_out.weight.mul_(1.01)
    other_path = save_checkpoint(tmp_path / "other.safetensors", model, other.scaling)
    with pytest.raises(ValueError, match="different parent"):
        _finetune(tiny_pairs, resumed, other_path, "train.epochs=3", *settings[1:], resume=True)
    with pytest.raises(ValueError, match="finetune.freeze"):
        _finetune(
            tiny_pairs, resumed, parent, "train.epochs=3", *settings[1:], resume=True, freeze="none"
        )
    # The same run cannot be resumed as training from scratch, nor a scratch run as fine-tuning.
    config = load_config(None, tiny_overrides(tiny_pairs, resumed, "train.epochs=3", FAST))
    with pytest.raises(ValueError, match="fine-tunes .* demsr finetune PARENT --resume"):
        Trainer(config, progress=False).fit(resume=True)
    with pytest.raises(ValueError, match="trained from scratch"):
        _finetune(tiny_pairs, parent.parent, parent, "train.epochs=3", resume=True)


def test_a_run_saved_before_the_finetune_section_still_resumes(
    tiny_pairs: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    config = load_config(None, tiny_overrides(tiny_pairs, run, "train.epochs=1"))
    Trainer(config, progress=False).fit()
    # Rewrite last.safetensors as an older demsr wrote it: no finetune section, no parent.
    with safe_open(str(run / LAST), framework="pt") as handle:
        header = json.loads(handle.metadata()["demsr"])
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    del header["training"]["finetune"]
    del header["provenance"]["parent"]
    save_file(tensors, str(run / LAST), metadata={"demsr": json.dumps(header)})
    config = load_config(None, tiny_overrides(tiny_pairs, run, "train.epochs=2"))
    result = Trainer(config, progress=False).fit(resume=True)
    assert result.epochs_run == 2
