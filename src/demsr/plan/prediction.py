"""The plan of one prediction run: :func:`plan_prediction` works out what ``demsr predict`` will
do with a raster, a model and settings, and returns it as a :class:`PredictionPlan`, from the
raster's metadata (its :class:`~demsr.grid.Grid`: never its cells, of which a global 15" grid
holds 3.7 billion) and the model's shapes, gathering the other modules of :mod:`demsr.plan`:
the tile grid and the ranks' shares (:mod:`~demsr.plan.geometry`), the memory and the
automatic tile size (:mod:`~demsr.plan.memory`), the time (:mod:`~demsr.plan.timing`, with
:mod:`~demsr.plan.measure` for ``measure``), the text (:mod:`~demsr.plan.text`) and the
command line (:mod:`~demsr.plan.command`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from demsr.grid import Grid
from demsr.io import OUTPUT_DTYPES, open_raster, output_format, require_crs
from demsr.plan.command import predict_command, predict_options
from demsr.plan.figures import (
    CompressionFigure,
    find_compression_figure,
    find_speed_figure,
    preset_name,
)
from demsr.plan.geometry import GridGeometry, grid_geometry, shard_tiles
from demsr.plan.host import cpu_name
from demsr.plan.measure import Measurement, measure_throughput
from demsr.plan.memory import FLOAT32_BYTES, MemoryEstimate, automatic_tile_px, estimate_memory
from demsr.plan.text import describe_plan, format_memory
from demsr.plan.timing import TimeEstimate, estimate_time
from demsr.predict_settings import PredictSettings
from demsr.tiling import global_period

if TYPE_CHECKING:
    from demsr.checkpoint import Checkpoint


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
        return predict_command(
            self.input_path,
            output,
            self.options,
            ranks=self.ranks,
            checkpoint=checkpoint,
            extra=extra,
        )

    def describe(
        self, output: str | None = None, checkpoint: str | None = None, extra: Sequence[str] = ()
    ) -> str:
        """The plan as a few lines of text for the terminal
        (:func:`~demsr.plan.text.describe_plan`); the command line names ``output`` (default:
        ``OUTPUT`` with the format's extension) and ``checkpoint`` (default: none, i.e. the
        shipped model) and ends with ``extra`` options."""
        return describe_plan(self, output, checkpoint, extra)


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
    (:func:`~demsr.plan.measure.measure_throughput`); else from
    :data:`~demsr.plan.figures.SPEED_FIGURES` for the model's shape, the device type and the
    precision, scaled to this tile grid; else unknown. Raises ValueError (RasterError for the
    input) for settings ``demsr predict`` would refuse.
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
    if output_path is not None or settings.fmt is not None:
        fmt = output_format(output_path or "OUTPUT", settings.fmt)
    else:
        fmt = "cog"
    notes: list[str] = []
    device_type = _target_device(device)

    with open_raster(input_path, band, variable, crs=crs) as reader:
        source_crs = require_crs(reader)
        grid = Grid.of(reader)
        path_text = reader.path
    wraps = global_period(grid.transform, grid.shape, source_crs.is_geographic)
    cell_size = (grid.transform.a, -grid.transform.e)

    loaded = as_checkpoint(checkpoint if checkpoint is not None else pretrained_path())
    mode = _planned_precision(settings.precision, device_type, recorded_bf16_bound(loaded), notes)
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

    if tile_px is None:  # as demsr predict chooses it (demsr.predict._automatic_tile_px)
        tile_px, budget, budget_source = automatic_tile_px(
            grid.shape,
            margin,
            config,
            parameters,
            batch_size,
            device_type,
            settings.memory_bytes,
            ranks,
            wrap=wraps is not None,
        )
        notes.append(
            f"tile size {tile_px}: the largest that fits in {format_memory(budget)} "
            f"({budget_source}); --memory or --tile-px change it"
        )
    geometry = grid_geometry(grid.shape, tile_px, margin)
    sharding = shard_tiles(grid.shape, tile_px, margin, batch_size, ranks)
    per_rank = list(sharding.tiles_per_rank)
    if ranks > geometry.tiles:
        notes.append(f"{ranks - geometry.tiles} of the {ranks} ranks get no tile")
    output_grid = grid.refine(scale)
    out_rows, out_cols = output_grid.shape
    itemsize = 2 if dtype == "int16" else FLOAT32_BYTES
    product = out_rows * out_cols * itemsize
    memory = estimate_memory(config, parameters, sharding.largest_batch, device_type)

    measurement = None
    if measure:
        measured = PredictSettings.of(settings, tile_px=tile_px)
        measurement = measure_throughput(input_path, loaded, measured)
    time_estimate = estimate_time(
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

    return PredictionPlan(
        input_path=path_text,
        band=band,
        input_shape=grid.shape,
        crs=source_crs.to_string(),
        cell_size=cell_size,
        checkpoint=loaded.path,
        model=label,
        parameters=parameters,
        scale=scale,
        margin_px=margin,
        output_shape=output_grid.shape,
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
        compression=find_compression_figure(fmt, dtype),
        memory=memory,
        time=time_estimate,
        measurement=measurement,
        notes=tuple(notes),
        options=tuple(predict_options(settings, output_path)),
    )
