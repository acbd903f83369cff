"""Plan a prediction before running it: tiles, ranks, disk, memory and time.

:func:`plan_prediction` works out what ``demsr predict`` will do with a raster and a model at
given settings, from the raster's metadata (shape, transform, CRS: never its cells, of which a
global 15" grid holds 3.7 billion) and the model's shapes:

- the tile grid (:mod:`demsr.tiling`): tiles, the largest read window, and how many tiles each
  of N ranks predicts when the batches are dealt out round-robin (rank r takes batches r, r+N,
  r+2N, ...);
- the product's size on disk, uncompressed (float32 or int16 cells; COG overviews add a third),
  and the partial store's during the run (float32);
- the memory of one rank: a formula over the model's shapes (weights; C-channel maps at low
  resolution and one-channel maps at high resolution, per tile of a batch), with constants fitted
  to measurements of ``demsr predict`` on the CPU (:data:`MEMORY_CALIBRATION`);
- the wall time: output megapixels over the throughput per rank, from a recorded figure
  (:data:`SPEED_FIGURES`: measured on this project's CPU, none yet on a GPU), a figure the caller
  gives, or one measured on a few tiles of the input (:func:`measure_throughput`), plus the
  one-time costs (start-up, the input check that reads every cell, the conversion of the partial
  store into the product).

Throughput is kept as the network's work rate: megapixels of *read window* at output resolution
per second. A tile reads its core plus a margin on each side, so the output rate at a tile size
is that rate times the share of the windows' cells that are cores (0.28 for the shipped model at
tile 128: a 242-cell window around a 128-cell core), which this module computes exactly from the
tile grid. The rate itself still depends on the window's shape (kernels run faster on some
shapes than others, and small tiles add per-tile overheads), so figures are kept per tile size
and the one measured nearest the planned tile size is used.

Nothing here invents a figure for hardware that has none recorded: the time is then unknown and
the plan says how to get it (``--measure`` on the target machine, or ``--throughput``).
"""

from __future__ import annotations

import logging
import math
import os
import platform
import resource
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rasterio.windows import Window

from demsr.io import (
    OUTPUT_DTYPES,
    RasterError,
    RasterReader,
    open_raster,
    output_format,
    require_crs,
)
from demsr.predict_settings import PredictSettings
from demsr.tiling import Tile, batch_tiles, deal_batches, global_period, tile_count, tile_grid

if TYPE_CHECKING:
    from demsr.checkpoint import Checkpoint
    from demsr.model import ModelConfig

log = logging.getLogger(__name__)

MIB = 2**20
FLOAT32_BYTES = 4

# --------------------------------------------------------------------------------------------
# Recorded figures
# --------------------------------------------------------------------------------------------

THIS_CPU = "Intel(R) Xeon(R) Processor, 2 CPUs"  # with AVX512 and AMX (native bf16)
CALIBRATION = "benchmarks/plan_calibration.md"


@dataclass(frozen=True)
class SpeedFigure:
    """A measured speed of ``demsr predict``'s tile loop (reading, filling, the network, writing).

    ``window_mpx_s`` is the network's work rate: read-window cells x scale**2 per second, in
    millions, measured at ``tile_px`` (with ``margin_px``). ``model`` names the preset whose
    shape (blocks x channels) ran, ``device`` the device type, ``precision`` the network's.
    """

    model: str
    device: str
    precision: str
    window_mpx_s: float
    tile_px: int
    margin_px: int
    machine: str
    source: str


SPEED_FIGURES: tuple[SpeedFigure, ...] = (
    # benchmarks/plan_calibration.py: the shipped lite model (margin 57) and an untrained
    # paper-shaped model (trend scaling, margin 101), `demsr predict` run as is.
    SpeedFigure("lite", "cpu", "bf16", 3.10, 64, 57, THIS_CPU, CALIBRATION),
    SpeedFigure("lite", "cpu", "bf16", 2.59, 128, 57, THIS_CPU, CALIBRATION),
    # 370-cell windows: this CPU's kernels are slower per cell at that shape than at 242.
    SpeedFigure("lite", "cpu", "bf16", 1.31, 256, 57, THIS_CPU, CALIBRATION),
    SpeedFigure("lite", "cpu", "fp32", 1.41, 128, 57, THIS_CPU, CALIBRATION),
    SpeedFigure("paper", "cpu", "bf16", 0.119, 48, 101, THIS_CPU, CALIBRATION),
    SpeedFigure("paper", "cpu", "bf16", 0.131, 96, 101, THIS_CPU, CALIBRATION),
    # The network alone (no tile loop): 5.003 s per 96 x 96 call, channels-last float32.
    SpeedFigure(
        "paper",
        "cpu",
        "fp32",
        0.046,
        96,
        0,
        THIS_CPU,
        "benchmarks/speed_cpu.md (the network alone: tile-loop overheads not included)",
    ),
)
"""Every recorded speed. None for GPUs yet: ``demsr plan --measure`` on one measures it."""


@dataclass(frozen=True)
class MemoryCalibration:
    """Constants of the memory formula (:func:`estimate_memory`) for one kind of device.

    Peak bytes = ``baseline_mib`` (the process and what does not grow with the tiles: Python,
    torch, GDAL, demsr, kernels' scratch; None where not measured) + ``weight_copies`` x the
    float32 weights + per tile of the largest batch ``lowres_maps`` float32 maps of C channels
    at low resolution and ``highres_maps`` one-channel float32 maps at high resolution, over
    the tile's read window.
    """

    baseline_mib: float | None
    weight_copies: float
    lowres_maps: float
    highres_maps: float
    source: str


MEMORY_CALIBRATION = {
    # Fitted by benchmarks/plan_calibration.py to `demsr predict`'s peak resident memory during
    # the tile loop (lite at tiles 64/128/256, paper at 48/96). Two copies of the weights: the
    # loaded checkpoint's and the network's.
    "cpu": MemoryCalibration(
        baseline_mib=330.0,
        weight_copies=2.0,
        lowres_maps=3.0,
        highres_maps=18.0,
        source=CALIBRATION,
    ),
    # Not measured on a GPU: the same maps per tile (which include host-side arrays, so this
    # errs high), one copy of the weights on the device; the CUDA context and cuDNN's
    # workspaces come on top.
    "cuda": MemoryCalibration(
        baseline_mib=None,
        weight_copies=1.0,
        lowres_maps=3.0,
        highres_maps=18.0,
        source="not calibrated on a GPU: tensors counted with the CPU's constants",
    ),
}


@dataclass(frozen=True)
class HostFigures:
    """One-time costs measured on this project's machine (host side, whatever the device):
    ``check_mcells_s`` the input check (every input cell read once before the first tile; on a
    NetCDF in the GEBCO layout), ``finalise_mpx_s`` the conversion of the partial store into
    the product by (format, dtype) (output megapixels per second, one process), ``startup_s``
    per model: imports and loading the weights."""

    check_mcells_s: float
    finalise_mpx_s: dict[tuple[str, str], float]
    startup_s: dict[str, float]
    machine: str
    source: str


HOST_FIGURES = HostFigures(
    check_mcells_s=50.0,
    # The slower of the land and shelf DEMs' figures.
    finalise_mpx_s={
        ("cog", "float32"): 2.8,
        ("cog", "int16"): 3.8,
        ("netcdf", "float32"): 5.1,
        ("netcdf", "int16"): 10.4,
        ("zarr", "float32"): 4.9,
        ("zarr", "int16"): 10.2,
    },
    startup_s={"lite": 2.2, "paper": 2.1},
    machine=THIS_CPU,
    source=CALIBRATION,
)


@dataclass(frozen=True)
class CompressionFigure:
    """How much a product shrinks on disk (uncompressed bytes / bytes on disk), measured on the
    predictions of two real DEMs: ``land`` (SRTM 3", Sierra Nevada) and ``shelf`` (continental-
    shelf bathymetry off Cairns)."""

    fmt: str
    dtype: str
    land: float
    shelf: float


COMPRESSION_FIGURES: tuple[CompressionFigure, ...] = (
    # benchmarks/plan_calibration.py. float32 elevations keep noisy low bits (little to
    # compress); int16 metres compress 3-4x.
    CompressionFigure("cog", "float32", 1.3, 1.2),
    CompressionFigure("cog", "int16", 3.7, 4.2),
    CompressionFigure("netcdf", "float32", 1.7, 1.5),
    CompressionFigure("netcdf", "int16", 3.8, 4.4),
    CompressionFigure("zarr", "float32", 1.6, 1.4),
    CompressionFigure("zarr", "int16", 2.3, 2.8),
)


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
    """This machine's CPU model and core count, as :class:`SpeedFigure` names machines."""
    return f"{cpu_model()}, {os.cpu_count()} CPUs"


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GridGeometry:
    """The tile grid of a rows x cols raster (low-res cells) as ``demsr predict`` cuts it.

    ``window_cells`` is the sum of the read windows' cells over all tiles, ``largest_window``
    the (rows, cols) of the largest one; ``core_share`` = rows x cols / ``window_cells``, the
    share of the network's work that lands in the output.
    """

    rows: int
    cols: int
    tile_px: int
    margin_px: int
    tile_rows: int
    tile_cols: int
    largest_window: tuple[int, int]
    window_cells: int

    @property
    def tiles(self) -> int:
        return self.tile_rows * self.tile_cols

    @property
    def core_share(self) -> float:
        return self.rows * self.cols / self.window_cells


def grid_geometry(rows: int, cols: int, tile_px: int, margin_px: int) -> GridGeometry:
    """The tile grid's counts and read windows, computed along each axis (a tile's read window
    is its row span's read rows by its column span's read columns, see
    :func:`demsr.tiling.tile_grid`), so that a global grid costs milliseconds."""
    row_tiles = tile_grid(rows, 1, tile_px, margin_px)
    col_tiles = tile_grid(1, cols, tile_px, margin_px)
    heights = [tile.read_shape[0] for tile in row_tiles]
    widths = [tile.read_shape[1] for tile in col_tiles]
    geometry = GridGeometry(
        rows=rows,
        cols=cols,
        tile_px=tile_px,
        margin_px=margin_px,
        tile_rows=len(row_tiles),
        tile_cols=len(col_tiles),
        largest_window=(max(heights), max(widths)),
        window_cells=sum(heights) * sum(widths),
    )
    assert geometry.tiles == tile_count(rows, cols, tile_px)
    return geometry


@dataclass(frozen=True)
class Sharding:
    """How the tiles fall to the ranks: ``tiles_per_rank`` (rank 0 first), and the largest
    batch as (tiles, read-window cells per tile), which sets the memory."""

    tiles_per_rank: tuple[int, ...]
    largest_batch: tuple[int, int]


def shard_tiles(
    rows: int, cols: int, tile_px: int, margin_px: int, batch_size: int, ranks: int
) -> Sharding:
    """The tiles each of ``ranks`` ranks predicts when the batches of
    :func:`demsr.tiling.batch_tiles` are dealt round-robin (rank r: batches r, r+ranks, ...) by
    :func:`demsr.tiling.deal_batches`, as ``demsr predict`` deals them
    (:func:`demsr.predict.rank_batches`).

    With ``batch_size`` 1 that is ``ceil(tiles / ranks)`` for the first ``tiles % ranks`` ranks
    and ``floor`` for the others. Larger batches hold tiles of one read shape each, so some are
    not full; their sizes come from ``batch_tiles`` itself, fed one stand-in tile per read shape
    in the grid's row-major order (it groups by read shape only): a pass over the tiles, about
    a second per million.
    """
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    total = tile_count(rows, cols, tile_px)
    if batch_size == 1:
        geometry = grid_geometry(rows, cols, tile_px, margin_px)
        window = geometry.largest_window[0] * geometry.largest_window[1]
        loads = [len(deal_batches(range(total), rank, ranks)) for rank in range(ranks)]
        return Sharding(tuple(loads), (1, window))
    row_heights = [tile.read_shape[0] for tile in tile_grid(rows, 1, tile_px, margin_px)]
    col_widths = [tile.read_shape[1] for tile in tile_grid(1, cols, tile_px, margin_px)]
    stand_ins: dict[tuple[int, int], Tile] = {}

    def tiles() -> Iterator[Tile]:
        for height in row_heights:
            for width in col_widths:
                tile = stand_ins.get((height, width))
                if tile is None:
                    window = Window(0, 0, width, height)
                    tile = stand_ins[height, width] = Tile(0, window, window)
                yield tile

    sizes, largest = [], (0, 0)
    for batch in batch_tiles(tiles(), batch_size):
        sizes.append(len(batch))
        height, width = batch[0].read_shape
        if len(batch) * height * width > largest[0] * largest[1]:
            largest = (len(batch), height * width)
    return Sharding(tuple(sum(deal_batches(sizes, rank, ranks)) for rank in range(ranks)), largest)


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------


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
    the formula of :class:`MemoryCalibration` with the device's constants
    (:data:`MEMORY_CALIBRATION`; a device without its own uses the GPU's, uncalibrated)."""
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


# --------------------------------------------------------------------------------------------
# Tile size: the largest tile the memory allows
# --------------------------------------------------------------------------------------------

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


def default_memory_bytes(device_type: str, ranks: int | None = None) -> tuple[int, str]:
    """The memory one rank plans its tiles for when none is given, and where that comes from:
    :data:`MEMORY_SHARE` of the host's RAM (split between :func:`local_ranks`) or of the GPU
    (each rank has its own); :data:`ABSENT_GPU_BYTES` for a GPU not present here."""
    import torch

    if device_type == "cuda":
        share = MEMORY_SHARE["cuda"]
        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
            return int(gpu * share), f"{share:.0%} of the GPU's {_memory(gpu)}"
        return ABSENT_GPU_BYTES, f"{_memory(ABSENT_GPU_BYTES)} assumed for an absent GPU"
    share = MEMORY_SHARE["cpu"]
    total = physical_memory_bytes()
    if total is None:
        return 2 * 2**30, "2 GiB (this OS does not report its RAM)"
    count = local_ranks(ranks)
    text = f"{share:.0%} of {_memory(total)} RAM" + (f" / {count} ranks" if count > 1 else "")
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
            f"a memory cap of {_memory(memory_bytes)} is below the {_memory(smallest.total)} "
            f"one tile of this model needs (batches of {batch_size}); raise --memory"
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


# --------------------------------------------------------------------------------------------
# Throughput
# --------------------------------------------------------------------------------------------


def preset_name(config: ModelConfig) -> str | None:
    """The preset (``lite``, ``paper``) with ``config``'s blocks, channels and scale, if any:
    the shape that sets the speed (biases and the resize mapping barely change it)."""
    from demsr.model import PRESETS

    for name, candidate in PRESETS.items():
        shape = (candidate.blocks, candidate.channels, candidate.scale)
        if shape == (config.blocks, config.channels, config.scale):
            return name
    return None


def find_speed_figure(
    model: str | None, device_type: str, precision: str, tile_px: int
) -> SpeedFigure | None:
    """The recorded figure for this model shape, device type and precision measured at the
    tile size nearest to ``tile_px`` (by ratio); None when there is none."""
    matches = [
        figure
        for figure in SPEED_FIGURES
        if (figure.model, figure.device, figure.precision) == (model, device_type, precision)
    ]
    if not matches:
        return None
    return min(matches, key=lambda figure: abs(math.log(figure.tile_px / tile_px)))


@dataclass(frozen=True)
class Measurement:
    """What :func:`measure_throughput` found on a few tiles of the input.

    ``window_mpx_s`` as in :class:`SpeedFigure`; ``peak_memory`` the peak resident memory of
    this process (CPU) or the peak memory torch reserved on the GPU, bytes.
    """

    window_mpx_s: float
    output_mpx_s: float
    tiles: int
    largest_window: tuple[int, int]
    seconds: float
    peak_memory: int
    memory_kind: str
    device: str
    precision: str


def _peak_rss_bytes() -> int:
    """Peak resident memory of this process (``VmHWM`` on Linux, else ``ru_maxrss``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _busiest_region(reader: RasterReader, height: int, width: int) -> tuple[Window, np.ndarray]:
    """Of five candidate regions of ``height x width`` cells (the centre and the centres of the
    four quarters), the one with the most valid cells, and its values (float32 metres)."""
    rows, cols = reader.shape
    best: tuple[int, Window, np.ndarray] | None = None
    for row_frac, col_frac in ((0.5, 0.5), (0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75)):
        row_off = min(max(0, round(rows * row_frac - height / 2)), rows - height)
        col_off = min(max(0, round(cols * col_frac - width / 2)), cols - width)
        window = Window(col_off, row_off, width, height)
        values = reader.read(window)
        valid = int(np.isfinite(values).sum())
        if best is None or valid > best[0]:
            best = (valid, window, values)
    assert best is not None
    if best[0] == 0:
        raise RasterError(f"{reader.path}: no valid cells where the throughput was to be measured")
    return best[1], best[2]


def measure_throughput(
    input_path: str | os.PathLike[str],
    checkpoint: Checkpoint,
    *,
    band: int = 1,
    variable: str | None = None,
    crs: str | None = None,
    device: str = "auto",
    tile_px: int = 128,
    batch_size: int = 1,
    precision: str = "auto",
) -> Measurement:
    """Time the tile loop on a few real tiles of the input, on ``device``, after a warm-up.

    Reads one region of ``n x n`` tiles (n = 2, or more to fill a batch; the whole raster if it
    is smaller), where the input holds the most valid cells among five candidates, and runs
    :func:`demsr.predict.predict_array` on it twice with the given tile size, batch size and
    precision: the first run warms up (oneDNN/cuDNN pick their kernels per shape), the second is
    timed. Its read windows are clipped to the region, so the rate is per read-window cell
    (:class:`SpeedFigure`). File writes are not timed.
    """
    import torch

    from demsr.model import resolve_device
    from demsr.precision import choose_precision, recorded_bf16_bound
    from demsr.predict import predict_array

    torch_device = resolve_device(device)
    mode = choose_precision(precision, torch_device, recorded_bf16_bound(checkpoint)).precision
    log.info("measuring the throughput on a few tiles of %s ...", os.fspath(input_path))
    resolver = checkpoint.build_resolver(torch_device)
    scale, margin = resolver.scale, resolver.margin_px
    per_side = max(2, math.ceil(math.sqrt(batch_size)))
    with open_raster(input_path, band, variable, crs=crs) as reader:
        rows, cols = reader.shape
        height, width = min(rows, per_side * tile_px), min(cols, per_side * tile_px)
        _, values = _busiest_region(reader, height, width)
    geometry = grid_geometry(height, width, tile_px, margin)

    def run() -> None:
        predict_array(
            resolver,
            values,
            torch_device,
            tile_px=tile_px,
            batch_size=batch_size,
            precision=mode,
        )

    run()
    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch_device)
    started = time.perf_counter()
    run()  # predict_array returns host arrays: the device has finished
    seconds = time.perf_counter() - started
    if torch_device.type == "cuda":
        peak, kind = torch.cuda.max_memory_reserved(torch_device), "GPU memory reserved by torch"
    else:
        peak, kind = _peak_rss_bytes(), "peak resident memory of this process"
    return Measurement(
        window_mpx_s=geometry.window_cells * scale**2 / seconds / 1e6,
        output_mpx_s=height * width * scale**2 / seconds / 1e6,
        tiles=geometry.tiles,
        largest_window=geometry.largest_window,
        seconds=seconds,
        peak_memory=int(peak),
        memory_kind=kind,
        device=str(torch_device),
        precision=mode,
    )


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class PredictionPlan:
    """What ``demsr predict`` will do with a raster, a model and settings (see
    :func:`plan_prediction`). Shapes are (rows, cols) cells; sizes in bytes; times in seconds."""

    input_path: str
    band: int
    input_shape: tuple[int, int]
    crs: str
    cell_size: tuple[float, float]
    checkpoint: str
    model: str
    parameters: int
    scale: int
    margin_px: int
    output_shape: tuple[int, int]
    fmt: str
    dtype: str
    device: str
    precision: str
    tile_px: int
    batch_size: int
    ranks: int
    geometry: GridGeometry
    tiles_per_rank: tuple[int, ...]
    product_bytes: int
    overview_bytes: int
    partial_bytes: int
    compression: CompressionFigure | None
    memory: MemoryEstimate
    time: TimeEstimate
    measurement: Measurement | None = None
    notes: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    @property
    def tiles(self) -> int:
        return self.geometry.tiles

    @property
    def output_mpx(self) -> float:
        return self.output_shape[0] * self.output_shape[1] / 1e6

    @property
    def read_window(self) -> tuple[int, int]:
        return self.geometry.largest_window

    def command(
        self, output: str = "OUTPUT", checkpoint: str | None = None, extra: Sequence[str] = ()
    ) -> str:
        """The command line that runs this plan: ``torchrun --nproc_per_node N -m demsr predict
        ...`` for several ranks (one node; add ``--nnodes`` and a rendezvous for more), else
        ``demsr predict ...``; ``extra`` options are appended."""
        words = ["demsr", "predict"]
        if self.ranks > 1:
            words = ["torchrun", "--nproc_per_node", str(self.ranks), "-m", "demsr", "predict"]
        if checkpoint is not None:
            words.append(checkpoint)
        words += [self.input_path, output, *self.options, *extra]
        return shlex.join(words)

    def describe(
        self, output: str | None = None, checkpoint: str | None = None, extra: Sequence[str] = ()
    ) -> str:
        """The plan as a few lines of text for the terminal; the command line names ``output``
        (default: ``OUTPUT`` with the format's extension) and ``checkpoint`` (default: none,
        i.e. the shipped model) and ends with ``extra`` options."""
        rows, cols = self.input_shape
        out_rows, out_cols = self.output_shape
        window_rows, window_cols = self.read_window
        busiest, quietest = max(self.tiles_per_rank), min(self.tiles_per_rank)
        lines = [
            f"input    {self.input_path} (band {self.band}): {rows:,} x {cols:,} cells, "
            f"{self.crs}, cell {_cell(self.cell_size)}",
            f"model    {self.model}: x{self.scale}, margin {self.margin_px} cells, "
            f"{self.precision} on {self.device}",
            f"output   {out_rows:,} x {out_cols:,} cells ({_count(self.output_mpx * 1e6)}px), "
            f"{self.fmt} {self.dtype}",
            f"tiles    {self.tiles:,} of {self.tile_px} x {self.tile_px} cells "
            f"({self.geometry.tile_rows:,} x {self.geometry.tile_cols:,}), read windows up to "
            f"{window_rows} x {window_cols} cells ({self.geometry.core_share:.0%} of the "
            f"network's work is output), batches of {self.batch_size}",
        ]
        if self.ranks > 1:
            share = f"{busiest:,}" if busiest == quietest else f"{quietest:,}-{busiest:,}"
            lines.append(f"ranks    {self.ranks}: {share} tiles each")
        lines.append(self._disk_line())
        lines.append(self._memory_line())
        if self.measurement is not None:
            m = self.measurement
            lines.append(
                f"measured {m.tiles} tiles (read windows up to {m.largest_window[0]} x "
                f"{m.largest_window[1]}) on {m.device} ({m.precision}) in {m.seconds:.1f} s: "
                f"{m.window_mpx_s:.3g} Mpx/s of read window; {m.memory_kind} "
                f"{_memory(m.peak_memory)}"
            )
        lines.append(self._time_line())
        command = self.command(output or _placeholder(self.fmt), checkpoint, extra)
        lines.append(f"run      {command}")
        lines += [f"note     {note}" for note in self.notes]
        return "\n".join(lines)

    def _disk_line(self) -> str:
        product = f"product {_size(self.product_bytes)} uncompressed"
        if self.overview_bytes:
            product += f" (+{_size(self.overview_bytes)} of overviews)"
        text = (
            f"disk     {product}; partial store {_size(self.partial_bytes)} (float32, "
            f"uncompressed) during the run, both while finalising"
        )
        c = self.compression
        if c is None:
            return text + "; compression usually shrinks them"
        low, high = sorted((c.land, c.shelf))
        whole = self.product_bytes + self.overview_bytes
        return text + (
            f"; compressed {_size_range(whole / high, whole / low)} ({c.fmt} {c.dtype} shrank "
            f"{low:g}-{high:g}x on a land and a shelf DEM, {CALIBRATION})"
        )

    def _memory_line(self) -> str:
        m = self.memory
        parts = [f"weights {_memory(m.weights)}", f"tiles {_memory(m.activations)}"]
        if m.baseline is not None:
            parts.insert(0, f"base {_memory(m.baseline)}")
        source = m.calibration.source
        return f"memory   ~{_memory(m.total)} {m.kind} per rank ({' + '.join(parts)}; {source})"

    def _time_line(self) -> str:
        t = self.time
        one_time = ", ".join(f"{name} {_duration(s)}" for name, s in t.one_time.items())
        if one_time:
            one_time = f"one-time {one_time} (rates measured on {HOST_FIGURES.machine})"
        if t.tile_loop is None or t.output_mpx_s is None:
            return f"time     unknown: {t.source}" + (f"; {one_time}" if one_time else "")
        per_rank = " per rank" if self.ranks > 1 else ""
        total = t.total if t.total is not None else t.tile_loop
        return (
            f"time     ~{_duration(total)}: tiles {_duration(t.tile_loop)} at "
            f"{t.output_mpx_s:.3g} output Mpx/s{per_rank} ({t.source})"
            + (f" + {one_time}" if one_time else "")
        )


def _placeholder(fmt: str) -> str:
    return {"cog": "OUTPUT.tif", "netcdf": "OUTPUT.nc", "zarr": "OUTPUT.zarr"}.get(fmt, "OUTPUT")


def _count(value: float) -> str:
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


def _memory(value: float) -> str:
    """Bytes of memory, in binary units (as memory is sold and GPUs report it)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.0f} B"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _cell(cell_size: tuple[float, float]) -> str:
    x, y = cell_size
    return f"{x:.6g} x {y:.6g}"


def _target_device(device: str) -> str:
    """The device type ``device`` names (``auto``: CUDA where available, else the CPU), without
    requiring it to be present: a plan may be made for another machine."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return torch.device(device).type
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None


def _planned_precision(
    precision: str, device_type: str, bf16_bound_m: float | None, notes: list[str]
) -> str:
    """What ``auto`` resolves to on the target (:func:`demsr.precision.choose_precision`):
    fp32 for a model without a recorded bf16 error; otherwise this machine's answer for a
    device present here, and bf16 for an absent GPU (Ampere and newer), with a note."""
    import torch

    from demsr.model import check_precision
    from demsr.precision import choose_precision

    if precision != "auto":
        return check_precision(precision)
    if bf16_bound_m is None:
        return "fp32"
    if device_type == "cpu":
        return choose_precision("auto", torch.device("cpu"), bf16_bound_m).precision
    if device_type == "cuda" and torch.cuda.is_available():
        return choose_precision("auto", torch.device("cuda"), bf16_bound_m).precision
    notes.append(
        "precision auto taken as bf16: what it gives on Ampere and newer GPUs (fp32 on older)"
    )
    return "bf16"


def plan_prediction(
    input_path: str | os.PathLike[str],
    checkpoint: Checkpoint | str | os.PathLike[str] | None = None,
    settings: PredictSettings | None = None,
    *,
    ranks: int = 1,
    output_path: str | os.PathLike[str] | None = None,
    throughput_mpx_s: float | None = None,
    measure: bool = False,
    **options: Any,
) -> PredictionPlan:
    """Plan ``demsr predict`` of ``input_path`` with ``checkpoint`` (a file, a shipped model's
    name, a loaded :class:`~demsr.checkpoint.Checkpoint`; None: the shipped default) on
    ``ranks`` ranks of ``device`` (``auto``, ``cpu``, ``cuda``; need not be present unless
    ``measure``).

    The run's options are ``settings`` (:class:`~demsr.predict_settings.PredictSettings`, the
    object :func:`demsr.predict.predict_raster` takes; None: the defaults) with any of its fields
    given as keywords replacing them (``dtype`` stands for ``output_dtype``); ``device``,
    ``tile_px``, ``batch_size``, ``memory_bytes``, ``precision``, ``fmt``, ``output_dtype``,
    ``band``, ``variable`` and ``crs`` shape the plan.

    Reads the input's metadata only (``band``, ``variable``, ``crs`` as for
    :func:`demsr.io.open_raster`), unless ``measure``. The output format is ``fmt`` or
    ``output_path``'s extension (COG when neither is given); ``output_dtype`` float32 or int16.
    Throughput per rank (output Mpx/s, as ``demsr predict``'s progress bar shows it):
    ``throughput_mpx_s`` when given; else measured on a few tiles of the input when ``measure``
    (:func:`measure_throughput`); else from :data:`SPEED_FIGURES` for the model's shape, the
    device type and the precision, scaled to this tile grid; else unknown. Raises ValueError
    (RasterError for the input) for settings ``demsr predict`` would refuse.
    """
    import torch

    from demsr.checkpoint import as_checkpoint
    from demsr.model import DEMSRNet, SuperResolver
    from demsr.precision import recorded_bf16_bound
    from demsr.pretrained import pretrained_path

    if "dtype" in options:
        options["output_dtype"] = options.pop("dtype")
    settings = PredictSettings.of(settings, **options)
    device, tile_px, batch_size = settings.device, settings.tile_px, settings.batch_size
    memory_bytes, precision, fmt = settings.memory_bytes, settings.precision, settings.fmt
    dtype, band, variable = settings.output_dtype, settings.band, settings.variable
    crs = None if settings.crs is None else str(settings.crs)
    if (tile_px is not None and tile_px < 1) or batch_size < 1 or ranks < 1:
        raise ValueError(
            f"tile size, batch size and ranks must be >= 1, got {tile_px}, {batch_size}, {ranks}"
        )
    if throughput_mpx_s is not None and not throughput_mpx_s > 0:
        raise ValueError(f"throughput must be > 0 output Mpx/s, got {throughput_mpx_s}")
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"output dtype must be one of {OUTPUT_DTYPES}, got {dtype!r}")
    given_fmt = fmt
    if output_path is not None or fmt is not None:
        fmt = output_format(output_path or "OUTPUT", fmt)
    else:
        fmt = "cog"
    notes: list[str] = []
    device_type = _target_device(device)

    with open_raster(input_path, band, variable, crs=crs) as reader:
        rows, cols = reader.shape
        source_crs = require_crs(reader)
        crs_text = source_crs.to_string()
        wraps = global_period(reader.transform, reader.shape, source_crs.is_geographic)
        cell_size = (reader.transform.a, -reader.transform.e)
        path_text = reader.path

    loaded = as_checkpoint(checkpoint if checkpoint is not None else pretrained_path())
    mode = _planned_precision(precision, device_type, recorded_bf16_bound(loaded), notes)
    config = loaded.model_config
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        resolver = SuperResolver(DEMSRNet(config), loaded.scaling)
    margin, scale = resolver.margin_px, resolver.scale
    parameters = sum(p.numel() for p in resolver.parameters())
    model_name = preset_name(config)
    label = (
        f"{model_name or 'custom'} ({config.blocks} blocks x {config.channels} channels, "
        f"{parameters / 1e6:.2f} M parameters)"
    )

    given_tile_px = tile_px
    if tile_px is None:  # as demsr predict chooses it (demsr.predict._automatic_tile_px)
        budget, budget_source = (
            (memory_bytes, "given")
            if memory_bytes is not None
            else default_memory_bytes(device_type, ranks)
        )
        tile_px = choose_tile_px(
            rows,
            cols,
            margin,
            config,
            parameters,
            batch_size,
            device_type,
            budget,
            wrap=wraps is not None,
        )
        notes.append(
            f"tile size {tile_px}: the largest that fits in {_memory(budget)} ({budget_source}); "
            "--memory or --tile-px change it"
        )
    geometry = grid_geometry(rows, cols, tile_px, margin)
    sharding = shard_tiles(rows, cols, tile_px, margin, batch_size, ranks)
    per_rank = list(sharding.tiles_per_rank)
    if ranks > geometry.tiles:
        notes.append(f"{ranks - geometry.tiles} of the {ranks} ranks get no tile")
    out_rows, out_cols = rows * scale, cols * scale
    itemsize = 2 if dtype == "int16" else FLOAT32_BYTES
    product = out_rows * out_cols * itemsize
    memory = estimate_memory(config, parameters, sharding.largest_batch, device_type)

    measurement = None
    if measure:
        measurement = measure_throughput(
            input_path,
            loaded,
            band=band,
            variable=variable,
            crs=crs,
            device=device,
            tile_px=tile_px,
            batch_size=batch_size,
            precision=precision,
        )
    time_estimate = _estimate_time(
        geometry,
        scale,
        per_rank,
        model_name,
        device_type,
        mode,
        fmt,
        dtype,
        throughput_mpx_s,
        measurement,
    )
    if device_type == "cpu" and ranks > 1:
        notes.append(
            "CPU figures are for one process using every core; ranks sharing one machine share "
            "its cores"
        )
    figure = find_speed_figure(model_name, device_type, mode, tile_px)
    if (
        throughput_mpx_s is None
        and measurement is None
        and figure is not None
        and figure.machine != cpu_name()
        and device_type == "cpu"
    ):
        notes.append(
            f"the CPU figures were measured on {figure.machine}; this machine has {cpu_name()}: "
            "--measure times it here"
        )
    if device_type != "cpu":
        notes.append(
            "GPU memory: the CUDA context and cuDNN workspaces come on top; --measure on the GPU "
            "reports what torch reserved"
        )
    notes.append("all tiles assumed to hold data (all-nodata tiles are skipped: faster)")

    words = _options(
        device,
        given_tile_px,
        memory_bytes if given_tile_px is None else None,
        batch_size,
        precision,
        given_fmt,
        output_path,
        dtype,
        band,
        variable,
        crs,
    )
    return PredictionPlan(
        input_path=path_text,
        band=band,
        input_shape=(rows, cols),
        crs=crs_text,
        cell_size=cell_size,
        checkpoint=loaded.path,
        model=label,
        parameters=parameters,
        scale=scale,
        margin_px=margin,
        output_shape=(out_rows, out_cols),
        fmt=fmt,
        dtype=dtype,
        device=device_type,
        precision=mode,
        tile_px=tile_px,
        batch_size=batch_size,
        ranks=ranks,
        geometry=geometry,
        tiles_per_rank=tuple(per_rank),
        product_bytes=product,
        overview_bytes=product // 3 if fmt == "cog" else 0,
        partial_bytes=out_rows * out_cols * FLOAT32_BYTES,
        compression=next(
            (c for c in COMPRESSION_FIGURES if (c.fmt, c.dtype) == (fmt, dtype)), None
        ),
        memory=memory,
        time=time_estimate,
        measurement=measurement,
        notes=tuple(notes),
        options=tuple(words),
    )


def _options(
    device: str,
    tile_px: int | None,
    memory_bytes: int | None,
    batch_size: int,
    precision: str,
    fmt: str | None,
    output_path: str | os.PathLike[str] | None,
    dtype: str,
    band: int,
    variable: str | None,
    crs: str | None,
) -> list[str]:
    """``demsr predict``'s options for these settings (defaults left out; ``--format`` only
    where the output's extension does not say it: a plan without an output names one with the
    format's extension)."""
    words: list[str] = []
    if band != 1:
        words += ["--band", str(band)]
    if variable is not None:
        words += ["--variable", variable]
    if crs is not None:
        words += ["--crs", crs]
    if fmt is not None and output_path is not None:
        try:
            implied = output_format(output_path)
        except RasterError:
            implied = None
        if implied != output_format(output_path, fmt):
            words += ["--format", fmt]
    if dtype != "float32":
        words += ["--dtype", dtype]
    if tile_px is not None:
        words += ["--tile-px", str(tile_px)]
    if memory_bytes is not None:
        words += ["--memory", f"{memory_bytes / 2**20:g}MiB"]
    if batch_size != 1:
        words += ["--batch-size", str(batch_size)]
    if precision != "auto":
        words += ["--precision", precision]
    if device != "auto":
        words += ["--device", device]
    return words


def _estimate_time(
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
    output_mpx = geometry.rows * geometry.cols * scale**2 / 1e6
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
    one_time["input check"] = geometry.rows * geometry.cols / 1e6 / host.check_mcells_s
    if (fmt, dtype) in host.finalise_mpx_s:
        one_time["finalise"] = output_mpx / host.finalise_mpx_s[fmt, dtype]
    return TimeEstimate(rate, window_rate, source, tile_loop, one_time)
