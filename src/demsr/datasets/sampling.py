"""The order pairs are drawn in: one shuffled order per (seed, epoch)
(:func:`epoch_generator`), dealt out to torchrun ranks (:class:`ShuffledShardSampler`)."""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch
from torch.utils.data import DistributedSampler


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one epoch's shuffling (depends on nothing else)."""
    generator = torch.Generator()
    generator.manual_seed(seed * 1_000_003 + epoch)
    return generator


class ShuffledShardSampler(DistributedSampler[int]):
    """One epoch's shuffled order of a dataset, dealt out to the ranks of a run.

    The order is ``torch.randperm(n, generator=epoch_generator(seed, epoch))``; call
    :meth:`set_epoch` before each epoch. Rank r of N takes its positions r, r+N, r+2N, ...
    (as ``DistributedSampler`` does), so the ranks' k-th batches of b pairs together are
    positions k*N*b .. (k+1)*N*b - 1: the k-th batch of N*b pairs that a single process draws
    from the same order. The last ``n mod N`` positions (at most N-1 pairs) are left out so that
    every rank gets ``n // N`` pairs, hence the same number of steps; the order changes every
    epoch, so other pairs are left out each time. Alone (N = 1) nothing is left out.
    """

    def __init__(self, dataset: Sized, *, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(
            dataset,  # type: ignore[arg-type]
            num_replicas=num_replicas,
            rank=rank,
            shuffle=True,
            seed=seed,
            drop_last=True,
        )

    def __iter__(self) -> Iterator[int]:
        count = len(self.dataset)  # type: ignore[arg-type]
        order = torch.randperm(count, generator=epoch_generator(self.seed, self.epoch)).tolist()
        return iter(order[self.rank : self.total_size : self.num_replicas])
