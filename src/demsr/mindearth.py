"""Weights of the reference implementation (MindEarth ``DEMNet``) from MindSpore checkpoints.

A MindSpore ``.ckpt`` is one protobuf message (``checkpoint.proto``, proto2)::

    message Checkpoint {
      message Value {
        required string tag = 1;                      // parameter name
        oneof value { TensorProto tensor = 2; MapTensorProto maptensor = 3; }
      }
      repeated Value value = 1;
    }
    message TensorProto {
      repeated int64 dims = 1;                        // shape; [0] for a scalar
      required string tensor_type = 2;                // "Float32", "Int64", ...
      required bytes tensor_content = 3;              // little-endian, C order
    }

It is read here by decoding the protobuf wire format by hand, so that neither MindSpore nor
generated protobuf code is needed, and nothing in the file is ever executed or unpickled. The
parser is strict: truncated, malformed or foreign files (a pickle, a zip, random bytes) raise a
``ValueError`` that names the file.

Two details follow MindSpore's own loader (``mindspore.load_checkpoint``): a large tensor may be
split over consecutive ``Value`` entries with the same tag, whose contents are concatenated and
shaped by the last entry's dims; and dims ``[0]`` with one element is a scalar.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from os import PathLike

import numpy as np
import torch

from demsr.checkpoint import HEAD_BYTES, foreign_format
from demsr.layers import ResizeMode
from demsr.model import DEMSRNet, ModelConfig

log = logging.getLogger(__name__)

# Little-endian dtypes of MindSpore's tensor_type strings (its `tensor_to_np_type`). MindSpore
# spells the unsigned types "UInt8" in some versions and "Uint8" in others.
_NUMPY_TYPES: dict[str, str] = {
    "Bool": "?",
    "Int8": "i1",
    "Int16": "<i2",
    "Int32": "<i4",
    "Int64": "<i8",
    "UInt8": "u1",
    "UInt16": "<u2",
    "UInt32": "<u4",
    "UInt64": "<u8",
    "Uint8": "u1",
    "Uint16": "<u2",
    "Uint32": "<u4",
    "Uint64": "<u8",
    "Float16": "<f2",
    "Float32": "<f4",
    "Float64": "<f8",
    # numpy has no bfloat16: read the raw 16 bits and widen them to float32 (exact).
    "BFloat16": "<u2",
}
# A string "tensor" (MindSpore stores some hyperparameters this way), UTF-32-LE encoded.
_STRING_TYPE = "str"

_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_START_GROUP, _WIRE_END_GROUP, _WIRE_I32 = range(6)
_MAX_FIELD_NUMBER = (1 << 29) - 1
# Nesting bound for skipping proto2 groups, so that hostile input cannot exhaust the stack.
_MAX_GROUP_DEPTH = 64

# Prefixes that MindSpore training wrappers put in front of the network's own parameter names
# (WithLossCell -> `_backbone.`, TrainOneStepCell -> `network.`, user wrappers -> `model.` ...).
_WRAPPER_PREFIXES: tuple[str, ...] = ("network.", "_backbone.", "backbone.", "model.", "net.")
# Names of DEMSRNet's (and the reference DEMNet's) parameters. Anything else in a checkpoint,
# e.g. Adam's `moment1.*`/`moment2.*`, `beta1_power`, `learning_rate`, `global_step`, is ignored.
_PARAMETER_NAME = re.compile(
    r"(?:conv1|conv2|conv_up|conv_out|body\.\d+\.res_conv[12])\.(?:weight|bias)"
)
_BLOCK_WEIGHT = re.compile(r"body\.(\d+)\.res_conv1\.weight")


class _Malformed(Exception):
    """Raised inside the parser; turned into a ValueError naming the file at the API boundary."""


@dataclass(frozen=True)
class _TensorEntry:
    """One ``Value`` of the checkpoint, before chunks of the same tag are joined."""

    tag: str
    dims: tuple[int, ...]
    tensor_type: str
    content: memoryview


def _read_varint(data: memoryview, pos: int, end: int) -> tuple[int, int]:
    """Decode one base-128 varint at ``pos``; return (value as unsigned 64-bit, next position)."""
    value = 0
    for shift in range(0, 70, 7):
        if pos >= end:
            raise _Malformed(f"truncated varint at byte {pos}")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if value >= 1 << 64:
                raise _Malformed(f"varint ending at byte {pos} overflows 64 bits")
            return value, pos
    raise _Malformed(f"varint longer than 10 bytes ending at byte {pos}")


def _as_int64(value: int) -> int:
    """Reinterpret an unsigned 64-bit varint as protobuf's two's-complement int64."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _skip_group(data: memoryview, pos: int, end: int, field: int, depth: int) -> int:
    """Skip the body of a proto2 group opened by ``field``; return the position after its end."""
    if depth > _MAX_GROUP_DEPTH:
        raise _Malformed(f"groups nested deeper than {_MAX_GROUP_DEPTH} at byte {pos}")
    while pos < end:
        inner_field, wire, value, pos = _read_field(data, pos, end, depth + 1)
        if wire == _WIRE_END_GROUP:
            if inner_field != field:
                raise _Malformed(f"group {field} closed by end-group {inner_field}")
            return pos
    raise _Malformed(f"group {field} is not closed before byte {end}")


def _read_field(
    data: memoryview, pos: int, end: int, depth: int = 0
) -> tuple[int, int, int | tuple[int, int], int]:
    """Read one field at ``pos`` of the message ``data[:end]``.

    Returns (field number, wire type, value, next position). The value is the integer of a varint,
    the (start, stop) span of a length-delimited field, and 0 for fixed-width fields and groups,
    which are skipped (no field of the checkpoint schema uses them).
    """
    start = pos
    key, pos = _read_varint(data, pos, end)
    field, wire = key >> 3, key & 7
    if field == 0 or field > _MAX_FIELD_NUMBER:
        raise _Malformed(f"invalid field number {field} at byte {start}")
    if wire == _WIRE_VARINT:
        value, pos = _read_varint(data, pos, end)
        return field, wire, value, pos
    if wire == _WIRE_LEN:
        length, pos = _read_varint(data, pos, end)
        if length > end - pos:
            raise _Malformed(
                f"field {field} at byte {start} declares {length} bytes but only {end - pos} remain"
            )
        return field, wire, (pos, pos + length), pos + length
    if wire in (_WIRE_I64, _WIRE_I32):
        width = 8 if wire == _WIRE_I64 else 4
        if width > end - pos:
            raise _Malformed(f"truncated fixed-width field {field} at byte {start}")
        return field, wire, 0, pos + width
    if wire == _WIRE_START_GROUP:
        return field, wire, 0, _skip_group(data, pos, end, field, depth)
    if wire == _WIRE_END_GROUP:
        if depth == 0:
            raise _Malformed(f"end-group {field} without a start at byte {start}")
        return field, wire, 0, pos
    raise _Malformed(f"invalid wire type {wire} at byte {start}")


def _iter_fields(
    data: memoryview, start: int, end: int
) -> Iterator[tuple[int, int, int | tuple[int, int]]]:
    """Yield (field number, wire type, value) of the message in ``data[start:end]``."""
    pos = start
    while pos < end:
        field, wire, value, pos = _read_field(data, pos, end)
        yield field, wire, value


def _span(field: int, wire: int, value: int | tuple[int, int], what: str) -> tuple[int, int]:
    if wire != _WIRE_LEN or not isinstance(value, tuple):
        raise _Malformed(f"{what} (field {field}) has wire type {wire}, expected length-delimited")
    return value


def _decode_text(data: memoryview, span: tuple[int, int], what: str) -> str:
    try:
        return bytes(data[span[0] : span[1]]).decode("utf-8")
    except UnicodeDecodeError as error:
        raise _Malformed(f"{what} at byte {span[0]} is not UTF-8") from error


def _parse_tensor(data: memoryview, span: tuple[int, int], tag: str) -> _TensorEntry:
    dims: list[int] = []
    tensor_type: str | None = None
    content = data[0:0]
    for field, wire, value in _iter_fields(data, *span):
        if field == 1 and wire == _WIRE_VARINT:  # one unpacked dim
            assert isinstance(value, int)
            dims.append(_as_int64(value))
        elif field == 1 and wire == _WIRE_LEN:  # packed dims: varints back to back
            assert isinstance(value, tuple)
            pos, stop = value
            while pos < stop:
                dim, pos = _read_varint(data, pos, stop)
                dims.append(_as_int64(dim))
        elif field == 2:
            tensor_type = _decode_text(
                data, _span(field, wire, value, "tensor_type"), "tensor_type"
            )
        elif field == 3:
            begin, stop = _span(field, wire, value, "tensor_content")
            content = data[begin:stop]
        elif field == 1:
            raise _Malformed(f"dims of {tag!r} have wire type {wire}")
        # Other fields: unknown to this schema version; skipped.
    if tensor_type is None:
        raise _Malformed(f"tensor {tag!r} has no tensor_type")
    if any(dim < 0 for dim in dims):
        raise _Malformed(f"tensor {tag!r} has negative dims {dims}")
    return _TensorEntry(tag, tuple(dims), tensor_type, content)


def _parse_value(data: memoryview, span: tuple[int, int]) -> _TensorEntry | None:
    """Parse one ``Checkpoint.Value``; None for a map tensor (hash tables, never model weights)."""
    tag: str | None = None
    tensor_span: tuple[int, int] | None = None
    has_map_tensor = False
    for field, wire, value in _iter_fields(data, *span):
        if field == 1:
            tag = _decode_text(data, _span(field, wire, value, "tag"), "tag")
        elif field == 2:
            tensor_span = _span(field, wire, value, "tensor")
        elif field == 3:
            _span(field, wire, value, "maptensor")
            has_map_tensor = True
    if tag is None:
        raise _Malformed(f"entry at byte {span[0]} has no tag")
    if tensor_span is None:
        if has_map_tensor:
            log.debug("skipping map tensor %r", tag)
            return None
        raise _Malformed(f"entry {tag!r} has no tensor")
    return _parse_tensor(data, tensor_span, tag)


def _to_array(chunks: list[_TensorEntry]) -> np.ndarray:
    """Join the chunks of one tag into an array of the last chunk's dims, in native byte order."""
    last = chunks[-1]
    tag, tensor_type, dims = last.tag, last.tensor_type, last.dims
    if any(chunk.tensor_type != tensor_type for chunk in chunks):
        raise _Malformed(f"the chunks of {tag!r} have different tensor types")
    content = b"".join(bytes(chunk.content) for chunk in chunks)
    if tensor_type == _STRING_TYPE:
        try:
            return np.array(content.decode("utf-32-le").rstrip("\x00"))
        except UnicodeDecodeError as error:
            raise _Malformed(f"string {tag!r} is not UTF-32") from error
    if tensor_type not in _NUMPY_TYPES:
        raise _Malformed(
            f"tensor {tag!r} has unsupported tensor_type {tensor_type!r}; "
            f"supported: {sorted(_NUMPY_TYPES)}"
        )
    dtype = np.dtype(_NUMPY_TYPES[tensor_type])
    if len(content) % dtype.itemsize:
        raise _Malformed(
            f"tensor {tag!r}: {len(content)} bytes is not a whole number of {tensor_type}"
        )
    count = len(content) // dtype.itemsize
    # MindSpore writes dims [0] for a 0-d tensor (a scalar such as `global_step`).
    shape: tuple[int, ...] = () if dims == (0,) and count == 1 else dims
    if count != math.prod(shape):
        raise _Malformed(
            f"tensor {tag!r} of dims {list(dims)} needs {math.prod(shape)} {tensor_type} values "
            f"but holds {count}"
        )
    array = np.frombuffer(content, dtype=dtype).reshape(shape)
    if tensor_type == "BFloat16":
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(dtype.newbyteorder("="))  # a writable copy in native byte order


def read_mindspore_checkpoint(path: str | PathLike[str]) -> dict[str, np.ndarray]:
    """Read every tensor of a MindSpore checkpoint, without MindSpore and without unpickling.

    Returns {tag: array} in file order, with the file's dtype (Float32 -> float32, ...; BFloat16
    is widened to float32; a ``str`` entry becomes a 0-d unicode array) and its shape (dims
    ``[0]`` holding one value -> a 0-d array). Map tensors (embedding hash tables) are skipped.

    Raises ValueError naming the file when it is truncated, malformed, not a protobuf (a pickle,
    a zip, random bytes, an encrypted checkpoint) or holds no tensor.
    """
    with open(path, "rb") as file:
        raw = file.read()
    foreign = foreign_format(raw[:HEAD_BYTES])
    if foreign is not None:
        raise ValueError(f"{path}: not a MindSpore checkpoint: it is {foreign}")
    data = memoryview(raw)
    try:
        entries: list[_TensorEntry] = []
        for field, wire, value in _iter_fields(data, 0, len(data)):
            if field == 1:
                entry = _parse_value(data, _span(field, wire, value, "value"))
                if entry is not None:
                    entries.append(entry)
        if not entries:
            raise _Malformed("it holds no tensor")
        tensors: dict[str, np.ndarray] = {}
        chunks: list[_TensorEntry] = []
        for index, entry in enumerate(entries):
            chunks.append(entry)
            if index + 1 < len(entries) and entries[index + 1].tag == entry.tag:
                continue  # the tensor continues in the next entry
            if entry.tag in tensors:
                raise _Malformed(f"tag {entry.tag!r} appears twice, apart")
            tensors[entry.tag] = _to_array(chunks)
            chunks = []
    except _Malformed as error:
        raise ValueError(
            f"{path}: not a readable MindSpore checkpoint (truncated, corrupt, encrypted or "
            f"another format): {error}"
        ) from None
    return tensors


def _strip_wrapper_prefixes(name: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix) :], True
    return name


def _network_tensors(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The network's own parameters under DEMSRNet's names: wrapper prefixes stripped, optimiser
    state and other entries dropped."""
    found: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    for tag, array in tensors.items():
        name = _strip_wrapper_prefixes(tag)
        if not _PARAMETER_NAME.fullmatch(name):
            continue
        if name in found:
            raise ValueError(f"both {origin[name]!r} and {tag!r} would load into {name!r}")
        found[name], origin[name] = array, tag
    ignored = len(tensors) - len(found)
    if ignored:
        log.info("ignoring %d checkpoint entries that are not network weights", ignored)
    return found


def _infer_config(
    network: Mapping[str, np.ndarray], all_names: list[str], scale: int, resize: ResizeMode
) -> ModelConfig:
    conv1 = network.get("conv1.weight")
    if conv1 is None:
        shown = ", ".join(sorted(all_names)[:10]) + (", ..." if len(all_names) > 10 else "")
        raise ValueError(
            f"no conv1.weight among the checkpoint's tensors, so it is not a DEMNet ({shown})"
        )
    if conv1.ndim != 4:
        raise ValueError(f"conv1.weight has shape {conv1.shape}, expected (C, 1, 3, 3)")
    blocks = sum(1 for name in network if _BLOCK_WEIGHT.fullmatch(name))
    bias = any(name.endswith(".bias") for name in network)
    return ModelConfig(
        blocks=blocks, channels=int(conv1.shape[0]), scale=scale, bias=bias, resize=resize
    )


def config_from_mindearth(
    tensors: Mapping[str, np.ndarray], scale: int = 5, resize: ResizeMode = "legacy"
) -> ModelConfig:
    """Infer the network shape from the tensors of a MindEarth DEMNet checkpoint.

    ``blocks`` is the number of ``body.{i}.res_conv1.weight``, ``channels`` the output channels of
    ``conv1.weight`` (C, 1, 3, 3), ``bias`` whether bias tensors are present. Wrapper prefixes
    (``network.``, ``_backbone.``, ``model.`` ...) are stripped and optimiser state is ignored.
    The checkpoint records neither the scale factor nor the resize mapping: the reference uses x5
    and the ``legacy`` mapping, which weights trained by it need.
    """
    return _infer_config(_network_tensors(tensors), list(tensors), scale, resize)


def model_from_mindearth(
    path: str | PathLike[str], scale: int = 5, resize: ResizeMode = "legacy"
) -> DEMSRNet:
    """Build a DEMSRNet holding the weights of a MindEarth DEMNet checkpoint, in float32.

    The model is returned in eval mode on the CPU. Input (N,1,h,w) -> output
    (N,1,h*scale,w*scale), in the normalised units the checkpoint was trained on. Raises
    ValueError naming the file if it cannot be read, or listing missing or unexpected weights and
    shape mismatches.
    """
    tensors = read_mindspore_checkpoint(path)
    try:
        network = _network_tensors(tensors)
        config = _infer_config(network, list(tensors), scale, resize)
        model = DEMSRNet(config)
        expected = model.state_dict()
        problems: list[str] = []
        missing = sorted(set(expected) - set(network))
        unexpected = sorted(set(network) - set(expected))
        if missing:
            problems.append(f"missing weights: {missing}")
        if unexpected:
            problems.append(f"unexpected weights: {unexpected}")
        for name in sorted(set(expected) & set(network)):
            if tuple(network[name].shape) != tuple(expected[name].shape):
                problems.append(
                    f"{name} has shape {tuple(network[name].shape)}, "
                    f"expected {tuple(expected[name].shape)}"
                )
        if problems:
            raise ValueError("; ".join(problems))
    except ValueError as error:
        raise ValueError(f"{path}: cannot load as a DEM-SRNet: {error}") from error
    state = {
        name: torch.from_numpy(np.ascontiguousarray(network[name], dtype=np.float32))
        for name in expected
    }
    model.load_state_dict(state)
    return model.eval()
