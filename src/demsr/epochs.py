"""One epoch of a training run: the loss of a batch of stored pairs (:class:`PairLoss`, with the
slope term :func:`gradient_mse`), the epoch's optimizer steps on this rank's share of the
shuffled pairs (:func:`train_epoch`) and the validation pass over all valid pairs
(:func:`validation_loss`). :class:`demsr.train.Trainer` runs them epoch after epoch.

Shuffling draws from a generator seeded by (seed, epoch) and augmentation from (seed, epoch, pair
index) (:class:`~demsr.datasets.ShuffledShardSampler`), so an epoch continued after a mid-epoch
checkpoint sees the batches an uninterrupted one would.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from demsr import distributed
from demsr.config import DataSection, RunConfig
from demsr.datasets import (
    Normalisation,
    PairDataset,
    RasterWindowDataset,
    ShuffledShardSampler,
)
from demsr.model import network_autocast
from demsr.ranks import RankContext
from demsr.run_state import CheckpointTimer
from demsr.scaling import ElevationScaling

log = logging.getLogger(__name__)


def gradient_mse(prediction: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the differences between neighbouring cells (along rows and along
    columns, pooled) of (N,1,H,W) ``prediction`` against ``truth``: the slope term of the loss
    (``train.gradient_loss_weight``), in the inputs' units per cell."""
    errors = prediction - truth
    along_cols = errors[..., :, 1:] - errors[..., :, :-1]
    along_rows = errors[..., 1:, :] - errors[..., :-1, :]
    total = along_cols.pow(2).sum() + along_rows.pow(2).sum()
    return total / (along_cols.numel() + along_rows.numel())


@dataclass(frozen=True)
class PairLoss:
    """The training loss of a batch of stored pairs: mean squared error in units of the model's
    ``scaling.scale_m``, plus ``gradient_loss_weight`` times that of the differences between
    neighbouring cells (:func:`gradient_mse`).

    ``storage`` maps the pair files' values to metres; the network runs on ``device`` in
    ``precision`` (autocast)."""

    storage: Normalisation
    scaling: ElevationScaling
    device: torch.device
    precision: str
    gradient_loss_weight: float

    def __call__(
        self,
        lowres: torch.Tensor,
        highres: torch.Tensor,
        network: nn.Module,
        gradient_term: bool = True,
    ) -> torch.Tensor:
        """The loss of (N,1,h,w) ``lowres`` and (N,1,H,W) ``highres`` as stored; ``network``
        is the resolver (metres in, metres out) or, in training under torchrun, its DDP
        wrapper. ``gradient_term=False`` leaves the slope term out (validation)."""
        lowres_m = self.storage.denormalise(lowres.to(self.device, non_blocking=True))
        highres_m = self.storage.denormalise(highres.to(self.device, non_blocking=True))
        with network_autocast(self.device, self.precision):
            prediction_m = network(lowres_m)
        prediction, truth = prediction_m / self.scaling.scale_m, highres_m / self.scaling.scale_m
        loss = F.mse_loss(prediction, truth)
        weight = self.gradient_loss_weight
        if weight > 0 and gradient_term:
            loss = loss + weight * gradient_mse(prediction, truth)
        return loss


def pair_batches(
    dataset: PairDataset | RasterWindowDataset,
    sampler: Sequence[int] | ShuffledShardSampler,
    data: DataSection,
    device: torch.device,
) -> DataLoader:
    """The batches of ``dataset`` in ``sampler``'s order (``data.batch_size``, the last one
    possibly shorter), loaded by ``data.num_workers`` workers."""
    return DataLoader(
        dataset,
        batch_size=data.batch_size,
        sampler=sampler,
        num_workers=data.num_workers,
        pin_memory=device.type == "cuda",
        drop_last=False,
    )


@torch.no_grad()
def validation_loss(
    model: nn.Module,
    resolver: nn.Module,
    valid_set: PairDataset | RasterWindowDataset,
    loss: PairLoss,
    data: DataSection,
    ranks: RankContext,
) -> tuple[float, float]:
    """Validation loss (``loss`` without its slope term) and RMSE in metres over all pairs of
    ``valid_set``, with ``model`` (the network inside ``resolver``) in eval mode.

    Inside a run under torchrun every rank calls it: each scores its share of the pairs (rank r
    of N: pairs r, r+N, ...; none twice, none left out) and the sums are added over the ranks,
    so all get the same values.
    """
    model.eval()
    ranks = ranks if distributed.joined() else distributed.RankContext()
    shard = range(ranks.rank, len(valid_set), ranks.world_size)
    squared_error, count = 0.0, 0
    for lowres, highres in pair_batches(valid_set, shard, data, loss.device):
        value = loss(lowres, highres, resolver, gradient_term=False)
        squared_error += value.item() * highres.numel()
        count += highres.numel()
    squared_error, cells = distributed.sum_over_ranks([squared_error, count])
    mse = squared_error / cells
    return mse, math.sqrt(mse) * loss.scaling.scale_m


def train_epoch(
    epoch: int,
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    global_step: int,
    *,
    train_set: PairDataset | RasterWindowDataset,
    loss: PairLoss,
    config: RunConfig,
    ranks: RankContext,
    timer: CheckpointTimer,
    save_state: Callable[[int, float, int], None],
    on_step: Callable[[int, float], None],
    progress: bool = True,
    skip_steps: int = 0,
    skipped_loss_sum: float = 0.0,
) -> tuple[float, int]:
    """One epoch of steps on this rank's share of the shuffled pairs; returns the mean
    training loss over the epoch's (global) batches and the new step count.

    ``skip_steps`` steps of the epoch were done before a mid-epoch checkpoint, with losses
    adding up to ``skipped_loss_sum``: the epoch continues after them. ``save_state(steps,
    loss_sum, global_step)`` writes that checkpoint; it is called whenever ``timer`` says
    ``train.checkpoint_every_s`` seconds have passed since the last one. ``on_step(global_step,
    loss)`` follows each step; ``progress`` shows a progress bar on rank 0.
    """
    network.train()
    cfg = config
    sampler = ShuffledShardSampler(
        train_set, seed=cfg.train.seed, num_replicas=ranks.world_size, rank=ranks.rank
    )
    sampler.set_epoch(epoch)
    train_set.set_epoch(epoch)  # augmentation; before the loader copies it to workers
    order = list(sampler)
    batch = cfg.data.batch_size
    steps = math.ceil(len(order) / batch)
    if cfg.train.max_steps_per_epoch is not None:
        steps = min(steps, cfg.train.max_steps_per_epoch)
    last = steps
    if cfg.train.max_steps is not None:
        last = min(last, skip_steps + max(cfg.train.max_steps - global_step, 0))
    loader = pair_batches(train_set, order[skip_steps * batch :], cfg.data, loss.device)
    total_loss, done = skipped_loss_sum, skip_steps
    bar = tqdm(
        total=steps,
        initial=skip_steps,
        desc=f"epoch {epoch}",
        unit="step",
        disable=not (progress and ranks.is_main),
        leave=False,
    )
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]] = iter(loader)
    for _ in range(skip_steps, last):
        value = loss(*next(batches), network)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        global_step += 1
        done += 1
        step_loss = value.item()
        total_loss += step_loss
        bar.update(1)
        if done < steps and timer.due():
            save_state(done, total_loss, global_step)
        on_step(global_step, step_loss)
        if global_step % cfg.summary.log_every_steps == 0:
            bar.set_postfix(loss=f"{total_loss / done:.3e}")
            log.debug("step %d loss %.4e", global_step, step_loss)
    bar.close()
    # Every rank ran `done` steps; the mean of the ranks' losses is the global batch's.
    total_loss, steps_done = distributed.sum_over_ranks([total_loss, done])
    return (total_loss / steps_done if steps_done else float("nan")), global_step
