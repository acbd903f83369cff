"""``demsr predict``: super-resolve a raster into a georeferenced GeoTIFF."""

from __future__ import annotations

import click

from demsr.cli.options import band_option, device_option, overwrite_option


@click.command("predict")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False))
@click.argument("output_path", metavar="OUTPUT", type=click.Path(dir_okay=False))
@band_option
@device_option
@overwrite_option
def command(
    checkpoint: str, input_path: str, output_path: str, band: int, device: str, overwrite: bool
) -> None:
    """Super-resolve INPUT with CHECKPOINT into the GeoTIFF OUTPUT.

    OUTPUT keeps INPUT's CRS and bounds with the pixel size divided by the model's scale;
    nodata cells stay nodata.
    """
    from demsr.predict import predict_raster

    path = predict_raster(
        checkpoint, input_path, output_path, band=band, device=device, overwrite=overwrite
    )
    click.echo(str(path))
