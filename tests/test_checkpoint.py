"""Checkpoints: safetensors + JSON metadata, identical predictions after reload, no unpickling."""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
from pathlib import Path

import pytest
import torch
from conftest import SCALING, write_untrained_checkpoint

import demsr.checkpoint
from demsr.checkpoint import (
    CheckpointError,
    TrainingState,
    checkpoint_sha256,
    copy_with_metadata,
    load_checkpoint,
    load_training_state,
    save_checkpoint,
)
from demsr.model import DEMSRNet, ModelConfig, SuperResolver
from demsr.scaling import ElevationScaling


def _model(seed: int = 0) -> DEMSRNet:
    torch.manual_seed(seed)
    return DEMSRNet(ModelConfig(blocks=2, channels=8, scale=3, bias=True))


def test_reload_gives_identical_predictions(tmp_path: Path) -> None:
    model = _model().eval()
    norm = ElevationScaling(offset_m=-500.0, scale_m=4000.0, trend_sigma_px=2.0)
    path = save_checkpoint(
        tmp_path / "m.safetensors", model, norm, {"provenance": {"data": ["a.tif"]}}
    )
    checkpoint = load_checkpoint(path)
    assert checkpoint.model_config == model.config
    assert checkpoint.scaling == norm
    assert checkpoint.metadata["provenance"]["data"] == ["a.tif"]
    assert "created" in checkpoint.metadata["provenance"]
    x = torch.rand(2, 1, 11, 13)
    with torch.no_grad():
        assert torch.equal(model(x), checkpoint.build_model()(x))
        metres = 1000 + 300 * x
        expected = SuperResolver(model, norm)(metres)
        assert torch.equal(checkpoint.build_resolver()(metres), expected)


def test_no_temporary_file_left(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "m.safetensors", _model(), SCALING)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_pickle_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (marker.touch, ())

    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps({"state_dict": Payload()}))
    with pytest.raises(CheckpointError, match="not a demsr checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def test_truncated_checkpoint_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.safetensors", _model(), SCALING)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_training_state_round_trip(tmp_path: Path) -> None:
    model = _model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
    loss = model(torch.rand(2, 1, 6, 6)).square().mean()
    loss.backward()
    optimizer.step()
    scheduler.step()
    state = TrainingState(
        optimizer.state_dict(),
        scheduler.state_dict(),
        epoch=3,
        global_step=42,
        best_valid_loss=0.5,
        bad_epochs=1,
    )
    path = save_checkpoint(
        tmp_path / "last.safetensors",
        model,
        SCALING,
        {},
        state,
    )
    restored = load_training_state(path)
    assert (restored.epoch, restored.global_step, restored.bad_epochs) == (3, 42, 1)
    fresh = torch.optim.Adam(_model(1).parameters(), lr=1e-3)
    fresh.load_state_dict(restored.optimizer)
    for index, values in optimizer.state_dict()["state"].items():
        for name, tensor in values.items():
            assert torch.equal(fresh.state_dict()["state"][index][name], tensor)
    assert fresh.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.9)


def test_weights_only_checkpoint_has_no_training_state(tmp_path: Path) -> None:
    path = save_checkpoint(
        tmp_path / "best.safetensors",
        _model(),
        SCALING,
    )
    with pytest.raises(CheckpointError, match="no training state"):
        load_training_state(path)


def test_weights_of_another_shape_are_refused_with_the_file_name(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.safetensors", _model(), SCALING)
    checkpoint = load_checkpoint(path)
    checkpoint.model_config = ModelConfig(blocks=2, channels=16, scale=3, bias=True)
    with pytest.raises(CheckpointError, match="m.safetensors: weights do not fit"):
        checkpoint.build_model()


def test_a_header_length_that_starts_like_a_pickle_still_loads(tmp_path: Path) -> None:
    # A safetensors file starts with its header's length; 640 bytes (0x280) start 0x80 0x02,
    # a pickle's protocol mark. Such a checkpoint is still recognised and loaded.
    path = tmp_path / "model.safetensors"
    for note_length in range(0, 1400, 4):
        write_untrained_checkpoint(path, metadata={"note": "x" * note_length})
        head = path.read_bytes()[:2]
        if head[0] == 0x80 and 2 <= head[1] <= 5:
            break
    else:
        pytest.fail("no note length gave a header length of 0x280, 0x380, 0x480 or 0x580")
    assert load_checkpoint(path).metadata["note"] == "x" * note_length


def test_copy_with_metadata_adds_entries_keeps_weights_and_never_overwrites_its_source(
    tmp_path: Path,
) -> None:
    source = write_untrained_checkpoint(tmp_path / "model.safetensors", metadata={"note": "a"})
    before = source.read_bytes()
    copied = copy_with_metadata(source, tmp_path / "copy.safetensors", {"measured": {"m": 0.5}})
    original, copy = load_checkpoint(source), load_checkpoint(copied)
    assert copy.metadata["measured"] == {"m": 0.5} and copy.metadata["note"] == "a"
    assert "measured" not in original.metadata
    for name, tensor in original.build_model().state_dict().items():
        assert torch.equal(tensor, copy.build_model().state_dict()[name])
    with pytest.raises(ValueError, match="is the input"):
        copy_with_metadata(source, source, {"measured": 1})
    assert source.read_bytes() == before


def test_a_loaded_checkpoint_hashes_its_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_untrained_checkpoint(tmp_path / "model.safetensors")
    checkpoint = load_checkpoint(path)
    reads: list[str] = []
    real = demsr.checkpoint.file_sha256
    monkeypatch.setattr(demsr.checkpoint, "file_sha256", lambda p: reads.append(p) or real(p))
    expected = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert checkpoint_sha256(checkpoint) == checkpoint_sha256(checkpoint) == expected
    assert len(reads) == 1
    assert checkpoint_sha256(load_checkpoint(path)) == expected and len(reads) == 2


def test_weights_stored_in_another_dtype_load_as_float32(tmp_path: Path) -> None:
    path = write_untrained_checkpoint(tmp_path / "model.safetensors")
    checkpoint = load_checkpoint(path)
    reference = checkpoint.build_model()
    halved = dataclasses.replace(
        checkpoint, state_dict={k: v.half() for k, v in checkpoint.state_dict.items()}
    )
    halved.check_weights()  # as loading a file does: build_model reuses the model it checked
    model = halved.build_model()
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert all(p.requires_grad for p in model.parameters())
    x = torch.rand(1, 1, 12, 12)
    with torch.no_grad():
        assert model(x).dtype == torch.float32
        assert torch.allclose(model(x), reference(x), atol=1e-2)


def test_each_built_model_is_a_model_of_its_own(tmp_path: Path) -> None:
    checkpoint = load_checkpoint(write_untrained_checkpoint(tmp_path / "model.safetensors"))
    first, second = checkpoint.build_model(), checkpoint.build_model()
    assert first is not second
    with torch.no_grad():
        next(first.parameters()).add_(1.0)
    x = torch.rand(1, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(second(x), checkpoint.build_model()(x))
        assert not torch.equal(first(x), second(x))
    for name, tensor in second.state_dict().items():  # copies: the checkpoint's stay as loaded
        assert tensor.data_ptr() != checkpoint.state_dict[name].data_ptr()
