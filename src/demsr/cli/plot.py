"""``demsr plot``: comparison figures from rasters on disk, and training curves."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from demsr.cli.options import checkpoint_option, device_option, overwrite_option

if TYPE_CHECKING:
    from demsr.comparison import Comparison

# demsr.plot's defaults, written out so that every demsr command does not pay for importing
# matplotlib and scikit-image at start-up (tests check that they match).
DEFAULT_DPI = 150
VERTICAL_EXAGGERATION = 2.0

output_option = click.option(
    "-o",
    "--output",
    "output_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Picture to write; the format follows its suffix (.png, .pdf, .svg; none: .png).",
)
dpi_option = click.option(
    "--dpi",
    type=click.IntRange(min=10, max=1200),
    default=DEFAULT_DPI,
    show_default=True,
    help="Pixels per inch of the picture.",
)


@click.group("plot")
def command() -> None:
    """Figures: low-res / truth / prediction / error panels, and training curves."""


@command.command("curves")
@click.argument("run", metavar="RUN_DIR_OR_CSV", type=click.Path())
@output_option
@dpi_option
@overwrite_option
def curves_command(run: str, output_path: str, dpi: int, overwrite: bool) -> None:
    """Training and validation loss, validation RMSE (best epoch marked) and learning rate
    against epoch, from a run folder's metrics.csv (or from the CSV itself)."""
    from demsr.io import refuse_output_over_input
    from demsr.plot import check_output_path, plot_training_curves, save_figure

    run_path = Path(run)
    refuse_output_over_input(
        [check_output_path(output_path, overwrite=True)],
        [run_path, *(run_path / name for name in ("metrics.csv", "best.safetensors"))],
    )
    check_output_path(output_path, overwrite=overwrite)
    figure = plot_training_curves(run)
    click.echo(str(save_figure(figure, output_path, dpi=dpi, overwrite=overwrite)))


def _parse_baselines(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str | None]:
    baselines: dict[str, str | None] = {}
    for value in values:
        name, _, path = value.partition("=")
        name = name.strip()
        if not name or ("=" in value and not path):
            raise click.BadParameter(f"expected NAME=PATH or NAME, got {value!r}")
        if name in baselines:
            raise click.BadParameter(f"baseline {name!r} given twice")
        baselines[name] = path or None
    return baselines


def read_inputs(
    lowres: str | None,
    truth: str,
    prediction: str | None,
    checkpoint: str | None,
    baselines: dict[str, str | None],
    bounds: tuple[float, float, float, float] | None,
    device: str,
) -> Comparison:
    """The arrays to plot, on one checked grid: read from rasters, or with ``checkpoint`` the
    prediction made here from the low-res input (the truth degraded when there is none)."""
    from demsr.comparison import comparison_from_checkpoint, read_comparison

    if checkpoint is None:
        if lowres is None or prediction is None:
            raise click.UsageError("give --lowres and --prediction, or --checkpoint")
        return read_comparison(lowres, truth, prediction, baselines=baselines, bounds=bounds)
    if prediction is not None:
        raise click.UsageError("give --prediction or --checkpoint, not both")
    if bounds is not None:
        raise click.UsageError("--bounds works with --prediction only; crop the truth first")
    for name, path in baselines.items():
        if path is not None:
            raise click.UsageError(f"--baseline {name}={path}: with --checkpoint give names only")
    from demsr.evaluation_inputs import PAIR_SUFFIXES

    if Path(truth).suffix.lower() in PAIR_SUFFIXES:
        raise click.UsageError(f"{truth}: a raster is needed here (use demsr report for pairs)")
    return comparison_from_checkpoint(
        checkpoint, truth, lowres, baselines=list(baselines), device=device
    )


@command.command("compare")
@click.option(
    "--lowres",
    type=click.Path(),
    help="Low-res input raster (e.g. made by demsr degrade); with --checkpoint and without "
    "it, the truth is degraded by block mean.",
)
@click.option(
    "--truth",
    required=True,
    type=click.Path(),
    help="High-res truth: the prediction's CRS and cell size, covering it (a larger raster is "
    "read over the prediction's cells).",
)
@checkpoint_option(
    "Run this model (a checkpoint file, or lite: the shipped model) on the low-res input "
    "instead of reading --prediction."
)
@device_option
@click.option(
    "--prediction",
    type=click.Path(),
    help="Prediction from the low-res input (e.g. made by demsr predict): the low-res grid "
    "refined by an integer scale over the same bounds.",
)
@click.option(
    "--baseline",
    "baselines",
    multiple=True,
    metavar="NAME[=PATH]",
    callback=_parse_baselines,
    help="Another prediction shown with its error panel (repeatable): a raster on the "
    "prediction's grid, or the name of one of demsr evaluate's classical baselines (e.g. "
    "bicubic) to compute it from the low-res input.",
)
@click.option(
    "--name",
    "prediction_name",
    default="DEM-SRNet",
    show_default=True,
    help="Name of the prediction in the panel titles.",
)
@click.option("--title", help="Title above the figure.")
@click.option(
    "--bounds",
    nargs=4,
    type=float,
    metavar="LEFT BOTTOM RIGHT TOP",
    help="Plot only this area (CRS units, e.g. degrees), widened to whole low-res cells. "
    "Needed for rasters over 50 million high-res cells.",
)
@click.option(
    "--max-pixels",
    type=click.IntRange(min=2),
    help="Most cells shown along a panel's longer side; larger grids are block-averaged for "
    "display (RMSE uses every cell) [default: about a panel's size in pixels at --dpi].",
)
@click.option(
    "--vertical-exaggeration",
    type=click.FloatRange(min=0, min_open=True),
    default=VERTICAL_EXAGGERATION,
    show_default=True,
    help="Vertical exaggeration of the hillshade.",
)
@output_option
@dpi_option
@overwrite_option
def compare_command(
    lowres: str | None,
    truth: str,
    checkpoint: str | None,
    device: str,
    prediction: str | None,
    baselines: dict[str, str | None],
    prediction_name: str,
    title: str | None,
    bounds: tuple[float, float, float, float] | None,
    max_pixels: int | None,
    vertical_exaggeration: float,
    output_path: str,
    dpi: int,
    overwrite: bool,
) -> None:
    """Low-res input, truth, prediction and baselines with hillshade, and each one's error
    (prediction - truth) titled with its RMSE in metres: from rasters already on disk
    (--lowres, --truth, --prediction), or running --checkpoint on --lowres (or on the block
    mean of --truth).

    Elevation panels share one colour scale (the truth's 1st-99th percentiles); error panels
    share symmetric limits (99th percentile of |error|); nodata is grey.
    """
    from demsr.io import refuse_output_over_input
    from demsr.plot import check_output_path, save_figure

    inputs = [lowres, truth, checkpoint, prediction, *baselines.values()]
    refuse_output_over_input([check_output_path(output_path, overwrite=True)], inputs)
    check_output_path(output_path, overwrite=overwrite)
    if prediction_name in baselines:
        raise click.BadParameter(
            f"baseline {prediction_name!r} has the prediction's name", param_hint="--baseline"
        )
    comparison = read_inputs(lowres, truth, prediction, checkpoint, baselines, bounds, device)
    figure = comparison.plot(
        prediction_name=prediction_name,
        title=title,
        max_pixels=max_pixels,
        vertical_exaggeration=vertical_exaggeration,
        dpi=dpi,
    )
    click.echo(str(save_figure(figure, output_path, overwrite=overwrite)))
