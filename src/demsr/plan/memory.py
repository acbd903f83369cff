"""The memory of one rank and the tile size it allows.

:func:`estimate_memory` gives a rank's peak memory from the model's shapes and its largest batch
(a formula whose constants were fitted to ``demsr predict`` on the CPU,
:data:`demsr.plan.figures.MEMORY_CALIBRATION`); :func:`default_memory_bytes` the budget a rank
plans for when none is given (a share of the machine); :func:`choose_tile_px` the largest tile
whose batch fits in a budget, which ``demsr predict`` and ``demsr plan`` both take when no tile
size is given (:func:`automatic_tile_px` with the default budget).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from demsr.plan.figures import MEMORY_CALIBRATION, MemoryCalibration
from demsr.plan.host import local_ranks, physical_memory_bytes
from demsr.plan.text import format_memory

if TYPE_CHECKING:
    from demsr.model import ModelConfig

MIB = 2**20
FLOAT32_BYTES = 4


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak memory of one rank, bytes: ``kind`` is ``host RAM`` (CPU) or ``GPU memory``;
    ``baseline`` is None where not measured (then ``total`` leaves it out)."""

    kind: str
    baseline: int | None
    weights: int
    activations: int
    calibration: MemoryCalibration

    @property
    def total(self) -> int:
        return (self.baseline or 0) + self.weights + self.activations


def estimate_memory(
    config: ModelConfig, parameters: int, batch: tuple[int, int], device_type: str
) -> MemoryEstimate:
    """Peak memory of one rank running a model of ``config``'s shape with ``parameters``
    weights, whose largest batch ``batch`` is (tiles, read-window cells per tile, low-res), by
    the formula of :class:`~demsr.plan.figures.MemoryCalibration` with the device's constants
    (:data:`~demsr.plan.figures.MEMORY_CALIBRATION`; a device without its own uses the GPU's,
    uncalibrated)."""
    calibration = MEMORY_CALIBRATION.get(device_type, MEMORY_CALIBRATION["cuda"])
    tiles, lowres_cells = batch
    highres_cells = lowres_cells * config.scale**2
    per_tile = FLOAT32_BYTES * (
        calibration.lowres_maps * config.channels * lowres_cells
        + calibration.highres_maps * highres_cells
    )
    baseline = None if calibration.baseline_mib is None else int(calibration.baseline_mib * MIB)
    return MemoryEstimate(
        kind="host RAM" if device_type == "cpu" else "GPU memory",
        baseline=baseline,
        weights=int(calibration.weight_copies * parameters * FLOAT32_BYTES),
        activations=int(tiles * per_tile),
        calibration=calibration,
    )


MAX_TILE_PX = 1024
"""The largest tile the automatic choice takes (low-res cells a side): its core is 81% of a
1138-cell read window (margin 57), near the network's own speed; larger tiles gain little and
make the partial store's chunks (one tile's output each: 100 MB of float32 at x5) and the work a
stop loses coarser."""

MEMORY_SHARE = {"cpu": 0.25, "cuda": 0.5}
"""Default share of the machine's memory one process may plan for: a quarter of the host's
physical RAM on the CPU (divided between the ranks of one machine), half of the GPU's."""

ABSENT_GPU_BYTES = 8 * 2**30
"""The memory planned for on a GPU that is not present here (a plan for another machine)."""


def default_memory_bytes(device_type: str, ranks: int | None = None) -> tuple[int, str]:
    """The memory one rank plans its tiles for when none is given, and where that comes from:
    :data:`MEMORY_SHARE` of the host's RAM (split between :func:`local_ranks`) or of the GPU
    (each rank has its own); :data:`ABSENT_GPU_BYTES` for a GPU not present here."""
    import torch

    if device_type == "cuda":
        share = MEMORY_SHARE["cuda"]
        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
            return int(gpu * share), f"{share:.0%} of the GPU's {format_memory(gpu)}"
        return ABSENT_GPU_BYTES, f"{format_memory(ABSENT_GPU_BYTES)} assumed for an absent GPU"
    share = MEMORY_SHARE["cpu"]
    total = physical_memory_bytes()
    if total is None:
        return 2 * 2**30, "2 GiB (this OS does not report its RAM)"
    count = local_ranks(ranks)
    text = f"{share:.0%} of {format_memory(total)} RAM" + (f" / {count} ranks" if count > 1 else "")
    return int(total * share / count), text


def choose_tile_px(
    rows: int,
    cols: int,
    margin_px: int,
    config: ModelConfig,
    parameters: int,
    batch_size: int,
    device_type: str,
    memory_bytes: int,
    wrap: bool = False,
) -> int:
    """The tile side (low-res cells) ``demsr predict`` and ``demsr plan`` take when none is
    given: the largest, up to :data:`MAX_TILE_PX` and the raster's own size (a raster that fits
    runs as one tile, with no margin to recompute), whose batch of ``batch_size`` read windows
    fits in ``memory_bytes`` by :func:`estimate_memory` (``batch_size`` read windows of
    ``tile_px + 2 * margin_px`` cells a side clipped to the raster, or not along columns that
    ``wrap``: no tile of the grid reads more); then shrunk to the smallest side giving
    the same number of tiles along each axis, so that the last row and column of tiles are not
    mostly overlap. Raises ValueError when not even a one-cell tile fits.
    """
    if memory_bytes <= 0:
        raise ValueError(f"memory must be > 0 bytes, got {memory_bytes}")

    def window_cells(tile_px: int) -> int:
        """An interior tile's read window, clipped to the raster (not its columns where they
        wrap): the largest any tile of the grid reads, and growing with the tile."""
        side = tile_px + 2 * margin_px
        return min(rows, side) * (min(tile_px, cols) + 2 * margin_px if wrap else min(cols, side))

    def fits(tile_px: int) -> bool:
        needed = estimate_memory(
            config, parameters, (batch_size, window_cells(tile_px)), device_type
        )
        return needed.total <= memory_bytes

    high = min(MAX_TILE_PX, max(rows, cols))
    if not fits(1):
        smallest = estimate_memory(config, parameters, (batch_size, window_cells(1)), device_type)
        raise ValueError(
            f"a memory cap of {format_memory(memory_bytes)} is below the "
            f"{format_memory(smallest.total)} one tile of this model needs "
            f"(batches of {batch_size}); raise --memory"
        )
    low = 1  # fits(low) holds; find the largest that fits
    if fits(high):
        low = high
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    row_tiles, col_tiles = math.ceil(rows / low), math.ceil(cols / low)
    return max(math.ceil(rows / row_tiles), math.ceil(cols / col_tiles))


def automatic_tile_px(
    shape: tuple[int, int],
    margin_px: int,
    config: ModelConfig,
    parameters: int,
    batch_size: int,
    device_type: str,
    memory_bytes: int | None,
    ranks: int | None = None,
    wrap: bool = False,
) -> tuple[int, int, str]:
    """The tile size :func:`choose_tile_px` takes for a grid of ``shape`` (rows, cols) when
    none is given, the budget it fitted (``memory_bytes``, or :func:`default_memory_bytes` for
    ``ranks`` when None) and where that budget comes from."""
    budget, source = (
        (memory_bytes, "given")
        if memory_bytes is not None
        else default_memory_bytes(device_type, ranks)
    )
    rows, cols = shape
    tile_px = choose_tile_px(
        rows, cols, margin_px, config, parameters, batch_size, device_type, budget, wrap=wrap
    )
    return tile_px, budget, source
