"""The recorded figures a plan rests on: speeds of ``demsr predict``'s tile loop, the constants
of the memory formula, the host's one-time costs and how much products compress.

All were measured by ``benchmarks/plan_calibration.py`` (recorded in
``benchmarks/plan_calibration.md``) on this project's CPU and copied here by hand; none exists
for a GPU yet. :func:`find_speed_figure` picks the speed that fits a model shape, a device, a
precision and a tile size; :func:`preset_name` names the shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from demsr.model import ModelConfig

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
    # benchmarks/plan_calibration.py (2026-12-05): the shipped lite model (margin 63) and an
    # untrained paper-shaped model (trend scaling, margin 101), `demsr predict` run as is.
    SpeedFigure("lite", "cpu", "bf16", 5.02, 64, 63, THIS_CPU, CALIBRATION),
    SpeedFigure("lite", "cpu", "bf16", 6.09, 128, 63, THIS_CPU, CALIBRATION),
    # Larger windows run slower per cell on this CPU (the feature maps outgrow its caches).
    SpeedFigure("lite", "cpu", "bf16", 4.11, 256, 63, THIS_CPU, CALIBRATION),
    SpeedFigure("lite", "cpu", "bf16", 2.54, 512, 63, THIS_CPU, CALIBRATION),
    SpeedFigure("lite", "cpu", "bf16", 2.15, 1024, 63, THIS_CPU, CALIBRATION),
    SpeedFigure("lite", "cpu", "fp32", 2.47, 128, 63, THIS_CPU, CALIBRATION),
    SpeedFigure("paper", "cpu", "bf16", 0.084, 48, 101, THIS_CPU, CALIBRATION),
    SpeedFigure("paper", "cpu", "bf16", 0.080, 96, 101, THIS_CPU, CALIBRATION),
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
    """Constants of the memory formula (:func:`demsr.plan.memory.estimate_memory`) for one kind
    of device.

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
    # the tile loop (lite at tiles 64-1024, paper at 48/96), the baseline raised to cover
    # every case of the 2026-12-05 runs (lite's peaks had grown past the formula with the
    # reading and writing threads). Two copies of the weights: the loaded checkpoint's and the
    # network's.
    "cpu": MemoryCalibration(
        baseline_mib=475.0,
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
    check_mcells_s=67.0,
    # The slower of the land and shelf DEMs' figures.
    finalise_mpx_s={
        ("cog", "float32"): 13.0,
        ("cog", "int16"): 15.6,
        ("netcdf", "float32"): 11.7,
        ("netcdf", "int16"): 24.7,
        ("zarr", "float32"): 25.0,
        ("zarr", "int16"): 31.5,
    },
    startup_s={"lite": 1.1, "paper": 1.1},
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
    CompressionFigure("cog", "int16", 3.6, 4.1),
    CompressionFigure("netcdf", "float32", 1.7, 1.5),
    CompressionFigure("netcdf", "int16", 3.7, 4.4),
    CompressionFigure("zarr", "float32", 1.6, 1.4),
    CompressionFigure("zarr", "int16", 2.3, 2.8),
)


def find_compression_figure(fmt: str, dtype: str) -> CompressionFigure | None:
    """The recorded compression of products of format ``fmt`` and data type ``dtype``."""
    return next((c for c in COMPRESSION_FIGURES if (c.fmt, c.dtype) == (fmt, dtype)), None)


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
