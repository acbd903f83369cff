"""The plan as text: :func:`describe_plan` writes a :class:`~demsr.plan.prediction.PredictionPlan`
as a few lines for the terminal (what ``demsr plan`` and ``demsr predict --dry-run`` print),
with the quantities in it written as people read them: counts, bytes on disk (decimal units,
as disks are sold), bytes of memory (binary units, as memory is sold and GPUs report it) and
durations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from demsr.plan.command import placeholder_output
from demsr.plan.figures import CALIBRATION, HOST_FIGURES

if TYPE_CHECKING:
    from demsr.plan.prediction import PredictionPlan


def describe_plan(
    plan: PredictionPlan,
    output: str | None = None,
    checkpoint: str | None = None,
    extra: Sequence[str] = (),
) -> str:
    """``plan`` as a few lines of text for the terminal; the command line names ``output``
    (default: ``OUTPUT`` with the format's extension) and ``checkpoint`` (default: none, i.e.
    the shipped model) and ends with ``extra`` options."""
    rows, cols = plan.input_shape
    out_rows, out_cols = plan.output_shape
    window_rows, window_cols = plan.read_window
    busiest, quietest = max(plan.tiles_per_rank), min(plan.tiles_per_rank)
    lines = [
        f"input    {plan.input_path} (band {plan.band}): {rows:,} x {cols:,} cells, "
        f"{plan.crs}, cell {_cell(plan.cell_size)}",
        f"model    {plan.model}: x{plan.scale}, margin {plan.margin_px} cells, "
        f"{plan.precision} on {plan.device}",
        f"output   {out_rows:,} x {out_cols:,} cells ({_count(plan.output_mpx * 1e6)}px), "
        f"{plan.fmt} {plan.dtype}",
        f"tiles    {plan.tiles:,} of {plan.tile_px} x {plan.tile_px} cells "
        f"({plan.geometry.tile_rows:,} x {plan.geometry.tile_cols:,}), read windows up to "
        f"{window_rows} x {window_cols} cells ({plan.geometry.core_share:.0%} of the "
        f"network's work is output), batches of {plan.batch_size}",
    ]
    if plan.ranks > 1:
        share = f"{busiest:,}" if busiest == quietest else f"{quietest:,}-{busiest:,}"
        lines.append(f"ranks    {plan.ranks}: {share} tiles each")
    lines.append(_disk_line(plan))
    lines.append(_memory_line(plan))
    if plan.measurement is not None:
        m = plan.measurement
        lines.append(
            f"measured {m.tiles} tiles (read windows up to {m.largest_window[0]} x "
            f"{m.largest_window[1]}) on {m.device} ({m.precision}) in {m.seconds:.1f} s: "
            f"{m.window_mpx_s:.3g} Mpx/s of read window; {m.memory_kind} "
            f"{format_memory(m.peak_memory)}"
        )
    lines.append(_time_line(plan))
    command = plan.command(output or placeholder_output(plan.fmt), checkpoint, extra)
    lines.append(f"run      {command}")
    lines += [f"note     {note}" for note in plan.notes]
    return "\n".join(lines)


def _disk_line(plan: PredictionPlan) -> str:
    product = f"product {_size(plan.product_bytes)} uncompressed"
    if plan.overview_bytes:
        product += f" (+{_size(plan.overview_bytes)} of overviews)"
    text = (
        f"disk     {product}; partial store {_size(plan.partial_bytes)} (float32, "
        f"uncompressed) during the run, both while finalising"
    )
    c = plan.compression
    if c is None:
        return text + "; compression usually shrinks them"
    low, high = sorted((c.land, c.shelf))
    whole = plan.product_bytes + plan.overview_bytes
    return text + (
        f"; compressed {_size_range(whole / high, whole / low)} ({c.fmt} {c.dtype} shrank "
        f"{low:g}-{high:g}x on a land and a shelf DEM, {CALIBRATION})"
    )


def _memory_line(plan: PredictionPlan) -> str:
    m = plan.memory
    parts = [f"weights {format_memory(m.weights)}", f"tiles {format_memory(m.activations)}"]
    if m.baseline is not None:
        parts.insert(0, f"base {format_memory(m.baseline)}")
    source = m.calibration.source
    return f"memory   ~{format_memory(m.total)} {m.kind} per rank ({' + '.join(parts)}; {source})"


def _time_line(plan: PredictionPlan) -> str:
    t = plan.time
    one_time = ", ".join(f"{name} {_duration(s)}" for name, s in t.one_time.items())
    if one_time:
        one_time = f"one-time {one_time} (rates measured on {HOST_FIGURES.machine})"
    if t.tile_loop is None or t.output_mpx_s is None:
        return f"time     unknown: {t.source}" + (f"; {one_time}" if one_time else "")
    per_rank = " per rank" if plan.ranks > 1 else ""
    total = t.total if t.total is not None else t.tile_loop
    return (
        f"time     ~{_duration(total)}: tiles {_duration(t.tile_loop)} at "
        f"{t.output_mpx_s:.3g} output Mpx/s{per_rank} ({t.source})"
        + (f" + {one_time}" if one_time else "")
    )


def _count(value: float) -> str:
    """A count with a G, M or k prefix (the unit follows it)."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} "


def _size(value: float) -> str:
    """Bytes on disk, in decimal units (as disks are sold)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.0f} B"


def _size_range(low: float, high: float) -> str:
    """``low``-``high`` bytes, the unit written once where both share it."""
    first, second = _size(low), _size(high)
    if first.split()[-1] == second.split()[-1]:
        return f"{first.split()[0]}-{second}"
    return f"{first}-{second}"


def format_memory(value: float) -> str:
    """Bytes of memory, in binary units (as memory is sold and GPUs report it)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.0f} B"


def _duration(seconds: float) -> str:
    """``seconds`` in the unit that reads best: s, min, h or days."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _cell(cell_size: tuple[float, float]) -> str:
    """A (x, y) cell size in the CRS's units."""
    x, y = cell_size
    return f"{x:.6g} x {y:.6g}"
