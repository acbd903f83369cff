"""Reading MindSpore checkpoints of the reference DEMNet, and reproducing its output."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from demsr.mindearth import (
    config_from_mindearth,
    model_from_mindearth,
    read_mindspore_checkpoint,
)
from demsr.model import DEMSRNet, ModelConfig

FIXTURE_CKPT = "mindearth_demnet_b2.ckpt"
FIXTURE_IO = "mindearth_demnet_b2_io.npz"


# --- a minimal protobuf writer, so that tests can build checkpoints without MindSpore ----------


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64 as protobuf writes it: two's complement, 10 bytes if negative
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def _tensor(
    array: np.ndarray,
    type_name: str,
    packed: bool = True,
    dims: tuple[int, ...] | None = None,
    extra: bytes = b"",
) -> bytes:
    dims = (array.shape or (0,)) if dims is None else dims  # MindSpore writes [0] for a scalar
    if packed:
        encoded_dims = _length_delimited(1, b"".join(_varint(d) for d in dims))
    else:
        encoded_dims = b"".join(_key(1, 0) + _varint(d) for d in dims)
    content = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return (
        encoded_dims
        + extra
        + _length_delimited(2, type_name.encode())
        + _length_delimited(3, content)
    )


def _value(tag: str, tensor: bytes) -> bytes:
    return _length_delimited(1, _length_delimited(1, tag.encode()) + _length_delimited(2, tensor))


def _checkpoint(tensors: dict[str, np.ndarray], packed: bool = True) -> bytes:
    type_names = {
        np.dtype(np.float32): "Float32",
        np.dtype(np.float16): "Float16",
        np.dtype(np.float64): "Float64",
        np.dtype(np.int32): "Int32",
        np.dtype(np.int64): "Int64",
    }
    return b"".join(
        _value(tag, _tensor(array, type_names[array.dtype], packed))
        for tag, array in tensors.items()
    )


def _tiny_weights(bias: bool = False) -> dict[str, np.ndarray]:
    model = DEMSRNet(ModelConfig(blocks=1, channels=4, scale=2, bias=bias))
    return {name: tensor.numpy().copy() for name, tensor in model.state_dict().items()}


# --- the fidelity fixture -------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixture_model(reference_dir: Path) -> DEMSRNet:
    return model_from_mindearth(reference_dir / FIXTURE_CKPT)


def test_reproduces_the_reference_output(
    fixture_model: DEMSRNet, reference_dir: Path, record_property: Callable[[str, object], None]
) -> None:
    io = np.load(reference_dir / FIXTURE_IO)
    with torch.no_grad():
        y = fixture_model(torch.from_numpy(io["x"])).numpy()
    assert y.shape == io["y"].shape == (1, 1, 120, 120)
    max_abs_error = float(np.abs(y - io["y"]).max())
    record_property("max_abs_error", max_abs_error)
    assert max_abs_error < 1e-4
    # Well below the contract: float32 rounding (an independent port gets 9e-6), i.e. under 1e-5
    # of the output's range, where a wrong layer or resize mapping errs by 1e-2 or more.
    assert max_abs_error < 1e-5 * float(np.ptp(io["y"]))


def test_the_legacy_mapping_is_what_reproduces_the_reference(reference_dir: Path) -> None:
    io = np.load(reference_dir / FIXTURE_IO)
    model = model_from_mindearth(reference_dir / FIXTURE_CKPT, resize="half_pixel")
    with torch.no_grad():
        y = model(torch.from_numpy(io["x"])).numpy()
    assert np.abs(y - io["y"]).max() > 1e-2


def test_infers_the_fixture_config(reference_dir: Path) -> None:
    tensors = read_mindspore_checkpoint(reference_dir / FIXTURE_CKPT)
    assert len(tensors) == 8
    assert all(array.dtype == np.float32 for array in tensors.values())
    assert tensors["conv1.weight"].shape == (256, 1, 3, 3)
    assert config_from_mindearth(tensors) == ModelConfig(
        blocks=2, channels=256, scale=5, bias=False, resize="legacy"
    )


def test_loaded_model_is_float32_in_eval_mode(fixture_model: DEMSRNet) -> None:
    assert not fixture_model.training
    assert all(p.dtype == torch.float32 for p in fixture_model.parameters())


# --- refusing what is not a checkpoint ------------------------------------------------------


class _Trap:
    """Unpickling this object creates a marker file: proof that a file was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_a_pickle_is_refused_and_never_unpickled(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "unpickled"
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"conv1.weight": _Trap(marker)}, protocol=protocol))
    with pytest.raises(ValueError, match="evil.ckpt"):
        read_mindspore_checkpoint(path)
    with pytest.raises(ValueError, match="evil.ckpt"):
        model_from_mindearth(path)
    assert not marker.exists()


def test_a_torch_zip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    with pytest.raises(ValueError, match="zip"):
        read_mindspore_checkpoint(path)


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_are_refused(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "noise.ckpt"
    path.write_bytes(np.random.default_rng(seed).bytes(4096))
    with pytest.raises(ValueError, match="noise.ckpt"):
        read_mindspore_checkpoint(path)


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.ckpt"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="no tensor"):
        read_mindspore_checkpoint(path)


@pytest.mark.parametrize("keep", [5, 40, 7_000_000, -1])
def test_a_truncated_checkpoint_is_refused(reference_dir: Path, tmp_path: Path, keep: int) -> None:
    raw = (reference_dir / FIXTURE_CKPT).read_bytes()
    path = tmp_path / "truncated.ckpt"
    path.write_bytes(raw[:keep])
    with pytest.raises(ValueError, match="truncated.ckpt"):
        read_mindspore_checkpoint(path)


def test_a_checkpoint_cut_between_tensors_is_refused_by_the_loader(
    reference_dir: Path, tmp_path: Path
) -> None:
    # Cut exactly after the first entry: still valid protobuf, but weights are missing.
    raw = (reference_dir / FIXTURE_CKPT).read_bytes()
    assert raw[0] == 0x0A  # field 1, length-delimited
    length, pos, shift = 0, 1, 0
    while True:
        byte = raw[pos]
        length |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            break
    path = tmp_path / "cut.ckpt"
    path.write_bytes(raw[: pos + length])
    assert list(read_mindspore_checkpoint(path)) == ["conv1.weight"]
    with pytest.raises(ValueError, match="missing weights.*conv_out.weight"):
        model_from_mindearth(path)


# --- hand-built checkpoints -----------------------------------------------------------------


@pytest.mark.parametrize("packed", [True, False])
def test_hand_built_checkpoint_round_trips(tmp_path: Path, packed: bool) -> None:
    rng = np.random.default_rng(0)
    tensors: dict[str, np.ndarray] = {
        "f32": rng.normal(size=(2, 3, 4)).astype(np.float32),
        "f16": rng.normal(size=(5,)).astype(np.float16),
        "f64": rng.normal(size=(3, 1)),
        "i32": np.arange(-3, 3, dtype=np.int32).reshape(2, 3),
        "i64": np.array([[-(2**40), 7]], dtype=np.int64),
        "global_step": np.array(123, dtype=np.int32),  # 0-d: written with dims [0]
    }
    path = tmp_path / "tiny.ckpt"
    path.write_bytes(_checkpoint(tensors, packed=packed))
    read = read_mindspore_checkpoint(path)
    assert list(read) == list(tensors)
    for name, array in tensors.items():
        assert read[name].dtype == array.dtype, name
        assert read[name].shape == array.shape, name
        np.testing.assert_array_equal(read[name], array)
    assert read["global_step"].shape == ()


def test_tiny_model_round_trips_through_a_training_checkpoint(tmp_path: Path) -> None:
    weights = _tiny_weights(bias=True)
    # What a MindSpore training run saves: wrapper prefixes, Adam moments, scalars.
    entries: dict[str, np.ndarray] = {}
    for name, array in weights.items():
        entries[f"network._backbone.{name}"] = array
        entries[f"moment1.network._backbone.{name}"] = np.zeros_like(array)
        entries[f"moment2.{name}"] = np.ones_like(array)
    entries["beta1_power"] = np.array([0.9], dtype=np.float32)
    entries["learning_rate"] = np.array(1e-4, dtype=np.float32)
    entries["global_step"] = np.array([42], dtype=np.int32)
    path = tmp_path / "train.ckpt"
    path.write_bytes(_checkpoint(entries))

    config = config_from_mindearth(read_mindspore_checkpoint(path), scale=2)
    assert config == ModelConfig(blocks=1, channels=4, scale=2, bias=True, resize="legacy")
    model = model_from_mindearth(path, scale=2)
    for name, tensor in model.state_dict().items():
        np.testing.assert_array_equal(tensor.numpy(), weights[name], err_msg=name)


def test_half_precision_weights_load_as_float32(tmp_path: Path) -> None:
    weights = _tiny_weights()
    path = tmp_path / "half.ckpt"
    path.write_bytes(_checkpoint({k: v.astype(np.float16) for k, v in weights.items()}))
    model = model_from_mindearth(path, scale=2)
    assert model.conv1.weight.dtype == torch.float32
    np.testing.assert_array_equal(
        model.conv1.weight.detach().numpy(), weights["conv1.weight"].astype(np.float16)
    )


def test_unknown_fields_are_skipped_and_chunks_joined(tmp_path: Path) -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    flat = array.ravel()
    # Unknown fields of every wire type: varint, fixed64, length-delimited, fixed32, group.
    unknown = (
        _key(9, 0)
        + _varint(-5)
        + _key(10, 1)
        + bytes(8)
        + _length_delimited(11, b"hello")
        + _key(12, 5)
        + bytes(4)
        + _key(13, 3)
        + _key(1, 0)
        + _varint(1)
        + _key(13, 4)
    )
    # MindSpore splits big tensors over consecutive entries with the same tag.
    first = _value("w", _tensor(flat[:5], "Float32", dims=(5,), extra=unknown))
    second = _value("w", _tensor(flat[5:], "Float32", dims=(3, 4)))
    path = tmp_path / "chunks.ckpt"
    path.write_bytes(unknown + first + second + _length_delimited(20, b"trailer"))
    np.testing.assert_array_equal(read_mindspore_checkpoint(path)["w"], array)


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (_tensor(np.zeros(3, np.float32), "Float32", dims=(2, 2)), "needs 4"),
        (_tensor(np.zeros(3, np.float32), "Complex64"), "unsupported tensor_type"),
        (_tensor(np.zeros(3, np.float32), "Float32", dims=(-3,)), "negative"),
    ],
    ids=["size", "type", "dims"],
)
def test_inconsistent_tensors_are_refused(tmp_path: Path, tensor: bytes, message: str) -> None:
    path = tmp_path / "bad.ckpt"
    path.write_bytes(_value("w", tensor))
    with pytest.raises(ValueError, match=message):
        read_mindspore_checkpoint(path)


def test_shape_mismatch_and_unexpected_weights_are_listed(tmp_path: Path) -> None:
    weights = _tiny_weights()
    weights["conv_out.weight"] = np.zeros((1, 4, 5, 5), np.float32)
    weights["body.3.res_conv2.weight"] = weights["body.0.res_conv2.weight"]
    path = tmp_path / "odd.ckpt"
    path.write_bytes(_checkpoint(weights))
    with pytest.raises(ValueError) as excinfo:
        model_from_mindearth(path, scale=2)
    text = str(excinfo.value)
    assert "odd.ckpt" in text
    assert "unexpected weights: ['body.3.res_conv2.weight']" in text
    assert "conv_out.weight has shape (1, 4, 5, 5), expected (1, 4, 3, 3)" in text


def test_a_checkpoint_of_another_network_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "resnet.ckpt"
    path.write_bytes(_checkpoint({"layer1.0.conv.weight": np.zeros((4, 4, 3, 3), np.float32)}))
    with pytest.raises(ValueError, match="no conv1.weight"):
        model_from_mindearth(path)
