"""The optimizer of a training run: Adam over the trainable parameters with exponential
learning-rate decay (``optimizer`` section of the config), the learning rate scaled with the
number of torchrun ranks, the optimizer state's memory layout matched to the parameters' after a
resume, and the seeding that makes a run's initial weights depend on its seed alone.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import torch

from demsr.config import LEARNING_RATE_SCALINGS, OptimizerSection


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


def make_optimizer(
    trainable: Sequence[torch.nn.Parameter], learning_rate: float, settings: OptimizerSection
) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.ExponentialLR]:
    """Adam over ``trainable`` (the parameters that are not frozen) at ``learning_rate`` and its
    scheduler, which multiplies the learning rate by ``settings.learning_rate_decay`` after each
    epoch."""
    optimizer = torch.optim.Adam(
        trainable,
        lr=learning_rate,
        eps=settings.eps,
        weight_decay=settings.weight_decay,
        fused=True,  # one kernel per parameter group instead of several per tensor
    )
    scheduler = torch.optim.lr_scheduler.ExponentialLR(
        optimizer, gamma=settings.learning_rate_decay
    )
    return optimizer, scheduler


def match_parameter_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each optimizer state tensor its parameter's memory layout (checkpoints store them
    contiguous; the parameters may be channels-last). The fused Adam kernel walks a parameter
    and its moments in memory order, so their layouts must agree."""
    for parameter, state in optimizer.state.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.shape == parameter.shape:
                state[key] = torch.empty_like(parameter, dtype=value.dtype).copy_(value)


def describe_batch(
    batch_size: int,
    world_size: int,
    learning_rate: float,
    settings: OptimizerSection,
    learning_rate_key: str,
) -> str:
    """The batch and learning rate for the start of a run's log: per rank and global when
    ``world_size`` ranks train together, with the learning rate's scaling (``learning_rate_key``
    names the setting it was scaled from)."""
    if world_size == 1:
        return f"batch {batch_size}, learning rate {learning_rate:.2e}"
    text = (
        f"batch {batch_size} per rank x {world_size} ranks = global batch "
        f"{batch_size * world_size}, learning rate {learning_rate:.2e}"
    )
    if settings.learning_rate_scaling != "none":
        base = getattr(settings, learning_rate_key)
        scaling = settings.learning_rate_scaling
        text += f" (optimizer.{learning_rate_key} {base:.2e}, learning_rate_scaling {scaling})"
    return text
