"""Running as one rank of many under ``torchrun`` (torch.distributed), or alone.

``torchrun --nproc_per_node N -m demsr ...`` starts N copies of a command and gives each the
environment variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` (multi-node runs add ``--nnodes``, ``--node_rank`` and a rendezvous endpoint;
the variables are the same). :func:`context` reads them; :func:`process_group` joins the
ranks through torch.distributed's ``env://`` rendezvous and leaves again on exit. Without
these variables a command runs as rank 0 of 1 and nothing is initialised.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

T = TypeVar("T")


class PeerFailed(RuntimeError):
    """Raised on the other ranks when rank 0 failed at a step they wait for (rank 0 reports
    the reason)."""


@dataclass(frozen=True)
class RankContext:
    """Where this process stands among the ranks of a run (rank 0 of 1 when run alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes logs, checkpoints and the final product."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def describe(self) -> str:
        return f"rank {self.rank}/{self.world_size}"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def context() -> RankContext:
    """This process's rank from torchrun's environment variables (rank 0 of 1 without them)."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ValueError(
            f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world_size}, "
            f"LOCAL_RANK={local_rank}"
        )
    return RankContext(rank=rank, world_size=world_size, local_rank=local_rank)


def rank_device(name: str, ctx: RankContext) -> str:
    """The device a rank runs on: with several ranks, ``auto``/``cuda`` mean this rank's own GPU
    ``cuda:LOCAL_RANK`` (one GPU per rank, as torchrun's ``--nproc_per_node`` counts them);
    ``cpu`` and an explicit ``cuda:N`` are kept."""
    if not ctx.distributed:
        return name
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return f"cuda:{ctx.local_rank}"
    return name


@contextlib.contextmanager
def process_group(
    ctx: RankContext,
    device: torch.device,
    timeout: datetime.timedelta | None = None,
    backend: str | None = None,
) -> Iterator[None]:
    """Join the ranks' process group for the duration of the block (nothing when run alone).

    The backend is NCCL for a CUDA ``device`` (which becomes this process's current device)
    and gloo otherwise, unless ``backend`` says (gloo suits ranks that only synchronise, not
    exchange tensors). A group that is already initialised (a caller's own) is used as is.
    """
    if not ctx.distributed or dist.is_initialized():
        yield
        return
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend=backend, rank=ctx.rank, world_size=ctx.world_size, timeout=timeout
    )
    log.debug("%s joined the %s process group", ctx.describe(), backend)
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (nothing when run alone)."""
    if dist.is_initialized():
        dist.barrier()


def main_first(step: Callable[[], T]) -> T | None:
    """Run ``step`` on rank 0 while the other ranks wait; their result is None.

    When ``step`` fails on rank 0 its exception propagates there and the other ranks raise
    :class:`PeerFailed`, so that every rank stops rather than waits for one that is gone.
    Alone (no process group), ``step`` simply runs.
    """
    if not dist.is_initialized():
        return step()
    result: T | None = None
    failure: BaseException | None = None
    if dist.get_rank() == 0:
        try:
            result = step()
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after telling the others
            failure = exc
    status: list[str | None] = [None if failure is None else type(failure).__name__]
    dist.broadcast_object_list(status, src=0)
    if failure is not None:
        raise failure
    if status[0] is not None:
        raise PeerFailed(f"rank 0 stopped ({status[0]}); its message says why")
    return result
