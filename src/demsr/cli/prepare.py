"""``demsr prepare`` and ``demsr degrade``: training pairs and coarse inputs from real DEMs."""

from __future__ import annotations

import click

from demsr.cli.options import (
    RASTER_PATH,
    band_option,
    overwrite_option,
    progress_option,
    renamed_option,
    with_datum_options,
)


def _fractions(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[float, ...]:
    try:
        parts = tuple(float(part) for part in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected three comma-separated numbers, got {value!r}") from None
    if len(parts) != 3:
        raise click.BadParameter(f"expected train,valid,test fractions, got {value!r}")
    return parts


@click.command("prepare")
@click.argument("rasters", nargs=-1, required=True, type=click.Path())
@click.option(
    "-o",
    "--output-dir",
    "output_dir",
    type=click.Path(file_okay=False),
    help="Folder for train/train.h5, valid/valid.h5 and test/test.h5.  [required]",
)
@click.option(
    "--scale",
    type=click.IntRange(min=2),
    default=5,
    show_default=True,
    help="High-res cells per low-res cell along each axis.",
)
@click.option(
    "--patch-px",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Low-res patch side; the high-res patch is patch-px x scale.",
)
@click.option(
    "--stride-px",
    type=click.IntRange(min=1),
    help="High-res cells between patch origins [default: the high-res patch side].",
)
@click.option(
    "--min-relief-m",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Drop patches whose high-res max - min is below this (flat SRTM sea is 0 m).",
)
@click.option(
    "--min-sea-fraction",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Drop patches with a smaller fraction of cells below 0 m (keep seafloor for "
    "bathymetry fine-tuning; counted as 'land').",
)
@click.option(
    "--max-sea-fraction",
    type=click.FloatRange(0, 1),
    default=1.0,
    show_default=True,
    help="Drop patches with a larger fraction of cells below 0 m (land-only pretraining; "
    "counted as 'sea').",
)
@click.option(
    "--max-patches-per-file",
    type=click.IntRange(min=1),
    help="Keep at most this many patches per raster (random subset from --seed).",
)
@click.option(
    "--split-by",
    type=click.Choice(["block", "file"]),
    default="block",
    show_default=True,
    help="Deal spatial blocks of each raster, or whole files.",
)
@click.option(
    "--split-block-px",
    type=click.IntRange(min=1),
    help="Side of a split block in high-res cells [default: 3 high-res patches].",
)
@click.option(
    "--fractions",
    default="0.8,0.1,0.1",
    show_default=True,
    callback=_fractions,
    help="train,valid,test fractions of the blocks (or files).",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--norm-range",
    nargs=2,
    type=float,
    default=(-11000.0, 9000.0),
    show_default=True,
    metavar="MIN_M MAX_M",
    help="Elevations mapped to 0 and 1 in the stored pairs.",
)
@click.option(
    "--lowres",
    "product_path",
    type=RASTER_PATH,
    help="A real coarse product (GEBCO, SRTM15+: GeoTIFF or NetCDF) as the low-res member: "
    "each RASTER (a fine DEM under it) is put onto the product's exact x scale sub-grid "
    "(area average when finer, bilinear when only the registration differs, reprojected if "
    "needed; its 0 m sea masked) instead of being degraded by block mean.",
)
@with_datum_options
@band_option
@overwrite_option
@progress_option
@renamed_option(
    "--output", "--output-dir", "output_dir", required=True, type=click.Path(file_okay=False)
)
def command(
    rasters: tuple[str, ...],
    output_dir: str,
    scale: int,
    patch_px: int,
    stride_px: int | None,
    min_relief_m: float,
    min_sea_fraction: float,
    max_sea_fraction: float,
    max_patches_per_file: int | None,
    split_by: str,
    split_block_px: int | None,
    fractions: tuple[float, float, float],
    seed: int,
    norm_range: tuple[float, float],
    product_path: str | None,
    fine_datum: str,
    lowres_datum: str,
    band: int,
    overwrite: bool,
    progress: bool,
) -> None:
    """Cut DEM RASTERS (files or folders) into (low-res, high-res) training pairs.

    The low-res patch is the block mean of the high-res patch, or with --lowres the cells of a
    real coarse product above it (the high-res patch is then the raster put onto the product's
    sub-grid; both sources are recorded in the files). The split into train, valid and
    test is spatial (no cell in two splits) and reproducible from --seed. Patches with nodata,
    too little relief or a sea fraction (cells below 0 m) outside the given range are dropped
    and counted.
    """
    from demsr.datasets import Normalisation
    from demsr.prepare import PrepareOptions, collect_rasters, prepare_pairs

    low_m, high_m = norm_range
    if high_m <= low_m:
        raise click.BadParameter("MAX_M must be above MIN_M", param_hint="--norm-range")
    options = PrepareOptions(
        scale=scale,
        lowres_patch_px=patch_px,
        stride_px=stride_px,
        min_relief_m=min_relief_m,
        min_sea_fraction=min_sea_fraction,
        max_sea_fraction=max_sea_fraction,
        max_patches_per_file=max_patches_per_file,
        split_fractions=fractions,
        split_by=split_by,  # type: ignore[arg-type]
        split_block_px=split_block_px,
        seed=seed,
        normalisation=Normalisation(offset_m=low_m, scale_m=high_m - low_m),
        band=band,
    )
    if product_path is not None:
        from demsr.products import prepare_product_pairs

        report = prepare_product_pairs(
            collect_rasters(rasters),
            product_path,
            output_dir,
            options,
            fine_datum=fine_datum,
            product_datum=lowres_datum,
            overwrite=overwrite,
            progress=progress,
        )
    else:
        report = prepare_pairs(
            collect_rasters(rasters), output_dir, options, overwrite=overwrite, progress=progress
        )
    click.echo(report.summary())


@click.command("degrade")
@click.argument("input_path", metavar="INPUT", type=RASTER_PATH)
@click.argument("output_path", metavar="OUTPUT", type=click.Path(dir_okay=False))
@click.option("--scale", type=click.IntRange(min=2), default=5, show_default=True)
@band_option
@overwrite_option
def degrade_command(
    input_path: str, output_path: str, scale: int, band: int, overwrite: bool
) -> None:
    """Write the block mean of INPUT over scale x scale cells to the GeoTIFF OUTPUT
    (e.g. 3" -> 15"), as training pairs are made."""
    from demsr.prepare import degrade_raster

    click.echo(str(degrade_raster(input_path, output_path, scale, band=band, overwrite=overwrite)))
