"""The wall time of a prediction run: the tile loop on the busiest rank at a throughput per rank
(given, measured here, or recorded for the model, device and precision), plus the one-time
costs (start-up, the input check, the conversion of the partial store into the product).

Throughput is kept as the network's work rate: megapixels of *read window* at output resolution
per second. A tile reads its core plus a margin on each side, so the output rate at a tile size
is that rate times the share of the windows' cells that are cores
(:attr:`~demsr.plan.geometry.GridGeometry.core_share`, 0.28 for the shipped model at tile 128:
a 242-cell window around a 128-cell core), computed exactly from the tile grid. The rate itself
still depends on the window's shape (kernels run faster on some shapes than others, and small
tiles add per-tile overheads), so figures are kept per tile size and the one measured nearest
the planned tile size is used (:func:`~demsr.plan.figures.find_speed_figure`).

Nothing here invents a figure for hardware that has none recorded: the time is then unknown and
says how to get it (``--measure`` on the target machine, or ``--throughput``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from demsr.plan.figures import HOST_FIGURES, find_speed_figure

if TYPE_CHECKING:
    from demsr.plan.geometry import GridGeometry
    from demsr.plan.measure import Measurement


@dataclass(frozen=True)
class TimeEstimate:
    """Wall time of the run, seconds: ``tile_loop`` on the busiest rank at ``output_mpx_s``
    per rank (None: no figure), plus the ``one_time`` costs by name; ``source`` says where the
    throughput comes from, or why there is none."""

    output_mpx_s: float | None
    window_mpx_s: float | None
    source: str
    tile_loop: float | None
    one_time: dict[str, float]

    @property
    def total(self) -> float | None:
        if self.tile_loop is None:
            return None
        return self.tile_loop + sum(self.one_time.values())


def estimate_time(
    geometry: GridGeometry,
    scale: int,
    per_rank: list[int],
    model_name: str | None,
    device_type: str,
    precision: str,
    fmt: str,
    dtype: str,
    throughput_mpx_s: float | None,
    measurement: Measurement | None,
) -> TimeEstimate:
    """Tile loop on the busiest rank + one-time costs (see :class:`TimeEstimate`)."""
    output_mpx = geometry.cells * scale**2 / 1e6
    window_rate: float | None = None
    if throughput_mpx_s is not None:
        rate: float | None = throughput_mpx_s
        source = "given"
    elif measurement is not None:
        window_rate = measurement.window_mpx_s
        rate = window_rate * geometry.core_share
        source = f"measured here on {measurement.device}"
    else:
        figure = find_speed_figure(model_name, device_type, precision, geometry.tile_px)
        if figure is None:
            rate = None
            what = f"{model_name or 'this model shape'} on {device_type} in {precision}"
            source = (
                f"no recorded figure for {what}; run `demsr plan ... --measure` on the target "
                "machine, or give --throughput MPX_S (the output Mpx/s demsr predict's progress "
                "bar shows there)"
            )
        else:
            window_rate = figure.window_mpx_s
            rate = window_rate * geometry.core_share
            source = (
                f"{figure.model} {figure.device} {figure.precision} at tile {figure.tile_px}, "
                f"{figure.source}"
            )
    tile_loop = None
    if rate is not None:
        busiest_share = max(per_rank) / geometry.tiles
        tile_loop = output_mpx * busiest_share / rate
    one_time: dict[str, float] = {}
    host = HOST_FIGURES
    if device_type == "cpu" and model_name in host.startup_s:
        one_time["start-up"] = host.startup_s[model_name]
    one_time["input check"] = geometry.cells / 1e6 / host.check_mcells_s
    if (fmt, dtype) in host.finalise_mpx_s:
        one_time["finalise"] = output_mpx / host.finalise_mpx_s[fmt, dtype]
    return TimeEstimate(rate, window_rate, source, tile_loop, one_time)
