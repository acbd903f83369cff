"""Facts about this machine that a plan uses: its CPU (to tell whether the recorded figures were
measured on it), its physical memory and the ranks sharing it (for the default memory budget),
and the peak memory of this process (what a measurement reports)."""

from __future__ import annotations

import os
import platform
import resource
import sys
from pathlib import Path


def cpu_model() -> str:
    """This machine's CPU model, e.g. ``Intel(R) Xeon(R) Processor``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_name() -> str:
    """This machine's CPU model and core count, as :class:`~demsr.plan.figures.SpeedFigure` names
    machines."""
    return f"{cpu_model()}, {os.cpu_count()} CPUs"


def physical_memory_bytes() -> int | None:
    """This machine's physical RAM, bytes (None where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return None


def local_ranks(ranks: int | None = None) -> int:
    """Ranks sharing this machine: torchrun's ``LOCAL_WORLD_SIZE``, else ``ranks`` (a plan's
    ranks, all on one node), else 1."""
    value = os.environ.get("LOCAL_WORLD_SIZE", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    return max(1, ranks or 1)


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (``VmHWM`` on Linux, else ``ru_maxrss``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
