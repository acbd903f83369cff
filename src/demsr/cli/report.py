"""``demsr report``: one page with metric tables, figures and provenance."""

from __future__ import annotations

import click

from demsr.cli.options import (
    RASTER_PATH,
    band_option,
    checkpoint_option,
    device_option,
    overwrite_option,
    progress_option,
    with_datum_options,
    with_scoring_options,
)


@click.command("report")
@click.argument("checkpoints", nargs=-1)
@checkpoint_option(
    "Checkpoint file, or the name of a shipped model (lite), to score (repeatable; after any "
    "CHECKPOINTS) [default: lite, the shipped model].",
    multiple=True,
)
@click.option(
    "--data",
    required=True,
    type=RASTER_PATH,
    help="Pair file (.h5), high-res raster (degraded first), or with --lowres the reference.",
)
@click.option(
    "--lowres",
    "lowres_path",
    type=RASTER_PATH,
    help="Low-res raster (e.g. a real GEBCO/SRTM15+ product) whose high-res reference is "
    "--data: a fine DEM, put onto its sub-grid as by evaluate --lowres.",
)
@click.option(
    "-o",
    "--output",
    "output_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="report.html (one self-contained file) or report.md (+ report_files/ with PNGs).",
)
@with_datum_options
@with_scoring_options
@click.option(
    "--pair-index",
    type=click.IntRange(min=0),
    help="Pair drawn in the figure [default: the one with the largest relief].",
)
@band_option
@device_option
@overwrite_option
@progress_option
def command(
    checkpoints: tuple[str, ...],
    checkpoint: tuple[str, ...],
    data: str,
    lowres_path: str | None,
    fine_datum: str,
    lowres_datum: str,
    output_path: str,
    baselines: tuple[str, ...],
    self_ensemble: bool,
    cell_size_m: tuple[float, float] | None,
    pair_index: int | None,
    band: int,
    device: str,
    overwrite: bool,
    progress: bool,
) -> None:
    """Score one or more CHECKPOINTS and interpolation baselines on the same data and write one
    page: the metric tables (every method on the same cells), the low-res / truth / prediction /
    error figure, each run's training curves (from the metrics.csv next to a checkpoint) and
    each checkpoint's provenance (file hash, model, training data, parent). A checkpoint is a
    file or the name of a shipped model (lite), given as CHECKPOINTS or --checkpoint CKPT
    (repeatable) [default: lite]."""
    from demsr.io import refuse_output_over_input
    from demsr.report import build_report, check_report_path, write_report

    checkpoints = (*checkpoints, *checkpoint) or ("lite",)
    refuse_output_over_input([output_path], [*checkpoints, data, lowres_path])
    check_report_path(output_path, overwrite)
    report = build_report(
        checkpoints,
        data,
        lowres_path,
        baselines=baselines,
        ensemble=self_ensemble,
        band=band,
        cell_size_m=cell_size_m,
        pair_index=pair_index,
        device=device,
        progress=progress,
        fine_datum=fine_datum,
        lowres_datum=lowres_datum,
    )
    click.echo(report.evaluation.table())
    click.echo(str(write_report(report, output_path, overwrite=overwrite)))
