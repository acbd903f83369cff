"""Checkpoints: one safetensors file holding the weights and, as JSON in its header, everything
needed to use them (model config, scale, elevation scaling, training config, provenance).

A training checkpoint (``last.safetensors``) also holds the optimizer tensors, the scheduler and
the random-number-generator states, so ``--resume`` needs nothing else. Loading never unpickles:
a file that is not safetensors is refused.

Tensor keys: ``model.<parameter>``, ``optimizer.<param index>.<state name>``, ``rng.<name>``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from demsr import __version__
from demsr.io import atomic_path
from demsr.model import DEMSRNet, ModelConfig, SuperResolver
from demsr.scaling import ElevationScaling

FORMAT = "demsr-checkpoint"
FORMAT_VERSION = 1
_META_KEY = "demsr"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded, with a message naming the file."""


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Checkpoint:
    """A model as stored on disk: its shape, its elevation scaling and its weights.

    ``metadata`` carries the rest of the JSON header: ``training`` (the run config),
    ``provenance`` (data files, parent checkpoint, creation time, demsr version), ``epoch`` and
    ``metrics`` where the file comes from training. A fine-tuned model's ``provenance.parent``
    records the checkpoint it started from (path, sha256, epoch, metrics, its own provenance,
    hence the whole chain, and ``valid_rmse_m``: its RMSE on the fine-tuning validation pairs),
    and ``frozen`` the module-name prefixes kept fixed and their parameter count.
    """

    model_config: ModelConfig
    scaling: ElevationScaling
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)
    path: str = ""
    _file_sha256: str | None = field(default=None, init=False, repr=False, compare=False)
    # The model check_weights built, for one build_model to take (dict.pop: one caller only).
    _checked: dict[str, tuple[ModelConfig, DEMSRNet, dict[str, torch.dtype]]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def scale(self) -> int:
        return self.model_config.scale

    def build_model(self, device: str | torch.device = "cpu") -> DEMSRNet:
        """The network with these weights, in eval mode, on ``device``.

        Built without random initial weights (on the meta device), then given a copy of these
        in each parameter's own dtype (float32), as loading into an initialised model would:
        every parameter must come from the checkpoint, or it is refused."""
        # The model check_weights built for this config (used once) and its own dtypes, or a
        # new one.
        checked = self._checked.pop("model", None)
        if checked is not None and checked[0] == self.model_config:
            model, dtypes = checked[1:]
        else:
            model, dtypes = self._meta_model()
        weights = {
            name: tensor.to(dtypes.get(name, tensor.dtype), copy=True)
            for name, tensor in self.state_dict.items()
        }
        self._assign(model, weights)
        return model.to(device).eval()

    def check_weights(self) -> None:
        """CheckpointError (naming the file) unless the weights fit the model config exactly,
        as :meth:`build_model` would refuse them; only names and shapes are compared (no copy).
        The model built for the check is kept for the next :meth:`build_model`."""
        weights = {name: tensor.to("meta") for name, tensor in self.state_dict.items()}
        model, dtypes = self._meta_model()
        self._assign(model, weights)
        self._checked["model"] = (self.model_config, model, dtypes)

    def _meta_model(self) -> tuple[DEMSRNet, dict[str, torch.dtype]]:
        """The network without weights (on the meta device), and its tensors' own dtypes."""
        with torch.device("meta"):
            model = DEMSRNet(self.model_config)
        return model, {name: tensor.dtype for name, tensor in model.state_dict().items()}

    def _assign(self, model: DEMSRNet, weights: dict[str, torch.Tensor]) -> None:
        try:
            missing, unexpected = model.load_state_dict(weights, strict=False, assign=True)
        except RuntimeError as exc:  # shape mismatches
            detail = str(exc).strip().splitlines()[-1].strip()
            raise CheckpointError(
                f"{self.path or 'checkpoint'}: weights do not fit the model config ({detail})"
            ) from None
        if missing or unexpected:
            raise CheckpointError(
                f"{self.path or 'checkpoint'}: weights do not match the model config "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )

    def build_resolver(self, device: str | torch.device = "cpu") -> SuperResolver:
        """The network with its elevation scaling: metres in, metres out (eval mode)."""
        return SuperResolver(self.build_model(device), self.scaling).eval()


@dataclass
class TrainingState:
    """What ``--resume`` restores besides the weights.

    ``epoch`` is the last finished epoch. A checkpoint written in the middle of an epoch (on a
    timer) also records ``epoch_steps``, the steps of epoch ``epoch + 1`` already done, and
    ``epoch_loss_sum``, the sum of their losses; both are 0 at an epoch's end. ``rng`` is
    filled when loading (``{"tensors": ..., "extra": ...}`` for ``restore_rng_state``); saving
    always records the generators' current states.
    """

    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    epoch: int
    global_step: int
    best_valid_loss: float
    bad_epochs: int
    rng: dict[str, Any] = field(default_factory=dict)
    epoch_steps: int = 0
    epoch_loss_sum: float = 0.0


def _header(
    model_config: ModelConfig, scaling: ElevationScaling, metadata: dict[str, Any]
) -> dict[str, Any]:
    header: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model_config.to_dict(),
        "scale": model_config.scale,
        "scaling": scaling.to_dict(),
    }
    header.update(metadata)
    header.setdefault("provenance", {})
    header["provenance"].setdefault("created", now_utc())
    header["provenance"].setdefault("demsr_version", __version__)
    return header


def capture_rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and JSON describing the torch, numpy and Python random states."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{index}"] = state
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    python_version, python_state, gauss = random.getstate()
    extra = {
        "numpy": [name, int(pos), int(has_gauss), float(cached)],
        "python": [python_version, list(python_state), gauss],
    }
    return tensors, extra


def restore_rng_state(tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
    name, pos, has_gauss, cached = extra["numpy"]
    keys = tensors["rng.numpy"].numpy().astype(np.uint32)
    np.random.set_state((name, keys, int(pos), int(has_gauss), float(cached)))
    python_version, python_state, gauss = extra["python"]
    random.setstate((python_version, tuple(python_state), gauss))


def save_checkpoint(
    path: str | os.PathLike[str],
    model: DEMSRNet,
    scaling: ElevationScaling,
    metadata: dict[str, Any] | None = None,
    training_state: TrainingState | None = None,
) -> Path:
    """Write a checkpoint atomically (temporary file, fsync, rename)."""
    tensors = {
        f"model.{name}": value.detach().to("cpu", torch.float32).contiguous()
        for name, value in model.state_dict().items()
    }
    header = _header(model.config, scaling, dict(metadata or {}))
    if training_state is not None:
        optimizer_state = training_state.optimizer
        for index, state in optimizer_state["state"].items():
            for name, value in state.items():
                tensors[f"optimizer.{index}.{name}"] = value.detach().to("cpu").contiguous()
        rng_tensors, rng_extra = capture_rng_state()
        tensors.update({k: v.contiguous() for k, v in rng_tensors.items()})
        header["training_state"] = {
            "optimizer_param_groups": optimizer_state["param_groups"],
            "scheduler": training_state.scheduler,
            "epoch": training_state.epoch,
            "global_step": training_state.global_step,
            "best_valid_loss": training_state.best_valid_loss,
            "bad_epochs": training_state.bad_epochs,
            "epoch_steps": training_state.epoch_steps,
            "epoch_loss_sum": training_state.epoch_loss_sum,
            "rng": rng_extra,
        }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(header)})
    return Path(path)


# Bytes of a file's start that foreign_format reads.
HEAD_BYTES = 9


def foreign_format(head: bytes) -> str | None:
    """Name the format of a file from its first bytes (``HEAD_BYTES`` of them) when it is one
    that may be handed in as a checkpoint but is not one (a pickle, a ``torch.save`` zip,
    HDF5); None otherwise.

    A safetensors file starts with its header's length (8 bytes, little-endian) and then the
    header's ``{``; a length of 640..1407 bytes starts like a pickle's protocol mark (0x80
    then 2..5), so that shape is recognised first."""
    if len(head) >= 9 and head[8:9] == b"{":
        return None
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "a Python pickle (refused: demsr never unpickles files)"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (e.g. a PyTorch torch.save file, which holds a pickle: refused)"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "an HDF5 file"
    return None


def _open(
    path: str | os.PathLike[str], prefixes: tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The file's header and the tensors whose keys start with one of ``prefixes``.

    Only those tensors are read: loading the weights leaves the optimizer moments on disk. Only
    the safetensors format is parsed (a JSON header and raw tensor bytes); nothing in the file
    is ever executed.
    """
    path_str = os.fspath(path)
    if not Path(path_str).is_file():
        raise CheckpointError(f"{path_str}: no such checkpoint file")
    with open(path_str, "rb") as handle:
        foreign = foreign_format(handle.read(HEAD_BYTES))
    if foreign is not None:
        raise CheckpointError(f"{path_str}: not a demsr checkpoint: it is {foreign}")
    try:
        with safe_open(path_str, framework="pt", device="cpu") as handle:
            raw = (handle.metadata() or {}).get(_META_KEY)
            tensors = {
                key: handle.get_tensor(key) for key in handle.keys() if key.startswith(prefixes)
            }
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path_str}: not a demsr checkpoint: not a complete safetensors file (truncated, "
            f"or another format: {exc}); files that need unpickling are never loaded"
        ) from None
    if raw is None:
        raise CheckpointError(f"{path_str}: safetensors file without demsr metadata")
    try:
        header = json.loads(raw)
    except json.JSONDecodeError:
        raise CheckpointError(f"{path_str}: corrupt demsr metadata") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(
            f"{path_str}: not a demsr checkpoint (format {header.get('format')!r})"
        )
    return header, tensors


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Load a checkpoint's model, config and elevation scaling (CPU tensors)."""
    header, tensors = _open(path, ("model.",))
    try:
        model_config = ModelConfig.from_dict(header["model"])
        scaling = ElevationScaling.from_dict(header["scaling"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid model metadata ({exc})") from None
    state = {k[len("model.") :]: v for k, v in tensors.items()}
    metadata = {k: v for k, v in header.items() if k not in ("model", "scaling", "scale")}
    checkpoint = Checkpoint(model_config, scaling, state, metadata, path=os.fspath(path))
    checkpoint.check_weights()  # fail now, with the file's name, if the weights do not fit
    return checkpoint


def as_checkpoint(value: Checkpoint | str | os.PathLike[str]) -> Checkpoint:
    """``value`` if it is a loaded :class:`Checkpoint`; else the checkpoint it names: a file, or
    a shipped model's name such as ``lite`` (:func:`demsr.pretrained.resolve_checkpoint`)."""
    if isinstance(value, Checkpoint):
        return value
    from demsr.pretrained import resolve_checkpoint

    return load_checkpoint(resolve_checkpoint(value))


def copy_with_metadata(
    checkpoint: Checkpoint | str | os.PathLike[str],
    output: str | os.PathLike[str],
    entries: Mapping[str, Any],
) -> Path:
    """Write ``checkpoint``'s weights and metadata (no optimizer state) to ``output`` with
    ``entries`` added to its header (a measurement, a calibration, a release record); the
    weights are unchanged. ``output`` may not be the checkpoint itself (ValueError)."""
    from demsr.io import refuse_output_over_input

    source = as_checkpoint(checkpoint)
    if source.path:
        refuse_output_over_input([output], [source.path])
    metadata = {
        key: value
        for key, value in source.metadata.items()
        if key not in ("format", "format_version", "training_state")
    }
    metadata.update(entries)
    return save_checkpoint(output, source.build_model(), source.scaling, metadata)


def load_training_state(path: str | os.PathLike[str]) -> TrainingState:
    """The optimizer/scheduler/RNG state stored by a training checkpoint."""
    header, tensors = _open(path, ("optimizer.", "rng."))
    if "training_state" not in header:
        raise CheckpointError(f"{path}: holds weights only, no training state to resume from")
    info = header["training_state"]
    optimizer_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            optimizer_state.setdefault(int(index), {})[name] = value
    rng_tensors = {k: v for k, v in tensors.items() if k.startswith("rng.")}
    return TrainingState(
        optimizer={"state": optimizer_state, "param_groups": info["optimizer_param_groups"]},
        scheduler=info["scheduler"],
        epoch=int(info["epoch"]),
        global_step=int(info["global_step"]),
        best_valid_loss=float(info["best_valid_loss"]),
        bad_epochs=int(info["bad_epochs"]),
        rng={"tensors": rng_tensors, "extra": info["rng"]},
        epoch_steps=int(info.get("epoch_steps", 0)),
        epoch_loss_sum=float(info.get("epoch_loss_sum", 0.0)),
    )


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_sha256(checkpoint: Checkpoint) -> str:
    """SHA-256 of the checkpoint's file, or of its config and weights when it has no file.

    A file is hashed once per loaded checkpoint, so that a process predicting many rasters
    with one model does not read it again for each."""
    if checkpoint.path and Path(checkpoint.path).is_file():
        if checkpoint._file_sha256 is None:
            checkpoint._file_sha256 = file_sha256(checkpoint.path)
        return checkpoint._file_sha256
    digest = hashlib.sha256()
    header = {"model": checkpoint.model_config.to_dict(), "scaling": checkpoint.scaling.to_dict()}
    digest.update(json.dumps(header, sort_keys=True).encode())
    for name in sorted(checkpoint.state_dict):
        digest.update(name.encode())
        digest.update(checkpoint.state_dict[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
