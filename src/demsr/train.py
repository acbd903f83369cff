"""Training: MSE on normalised elevations, Adam with exponential learning-rate decay, early stopping
on the validation loss, a checkpoint every epoch and at the best validation loss, exact resume.

Two ways to start (:class:`Trainer`): ``fit`` trains the network of ``config.model`` from its
initialisation; ``finetune`` starts from a trained checkpoint (its model config, elevation scaling
and weights), freezes some of its layers (``freeze_parameters``, by module name) and trains the
rest at ``optimizer.finetune_lr``, recording the parent checkpoint in the new checkpoints'
provenance. Both share the loop, the run folder and ``--resume``.

Run folder (``summary.output_dir``)::

    config.yaml        the resolved run config
    metrics.csv        one row per epoch: losses, validation RMSE in metres, learning rate, time
    last.safetensors   weights + optimizer/scheduler/RNG state (what --resume loads)
    best.safetensors   weights at the best validation loss (what predict/evaluate use)

Shuffling and augmentation draw from a generator seeded by (seed, epoch), so a resumed run sees
the same batches as an uninterrupted one.

Callbacks (:class:`TrainerCallback`) let a script or notebook follow a run (log, plot, collect
the epochs' :class:`EpochRecord`) without touching the loop.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from demsr.checkpoint import (
    Checkpoint,
    TrainingState,
    checkpoint_sha256,
    load_checkpoint,
    load_training_state,
    restore_rng_state,
    save_checkpoint,
)
from demsr.config import ModelSection, RunConfig
from demsr.datasets import Normalisation, PairDataset
from demsr.io import atomic_path, remove_stale_temporaries
from demsr.model import (
    INIT_SCHEMES,
    DEMSRNet,
    SuperResolver,
    count_parameters,
    freeze_preset_prefixes,
    init_as_interpolation,
    init_as_residual,
    network_autocast,
    resolve_device,
    resolve_precision,
    to_channels_last,
)

log = logging.getLogger(__name__)

LAST = "last.safetensors"
BEST = "best.safetensors"
METRICS = "metrics.csv"
METRIC_FIELDS = [
    "epoch",
    "global_step",
    "train_loss",
    "valid_loss",
    "valid_rmse_m",
    "learning_rate",
    "epoch_seconds",
    "is_best",
]


@dataclass
class TrainResult:
    """How a run ended: the last epoch and step, the best validation loss (normalised MSE) and
    RMSE (metres), and whether early stopping ended it; ``output_dir`` holds its files."""

    output_dir: Path
    epochs_run: int
    global_step: int
    best_valid_loss: float
    best_valid_rmse_m: float
    stopped_early: bool


@dataclass(frozen=True)
class EpochRecord:
    """One finished epoch, as written to ``metrics.csv`` (one row per epoch).

    Losses are mean squared errors of elevations divided by the model's ``elevation_scale_m``;
    ``valid_rmse_m`` is the validation RMSE in metres; ``learning_rate`` is the rate the epoch
    trained at; ``is_best`` says that ``best.safetensors`` was written after it.
    """

    epoch: int
    global_step: int
    train_loss: float
    valid_loss: float
    valid_rmse_m: float
    learning_rate: float
    epoch_seconds: float
    is_best: bool

    def csv_row(self) -> dict[str, Any]:
        """The record as a ``metrics.csv`` row (columns :data:`METRIC_FIELDS`, formatted)."""
        return {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "train_loss": f"{self.train_loss:.6e}",
            "valid_loss": f"{self.valid_loss:.6e}",
            "valid_rmse_m": f"{self.valid_rmse_m:.4f}",
            "learning_rate": f"{self.learning_rate:.6e}",
            "epoch_seconds": f"{self.epoch_seconds:.2f}",
            "is_best": int(self.is_best),
        }


class TrainerCallback:
    """Hooks a :class:`Trainer` calls as it runs; subclass it and override the ones you need
    (each does nothing here).

    The trainer passes itself: ``trainer.model`` (the network being trained), ``trainer.config``,
    ``trainer.output_dir``, ``trainer.train_set`` / ``trainer.valid_set`` are there to read.
    A callback that raises stops the run (the checkpoints already written stay valid, and
    ``resume=True`` continues from the last one).
    """

    def on_train_start(self, trainer: Trainer) -> None:
        """The network is built (and its layers frozen when fine-tuning); no step has run."""

    def on_step_end(self, trainer: Trainer, global_step: int, loss: float) -> None:
        """After each optimizer step: the step's number (from 1, counting over the whole run)
        and its training loss (normalised MSE of that batch)."""

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        """After each epoch's validation and checkpoints, with what ``metrics.csv`` records."""

    def on_train_end(self, trainer: Trainer, result: TrainResult) -> None:
        """When the run ends normally (epochs or steps done, or early stopping)."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator for one epoch's shuffling and augmentation (depends on nothing else)."""
    generator = torch.Generator()
    generator.manual_seed(seed * 1_000_003 + epoch)
    return generator


def match_parameter_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each optimizer state tensor its parameter's memory layout (checkpoints store them
    contiguous; the parameters may be channels-last). The fused Adam kernel walks a parameter
    and its moments in memory order, so their layouts must agree."""
    for parameter, state in optimizer.state.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.shape == parameter.shape:
                state[key] = torch.empty_like(parameter, dtype=value.dtype).copy_(value)


# Settings that may change when a run is resumed (limits, paths, where it runs); any other change
# would make the resumed run differ from an uninterrupted one.
RESUMABLE_CHANGES = {
    ("train", "epochs"),
    ("train", "max_steps"),
    ("train", "device"),
    ("data", "num_workers"),
    ("data", "root_dir"),
    ("summary", "output_dir"),
    ("summary", "log_every_steps"),
    # The parent checkpoint may move; its identity is checked by its SHA-256 instead.
    ("finetune", "parent"),
}


def _changed_settings(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``section.key`` names whose values differ between two run configs (as dicts)."""
    changed = []
    for section, values in current.items():
        for key, value in values.items():
            if (section, key) in RESUMABLE_CHANGES:
                continue
            if stored.get(section, {}).get(key, value) != value:
                changed.append(f"{section}.{key}")
    return changed


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


class Trainer:
    """Fits a DEM-SRNet to the pairs under ``config.data.root_dir``.

    ``fit`` trains ``config.model`` from its initialisation; ``finetune`` continues a trained
    checkpoint with some layers frozen. The network is built when either starts. ``progress``
    shows a progress bar per epoch; ``callbacks`` (:class:`TrainerCallback`) are called, in
    order, at the start and end of the run, after each step and after each epoch.
    """

    model: DEMSRNet
    resolver: SuperResolver

    def __init__(
        self,
        config: RunConfig,
        progress: bool = True,
        callbacks: Sequence[TrainerCallback] = (),
    ) -> None:
        config.validate()
        self.config = config
        self.progress = progress
        self.callbacks = list(callbacks)
        self.output_dir = Path(config.summary.output_dir)
        self.device = resolve_device(config.train.device)
        # auto: bf16 mixed precision on CUDA; float32 on the CPU, even one with native bf16
        # (training there in bf16 is opt-in: it changes the numerics of a reproducible run).
        self.precision = resolve_precision(config.train.precision, self.device, cpu_bf16=False)
        root = Path(config.data.root_dir)
        self.train_set = PairDataset(root / "train" / "train.h5", augment=config.data.augment)
        self.valid_set = PairDataset(root / "valid" / "valid.h5")
        # The pair files store elevations in their own units; the model sees metres through
        # its elevation scaling.
        self.storage: Normalisation = self.train_set.normalisation
        self._check_data()
        # Set by finetune: provenance of the parent checkpoint, and what stays frozen.
        self.parent_record: dict[str, Any] | None = None
        self.frozen_prefixes: list[str] = []
        self.frozen_parameters = 0  # counted when the loop starts

    def _check_data(self) -> None:
        for name, dataset in (("train", self.train_set), ("valid", self.valid_set)):
            if len(dataset) == 0:
                raise ValueError(f"{dataset.path}: the {name} split holds no pairs")
        if self.valid_set.normalisation != self.storage:
            raise ValueError("train and valid files use different normalisations")
        if self.train_set.units != "m":
            log.warning(
                "%s does not say how its values map to metres; errors are reported in its units",
                self.train_set.path,
            )
        patch = self.config.data.patch_size
        if patch is not None and self.train_set.lowres_patch_px != patch:
            raise ValueError(
                f"data.patch_size is {patch} but {self.train_set.path} holds "
                f"{self.train_set.lowres_patch_px}-pixel low-res patches"
            )

    def _use_model(self, parent: Checkpoint | None) -> None:
        """Build the network: ``config.model`` initialised per ``model.init``, or the parent's
        model config, elevation scaling and weights."""
        if parent is None:
            self.model_config, self.scaling = self.config.model.build(), self.config.model.scaling()
        else:
            self.model_config, self.scaling = parent.model_config, parent.scaling
        for dataset in (self.train_set, self.valid_set):
            if dataset.scale != self.model_config.scale:
                where = "the parent checkpoint" if parent is not None else "set model.scale"
                raise ValueError(
                    f"{dataset.path}: pairs are x{dataset.scale} but the model is "
                    f"x{self.model_config.scale} ({where})"
                )
        seed_everything(self.config.train.seed)  # the initial weights depend on the seed only
        if parent is None:
            net = DEMSRNet(self.model_config)
            if self.config.model.init == "interpolation":
                init_as_interpolation(net)
            elif self.config.model.init == "residual":
                init_as_residual(net)
        else:
            net = parent.build_model()
        self.model = net.to(self.device)
        to_channels_last(self.model)
        self.resolver = SuperResolver(self.model, self.scaling)

    # -- state ---------------------------------------------------------------------------

    def _metadata(self, epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "training": self.config.to_dict(),
            "epoch": epoch,
            "metrics": metrics,
            "provenance": {
                "data": {
                    "root_dir": str(self.config.data.root_dir),
                    "train_sources": self.train_set.source_files,
                    "train_pairs": len(self.train_set),
                    "valid_pairs": len(self.valid_set),
                },
                "parent": self.parent_record,
            },
        }
        if self.parent_record is not None:
            metadata["frozen"] = {
                "prefixes": self.frozen_prefixes,
                "parameters": self.frozen_parameters,
            }
        return metadata

    def _write_metrics_row(self, record: EpochRecord) -> None:
        path = self.output_dir / METRICS
        new = not path.exists()
        with open(path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(record.csv_row())

    def _truncate_metrics(self, last_epoch: int) -> None:
        """Drop rows of epochs after the checkpoint we resume from (they will be redone)."""
        path = self.output_dir / METRICS
        if not path.exists():
            return
        with open(path, newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if int(r["epoch"]) <= last_epoch]
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    # -- loops ---------------------------------------------------------------------------

    def _batches(self, dataset: PairDataset, generator: torch.Generator | None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.config.data.batch_size,
            shuffle=generator is not None,
            generator=generator,
            num_workers=self.config.data.num_workers,
            pin_memory=self.device.type == "cuda",
            drop_last=False,
        )

    def _loss(self, lowres: torch.Tensor, highres: torch.Tensor) -> torch.Tensor:
        """Mean squared error in units of ``elevation_scale_m`` for a batch of stored pairs."""
        lowres_m = self.storage.denormalise(lowres.to(self.device, non_blocking=True))
        highres_m = self.storage.denormalise(highres.to(self.device, non_blocking=True))
        with network_autocast(self.device, self.precision):
            prediction_m = self.resolver(lowres_m)
        return F.mse_loss(prediction_m / self.scaling.scale_m, highres_m / self.scaling.scale_m)

    @torch.no_grad()
    def validate(self) -> tuple[float, float]:
        """Validation loss (as the training loss) and RMSE in metres over all valid pairs."""
        self.model.eval()
        total, count = 0.0, 0
        for lowres, highres in self._batches(self.valid_set, None):
            total += self._loss(lowres, highres).item() * highres.numel()
            count += highres.numel()
        mse = total / count
        return mse, math.sqrt(mse) * self.scaling.scale_m

    def _train_epoch(
        self, epoch: int, optimizer: torch.optim.Optimizer, global_step: int
    ) -> tuple[float, int]:
        self.model.train()
        cfg = self.config
        loader = self._batches(self.train_set, epoch_generator(cfg.train.seed, epoch))
        self.train_set.generator = epoch_generator(cfg.train.seed + 1, epoch)  # augmentation
        steps = len(loader)
        if cfg.train.max_steps_per_epoch is not None:
            steps = min(steps, cfg.train.max_steps_per_epoch)
        if cfg.train.max_steps is not None:
            steps = min(steps, max(cfg.train.max_steps - global_step, 0))
        total_loss, done = 0.0, 0
        bar = tqdm(
            total=steps, desc=f"epoch {epoch}", unit="step", disable=not self.progress, leave=False
        )
        batches: Iterator[tuple[torch.Tensor, torch.Tensor]] = iter(loader)
        for _ in range(steps):
            loss = self._loss(*next(batches))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            global_step += 1
            done += 1
            step_loss = loss.item()
            total_loss += step_loss
            bar.update(1)
            for callback in self.callbacks:
                callback.on_step_end(self, global_step, step_loss)
            if global_step % cfg.summary.log_every_steps == 0:
                bar.set_postfix(loss=f"{total_loss / done:.3e}")
                log.debug("step %d loss %.4e", global_step, loss.item())
        bar.close()
        return (total_loss / done if done else float("nan")), global_step

    def fit(self, resume: bool = False) -> TrainResult:
        """Train ``config.model`` from its initialisation at ``optimizer.learning_rate``.

        With ``config.finetune.parent`` set this is :meth:`finetune` with the config's settings.
        ``resume`` continues the run in ``summary.output_dir`` exactly.
        """
        if self.config.finetune.parent is not None:
            return self.finetune(resume=resume)
        self._use_model(None)
        return self._run(resume)

    def finetune(
        self,
        parent: str | os.PathLike[str] | None = None,
        *,
        freeze: str | None = None,
        freeze_blocks: int | None = None,
        freeze_prefixes: Sequence[str] | None = None,
        resume: bool = False,
    ) -> TrainResult:
        """Fine-tune the checkpoint ``parent`` on this trainer's pairs with some layers frozen.

        The model config, elevation scaling and starting weights are the parent's (the config's
        model section is replaced by the parent's); the learning rate is
        ``optimizer.finetune_lr``. ``freeze`` is a preset of ``demsr.model.FREEZE_PRESETS``
        (``default``: conv1 and the first ``freeze_blocks`` residual blocks, half of them when
        None; ``none``; ``all-but-tail``: all but conv_up and conv_out), and ``freeze_prefixes``
        adds module names to it (see :func:`freeze_parameters`). Arguments left None take the
        values of ``config.finetune``; the values used are stored there, so ``config.yaml`` and
        the checkpoints record them. The new checkpoints' ``provenance.parent`` holds the
        parent's path, SHA-256, epoch, metrics, provenance and its validation RMSE on these pairs.
        ``resume`` continues the run in ``summary.output_dir`` and refuses another parent (by
        SHA-256) or other freeze settings.
        """
        settings = self.config.finetune
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
        self.config.validate()
        checkpoint = load_checkpoint(settings.parent)
        # The parent's own init, for the record (fine-tuning starts from its weights).
        parent_init = checkpoint.metadata.get("training", {}).get("model", {}).get("init")
        described = ModelSection.describing(
            checkpoint.model_config,
            checkpoint.scaling,
            init=parent_init if parent_init in INIT_SCHEMES else self.config.model.init,
        )
        asked = (self.config.model.build(), self.config.model.scaling())
        if self.config.model != ModelSection() and asked != (
            checkpoint.model_config,
            checkpoint.scaling,
        ):
            log.warning(
                "the config's model section is ignored: the model and its elevation scaling "
                "come from %s (%s)",
                settings.parent,
                checkpoint.model_config,
            )
        self.config.model = described
        self._use_model(checkpoint)
        self.frozen_prefixes = [
            *freeze_preset_prefixes(self.model_config, settings.freeze, settings.freeze_blocks),
            *settings.freeze_prefixes,
        ]
        freeze_parameters(self.model, self.frozen_prefixes)
        if count_parameters(self.model, trainable_only=True) == 0:
            raise ValueError(
                f"every parameter is frozen ({', '.join(self.frozen_prefixes)}): nothing to "
                "fine-tune"
            )
        self.parent_record = {
            "path": str(Path(settings.parent).resolve()),
            "sha256": checkpoint_sha256(checkpoint),
            "epoch": checkpoint.metadata.get("epoch"),
            "metrics": checkpoint.metadata.get("metrics"),
            "provenance": checkpoint.metadata.get("provenance"),
            "valid_rmse_m": None,  # the parent's, on this run's validation pairs
        }
        return self._run(resume)

    def _run(self, resume: bool) -> TrainResult:
        """The training loop shared by fit and finetune (the model is built), between the
        callbacks' ``on_train_start`` and ``on_train_end``."""
        for callback in self.callbacks:
            callback.on_train_start(self)
        result = self._loop(resume)
        for callback in self.callbacks:
            callback.on_train_end(self, result)
        return result

    def _loop(self, resume: bool) -> TrainResult:
        cfg = self.config
        out = self.output_dir
        # The fine-tuning record, None when training from scratch (a local: the type checker
        # narrows it).
        parent = self.parent_record
        learning_rate_key = "finetune_lr" if parent is not None else "learning_rate"
        out.mkdir(parents=True, exist_ok=True)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        trainable_count = count_parameters(self.model, trainable_only=True)
        self.frozen_parameters = count_parameters(self.model) - trainable_count
        optimizer = torch.optim.Adam(
            trainable,
            lr=getattr(cfg.optimizer, learning_rate_key),
            eps=cfg.optimizer.eps,
            weight_decay=cfg.optimizer.weight_decay,
            fused=True,  # one kernel per parameter group instead of several per tensor
        )
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.optimizer.lr_decay)
        start_epoch, global_step = 1, 0
        best_loss, best_rmse, bad_epochs = math.inf, math.inf, 0
        if resume:
            last = out / LAST
            if not last.exists():
                raise FileNotFoundError(f"{last}: nothing to resume from")
            checkpoint = load_checkpoint(last)
            stored_parent = checkpoint.metadata.get("provenance", {}).get("parent")
            self._check_same_parent(last, stored_parent)
            if (checkpoint.model_config, checkpoint.scaling) != (self.model_config, self.scaling):
                raise ValueError(f"{last}: model config differs from this run's config")
            changed = _changed_settings(checkpoint.metadata.get("training", {}), cfg.to_dict())
            if changed:
                raise ValueError(
                    f"{last}: cannot resume with different settings ({', '.join(changed)}); "
                    "only the epoch and step limits may change"
                )
            if parent is not None and stored_parent is not None:
                parent["valid_rmse_m"] = stored_parent.get("valid_rmse_m")
            state = load_training_state(last)
            best_rmse = float(
                checkpoint.metadata.get("metrics", {}).get("best_valid_rmse_m", math.inf)
            )
            remove_stale_temporaries(*(out / name for name in (LAST, BEST, METRICS, "config.yaml")))
            if state.bad_epochs >= cfg.train.patience:
                log.info("%s stopped early after epoch %d; nothing to resume", out, state.epoch)
                return TrainResult(
                    out,
                    state.epoch,
                    state.global_step,
                    state.best_valid_loss,
                    best_rmse,
                    stopped_early=True,
                )
            self.model.load_state_dict(checkpoint.state_dict)
            optimizer.load_state_dict(state.optimizer)
            match_parameter_layouts(optimizer)
            scheduler.load_state_dict(state.scheduler)
            restore_rng_state(state.rng["tensors"], state.rng["extra"])
            start_epoch, global_step = state.epoch + 1, state.global_step
            best_loss, bad_epochs = state.best_valid_loss, state.bad_epochs
            self._truncate_metrics(state.epoch)
            log.info("resuming %s after epoch %d (step %d)", out, state.epoch, global_step)
        else:
            if (out / LAST).exists():
                raise FileExistsError(
                    f"{out} already holds a training run; use --resume to continue it "
                    "or choose another output folder"
                )
            (out / METRICS).unlink(missing_ok=True)
            if parent is not None:
                _, parent_rmse = self.validate()
                parent["valid_rmse_m"] = parent_rmse
                log.info(
                    "parent %s: validation RMSE %.2f m on these pairs before fine-tuning",
                    cfg.finetune.parent,
                    parent_rmse,
                )
        with atomic_path(out / "config.yaml") as tmp:
            tmp.write_text(cfg.to_yaml())
        if parent is not None:
            log.info(
                "fine-tuning %s with %s frozen, at learning rate %.2e",
                cfg.finetune.parent,
                ", ".join(self.frozen_prefixes) or "nothing",
                optimizer.param_groups[0]["lr"],
            )
        log.info(
            "training %s on %s (%s): %d trainable, %d frozen parameters; %d train / %d valid "
            "pairs; batch %d",
            self.model_config,
            self.device,
            self.precision,
            trainable_count,
            self.frozen_parameters,
            len(self.train_set),
            len(self.valid_set),
            cfg.data.batch_size,
        )
        stopped_early, epoch = False, start_epoch - 1
        for epoch in range(start_epoch, cfg.train.epochs + 1):
            if cfg.train.max_steps is not None and global_step >= cfg.train.max_steps:
                epoch -= 1
                break
            started = time.perf_counter()
            learning_rate = optimizer.param_groups[0]["lr"]
            train_loss, global_step = self._train_epoch(epoch, optimizer, global_step)
            scheduler.step()
            valid_loss, valid_rmse = self.validate()
            if not math.isfinite(valid_loss):
                raise RuntimeError(
                    f"epoch {epoch}: the validation loss is {valid_loss} (training diverged); "
                    f"lower optimizer.{learning_rate_key}"
                )
            is_best = valid_loss < best_loss
            if is_best:
                best_loss, best_rmse, bad_epochs = valid_loss, valid_rmse, 0
            else:
                bad_epochs += 1
            seconds = time.perf_counter() - started
            metrics = {
                "train_loss": train_loss,
                "valid_loss": valid_loss,
                "valid_rmse_m": valid_rmse,
                "best_valid_loss": best_loss,
                "best_valid_rmse_m": best_rmse,
            }
            record = EpochRecord(
                epoch=epoch,
                global_step=global_step,
                train_loss=train_loss,
                valid_loss=valid_loss,
                valid_rmse_m=valid_rmse,
                learning_rate=learning_rate,
                epoch_seconds=seconds,
                is_best=is_best,
            )
            # The row first: a crash before last.safetensors lands makes --resume redo (and
            # rewrite) it; a crash after, keeps it.
            self._write_metrics_row(record)
            if is_best:
                save_checkpoint(
                    out / BEST, self.model, self.scaling, self._metadata(epoch, metrics)
                )
            last_epoch = (
                epoch == cfg.train.epochs
                or bad_epochs >= cfg.train.patience
                or (cfg.train.max_steps is not None and global_step >= cfg.train.max_steps)
            )
            if epoch % cfg.summary.save_checkpoint_epochs == 0 or last_epoch:
                save_checkpoint(
                    out / LAST,
                    self.model,
                    self.scaling,
                    self._metadata(epoch, metrics),
                    TrainingState(
                        optimizer.state_dict(),
                        scheduler.state_dict(),
                        epoch,
                        global_step,
                        best_loss,
                        bad_epochs,
                    ),
                )
            log.info(
                "epoch %d: train loss %.3e, valid RMSE %.2f m (best %.2f m), lr %.2e, %.1f s",
                epoch,
                train_loss,
                valid_rmse,
                best_rmse,
                learning_rate,
                seconds,
            )
            for callback in self.callbacks:
                callback.on_epoch_end(self, record)
            if bad_epochs >= cfg.train.patience:
                log.info("early stopping: no improvement for %d epochs", bad_epochs)
                stopped_early = True
                break
        return TrainResult(out, epoch, global_step, best_loss, best_rmse, stopped_early)

    def _check_same_parent(self, last: Path, stored: dict[str, Any] | None) -> None:
        """Refuse to resume a run from another starting point than the one it began from."""
        stored_sha = stored.get("sha256") if stored else None
        current = self.parent_record
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
