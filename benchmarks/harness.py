"""What the benchmark scripts share: side-by-side timing, peak memory, the machine's description
and recording a result file that keeps its hand-written notes."""

from __future__ import annotations

import datetime
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

NOTES_MARKER = "<!-- Hand-written notes below: --record keeps them. -->"


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB.

    On Linux this is ``VmHWM`` of ``/proc/self/status``: ``ru_maxrss`` would do, except that
    it carries the parent's peak across fork and exec, so a child started by a large process
    would report the parent's peak. Elsewhere ``ru_maxrss`` (bytes on macOS).
    """
    peak = _status_mb("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 2**10  # kB
    except OSError:
        pass
    return None


def peak_rss_above_mb(run: Callable[[], object]) -> float:
    """How far resident memory rises above its current level while ``run()`` runs, MiB.

    On Linux the peak (``VmHWM``) is first reset to the current size (``/proc/self/clear_refs``),
    so memory freed before the call does not hide what the call uses. Elsewhere the rise of
    the process's overall peak, which may under-report.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_mb("VmRSS")
    except OSError:
        before = None
    if before is None:
        before = peak_rss_mb()
    run()
    return peak_rss_mb() - before


def time_side_by_side(
    variants: Mapping[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    synchronize: Callable[[], None] = lambda: None,
) -> dict[str, list[float]]:
    """Seconds per call of each variant, measured in interleaved rounds.

    Each variant runs ``warmup`` times first; then every round calls each variant once, in
    order, so that a slow spell of a noisy machine hits all of them alike. ``synchronize``
    (``torch.cuda.synchronize`` on a GPU) runs before each clock reading.
    """
    for run in variants.values():
        for _ in range(warmup):
            run()
        synchronize()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            synchronize()
            started = time.perf_counter()
            run()
            synchronize()
            times[name].append(time.perf_counter() - started)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine_description(device: str) -> str:
    """One line: date, CPU, cores, torch and (on CUDA) the GPU."""
    import torch

    from demsr.plan import cpu_model

    parts = [
        datetime.date.today().isoformat(),
        f"{cpu_model()} ({os.cpu_count()} CPUs, torch threads {torch.get_num_threads()})",
        f"torch {torch.__version__}",
        f"Python {platform.python_version()}",
    ]
    if device.startswith("cuda"):
        parts.append(f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})")
    else:
        parts.append(f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    return ", ".join(parts)


def record(path: Path, title: str, body: str) -> None:
    """Write ``body`` under ``title`` to ``path``, keeping what it holds below ``NOTES_MARKER``."""
    old = path.read_text() if path.exists() else ""
    notes = old[old.index(NOTES_MARKER) :] if NOTES_MARKER in old else f"{NOTES_MARKER}\n"
    path.write_text(f"# {title}\n\n{body}\n\n{notes}")
