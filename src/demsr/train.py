"""Training: MSE on normalised elevations, Adam with exponential learning-rate decay, early stopping
on the validation loss, a checkpoint every epoch and at the best validation loss, exact resume.
Kept whole: what is left is one job, :class:`Trainer` running a fit or fine-tune from its setup
through the epoch loop, whose steps share one run's state; each piece it calls has its own module.

Two ways to start (:class:`Trainer`): ``fit`` trains the network of ``config.model`` from its
initialisation; ``finetune`` starts from a trained checkpoint (its model config, elevation scaling
and weights), freezes some of its layers (``freeze_parameters``, by module name) and trains the
rest at ``optimizer.finetune_learning_rate``, recording the parent checkpoint in the new
checkpoints' provenance. Both share the loop, the run folder and ``--resume``.

The pieces: the pairs (pair files or raster windows) in :mod:`demsr.training_data`; Adam, its
schedule and the learning rate's scaling in :mod:`demsr.optimizer`; the loss, an epoch's steps
and the validation pass in :mod:`demsr.epochs`; what the run writes as it goes (checkpoints, their
metadata, the mid-epoch timer) and the checks and restored states of ``--resume`` in
:mod:`demsr.run_state`; the run folder's names and ``metrics.csv`` schema in
:mod:`demsr.run_folder`; the parent's model
and the freezing of layers in :mod:`demsr.finetuning`; the hooks in :mod:`demsr.callbacks`.
Shuffling and augmentation draw from (seed, epoch[, index]) and ``train.checkpoint_every_s``
writes ``last.safetensors`` mid-epoch, so ``--resume`` continues with the same weights,
optimizer state and batches as an uninterrupted run.

Under ``torchrun`` each process trains one rank of a DistributedDataParallel run (NCCL on GPUs,
gloo on the CPU; see :mod:`demsr.distributed`). ``data.batch_size`` is per rank: the ranks share
each epoch's shuffled order (:class:`~demsr.datasets.ShuffledShardSampler`), so N ranks with
batches of b train on the same global batches as one process with batches of N*b (up to the at
most N-1 pairs an epoch leaves out so that the ranks get equal shares), and
``optimizer.learning_rate_scaling`` may scale the learning rate with N. Each rank validates its
share of the valid pairs and the sums are added, so all ranks take the same early-stopping
decision. Rank 0 alone logs progress and writes the run folder, which multi-node runs must keep
on a shared filesystem (every rank reads ``last.safetensors`` on ``--resume``).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from demsr import distributed
from demsr.callbacks import TrainerCallback
from demsr.checkpoint import Checkpoint, TrainingState, load_checkpoint
from demsr.config import RunConfig
from demsr.datasets import (
    LowresMaker,
    PairDataset,
    RasterWindowDataset,
)
from demsr.epochs import PairLoss, train_epoch, validation_loss
from demsr.finetuning import (
    freeze_for_finetuning,
    freeze_parameters,
    parent_model_section,
    parent_record,
    update_finetune_settings,
)
from demsr.io import remove_stale_temporaries
from demsr.model import (
    DEMSRNet,
    SuperResolver,
    count_parameters,
    init_as_interpolation,
    init_as_residual,
    resolve_device,
    resolve_precision,
    to_channels_last,
)
from demsr.optimizer import describe_batch, make_optimizer, scaled_learning_rate, seed_everything
from demsr.run_folder import (
    BEST,
    LAST,
    METRIC_FIELDS,
    METRICS,
    EpochRecord,
    TrainResult,
    truncate_metrics,
)
from demsr.run_state import CheckpointTimer, RunWriter, load_resume_state, restore_training
from demsr.training_data import load_training_data

log = logging.getLogger(__name__)

# The run folder's names and records and freeze_parameters live in demsr.run_folder and
# demsr.finetuning; they stay importable from here.
__all__ = [
    "BEST",
    "LAST",
    "METRICS",
    "METRIC_FIELDS",
    "EpochRecord",
    "Trainer",
    "TrainerCallback",
    "TrainResult",
    "freeze_parameters",
]


class Trainer:
    """Fits a DEM-SRNet to the pairs under ``config.data.root_dir``.

    ``fit`` trains ``config.model`` from its initialisation; ``finetune`` continues a trained
    checkpoint with some layers frozen. The network is built when either starts. ``progress``
    shows a progress bar per epoch; ``callbacks`` (:class:`TrainerCallback`) are called, in
    order, at the start and end of the run, after each step and after each epoch.

    Started by torchrun (``RANK``, ``WORLD_SIZE``, ... in the environment), ``fit`` and
    ``finetune`` join the ranks' process group (unless the caller already has) and train with
    DistributedDataParallel on this rank's device (``cuda:LOCAL_RANK`` for ``train.device``
    auto or cuda); see the module's docstring.
    """

    model: DEMSRNet
    resolver: SuperResolver
    learning_rate: float  # at the start of the run, after learning_rate_scaling
    timer: CheckpointTimer  # of the mid-epoch checkpoints, made when the loop starts

    def __init__(
        self,
        config: RunConfig,
        progress: bool = True,
        callbacks: Sequence[TrainerCallback] = (),
        alternative_lowres: LowresMaker | None = None,
    ) -> None:
        """``alternative_lowres`` makes the low-res inputs of windows drawn from rasters with
        probability ``data.degradation_probability`` (e.g. a degradation fitted on real
        products); the others are exact block means."""
        config.validate()
        self.config = config
        self.progress = progress
        self.callbacks = list(callbacks)
        self.output_dir = Path(config.summary.output_dir)
        self.ranks = distributed.context()
        self.device = resolve_device(distributed.rank_device(config.train.device, self.ranks))
        # auto: bf16 mixed precision on CUDA; float32 on the CPU, even one with native bf16
        # (training there in bf16 is opt-in: it changes the numerics of a reproducible run).
        self.precision = resolve_precision(config.train.precision, self.device, cpu_bf16=False)
        self.data = load_training_data(config, self.ranks, alternative_lowres)
        self.train_set: PairDataset | RasterWindowDataset = self.data.train_set
        self.valid_set: PairDataset | RasterWindowDataset = self.data.valid_set
        # Set by finetune: provenance of the parent checkpoint, and what stays frozen.
        self.parent_record: dict[str, Any] | None = None
        self.frozen_prefixes: list[str] = []
        self.frozen_parameters = 0  # counted when the loop starts
        self._metrics: dict[str, float] = {}  # of the last finished epoch

    @property
    def rank(self) -> int:
        """This process's rank under torchrun (0 when alone)."""
        return self.ranks.rank

    @property
    def world_size(self) -> int:
        """The number of ranks training together (1 when alone)."""
        return self.ranks.world_size

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs progress and writes the run folder."""
        return self.ranks.is_main

    def _info(self, message: str, *args: Any) -> None:
        """Log at INFO on rank 0; the other ranks, which would repeat it, at DEBUG."""
        log.log(logging.INFO if self.is_main else logging.DEBUG, message, *args)

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
        self.loss = PairLoss(
            self.data.storage,  # the pairs' units; the model sees metres through its scaling
            self.scaling,
            self.device,
            self.precision,
            self.config.train.gradient_loss_weight,
        )

    # -- loops ---------------------------------------------------------------------------

    def _on_step(self, global_step: int, loss: float) -> None:
        for callback in self.callbacks:
            callback.on_step_end(self, global_step, loss)

    def validate(self) -> tuple[float, float]:
        """Validation loss (the training loss's MSE, without its slope term) and RMSE in
        metres over all valid pairs (:func:`~demsr.epochs.validation_loss`; under torchrun,
        inside a run, every rank calls it and all get the same values)."""
        return validation_loss(
            self.model, self.resolver, self.valid_set, self.loss, self.config.data, self.ranks
        )

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
        ``optimizer.finetune_learning_rate``. ``freeze`` is a preset of
        ``demsr.model.FREEZE_PRESETS`` (``default``: conv1 and the first ``freeze_blocks``
        residual blocks, half of them when None; ``none``; ``all-but-tail``: all but conv_up and
        conv_out), and ``freeze_prefixes`` adds module names to it (see
        :func:`freeze_parameters`). Arguments left None take the values of ``config.finetune``;
        the values used are stored there, so ``config.yaml`` and the checkpoints record them.
        The new checkpoints' ``provenance.parent`` holds the parent's path, SHA-256, epoch,
        metrics, provenance and its validation RMSE on these pairs. ``resume`` continues the run
        in ``summary.output_dir`` and refuses another parent (by SHA-256) or other freeze
        settings.
        """
        settings = self.config.finetune
        update_finetune_settings(settings, parent, freeze, freeze_blocks, freeze_prefixes)
        assert settings.parent is not None  # checked there
        self.config.validate()
        checkpoint = load_checkpoint(settings.parent)
        self.config.model = parent_model_section(self.config.model, checkpoint, settings.parent)
        self._use_model(checkpoint)
        self.frozen_prefixes = freeze_for_finetuning(self.model, self.model_config, settings)
        self.parent_record = parent_record(checkpoint, settings.parent)
        return self._run(resume)

    def _run(self, resume: bool) -> TrainResult:
        """The training loop shared by fit and finetune (the model is built), between the
        callbacks' ``on_train_start`` and ``on_train_end``."""
        with distributed.process_group(self.ranks, self.device):
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
        learning_rate_key = "finetune_learning_rate" if parent is not None else "learning_rate"
        out.mkdir(parents=True, exist_ok=True)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        trainable_count = count_parameters(self.model, trainable_only=True)
        self.frozen_parameters = count_parameters(self.model) - trainable_count
        self.learning_rate = scaled_learning_rate(
            getattr(cfg.optimizer, learning_rate_key),
            cfg.optimizer.learning_rate_scaling,
            self.world_size,
        )
        optimizer, scheduler = make_optimizer(trainable, self.learning_rate, cfg.optimizer)
        writer = RunWriter(
            out,
            cfg,
            self.data,
            self.model,
            self.scaling,
            self.world_size,
            self.learning_rate,
            parent,
            self.frozen_prefixes,
            self.frozen_parameters,
        )
        start_epoch, global_step = 1, 0
        skip_steps, skipped_loss_sum = 0, 0.0  # of a mid-epoch checkpoint
        best_loss, best_rmse, bad_epochs = math.inf, math.inf, 0
        # Every rank makes the same checks, and all stop if one fails, before rank 0 writes.
        resumed: tuple[Checkpoint, TrainingState] | None = None
        with distributed.agreed():
            if resume:
                resumed = load_resume_state(
                    out / LAST,
                    cfg,
                    self.model_config,
                    self.scaling,
                    self.parent_record,
                    self.ranks,
                )
            elif (out / LAST).exists():
                raise FileExistsError(
                    f"{out} already holds a training run; use --resume to continue it "
                    "or choose another output folder"
                )
        if resumed is not None:
            checkpoint, state = resumed
            stored_parent = checkpoint.metadata.get("provenance", {}).get("parent")
            if parent is not None and stored_parent is not None:
                parent["valid_rmse_m"] = stored_parent.get("valid_rmse_m")
            best_rmse = float(
                checkpoint.metadata.get("metrics", {}).get("best_valid_rmse_m", math.inf)
            )
            if self.is_main:
                remove_stale_temporaries(
                    *(out / name for name in (LAST, BEST, METRICS, "config.yaml"))
                )
            if state.bad_epochs >= cfg.train.patience:
                self._info("%s stopped early after epoch %d; nothing to resume", out, state.epoch)
                return TrainResult(
                    out,
                    state.epoch,
                    state.global_step,
                    state.best_valid_loss,
                    best_rmse,
                    stopped_early=True,
                )
            restore_training(checkpoint, state, self.model, optimizer, scheduler)
            start_epoch, global_step = state.epoch + 1, state.global_step
            skip_steps, skipped_loss_sum = state.epoch_steps, state.epoch_loss_sum
            best_loss, bad_epochs = state.best_valid_loss, state.bad_epochs
            self._metrics = dict(checkpoint.metadata.get("metrics", {}))
            if self.is_main:
                truncate_metrics(self.output_dir / METRICS, state.epoch)
            self._info(
                "resuming %s after epoch %d and %d steps of epoch %d (step %d)",
                out,
                state.epoch,
                skip_steps,
                state.epoch + 1,
                global_step,
            )
        else:
            if self.is_main:
                (out / METRICS).unlink(missing_ok=True)
            if parent is not None:
                _, parent_rmse = self.validate()
                parent["valid_rmse_m"] = parent_rmse
                self._info(
                    "parent %s: validation RMSE %.2f m on these pairs before fine-tuning",
                    cfg.finetune.parent,
                    parent_rmse,
                )
        if self.is_main:
            writer.write_config()
        # Training steps go through DDP, which averages the ranks' gradients (its constructor
        # gives every rank rank 0's weights); validation uses the resolver itself.
        network: nn.Module = self.resolver
        if self.ranks.distributed:
            network = DistributedDataParallel(
                self.resolver,
                device_ids=[self.device] if self.device.type == "cuda" else None,
            )
        if parent is not None:
            self._info(
                "fine-tuning %s with %s frozen, at learning rate %.2e",
                cfg.finetune.parent,
                ", ".join(self.frozen_prefixes) or "nothing",
                self.learning_rate,
            )
        self._info(
            "training %s on %s (%s): %d trainable, %d frozen parameters; %d train / %d valid "
            "pairs; %s",
            self.model_config,
            self.device,
            self.precision,
            trainable_count,
            self.frozen_parameters,
            len(self.train_set),
            len(self.valid_set),
            describe_batch(
                cfg.data.batch_size,
                self.world_size,
                self.learning_rate,
                cfg.optimizer,
                learning_rate_key,
            ),
        )
        stopped_early, epoch = False, start_epoch - 1
        # When the next mid-epoch last.safetensors is due; counts from here.
        self.timer = CheckpointTimer(cfg.train.checkpoint_every_s)

        def save_state(epoch_steps: int, loss_sum: float, step: int) -> None:
            """last.safetensors in the middle of epoch ``epoch`` (rank 0 writes it)."""
            if self.is_main:
                state = TrainingState(
                    optimizer.state_dict(),
                    scheduler.state_dict(),
                    epoch - 1,
                    step,
                    best_loss,
                    bad_epochs,
                    epoch_steps=epoch_steps,
                    epoch_loss_sum=loss_sum,
                )
                path = writer.save_mid_epoch(self._metrics, state)
                self._info("step %d: checkpoint %s", step, path)
            self.timer.reset()

        for epoch in range(start_epoch, cfg.train.epochs + 1):
            if cfg.train.max_steps is not None and global_step >= cfg.train.max_steps:
                epoch -= 1
                break
            started = time.perf_counter()
            learning_rate = optimizer.param_groups[0]["lr"]
            train_loss, global_step = train_epoch(
                epoch,
                network,
                optimizer,
                global_step,
                train_set=self.train_set,
                loss=self.loss,
                config=cfg,
                ranks=self.ranks,
                timer=self.timer,
                save_state=save_state,
                on_step=self._on_step,
                progress=self.progress,
                skip_steps=skip_steps,
                skipped_loss_sum=skipped_loss_sum,
            )
            skip_steps, skipped_loss_sum = 0, 0.0
            scheduler.step()
            distributed.check_replicas_agree(self.model, f"epoch {epoch}")
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
            self._metrics = metrics
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
            last_epoch = (
                epoch == cfg.train.epochs
                or bad_epochs >= cfg.train.patience
                or (cfg.train.max_steps is not None and global_step >= cfg.train.max_steps)
            )
            save_last = epoch % cfg.summary.save_checkpoint_epochs == 0 or last_epoch
            if save_last:
                self.timer.reset()
            if self.is_main:
                writer.save_epoch(
                    record,
                    metrics,
                    save_last=save_last,
                    state=TrainingState(
                        optimizer.state_dict(),
                        scheduler.state_dict(),
                        epoch,
                        global_step,
                        best_loss,
                        bad_epochs,
                    ),
                )
            # The other ranks wait for the files: whatever happens next, a resume finds them
            # complete.
            distributed.barrier()
            self._info(
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
                self._info("early stopping: no improvement for %d epochs", bad_epochs)
                stopped_early = True
                break
        return TrainResult(out, epoch, global_step, best_loss, best_rmse, stopped_early)
