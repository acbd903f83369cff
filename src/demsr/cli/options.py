"""Options shared by several subcommands, defined once.

One spelling per idea across the commands: a checkpoint is ``--checkpoint`` wherever a model
runs, tile and patch sides are ``--*-px``, a folder to write into is ``--output-dir`` and a file
``--output``. Spellings that were renamed stay for a release as hidden options
(:func:`renamed_option`) that log one deprecation line naming the new one.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click
from click.core import ParameterSource

from demsr.predict_settings import DEFAULTS as PREDICT_DEFAULTS

log = logging.getLogger("demsr.cli")

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

_RENAMED_VALUES = "demsr.renamed_options"


def renamed_option(
    old: str, new: str, name: str, *, required: bool = False, **attrs: Any
) -> Decorator:
    """A hidden option ``old``: the spelling of option ``new`` (parameter ``name``) before it
    was renamed. It sets the same parameter and logs one deprecation line naming ``new``; giving
    both is a usage error. ``required``: the parameter must come from one of the two (declare
    ``new`` itself as not required, saying "[required]" in its help). ``attrs`` (``type``,
    ``multiple``, ...) as for ``new``. Put it between ``@click.command`` and the function."""

    def remember(ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        if value is None or value == ():
            return value
        log.warning("%s is deprecated, use %s (the old spelling goes in a later release)", old, new)
        ctx.meta.setdefault(_RENAMED_VALUES, {})[name] = value
        return value

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def call(*args: Any, **kwargs: Any) -> Any:
            ctx = click.get_current_context()
            values = ctx.meta.get(_RENAMED_VALUES, {})
            if name in values:
                if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE:
                    raise click.UsageError(f"give {new} or {old} (its old spelling), not both")
                kwargs[name] = ctx.params[name] = values[name]
            if required and kwargs.get(name) in (None, ()):
                param = next(p for p in ctx.command.params if p.name == name)
                raise click.MissingParameter(ctx=ctx, param=param)
            return function(*args, **kwargs)

        alias = click.option(
            old,
            f"renamed_{name}",
            hidden=True,
            expose_value=False,
            callback=remember,
            default=None,
            **attrs,
        )
        return alias(call)

    return decorate


def checkpoint_option(
    help: str = "Checkpoint file, or the name of a shipped model (lite) [default: lite, the "
    "shipped model].",
    multiple: bool = False,
) -> Decorator:
    """``--checkpoint CKPT``: how every command that runs a model takes it."""
    return click.option(
        "--checkpoint",
        "checkpoint",
        metavar="CKPT",
        multiple=multiple,
        default=() if multiple else None,
        help=help,
    )


def positional_checkpoint(
    checkpoint: str | None, paths: Sequence[str], names: str, missing: str
) -> tuple[str | None, list[str]]:
    """(checkpoint, other paths) of a command taking ``[CHECKPOINT] PATHS...`` or ``--checkpoint
    CKPT PATHS...`` (``names``: the usage, e.g. ``[CHECKPOINT] INPUT OUTPUT``): the first of
    ``paths`` is the checkpoint when there is one more path than the command needs. Without a
    checkpoint, a first path that names one (``.safetensors``, a shipped model) is a usage error
    saying that ``missing`` (the last path's name, e.g. ``the output``) is missing."""
    from demsr.pretrained import is_shipped_name

    needed = len(names.split()) - 1
    if len(paths) not in (needed, needed + 1):
        raise click.UsageError(f"expected {names}, got {len(paths)} argument(s)")
    if len(paths) == needed:
        first = paths[0]
        if checkpoint is None and (
            first.lower().endswith(".safetensors") or is_shipped_name(first)
        ):
            raise click.UsageError(f"{first} is a checkpoint: give {names} ({missing} is missing)")
        return checkpoint, list(paths)
    if checkpoint is not None:
        raise click.UsageError(
            f"give the checkpoint once: --checkpoint {checkpoint} or {paths[0]} before the "
            f"other arguments, not both (expected {names})"
        )
    return paths[0], list(paths[1:])


# A raster to read: any file demsr.io.open_raster takes, or a directory (a Zarr store). Whether
# the path holds a raster is for the library to say, with the file named in the error.
RASTER_PATH = click.Path()

device_option = click.option(
    "--device",
    default="auto",
    show_default=True,
    help="Where the network runs: auto (CUDA if available), cpu, cuda or cuda:N.",
)
overwrite_option = click.option(
    "--overwrite", is_flag=True, help="Replace existing outputs instead of refusing."
)
# How predict (and plan, which plans a predict run) cuts and runs the tiles; the defaults are
# demsr.predict_settings.PredictSettings's.
tile_px_option = click.option(
    "--tile-px",
    "tile_px",
    type=click.IntRange(min=1),
    default=PREDICT_DEFAULTS.tile_px,
    help="Tile side in input (low-res) cells, before the margin [default: the largest, up to "
    "1024 and the raster's own size, whose batch fits in --memory].",
)
tile_size_renamed = renamed_option(
    "--tile-size", "--tile-px", "tile_px", type=click.IntRange(min=1)
)


class MemorySize(click.ParamType):
    """A memory size with a binary unit (``512MiB``, ``4G``, ``1.5GiB``: ``K``/``M``/``G``/``T``
    mean KiB ... TiB; a number alone is MiB), as an int of bytes."""

    name = "size"
    UNITS = {"": 2**20, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower().replace(" ", "")
        for suffix in ("ib", "b"):
            if text.endswith(suffix) and text[: -len(suffix)][-1:].isalpha():
                text = text[: -len(suffix)]
                break
        unit = text[-1:] if text[-1:].isalpha() else ""
        try:
            number = float(text[: len(text) - len(unit)])
            size = int(number * self.UNITS[unit])
        except (KeyError, ValueError):
            self.fail(f"{value!r} is not a memory size (e.g. 512MiB, 4GiB)", param, ctx)
        if size <= 0:
            self.fail(f"{value!r} is not a positive memory size", param, ctx)
        return size


memory_option = click.option(
    "--memory",
    "memory_bytes",
    type=MemorySize(),
    default=PREDICT_DEFAULTS.memory_bytes,
    metavar="SIZE",
    help="Memory one process may use, e.g. 2GiB (as demsr plan estimates it: the model, its "
    "weights and a batch of tiles); sets the tile size when --tile-px is not given "
    "[default: a quarter of the RAM, split between the ranks of one machine; half of the "
    "GPU's].",
)
batch_size_option = click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=PREDICT_DEFAULTS.batch_size,
    show_default=True,
    help="Tiles per forward pass.",
)
precision_option = click.option(
    "--precision",
    type=click.Choice(("auto", "fp32", "bf16")),
    default=PREDICT_DEFAULTS.precision,
    show_default=True,
    help="Network precision: auto runs the residual blocks in bf16 where the device has "
    "native bf16 (recent GPUs; CPUs with AMX or AVX512-BF16) and the checkpoint records the "
    "model's measured bf16 error (the shipped model: <= 0.17 m on real DEMs), else fp32. "
    "Elevations, the residual stream and the output stay float32.",
)
band_option = click.option(
    "--band",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Band of the input raster holding the elevations.",
)
config_options = [
    click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        help="YAML run config (e.g. configs/lite.yaml); defaults otherwise.",
    ),
    click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="SECTION.KEY=VALUE",
        help="Override one config value (type-checked; repeatable), e.g. --set train.epochs=5.",
    ),
]


def stacked(options: Sequence[Decorator]) -> Decorator:
    """One decorator applying ``options`` so that they appear in --help in list order."""

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


with_config_options = stacked(config_options)


def _resolve_progress(ctx: click.Context, _param: click.Parameter, value: bool | None) -> bool:
    """Bars where someone watches them (tqdm's convention): on a terminal, unless -q. Off a
    terminal (a log file, a batch job) their frames would flood the log; the commands log one
    summary line instead."""
    if value is not None:
        return value
    quiet = ctx.find_root().params.get("quiet", 0)
    return bool(sys.stderr.isatty()) and not quiet


progress_option = click.option(
    "--progress/--no-progress",
    default=None,
    callback=_resolve_progress,
    help="Show progress bars [default: when stderr is a terminal and -q is not given].",
)
# The options of the commands that train (train, finetune), after --config and --set.
run_options = [
    click.option(
        "--data",
        "data_dir",
        type=click.Path(file_okay=False),
        help="Folder with train/train.h5 and valid/valid.h5 (sets data.root_dir).",
    ),
    click.option(
        "--output-dir",
        type=click.Path(file_okay=False),
        help="Run folder for checkpoints and logs (sets summary.output_dir).",
    ),
    click.option("--resume", is_flag=True, help="Continue the run in the output folder."),
    progress_option,
]


def with_run_options(function: Callable[..., Any]) -> Callable[..., Any]:
    return with_config_options(stacked(run_options)(function))


# How `evaluate` and `report` score models: the baselines beside them, self-ensembles, and cell
# sizes for slope on pair files. The baseline names are demsr.baselines.BASELINES (written out so
# that parsing the command line does not import torch; a test checks they agree).
BASELINE_NAMES = ("bilinear", "bicubic", "cubic_spline", "lanczos", "bicubic_backprojection")


def _all_baselines_unless_named(
    _ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]
) -> tuple[str, ...]:
    return value or BASELINE_NAMES


scoring_options = [
    click.option(
        "--baseline",
        "baselines",
        multiple=True,
        type=click.Choice(BASELINE_NAMES),
        callback=_all_baselines_unless_named,
        help="Baseline(s) to compare with (repeatable): GDAL's kernels, and bicubic + 4 "
        "back-projection steps (the strongest parameter-free method) [default: all five].",
    ),
    click.option(
        "--self-ensemble",
        is_flag=True,
        help="Average each model over the 8 flips/rotations of its input (8x slower).",
    ),
    click.option(
        "--cell-size-m",
        nargs=2,
        type=click.FloatRange(min=0, min_open=True),
        metavar="X_M Y_M",
        help="High-res cell size for slope/aspect on pair files whose source rasters are not "
        "found.",
    ),
]

with_scoring_options = stacked(scoring_options)


datum_options = [
    click.option(
        "--fine-datum",
        type=click.Choice(("egm96", "wgs84")),
        default="egm96",
        show_default=True,
        help="Vertical datum of the fine DEM's heights, with --lowres (converted to the "
        "low-res raster's, with the bundled EGM96 geoid).",
    ),
    click.option(
        "--lowres-datum",
        type=click.Choice(("egm96", "wgs84")),
        default="egm96",
        show_default=True,
        help="Vertical datum of the --lowres raster's heights (GEBCO, SRTM15+: egm96).",
    ),
]
# (The datum names are demsr.datum.DATUMS, written out so that parsing does not import pyproj.)
with_datum_options = stacked(datum_options)
