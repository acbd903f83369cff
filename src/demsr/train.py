"""Training: MSE on normalised elevations, Adam with exponential learning-rate decay, early stopping
on the validation loss, a checkpoint every epoch and at the best validation loss, exact resume.

Run folder (``summary.output_dir``)::

    config.yaml        the resolved run config
    metrics.csv        one row per epoch: losses, validation RMSE in metres, learning rate, time
    last.safetensors   weights + optimizer/scheduler/RNG state (what --resume loads)
    best.safetensors   weights at the best validation loss (what predict/evaluate use)

Shuffling and augmentation draw from a generator seeded by (seed, epoch), so a resumed run sees
the same batches as an uninterrupted one.
"""

from __future__ import annotations

import csv
import logging
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from demsr.checkpoint import (
    TrainingState,
    load_checkpoint,
    load_training_state,
    restore_rng_state,
    save_checkpoint,
)
from demsr.config import RunConfig
from demsr.datasets import Normalisation, PairDataset
from demsr.io import atomic_path
from demsr.model import (
    DEMSRNet,
    SuperResolver,
    count_parameters,
    init_as_interpolation,
    network_autocast,
    resolve_device,
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
    output_dir: Path
    epochs_run: int
    global_step: int
    best_valid_loss: float
    best_valid_rmse_m: float
    stopped_early: bool


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator for one epoch's shuffling and augmentation (depends on nothing else)."""
    generator = torch.Generator()
    generator.manual_seed(seed * 1_000_003 + epoch)
    return generator


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` means bf16 mixed precision on CUDA and fp32 elsewhere."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16" and device.type == "cpu":
        log.warning("bf16 on the CPU is emulated on most processors and usually slower than fp32")
    return precision


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


class Trainer:
    """Fits a DEM-SRNet to the pairs under ``config.data.root_dir``."""

    def __init__(self, config: RunConfig, progress: bool = True) -> None:
        config.validate()
        self.config = config
        self.progress = progress
        self.output_dir = Path(config.summary.output_dir)
        self.device = resolve_device(config.train.device)
        self.precision = resolve_precision(config.train.precision, self.device)
        root = Path(config.data.root_dir)
        self.train_set = PairDataset(root / "train" / "train.h5", augment=config.data.augment)
        self.valid_set = PairDataset(root / "valid" / "valid.h5")
        # The pair files store elevations in their own units; the model sees metres through
        # its elevation scaling.
        self.storage: Normalisation = self.train_set.normalisation
        self.model_config = config.model.build()
        self.scaling = config.model.scaling()
        self._check_data()
        seed_everything(config.train.seed)  # the initial weights depend on the seed only
        net = DEMSRNet(self.model_config)
        if config.model.init == "interpolation":
            init_as_interpolation(net)
        self.model = net.to(self.device)
        self.resolver = SuperResolver(self.model, self.scaling)

    def _check_data(self) -> None:
        for name, dataset in (("train", self.train_set), ("valid", self.valid_set)):
            if len(dataset) == 0:
                raise ValueError(f"{dataset.path}: the {name} split holds no pairs")
            if dataset.scale != self.model_config.scale:
                raise ValueError(
                    f"{dataset.path}: pairs are x{dataset.scale} but the model is "
                    f"x{self.model_config.scale} (set model.scale)"
                )
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

    # -- state ---------------------------------------------------------------------------

    def _metadata(self, epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
        return {
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
                "parent": None,
            },
        }

    def _write_metrics_row(self, row: dict[str, Any]) -> None:
        path = self.output_dir / METRICS
        new = not path.exists()
        with open(path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)

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
            total_loss += loss.item()
            bar.update(1)
            if global_step % cfg.summary.log_every_steps == 0:
                bar.set_postfix(loss=f"{total_loss / done:.3e}")
                log.debug("step %d loss %.4e", global_step, loss.item())
        bar.close()
        return (total_loss / done if done else float("nan")), global_step

    def fit(self, resume: bool = False) -> TrainResult:
        cfg = self.config
        out = self.output_dir
        out.mkdir(parents=True, exist_ok=True)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        frozen = count_parameters(self.model) - sum(p.numel() for p in trainable)
        optimizer = torch.optim.Adam(
            trainable,
            lr=cfg.optimizer.learning_rate,
            eps=cfg.optimizer.eps,
            weight_decay=cfg.optimizer.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.optimizer.lr_decay)
        start_epoch, global_step = 1, 0
        best_loss, best_rmse, bad_epochs = math.inf, math.inf, 0
        if resume:
            last = out / LAST
            if not last.exists():
                raise FileNotFoundError(f"{last}: nothing to resume from")
            checkpoint = load_checkpoint(last)
            if (checkpoint.model_config, checkpoint.scaling) != (self.model_config, self.scaling):
                raise ValueError(f"{last}: model config differs from this run's config")
            changed = _changed_settings(checkpoint.metadata.get("training", {}), cfg.to_dict())
            if changed:
                raise ValueError(
                    f"{last}: cannot resume with different settings ({', '.join(changed)}); "
                    "only the epoch and step limits may change"
                )
            state = load_training_state(last)
            if state.bad_epochs >= cfg.train.patience:
                log.info("%s stopped early after epoch %d; nothing to resume", out, state.epoch)
                best_rmse = float(checkpoint.metadata.get("metrics", {}).get("best_valid_rmse_m"))
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
            scheduler.load_state_dict(state.scheduler)
            restore_rng_state(state.rng["tensors"], state.rng["extra"])
            start_epoch, global_step = state.epoch + 1, state.global_step
            best_loss, bad_epochs = state.best_valid_loss, state.bad_epochs
            best_rmse = float(
                checkpoint.metadata.get("metrics", {}).get("best_valid_rmse_m", math.inf)
            )
            self._truncate_metrics(state.epoch)
            log.info("resuming %s after epoch %d (step %d)", out, state.epoch, global_step)
        else:
            if (out / LAST).exists():
                raise FileExistsError(
                    f"{out} already holds a training run; use --resume to continue it "
                    "or choose another output folder"
                )
            (out / METRICS).unlink(missing_ok=True)
        with atomic_path(out / "config.yaml") as tmp:
            tmp.write_text(cfg.to_yaml())
        log.info(
            "training %s on %s (%s): %d trainable, %d frozen parameters; %d train / %d valid "
            "pairs; batch %d",
            self.model_config,
            self.device,
            self.precision,
            sum(p.numel() for p in trainable),
            frozen,
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
                    "lower optimizer.learning_rate"
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
            self._write_metrics_row(
                {
                    "epoch": epoch,
                    "global_step": global_step,
                    "train_loss": f"{train_loss:.6e}",
                    "valid_loss": f"{valid_loss:.6e}",
                    "valid_rmse_m": f"{valid_rmse:.4f}",
                    "learning_rate": f"{learning_rate:.6e}",
                    "epoch_seconds": f"{seconds:.2f}",
                    "is_best": int(is_best),
                }
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
            if bad_epochs >= cfg.train.patience:
                log.info("early stopping: no improvement for %d epochs", bad_epochs)
                stopped_early = True
                break
        return TrainResult(out, epoch, global_step, best_loss, best_rmse, stopped_early)
