"""Which rank of a torchrun run this process is, from the environment alone (no torch import,
so that the command line starts fast); :mod:`demsr.distributed` does the rest."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import NoReturn


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

    @property
    def log_prefix(self) -> str:
        """What the ranks other than rank 0 put before their log lines and errors: ``[rank
        1/4] ``; nothing on rank 0 or alone."""
        return "" if self.is_main else f"[{self.describe()}] "


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


def exit_rank_process(code: int) -> NoReturn:
    """End a rank's process with exit status ``code`` once its work is done and its files are
    closed: logs and standard streams flushed, then ``os._exit``, skipping the interpreter's
    teardown. In that teardown torch's gloo process group can abort the process ("terminate
    called without an active exception", SIGABRT) after a run that succeeded, now and then,
    which would turn a finished run into a failed one."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: nothing left to flush
            pass
    os._exit(code)
