"""``demsr demo``: the shipped model on the bundled DEM (or yours), with figure and metrics."""

from __future__ import annotations

import click

from demsr.cli.options import (
    RASTER_PATH,
    checkpoint_option,
    device_option,
    overwrite_option,
    progress_option,
)


@click.command("demo")
@click.option(
    "-o",
    "--output-dir",
    default="demsr-demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for the outputs (created if missing; other files in it are left alone).",
)
@click.option(
    "--dem",
    type=RASTER_PATH,
    help='High-res DEM to degrade and super-resolve [default: the bundled SRTM 3" tile '
    "N37W004, Sierra Nevada, Spain].",
)
@checkpoint_option()
@device_option
@overwrite_option
@progress_option
def command(
    output_dir: str,
    dem: str | None,
    checkpoint: str | None,
    device: str,
    overwrite: bool,
    progress: bool,
) -> None:
    """Degrade a DEM by the model's scale (x5), super-resolve it back and compare with bicubic
    interpolation.

    Writes lowres.tif (the coarse input), superresolved.tif (the super-resolved DEM, a
    Cloud-Optimized GeoTIFF), comparison.png (maps and errors of the model and bicubic) and
    metrics.md / metrics.json (RMSE, slope RMSE and more, by land/sea and slope class) into
    OUTPUT_DIR, and prints the metric table. With the defaults nothing is downloaded or trained.
    """
    from demsr.demo import OUTPUTS, run_demo

    result = run_demo(
        output_dir,
        dem=dem,
        checkpoint=checkpoint,
        device=device,
        overwrite=overwrite,
        progress=progress,
    )
    click.echo(result.evaluation.table())
    click.echo("")
    click.echo(f"demo finished in {result.seconds:.1f} s; outputs in {result.output_dir}:")
    for name, path in result.files.items():
        click.echo(f"  {path}  {OUTPUTS[name]}")
