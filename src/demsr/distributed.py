"""Running as one rank of many under ``torchrun`` (torch.distributed), or alone.

``torchrun --nproc_per_node N -m demsr ...`` starts N copies of a command and gives each the
environment variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` (multi-node runs add ``--nnodes``, ``--node_rank`` and a rendezvous endpoint;
the variables are the same). :func:`context` reads them; :func:`process_group` joins the
ranks through torch.distributed's ``env://`` rendezvous and leaves again on exit. Without
these variables a command runs as rank 0 of 1 and nothing is initialised.

The few collectives the rest of demsr needs (each does nothing, or the obvious thing, alone):
:func:`barrier`, :func:`sum_over_ranks`, :func:`agreed` (every rank stops when a check fails on
one) and :func:`check_replicas_agree` (the ranks' copies of a model are still equal).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

from demsr.ranks import RankContext, context

__all__ = [
    "RankContext",
    "agreed",
    "barrier",
    "check_replicas_agree",
    "context",
    "joined",
    "process_group",
    "rank_device",
    "sum_over_ranks",
]

log = logging.getLogger(__name__)


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
    except BaseException:
        dist.destroy_process_group()
        raise
    # Leaving together: a rank that tears its group down while another still finishes its
    # last step can abort in gloo's teardown ("terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()


def joined() -> bool:
    """Whether this process is in a process group (:func:`process_group`, or its caller's)."""
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Wait for every rank (nothing when run alone)."""
    if dist.is_initialized():
        dist.barrier()


def _collective_device() -> torch.device:
    """Where this rank's tensors for collectives live: its GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_over_ranks(values: Sequence[float]) -> list[float]:
    """``values`` summed element-wise over the ranks in float64; every rank gets the same
    sums (``values`` as they are when alone)."""
    if not dist.is_initialized():
        return [float(value) for value in values]
    tensor = torch.tensor(list(values), dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return [float(value) for value in tensor.tolist()]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@contextlib.contextmanager
def agreed() -> Iterator[None]:
    """Run a block on every rank and agree on how it ended; leaving it is a barrier.

    If the block raised on some ranks, every rank raises on leaving it: a rank that failed, its
    own exception; the others, a RuntimeError quoting the lowest failed rank's message. Checks
    that all ranks make (is there a run to resume, do its settings match) then stop every rank
    with the same message instead of leaving some waiting for the others. Alone, a plain block.
    """
    if not dist.is_initialized():
        yield
        return
    error: Exception | None = None
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - re-raised below, once the ranks have agreed
        error = exc
    outcomes: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(outcomes, None if error is None else _first_line(error))
    if error is not None:
        raise error
    for rank, message in enumerate(outcomes):
        if message is not None:
            raise RuntimeError(f"rank {rank} failed: {message}")


def check_replicas_agree(module: nn.Module, when: str) -> None:
    """Raise RuntimeError on every rank if the ranks' copies of ``module`` differ.

    Compares a float64 fingerprint gathered from every rank: the sum and the sum of squares of
    each parameter (two numbers per tensor cross the network). DistributedDataParallel keeps the
    replicas bitwise equal, so any difference means they diverged. ``when`` starts the message
    (e.g. ``"after epoch 3"``). Nothing happens alone.
    """
    if not dist.is_initialized():
        return
    names, parameters = zip(*module.named_parameters(), strict=True)
    with torch.no_grad():
        local = torch.stack(
            [torch.stack([p.double().sum(), p.double().square().sum()]) for p in parameters]
        ).to(_collective_device())
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    reference = gathered[0]
    for rank, other in enumerate(gathered[1:], start=1):
        same = (other == reference) | (other.isnan() & reference.isnan())
        differing = (~same).any(dim=1).nonzero()
        if len(differing):
            name = names[int(differing[0, 0])]
            raise RuntimeError(
                f"{when}: the ranks' parameters diverged ({name} differs between rank 0 and "
                f"rank {rank})"
            )
