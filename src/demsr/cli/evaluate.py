"""``demsr evaluate``: the model against classical interpolation, in metres."""

from __future__ import annotations

import click

from demsr.cli.options import (
    RASTER_PATH,
    band_option,
    checkpoint_option,
    device_option,
    overwrite_option,
    positional_checkpoint,
    progress_option,
    with_datum_options,
    with_scoring_options,
)
from demsr.predict_settings import SCORING


@click.command("evaluate")
@click.argument("paths", nargs=-1, metavar="[CHECKPOINT] DATA")
@checkpoint_option()
@click.option(
    "--lowres",
    "lowres_path",
    type=RASTER_PATH,
    help="Low-res raster to super-resolve, e.g. a real GEBCO/SRTM15+ product; DATA is then a "
    "fine DEM under it, put onto its exact x scale sub-grid (read as it is when already on "
    "it; else area-averaged or bilinear-resampled, reprojected if needed, its 0 m sea not "
    "scored; coast cells scored apart). Without it a raster DATA is degraded by block mean "
    "first.",
)
@with_datum_options
@with_scoring_options
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    help="Also write the metrics to this JSON file.",
)
@click.option(
    "--markdown",
    "markdown_path",
    type=click.Path(dir_okay=False),
    help="Also write the tables to this Markdown file.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Pairs per network pass, for pair files (rasters go tile by tile: --tile-px).",
)
@click.option(
    "--tile-px",
    type=click.IntRange(min=16),
    default=SCORING.tile_px,
    show_default=True,
    help="Low-res tile side for raster inputs (bounds memory).",
)
@band_option
@device_option
@overwrite_option
@progress_option
def command(
    paths: tuple[str, ...],
    checkpoint: str | None,
    lowres_path: str | None,
    fine_datum: str,
    lowres_datum: str,
    baselines: tuple[str, ...],
    self_ensemble: bool,
    cell_size_m: tuple[float, float] | None,
    json_path: str | None,
    markdown_path: str | None,
    batch_size: int,
    tile_px: int,
    band: int,
    device: str,
    overwrite: bool,
    progress: bool,
) -> None:
    """Score CHECKPOINT and interpolation baselines against high-res truth DATA.

    CHECKPOINT (or --checkpoint CKPT) is a checkpoint file or the name of a shipped model
    [default: lite, the shipped model]. DATA is an HDF5
    pair file (e.g. test/test.h5), a high-res raster (degraded x scale by block mean, then
    super-resolved), or with --lowres a fine DEM under a low-res raster (a real coarse
    product). Baselines: GDAL's kernels and bicubic + back-projection (the shipped model
    without its network). Metrics on cells valid for every method: RMSE, MAE, bias, max
    error (m), PSNR and SSIM (data range: the truth's max - min), slope RMSE and aspect error
    (degrees, Horn's
    method on metric cell sizes), with a land/coast/sea and slope-class breakdown.
    """
    from demsr.checkpoint import as_checkpoint
    from demsr.evaluate import evaluate
    from demsr.evaluation_inputs import load_inputs
    from demsr.io import refuse_existing
    from demsr.pretrained import resolve_checkpoint

    given, (data,) = positional_checkpoint(checkpoint, paths, "[CHECKPOINT] DATA", "DATA")
    checkpoint_path = resolve_checkpoint(given)
    refuse_existing(
        json_path, markdown_path, overwrite=overwrite, inputs=[checkpoint_path, data, lowres_path]
    )
    model = as_checkpoint(checkpoint_path)
    inputs = load_inputs(
        data,
        model.scale,
        lowres_path,
        band=band,
        cell_size_m=cell_size_m,
        fine_datum=fine_datum,
        lowres_datum=lowres_datum,
    )
    result = evaluate(
        model,
        inputs,
        baselines=baselines,
        ensemble=self_ensemble,
        device=device,
        batch_size=batch_size,
        tile_px=tile_px,
        progress=progress,
    )
    click.echo(result.table())
    if json_path:
        result.write_json(json_path)
    if markdown_path:
        result.write_markdown(markdown_path)
