"""Plan a prediction before running it: tiles, ranks, disk, memory and time.

:func:`plan_prediction` works out what ``demsr predict`` will do with a raster and a model at
given settings, from the raster's metadata (its grid: shape, transform, CRS; never its cells, of
which a global 15" grid holds 3.7 billion) and the model's shapes. One module per job, all of
whose public names are imported from ``demsr.plan``:

- :mod:`~demsr.plan.figures`: the recorded figures (speeds of the tile loop, the memory
  formula's constants, one-time costs, compression), measured on this project's CPU, none yet
  on a GPU;
- :mod:`~demsr.plan.host`: facts about this machine (CPU, physical memory, ranks sharing it,
  peak memory of this process);
- :mod:`~demsr.plan.geometry`: the tile grid (tiles, the largest read window, the share of the
  network's work that is output) and how many tiles each of N ranks predicts when the batches
  are dealt out round-robin (rank r takes batches r, r+N, r+2N, ...);
- :mod:`~demsr.plan.memory`: the memory of one rank (a formula over the model's shapes:
  weights; C-channel maps at low resolution and one-channel maps at high resolution, per tile
  of a batch), the default budget, and the largest tile that fits (which ``demsr predict``
  takes too);
- :mod:`~demsr.plan.measure`: the throughput measured on a few tiles of the input;
- :mod:`~demsr.plan.timing`: the wall time, output megapixels over the throughput per rank
  (recorded, given or measured), plus the one-time costs (start-up, the input check that reads
  every cell, the conversion of the partial store into the product);
- :mod:`~demsr.plan.prediction`: :class:`PredictionPlan` and :func:`plan_prediction`, which
  gathers the above, with the product's size on disk, uncompressed (float32 or int16 cells; COG
  overviews add a third), and the partial store's during the run (float32);
- :mod:`~demsr.plan.text`: the plan as text for the terminal;
- :mod:`~demsr.plan.command`: the ``demsr predict`` command line that runs it.
"""

from demsr.plan.command import placeholder_output, predict_command, predict_options
from demsr.plan.figures import (
    CALIBRATION,
    COMPRESSION_FIGURES,
    HOST_FIGURES,
    MEMORY_CALIBRATION,
    SPEED_FIGURES,
    THIS_CPU,
    CompressionFigure,
    HostFigures,
    MemoryCalibration,
    SpeedFigure,
    find_compression_figure,
    find_speed_figure,
    preset_name,
)
from demsr.plan.geometry import GridGeometry, Sharding, grid_geometry, shard_tiles
from demsr.plan.host import cpu_model, cpu_name, local_ranks, peak_rss_bytes, physical_memory_bytes
from demsr.plan.measure import Measurement, measure_throughput
from demsr.plan.memory import (
    ABSENT_GPU_BYTES,
    FLOAT32_BYTES,
    MAX_TILE_PX,
    MEMORY_SHARE,
    MIB,
    MemoryEstimate,
    automatic_tile_px,
    choose_tile_px,
    default_memory_bytes,
    estimate_memory,
)
from demsr.plan.prediction import PredictionPlan, plan_prediction
from demsr.plan.text import describe_plan, format_memory
from demsr.plan.timing import TimeEstimate, estimate_time

__all__ = [
    "ABSENT_GPU_BYTES",
    "CALIBRATION",
    "COMPRESSION_FIGURES",
    "FLOAT32_BYTES",
    "HOST_FIGURES",
    "MAX_TILE_PX",
    "MEMORY_CALIBRATION",
    "MEMORY_SHARE",
    "MIB",
    "SPEED_FIGURES",
    "THIS_CPU",
    "CompressionFigure",
    "GridGeometry",
    "HostFigures",
    "Measurement",
    "MemoryCalibration",
    "MemoryEstimate",
    "PredictionPlan",
    "Sharding",
    "SpeedFigure",
    "TimeEstimate",
    "automatic_tile_px",
    "choose_tile_px",
    "cpu_model",
    "cpu_name",
    "default_memory_bytes",
    "describe_plan",
    "estimate_memory",
    "estimate_time",
    "find_compression_figure",
    "find_speed_figure",
    "format_memory",
    "grid_geometry",
    "local_ranks",
    "measure_throughput",
    "peak_rss_bytes",
    "physical_memory_bytes",
    "placeholder_output",
    "plan_prediction",
    "predict_command",
    "predict_options",
    "preset_name",
    "shard_tiles",
]
