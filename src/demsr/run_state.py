"""A training run's state in its checkpoints: what rank 0 writes into the run folder as it goes
(:class:`RunWriter`: ``config.yaml``, the ``metrics.csv`` rows, ``best``/``last`` checkpoints
and their metadata, ``last.safetensors`` in the middle of an epoch when :class:`CheckpointTimer`
says ``train.checkpoint_every_s`` have passed) and how ``--resume`` continues from it: the checks
a run's last checkpoint must pass (:func:`load_resume_state`: the same starting point, model,
settings and, where ``optimizer.learning_rate_scaling`` ties the learning rate to it, number of
ranks) and the weights, optimizer, scheduler and RNG states put back
(:func:`restore_training`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from demsr.checkpoint import (
    Checkpoint,
    TrainingState,
    load_checkpoint,
    load_training_state,
    restore_rng_state,
    save_checkpoint,
)
from demsr.config import RunConfig
from demsr.config_keys import upgrade_config_dict
from demsr.io import atomic_path
from demsr.model import DEMSRNet, ModelConfig
from demsr.optimizer import match_parameter_layouts
from demsr.ranks import RankContext
from demsr.run_folder import BEST, LAST, METRICS, EpochRecord, append_metrics_row, changed_settings
from demsr.scaling import ElevationScaling
from demsr.training_data import TrainingData

log = logging.getLogger(__name__)


class CheckpointTimer:
    """When the next mid-epoch ``last.safetensors`` is due: ``every_s`` seconds (None: never)
    after the last one written (:meth:`reset`)."""

    def __init__(self, every_s: float | None) -> None:
        self.every_s = every_s
        self.saved_at = time.monotonic()

    def reset(self) -> None:
        """A ``last.safetensors`` was just written (or the run starts)."""
        self.saved_at = time.monotonic()

    def due(self) -> bool:
        return self.every_s is not None and time.monotonic() - self.saved_at >= self.every_s


@dataclass
class RunWriter:
    """Rank 0's files in the run folder ``output_dir`` during a run (the other ranks write
    nothing): ``config.yaml``, a ``metrics.csv`` row per epoch, ``best.safetensors`` at the best
    validation loss and ``last.safetensors`` with the training state.

    Every checkpoint's metadata records the run's config, the epoch and metrics, the data and
    the fine-tuning parent (``parent_record``, None from scratch) it trained from, the ranks'
    global batch and learning rate and, when fine-tuning, what was frozen."""

    output_dir: Path
    config: RunConfig
    data: TrainingData
    model: DEMSRNet
    scaling: ElevationScaling
    world_size: int
    learning_rate: float  # at the start of the run, after learning_rate_scaling
    parent_record: dict[str, Any] | None
    frozen_prefixes: list[str]
    frozen_parameters: int

    def metadata(self, epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
        """The metadata of a checkpoint written after epoch ``epoch`` with ``metrics``."""
        metadata: dict[str, Any] = {
            "training": self.config.to_dict(),
            "epoch": epoch,
            "metrics": metrics,
            "provenance": {
                "data": self.data.record(self.config),
                "parent": self.parent_record,
            },
            "distributed": {
                "world_size": self.world_size,
                "global_batch_size": self.config.data.batch_size * self.world_size,
                "effective_learning_rate": self.learning_rate,
            },
        }
        if self.parent_record is not None:
            metadata["frozen"] = {
                "prefixes": self.frozen_prefixes,
                "parameters": self.frozen_parameters,
            }
        return metadata

    def write_config(self) -> None:
        with atomic_path(self.output_dir / "config.yaml") as tmp:
            tmp.write_text(self.config.to_yaml())

    def save_epoch(
        self,
        record: EpochRecord,
        metrics: dict[str, float],
        save_last: bool,
        state: TrainingState,
    ) -> None:
        """The files after an epoch: the metrics row, best.safetensors if it is the best epoch,
        last.safetensors if ``save_last``."""
        out = self.output_dir
        # The row first: a crash before last.safetensors lands makes --resume redo (and
        # rewrite) it; a crash after, keeps it.
        append_metrics_row(out / METRICS, record)
        metadata = self.metadata(record.epoch, metrics)
        if record.is_best:
            save_checkpoint(out / BEST, self.model, self.scaling, metadata)
        if save_last:
            save_checkpoint(out / LAST, self.model, self.scaling, metadata, state)

    def save_mid_epoch(self, metrics: dict[str, float], state: TrainingState) -> Path:
        """last.safetensors ``state.epoch_steps`` steps into the epoch after ``state.epoch``,
        with the ``metrics`` of that finished epoch; returns its path."""
        metadata = self.metadata(state.epoch, metrics)
        metadata["epoch_steps"] = state.epoch_steps
        save_checkpoint(self.output_dir / LAST, self.model, self.scaling, metadata, state)
        return self.output_dir / LAST


def load_resume_state(
    last: Path,
    config: RunConfig,
    model_config: ModelConfig,
    scaling: ElevationScaling,
    parent_record: dict[str, Any] | None,
    ranks: RankContext,
) -> tuple[Checkpoint, TrainingState]:
    """The checkpoint and training state to resume from, once checked against this run
    (``config``, the model built for it, the fine-tuning ``parent_record`` or None, ``ranks``):
    the same starting point, model, settings and (where learning_rate_scaling ties the
    learning rate to it) world size."""
    cfg = config
    if not last.exists():
        raise FileNotFoundError(f"{last}: nothing to resume from")
    checkpoint = load_checkpoint(last)
    stored_parent = checkpoint.metadata.get("provenance", {}).get("parent")
    check_same_parent(last, stored_parent, parent_record)
    if (checkpoint.model_config, checkpoint.scaling) != (model_config, scaling):
        raise ValueError(f"{last}: model config differs from this run's config")
    # A run recorded under the old key names (config_keys.RENAMED_KEYS) resumes under the new ones.
    recorded = upgrade_config_dict(checkpoint.metadata.get("training", {}))
    changed = changed_settings(recorded, cfg.to_dict())
    if changed:
        raise ValueError(
            f"{last}: cannot resume with different settings ({', '.join(changed)}); "
            "only the epoch and step limits may change"
        )
    stored_world = int(checkpoint.metadata.get("distributed", {}).get("world_size", 1))
    if stored_world != ranks.world_size:
        if cfg.optimizer.learning_rate_scaling != "none":
            raise ValueError(
                f"{last}: this run trained on {stored_world} rank(s); resume it on as many, "
                f"not {ranks.world_size} (optimizer.learning_rate_scaling="
                f"{cfg.optimizer.learning_rate_scaling} ties its learning rate to their number)"
            )
        if ranks.is_main:
            batch = cfg.data.batch_size
            log.warning(
                "%s: this run trained on %d rank(s) and resumes on %d: its global batch "
                "changes from %d to %d pairs (and the run from what an uninterrupted one "
                "would do)",
                last,
                stored_world,
                ranks.world_size,
                batch * stored_world,
                batch * ranks.world_size,
            )
    return checkpoint, load_training_state(last)


def check_same_parent(
    last: Path, stored: dict[str, Any] | None, current: dict[str, Any] | None
) -> None:
    """Refuse to resume a run from another starting point than the one it began from:
    ``stored`` is the parent record in its checkpoint ``last``, ``current`` this run's (None:
    from scratch)."""
    stored_sha = stored.get("sha256") if stored else None
    current_sha = current["sha256"] if current else None
    if stored_sha == current_sha:
        return
    if stored is None:
        raise ValueError(
            f"{last}: this run trained from scratch; it cannot be resumed as a fine-tuning "
            "run (use demsr train --resume)"
        )
    if current is None:
        raise ValueError(
            f"{last}: this run fine-tunes {stored.get('path')}; resume it with "
            "demsr finetune PARENT --resume"
        )
    raise ValueError(
        f"{last}: this run fine-tunes a different parent ({stored.get('path')}, sha256 "
        f"{str(stored_sha)[:12]}) than {current['path']} (sha256 {str(current_sha)[:12]})"
    )


def restore_training(
    checkpoint: Checkpoint,
    state: TrainingState,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> None:
    """Put a checkpoint's weights and its optimizer, scheduler and RNG states back, so that
    the run continues as if it had not stopped."""
    model.load_state_dict(checkpoint.state_dict)
    optimizer.load_state_dict(state.optimizer)
    match_parameter_layouts(optimizer)
    scheduler.load_state_dict(state.scheduler)
    restore_rng_state(state.rng["tensors"], state.rng["extra"])
