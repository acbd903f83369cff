"""Fine-tuning's own pieces: the parent checkpoint's model section and record, and which layers
stay fixed (parameters frozen by module name). :meth:`demsr.train.Trainer.finetune` runs them."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from demsr.checkpoint import Checkpoint, checkpoint_sha256
from demsr.config import FinetuneSection, ModelSection
from demsr.model import (
    INIT_SCHEMES,
    DEMSRNet,
    ModelConfig,
    count_parameters,
    freeze_preset_prefixes,
)

log = logging.getLogger(__name__)


def parent_model_section(asked: ModelSection, parent: Checkpoint, path: str) -> ModelSection:
    """The model section of a run fine-tuning ``parent`` (read from ``path``): the parent's
    network and elevation scaling, with its own init for the record (fine-tuning starts from its
    weights) or ``asked.init`` when it records none. A config that asked for another model is
    told, in a warning, that its model section is ignored."""
    parent_init = parent.metadata.get("training", {}).get("model", {}).get("init")
    described = ModelSection.describing(
        parent.model_config,
        parent.scaling,
        init=parent_init if parent_init in INIT_SCHEMES else asked.init,
    )
    if asked != ModelSection() and (asked.build(), asked.scaling()) != (
        parent.model_config,
        parent.scaling,
    ):
        log.warning(
            "the config's model section is ignored: the model and its elevation scaling "
            "come from %s (%s)",
            path,
            parent.model_config,
        )
    return described


def parent_record(parent: Checkpoint, path: str) -> dict[str, Any]:
    """What a fine-tuned checkpoint's ``provenance.parent`` holds: the parent's path, SHA-256,
    epoch, metrics and provenance (its validation RMSE on the new pairs is filled in later)."""
    return {
        "path": str(Path(path).resolve()),
        "sha256": checkpoint_sha256(parent),
        "epoch": parent.metadata.get("epoch"),
        "metrics": parent.metadata.get("metrics"),
        "provenance": parent.metadata.get("provenance"),
        "valid_rmse_m": None,  # the parent's, on this run's validation pairs
    }


def _is_under(name: str, prefix: str) -> bool:
    """Whether parameter ``name`` lies under the module (or is the parameter) ``prefix``."""
    return name == prefix or name.startswith(prefix + ".")


def freeze_parameters(model: DEMSRNet, prefixes: Sequence[str]) -> list[str]:
    """Freeze the parameters under ``prefixes`` and make all the others trainable.

    A prefix is a dotted module or parameter name and matches whole name components: ``body.1``
    is residual block 1 (not blocks 10-19), ``body`` all blocks, ``conv1.weight`` one tensor.
    Frozen parameters get ``requires_grad=False``. Returns the frozen parameter names in model
    order. A prefix that matches no parameter is a ValueError naming it.
    """
    names = [name for name, _ in model.named_parameters()]
    wanted = [prefix.strip(".") for prefix in prefixes]
    for prefix, given in zip(wanted, prefixes, strict=True):
        if not any(_is_under(name, prefix) for name in names):
            last = f"body.{model.config.blocks - 1}" if model.config.blocks else "(no blocks)"
            raise ValueError(
                f"freeze prefix {given!r} matches no parameter of the model (its modules: conv1, "
                f"body.0 .. {last}, conv2, conv_up, conv_out)"
            )
    frozen = []
    for name, parameter in model.named_parameters():
        is_frozen = any(_is_under(name, prefix) for prefix in wanted)
        parameter.requires_grad_(not is_frozen)
        if is_frozen:
            frozen.append(name)
    return frozen


def update_finetune_settings(
    settings: FinetuneSection,
    parent: str | os.PathLike[str] | None = None,
    freeze: str | None = None,
    freeze_blocks: int | None = None,
    freeze_prefixes: Sequence[str] | None = None,
) -> None:
    """Store in ``settings`` (``config.finetune``) the arguments of
    :meth:`demsr.train.Trainer.finetune` that are not None, so that ``config.yaml`` and the
    checkpoints record the values used; refuse when no parent is left."""
    if parent is not None:
        settings.parent = os.fspath(parent)
    if freeze is not None:
        settings.freeze = freeze
    if freeze_blocks is not None:
        settings.freeze_blocks = freeze_blocks
    if freeze_prefixes is not None:
        settings.freeze_prefixes = list(freeze_prefixes)
    if settings.parent is None:
        raise ValueError("no parent checkpoint to fine-tune (set finetune.parent)")


def freeze_for_finetuning(
    model: DEMSRNet, model_config: ModelConfig, settings: FinetuneSection
) -> list[str]:
    """Freeze the layers of ``model`` that ``settings`` names (the ``freeze`` preset of
    ``model_config``, see :func:`demsr.model.freeze_preset_prefixes`, then
    ``freeze_prefixes``) and return their prefixes; refuse to leave nothing to train."""
    prefixes = [
        *freeze_preset_prefixes(model_config, settings.freeze, settings.freeze_blocks),
        *settings.freeze_prefixes,
    ]
    freeze_parameters(model, prefixes)
    if count_parameters(model, trainable_only=True) == 0:
        raise ValueError(f"every parameter is frozen ({', '.join(prefixes)}): nothing to fine-tune")
    return prefixes
