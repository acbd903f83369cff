"""``demsr plan``: what ``demsr predict`` will take (tiles, ranks, disk, memory, time), without
running it; ``demsr predict --dry-run`` prints the same for its own settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from demsr.cli.options import (
    RASTER_PATH,
    band_option,
    batch_size_option,
    checkpoint_option,
    device_option,
    memory_option,
    precision_option,
    tile_px_option,
    tile_size_renamed,
)
from demsr.io import FORMATS, OUTPUT_DTYPES
from demsr.predict_settings import DEFAULTS, PredictSettings


@click.command("plan")
@click.argument("input_path", metavar="INPUT", type=RASTER_PATH)
@checkpoint_option()
@click.option(
    "--ranks",
    type=click.IntRange(min=1),
    envvar="WORLD_SIZE",
    default=1,
    show_default=True,
    help="Ranks (GPUs, or processes) the run will use under torchrun [default: $WORLD_SIZE "
    "when set].",
)
@device_option
@tile_px_option
@batch_size_option
@memory_option
@precision_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="cog",
    show_default=True,
    help="Output format (sets the size of the overviews: a COG's add a third).",
)
@click.option(
    "--dtype",
    type=click.Choice(OUTPUT_DTYPES),
    default=DEFAULTS.output_dtype,
    show_default=True,
    help="Output data type (int16 halves the product).",
)
@band_option
@click.option("--variable", help="Elevation variable of a NetCDF/Zarr INPUT.")
@click.option("--crs", help="CRS of an INPUT that declares none (e.g. EPSG:4326).")
@click.option(
    "--throughput",
    "throughput_mpx_s",
    type=click.FloatRange(min=0, min_open=True),
    metavar="MPX_S",
    help="Output Mpx/s per rank on the target machine (as demsr predict's progress bar shows "
    "it); replaces the recorded figures.",
)
@click.option(
    "--measure",
    is_flag=True,
    help="Time a few tiles of INPUT on --device after a warm-up (seconds on a GPU, up to a "
    "minute on a CPU) and use that throughput; reads those tiles only.",
)
@tile_size_renamed
def command(
    input_path: str,
    checkpoint: str | None,
    ranks: int,
    device: str,
    tile_px: int | None,
    batch_size: int,
    memory_bytes: int | None,
    precision: str,
    fmt: str,
    dtype: str,
    band: int,
    variable: str | None,
    crs: str | None,
    throughput_mpx_s: float | None,
    measure: bool,
) -> None:
    """Plan the super-resolution of INPUT: tiles, tiles per rank, output size on disk, memory
    per rank and wall time, and the command line that runs it.

    Reads INPUT's metadata only (its shape, transform and CRS; --measure also reads a few
    tiles), so a global grid is planned in seconds. The time comes from the throughput
    recorded for the model, device and precision (benchmarks/plan_calibration.md: this
    project's 2-core CPU; no GPU figure is recorded yet), scaled to the tile size, or from
    --throughput or --measure; without any of them the time is reported as unknown.
    Memory is an estimate from the model's shapes, calibrated on the CPU.
    """
    from demsr.plan import plan_prediction

    settings = PredictSettings(
        device=device,
        tile_px=tile_px,
        batch_size=batch_size,
        memory_bytes=memory_bytes,
        precision=precision,
        fmt=fmt,
        output_dtype=dtype,
        band=band,
        variable=variable,
        crs=crs,
    )
    plan = plan_prediction(
        input_path,
        checkpoint,
        settings,
        ranks=ranks,
        throughput_mpx_s=throughput_mpx_s,
        measure=measure,
    )
    click.echo(plan.describe(checkpoint=checkpoint))


def print_dry_run(
    checkpoint: Path,
    input_path: str,
    output_path: str,
    settings: PredictSettings,
    params: dict[str, Any],
) -> None:
    """``demsr predict --dry-run``: print the plan of the run of ``settings`` (``params``, the
    predict command's parameters, give the options the plan's command line repeats as they
    are), with ``checkpoint`` resolved; write nothing. Under torchrun only rank 0 prints, and
    the ranks are torchrun's."""
    from demsr.distributed import context
    from demsr.partial import partial_progress
    from demsr.plan import plan_prediction

    ranks = context()
    if not ranks.is_main:
        return
    plan = plan_prediction(
        input_path, checkpoint, settings, ranks=ranks.world_size, output_path=output_path
    )
    extra = []
    if params["input_datum"] is not None:
        extra += ["--input-datum", params["input_datum"]]
    if params["output_datum"] is not None:
        extra += ["--output-datum", params["output_datum"]]
    flags = {
        "compile": "--compile",
        "overwrite": "--overwrite",
        "resume": "--resume",
        "keep_row_order": "--keep-row-order",
        "ensemble": "--ensemble",
    }
    extra += [flag for name, flag in flags.items() if getattr(settings, name)]
    given = click.get_current_context().get_parameter_source("progress")
    if given is click.core.ParameterSource.COMMANDLINE:  # else: the run decides for itself
        extra.append("--progress" if params["progress"] else "--no-progress")
    model = params["paths"][0] if len(params["paths"]) == 3 else params["checkpoint"]
    click.echo(plan.describe(output_path, model, extra))
    if settings.ensemble:
        click.echo(
            "note     --ensemble: 8 network passes per tile (about 8x the time above) and a "
            "second float32 band (about twice the output)"
        )
    if Path(output_path).exists() and not settings.overwrite:
        click.echo(f"note     {output_path} exists: demsr predict refuses it without --overwrite")
    progress = partial_progress(output_path)
    if progress is not None and not settings.resume:
        done, total = progress
        click.echo(
            f"note     an interrupted run kept {done} of {total} tiles: --resume continues it"
        )
