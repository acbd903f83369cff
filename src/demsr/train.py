"""Training: MSE on normalised elevations, Adam with exponential learning-rate decay, early stopping
on the validation loss, a checkpoint every epoch and at the best validation loss, exact resume.
(Over 500 lines: the loop, exact resume and the ranks' bookkeeping share one Trainer's state.)

Two ways to start (:class:`Trainer`): ``fit`` trains the network of ``config.model`` from its
initialisation; ``finetune`` starts from a trained checkpoint (its model config, elevation scaling
and weights), freezes some of its layers (``freeze_parameters``, by module name) and trains the
rest at ``optimizer.finetune_learning_rate``, recording the parent checkpoint in the new
checkpoints' provenance. Both share the loop, the run folder and ``--resume``.

The run folder (``summary.output_dir``: config.yaml, metrics.csv, last/best checkpoints) is
described in :mod:`demsr.run_folder`; the parent's model and the freezing of layers in
:mod:`demsr.finetuning`.

Shuffling draws from a generator seeded by (seed, epoch) and augmentation from (seed, epoch, pair
index), so a resumed run sees the same batches as an uninterrupted one. With
``data.source: rasters`` the pairs are windows drawn from rasters, each from (seed, epoch, index)
alone (:class:`~demsr.datasets.RasterWindowDataset`); an epoch is ``train.max_steps_per_epoch``
steps. ``train.checkpoint_every_s`` also writes ``last.safetensors`` in the middle of an epoch
whenever that many seconds have passed since the last one; ``--resume`` then continues from that
step, with the same weights, optimizer state and batches as an uninterrupted run.

Under ``torchrun`` each process trains one rank of a DistributedDataParallel run (NCCL on GPUs,
gloo on the CPU; see :mod:`demsr.distributed`). ``data.batch_size`` is per rank: the ranks share
each epoch's shuffled order (:class:`~demsr.datasets.ShuffledShardSampler`), so N ranks with
batches of b train on the same global batches as one process with batches of N*b (up to the at
most N-1 pairs an epoch leaves out so that the ranks get equal shares), and
``optimizer.learning_rate_scaling`` may scale the learning rate with N. Each rank validates its
share of the valid pairs and the sums are added, so all ranks take the same early-stopping
decision. Rank 0 alone logs progress and writes the run folder, which multi-node runs must keep
on a shared filesystem (every rank reads ``last.safetensors`` on ``--resume``).

Callbacks (:class:`TrainerCallback`) let a script or notebook follow a run (log, plot, collect
the epochs' :class:`EpochRecord`) without touching the loop.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from demsr import distributed
from demsr.checkpoint import (
    Checkpoint,
    TrainingState,
    load_checkpoint,
    load_training_state,
    restore_rng_state,
    save_checkpoint,
)
from demsr.config import (
    DEFAULT_WINDOW_PATCH_PX,
    LEARNING_RATE_SCALINGS,
    RunConfig,
    upgrade_config_dict,
)
from demsr.datasets import (
    LowresMaker,
    Normalisation,
    PairDataset,
    RasterSelection,
    RasterWindowDataset,
    ShuffledShardSampler,
    select_rasters,
)
from demsr.finetuning import freeze_parameters, parent_model_section, parent_record
from demsr.io import atomic_path, remove_stale_temporaries
from demsr.model import (
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
from demsr.run_folder import (
    BEST,
    LAST,
    METRIC_FIELDS,
    METRICS,
    EpochRecord,
    TrainResult,
    append_metrics_row,
    changed_settings,
    truncate_metrics,
)

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
    "gradient_mse",
    "scaled_learning_rate",
    "seed_everything",
]


class TrainerCallback:
    """Hooks a :class:`Trainer` calls as it runs; subclass it and override the ones you need
    (each does nothing here).

    The trainer passes itself: ``trainer.model`` (the network being trained), ``trainer.config``,
    ``trainer.output_dir``, ``trainer.train_set`` / ``trainer.valid_set`` are there to read.
    A callback that raises stops the run (the checkpoints already written stay valid, and
    ``resume=True`` continues from the last one).

    Under torchrun the hooks run on every rank, at the same points: ``trainer.rank``,
    ``trainer.world_size`` and ``trainer.is_main`` say where. Write files or print on rank 0
    only (``if trainer.is_main``), and raise on all ranks or none: a rank that stops alone
    leaves the others waiting until torchrun ends them.
    """

    def on_train_start(self, trainer: Trainer) -> None:
        """The network is built (and its layers frozen when fine-tuning); no step has run."""

    def on_step_end(self, trainer: Trainer, global_step: int, loss: float) -> None:
        """After each optimizer step: the step's number (from 1, counting over the whole run)
        and its training loss (normalised MSE of that batch; under torchrun, of this rank's
        share of it)."""

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        """After each epoch's validation and checkpoints, with what ``metrics.csv`` records."""

    def on_train_end(self, trainer: Trainer, result: TrainResult) -> None:
        """When the run ends normally (epochs or steps done, or early stopping)."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def scaled_learning_rate(
    learning_rate: float, learning_rate_scaling: str, world_size: int
) -> float:
    """The learning rate of a run on ``world_size`` ranks (``optimizer.learning_rate_scaling``):
    ``none`` keeps ``learning_rate``, ``linear`` multiplies it by ``world_size``, ``sqrt`` by its
    square root (the global batch grows with the world size)."""
    factors = {"none": 1.0, "linear": float(world_size), "sqrt": math.sqrt(world_size)}
    if learning_rate_scaling not in LEARNING_RATE_SCALINGS:
        raise ValueError(
            f"learning_rate_scaling must be one of {', '.join(LEARNING_RATE_SCALINGS)}, "
            f"got {learning_rate_scaling!r}"
        )
    return learning_rate * factors[learning_rate_scaling]


def gradient_mse(prediction: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the differences between neighbouring cells (along rows and along
    columns, pooled) of (N,1,H,W) ``prediction`` against ``truth``: the slope term of the loss
    (``train.gradient_loss_weight``), in the inputs' units per cell."""
    errors = prediction - truth
    along_cols = errors[..., :, 1:] - errors[..., :, :-1]
    along_rows = errors[..., 1:, :] - errors[..., :-1, :]
    total = along_cols.pow(2).sum() + along_rows.pow(2).sum()
    return total / (along_cols.numel() + along_rows.numel())


def match_parameter_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each optimizer state tensor its parameter's memory layout (checkpoints store them
    contiguous; the parameters may be channels-last). The fused Adam kernel walks a parameter
    and its moments in memory order, so their layouts must agree."""
    for parameter, state in optimizer.state.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.shape == parameter.shape:
                state[key] = torch.empty_like(parameter, dtype=value.dtype).copy_(value)


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
        degradation = None
        if config.data.degradation:
            from demsr.degradation import DegradationModel

            degradation = DegradationModel.from_yaml(config.data.degradation)
        self.train_set: PairDataset | RasterWindowDataset
        self.valid_set: PairDataset | RasterWindowDataset
        self.rasters: RasterSelection | None = None
        if config.data.source == "rasters":
            if alternative_lowres is None and degradation is not None:
                alternative_lowres = degradation.apply  # (highres_m, scale, rng) -> lowres_m
            self._use_rasters(alternative_lowres)
        else:
            root = Path(config.data.root_dir)
            self.train_set = PairDataset(
                root / "train" / "train.h5",
                augment=config.data.augment,
                seed=config.train.seed,
                degradation=degradation,
            )
            self.valid_set = PairDataset(root / "valid" / "valid.h5")
        # The pair files store elevations in their own units; the model sees metres through
        # its elevation scaling.
        self.storage: Normalisation = self.train_set.normalisation
        self._check_data()
        # Set by finetune: provenance of the parent checkpoint, and what stays frozen.
        self.parent_record: dict[str, Any] | None = None
        self.frozen_prefixes: list[str] = []
        self.frozen_parameters = 0  # counted when the loop starts
        self._metrics: dict[str, float] = {}  # of the last finished epoch
        self._saved_at = 0.0  # time.monotonic() of the last last.safetensors

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

    def _use_rasters(self, alternative_lowres: LowresMaker | None) -> None:
        """Training and validation windows drawn from ``data.rasters`` (see
        :class:`~demsr.config.DataSection`)."""
        data, train = self.config.data, self.config.train
        if data.degradation_probability > 0 and alternative_lowres is None:
            raise ValueError(
                "data.degradation_probability > 0 needs a degradation to make those inputs "
                "with; none was given"
            )
        self.rasters = select_rasters(data.rasters, data.heldout, data.valid_rasters)
        assert train.max_steps_per_epoch is not None  # validate() checks it
        options: dict[str, Any] = {
            "lowres_patch_px": data.patch_size or DEFAULT_WINDOW_PATCH_PX,
            "scale": self.config.model.build().scale,
            "seed": train.seed,
            "alternative_lowres": alternative_lowres,
            "alternative_probability": data.degradation_probability,
            "max_sea_fraction": data.max_sea_fraction,
        }
        steps = train.max_steps_per_epoch * data.batch_size * self.world_size
        self.train_set = RasterWindowDataset(
            self.rasters.train, length=steps, augment=data.augment, **options
        )
        # Fixed windows: the validation set's epoch stays 0.
        self.valid_set = RasterWindowDataset(
            self.rasters.valid, length=data.valid_windows, **options
        )
        self._info(
            "windows of %d low-res cells from %d training rasters, %d validation rasters "
            "(%d fixed windows); %d held out",
            options["lowres_patch_px"],
            len(self.train_set.paths),
            len(self.valid_set.paths),
            data.valid_windows,
            len(self.rasters.heldout),
        )

    def _check_data(self) -> None:
        for name, dataset in (("train", self.train_set), ("valid", self.valid_set)):
            if len(dataset) == 0:
                raise ValueError(f"{dataset.path}: the {name} split holds no pairs")
        if len(self.train_set) < self.world_size:
            raise ValueError(
                f"{self.train_set.path}: {len(self.train_set)} train pairs for "
                f"{self.world_size} ranks; every rank needs at least one"
            )
        if self.valid_set.normalisation != self.storage:
            raise ValueError("train and valid files use different normalisations")
        if self.train_set.units != "m":
            log.warning(
                "%s does not say how its values map to metres; errors are reported in its units",
                self.train_set.path,
            )
        patch = self.config.data.patch_size
        if isinstance(self.train_set, RasterWindowDataset):
            return
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
                "data": self._data_record(),
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

    def _data_record(self) -> dict[str, Any]:
        """What the run trained on, for the checkpoints' provenance."""
        record: dict[str, Any] = {
            "source": self.config.data.source,
            "train_sources": self.train_set.source_files,
            "train_pairs": len(self.train_set),
            "valid_pairs": len(self.valid_set),
        }
        if self.rasters is None:
            record["root_dir"] = str(self.config.data.root_dir)
        else:
            record["valid_sources"] = self.valid_set.source_files
            record["heldout"] = [str(path) for path in self.rasters.heldout]
        return record

    # -- loops ---------------------------------------------------------------------------

    def _batches(
        self,
        dataset: PairDataset | RasterWindowDataset,
        sampler: Sequence[int] | ShuffledShardSampler,
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.config.data.batch_size,
            sampler=sampler,
            num_workers=self.config.data.num_workers,
            pin_memory=self.device.type == "cuda",
            drop_last=False,
        )

    def _loss(
        self,
        lowres: torch.Tensor,
        highres: torch.Tensor,
        network: nn.Module,
        gradient_term: bool = True,
    ) -> torch.Tensor:
        """Mean squared error in units of ``elevation_scale_m`` for a batch of stored pairs,
        plus ``train.gradient_loss_weight`` times that of the differences between neighbouring
        cells (:func:`gradient_mse`); ``network`` is the resolver or, in training under
        torchrun, its DDP wrapper."""
        lowres_m = self.storage.denormalise(lowres.to(self.device, non_blocking=True))
        highres_m = self.storage.denormalise(highres.to(self.device, non_blocking=True))
        with network_autocast(self.device, self.precision):
            prediction_m = network(lowres_m)
        prediction, truth = prediction_m / self.scaling.scale_m, highres_m / self.scaling.scale_m
        loss = F.mse_loss(prediction, truth)
        weight = self.config.train.gradient_loss_weight
        if weight > 0 and gradient_term:
            loss = loss + weight * gradient_mse(prediction, truth)
        return loss

    @torch.no_grad()
    def validate(self) -> tuple[float, float]:
        """Validation loss (the training loss's MSE, without its slope term) and RMSE in
        metres over all valid pairs.

        Inside a run under torchrun every rank calls it: each scores its share of the pairs
        (rank r of N: pairs r, r+N, ...; none twice, none left out) and the sums are added over
        the ranks, so all get the same values.
        """
        self.model.eval()
        ranks = self.ranks if distributed.joined() else distributed.RankContext()
        shard = range(ranks.rank, len(self.valid_set), ranks.world_size)
        squared_error, count = 0.0, 0
        for lowres, highres in self._batches(self.valid_set, shard):
            loss = self._loss(lowres, highres, self.resolver, gradient_term=False)
            squared_error += loss.item() * highres.numel()
            count += highres.numel()
        squared_error, cells = distributed.sum_over_ranks([squared_error, count])
        mse = squared_error / cells
        return mse, math.sqrt(mse) * self.scaling.scale_m

    def _train_epoch(
        self,
        epoch: int,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        global_step: int,
        save_state: Callable[[int, float, int], None],
        skip_steps: int = 0,
        skipped_loss_sum: float = 0.0,
    ) -> tuple[float, int]:
        """One epoch of steps on this rank's share of the shuffled pairs; returns the mean
        training loss over the epoch's (global) batches and the new step count.

        ``skip_steps`` steps of the epoch were done before a mid-epoch checkpoint, with losses
        adding up to ``skipped_loss_sum``: the epoch continues after them. ``save_state(steps,
        loss_sum, global_step)`` writes that checkpoint; it is called whenever
        ``train.checkpoint_every_s`` seconds have passed since the last one.
        """
        network.train()
        cfg = self.config
        sampler = ShuffledShardSampler(
            self.train_set, seed=cfg.train.seed, num_replicas=self.world_size, rank=self.rank
        )
        sampler.set_epoch(epoch)
        self.train_set.set_epoch(epoch)  # augmentation; before the loader copies it to workers
        order = list(sampler)
        batch = cfg.data.batch_size
        steps = math.ceil(len(order) / batch)
        if cfg.train.max_steps_per_epoch is not None:
            steps = min(steps, cfg.train.max_steps_per_epoch)
        last = steps
        if cfg.train.max_steps is not None:
            last = min(last, skip_steps + max(cfg.train.max_steps - global_step, 0))
        loader = self._batches(self.train_set, order[skip_steps * batch :])
        total_loss, done = skipped_loss_sum, skip_steps
        bar = tqdm(
            total=steps,
            initial=skip_steps,
            desc=f"epoch {epoch}",
            unit="step",
            disable=not (self.progress and self.is_main),
            leave=False,
        )
        batches: Iterator[tuple[torch.Tensor, torch.Tensor]] = iter(loader)
        every_s = cfg.train.checkpoint_every_s
        for _ in range(skip_steps, last):
            loss = self._loss(*next(batches), network)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            global_step += 1
            done += 1
            step_loss = loss.item()
            total_loss += step_loss
            bar.update(1)
            if every_s is not None and done < steps:
                if time.monotonic() - self._saved_at >= every_s:
                    save_state(done, total_loss, global_step)
            for callback in self.callbacks:
                callback.on_step_end(self, global_step, step_loss)
            if global_step % cfg.summary.log_every_steps == 0:
                bar.set_postfix(loss=f"{total_loss / done:.3e}")
                log.debug("step %d loss %.4e", global_step, loss.item())
        bar.close()
        # Every rank ran `done` steps; the mean of the ranks' losses is the global batch's.
        total_loss, steps_done = distributed.sum_over_ranks([total_loss, done])
        return (total_loss / steps_done if steps_done else float("nan")), global_step

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
        self.config.model = parent_model_section(self.config.model, checkpoint, settings.parent)
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
        optimizer = torch.optim.Adam(
            trainable,
            lr=self.learning_rate,
            eps=cfg.optimizer.eps,
            weight_decay=cfg.optimizer.weight_decay,
            fused=True,  # one kernel per parameter group instead of several per tensor
        )
        scheduler = torch.optim.lr_scheduler.ExponentialLR(
            optimizer, gamma=cfg.optimizer.learning_rate_decay
        )
        start_epoch, global_step = 1, 0
        skip_steps, skipped_loss_sum = 0, 0.0  # of a mid-epoch checkpoint
        best_loss, best_rmse, bad_epochs = math.inf, math.inf, 0
        # Every rank makes the same checks, and all stop if one fails, before rank 0 writes.
        resumed: tuple[Checkpoint, TrainingState] | None = None
        with distributed.agreed():
            if resume:
                resumed = self._resume_state(out / LAST)
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
            self.model.load_state_dict(checkpoint.state_dict)
            optimizer.load_state_dict(state.optimizer)
            match_parameter_layouts(optimizer)
            scheduler.load_state_dict(state.scheduler)
            restore_rng_state(state.rng["tensors"], state.rng["extra"])
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
            with atomic_path(out / "config.yaml") as tmp:
                tmp.write_text(cfg.to_yaml())
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
            self._describe_batch(learning_rate_key),
        )
        stopped_early, epoch = False, start_epoch - 1
        self._saved_at = time.monotonic()

        def save_state(epoch_steps: int, loss_sum: float, step: int) -> None:
            """last.safetensors in the middle of epoch ``epoch`` (rank 0 writes it)."""
            if self.is_main:
                metadata = self._metadata(epoch - 1, self._metrics)
                metadata["epoch_steps"] = epoch_steps
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
                save_checkpoint(out / LAST, self.model, self.scaling, metadata, state)
                self._info("step %d: checkpoint %s", step, out / LAST)
            self._saved_at = time.monotonic()

        for epoch in range(start_epoch, cfg.train.epochs + 1):
            if cfg.train.max_steps is not None and global_step >= cfg.train.max_steps:
                epoch -= 1
                break
            started = time.perf_counter()
            learning_rate = optimizer.param_groups[0]["lr"]
            train_loss, global_step = self._train_epoch(
                epoch,
                network,
                optimizer,
                global_step,
                save_state,
                skip_steps,
                skipped_loss_sum,
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
                self._saved_at = time.monotonic()
            if self.is_main:
                self._save_epoch(
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

    def _save_epoch(
        self,
        record: EpochRecord,
        metrics: dict[str, float],
        save_last: bool,
        state: TrainingState,
    ) -> None:
        """Rank 0's files after an epoch: the metrics row, best.safetensors if it is the best
        epoch, last.safetensors if ``save_last``."""
        out = self.output_dir
        # The row first: a crash before last.safetensors lands makes --resume redo (and
        # rewrite) it; a crash after, keeps it.
        append_metrics_row(self.output_dir / METRICS, record)
        metadata = self._metadata(record.epoch, metrics)
        if record.is_best:
            save_checkpoint(out / BEST, self.model, self.scaling, metadata)
        if save_last:
            save_checkpoint(out / LAST, self.model, self.scaling, metadata, state)

    def _describe_batch(self, learning_rate_key: str) -> str:
        """The batch and learning rate for the start of the log: per rank and global under
        torchrun, with the learning rate's scaling."""
        cfg = self.config
        if not self.ranks.distributed:
            return f"batch {cfg.data.batch_size}, learning rate {self.learning_rate:.2e}"
        text = (
            f"batch {cfg.data.batch_size} per rank x {self.world_size} ranks = global batch "
            f"{cfg.data.batch_size * self.world_size}, learning rate {self.learning_rate:.2e}"
        )
        if cfg.optimizer.learning_rate_scaling != "none":
            base = getattr(cfg.optimizer, learning_rate_key)
            scaling = cfg.optimizer.learning_rate_scaling
            text += f" (optimizer.{learning_rate_key} {base:.2e}, learning_rate_scaling {scaling})"
        return text

    def _resume_state(self, last: Path) -> tuple[Checkpoint, TrainingState]:
        """The checkpoint and training state to resume from, once checked against this run:
        the same starting point, model, settings and (where learning_rate_scaling ties the
        learning rate to it) world size."""
        cfg = self.config
        if not last.exists():
            raise FileNotFoundError(f"{last}: nothing to resume from")
        checkpoint = load_checkpoint(last)
        stored_parent = checkpoint.metadata.get("provenance", {}).get("parent")
        self._check_same_parent(last, stored_parent)
        if (checkpoint.model_config, checkpoint.scaling) != (self.model_config, self.scaling):
            raise ValueError(f"{last}: model config differs from this run's config")
        # A run recorded under the old key names (config.RENAMED_KEYS) resumes under the new ones.
        recorded = upgrade_config_dict(checkpoint.metadata.get("training", {}))
        changed = changed_settings(recorded, cfg.to_dict())
        if changed:
            raise ValueError(
                f"{last}: cannot resume with different settings ({', '.join(changed)}); "
                "only the epoch and step limits may change"
            )
        stored_world = int(checkpoint.metadata.get("distributed", {}).get("world_size", 1))
        if stored_world != self.world_size:
            if cfg.optimizer.learning_rate_scaling != "none":
                raise ValueError(
                    f"{last}: this run trained on {stored_world} rank(s); resume it on as many, "
                    f"not {self.world_size} (optimizer.learning_rate_scaling="
                    f"{cfg.optimizer.learning_rate_scaling} ties its learning rate to their number)"
                )
            if self.is_main:
                batch = cfg.data.batch_size
                log.warning(
                    "%s: this run trained on %d rank(s) and resumes on %d: its global batch "
                    "changes from %d to %d pairs (and the run from what an uninterrupted one "
                    "would do)",
                    last,
                    stored_world,
                    self.world_size,
                    batch * stored_world,
                    batch * self.world_size,
                )
        return checkpoint, load_training_state(last)

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
