"""``demsr calibrate``: fit a degradation that makes block means look like a real product."""

from __future__ import annotations

import click

from demsr.cli.options import RASTER_PATH, band_option, overwrite_option


@click.command("calibrate")
@click.option(
    "--pair",
    "pairs",
    nargs=2,
    multiple=True,
    required=True,
    type=RASTER_PATH,
    metavar="PRODUCT FINE",
    help="A real coarse product (GEBCO, SRTM15+) and a fine DEM under it (repeatable); the "
    "fine DEM is put onto the product's sub-grid as by prepare --lowres.",
)
@click.option(
    "-o",
    "--output",
    "output_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="YAML file for the fitted model (use it as data.degradation in a training config).",
)
@click.option("--scale", type=click.IntRange(min=2), default=5, show_default=True)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed of the synthetic pairs the statistics are compared on.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    help="Also write the fits and statistics to this JSON file.",
)
@band_option
@overwrite_option
def command(
    pairs: tuple[tuple[str, str], ...],
    output_path: str,
    scale: int,
    seed: int,
    json_path: str | None,
    band: int,
    overwrite: bool,
) -> None:
    """Fit a degradation model on real (PRODUCT, FINE) pairs and write it as YAML.

    For each pair, product minus the block mean of the truth (land cells) is explained by a
    sub-cell shift and a Gaussian smoothing of the truth, a bias and slope-dependent correlated
    noise (GEBCO's whole-metre rounding included). Prints what a shift or a smoothing explains,
    then the statistics matched (RMS, bias, RMS by slope class, radially averaged spectrum) for
    the real pairs and for synthetic pairs made by the fitted model from the same truth.
    """
    import json

    from demsr.calibration import calibrate
    from demsr.io import atomic_path, refuse_existing

    inputs = [path for pair in pairs for path in pair]
    refuse_existing(output_path, json_path, overwrite=overwrite, inputs=inputs)
    result = calibrate(list(pairs), scale, seed=seed, band=band)
    click.echo(result.summary())
    result.model.to_yaml(output_path)
    if json_path:
        with atomic_path(json_path) as tmp:
            tmp.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    click.echo(str(output_path))
