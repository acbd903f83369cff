"""``demsr predict``: super-resolve a raster of any size into a georeferenced product."""

from __future__ import annotations

import dataclasses

import click

from demsr.cli.errors import ERROR_HINT
from demsr.cli.options import (
    band_option,
    batch_size_option,
    checkpoint_option,
    device_option,
    memory_option,
    overwrite_option,
    positional_checkpoint,
    precision_option,
    progress_option,
    tile_px_option,
    tile_size_renamed,
)
from demsr.datum import DATUMS
from demsr.io import FORMATS, OUTPUT_DTYPES
from demsr.predict_settings import DEFAULTS, PredictSettings


@click.command("predict")
@click.argument("paths", nargs=-1, metavar="[CHECKPOINT] INPUT OUTPUT")
@checkpoint_option()
@band_option
@click.option(
    "--variable",
    help="Elevation variable of a NetCDF/Zarr INPUT [default: elevation, or the only gridded "
    "variable].",
)
@click.option(
    "--crs",
    help="CRS of an INPUT that declares none (e.g. EPSG:4326, or WKT); such an input is refused "
    "without it.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    help="Output format [default: from OUTPUT's extension: .tif -> Cloud-Optimized "
    "GeoTIFF, .nc -> CF NetCDF, .zarr -> Zarr].",
)
@click.option(
    "--dtype",
    type=click.Choice(OUTPUT_DTYPES),
    default=DEFAULTS.output_dtype,
    show_default=True,
    help="Output data type (int16: rounded metres, nodata -32768).",
)
@click.option(
    "--input-datum",
    type=click.Choice(DATUMS),
    help="Vertical datum of INPUT's heights: egm96 (orthometric, as SRTM and GEBCO) or "
    "wgs84 (ellipsoidal) [default: the one INPUT's compound or 3D CRS declares, else egm96].",
)
@click.option(
    "--output-datum",
    type=click.Choice(DATUMS),
    help="Vertical datum of the output heights [default: the input's]. Conversions use "
    "the bundled EGM96 15' geoid grid. The output's CRS says it: horizontal + EGM96 height "
    "(EPSG:5773), or the 3D CRS of ellipsoidal heights (EPSG:4979 for EPSG:4326).",
)
@click.option(
    "--keep-row-order",
    is_flag=True,
    help="Write a NetCDF/Zarr OUTPUT with INPUT's ascending latitudes (south-up rows, as in "
    "GEBCO files) [default: north-up, which every GIS reads right].",
)
@click.option(
    "--ensemble",
    is_flag=True,
    help="Self-ensemble: write the mean of the model's 8 flips/rotations as band 1 and a "
    "calibrated per-cell uncertainty (estimated one-sigma error, in the elevation's unit) as "
    "band 2 (NetCDF/Zarr: variable elevation_uncertainty). 8x the compute. Needs a checkpoint "
    "calibrated by scripts/calibrate_uncertainty.py, and a float32 OUTPUT.",
)
@tile_px_option
@batch_size_option
@memory_option
@precision_option
@click.option(
    "--compile",
    "compile_model",
    is_flag=True,
    help="torch.compile the model: faster per tile, but each tile shape compiles first "
    "(tens of seconds); pays on large rasters.",
)
@click.option(
    "--wrap/--no-wrap",
    default=DEFAULTS.wrap,
    help="Wrap east-west across the antimeridian [default: when INPUT is a geographic grid "
    "covering 360 degrees of longitude, so that a global output has no seam at +/-180].",
)
@device_option
@overwrite_option
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted run (after any rank stopped) from the tiles already written.",
)
@progress_option
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the plan of this run (tiles, per rank under torchrun, output size, memory, "
    "time: see demsr plan) and exit without writing anything.",
)
@tile_size_renamed
def command(
    paths: tuple[str, ...],
    checkpoint: str | None,
    band: int,
    variable: str | None,
    crs: str | None,
    fmt: str | None,
    dtype: str,
    input_datum: str | None,
    output_datum: str | None,
    keep_row_order: bool,
    ensemble: bool,
    tile_px: int | None,
    batch_size: int,
    memory_bytes: int | None,
    precision: str,
    compile_model: bool,
    wrap: bool | None,
    device: str,
    overwrite: bool,
    resume: bool,
    progress: bool,
    dry_run: bool,
) -> None:
    """Super-resolve INPUT with CHECKPOINT into OUTPUT.

    CHECKPOINT (or --checkpoint CKPT) is a checkpoint file or the name of a shipped model;
    without it the shipped
    lite model is used (trained on SRTM3/DEM3 land tiles: MODEL_CARD.md).
    INPUT is anything GDAL opens (GeoTIFF/COG, SRTM .hgt, zipped, ESRI ASCII), a NetCDF in the
    GEBCO layout, or a Zarr store. OUTPUT keeps INPUT's CRS and bounds with the pixel size
    divided by the model's scale; nodata stays nodata. The raster is processed tile by tile,
    each read with a margin of the model's receptive field plus the reach of its trend removal
    and back-projection (63 low-res cells for the shipped model), so memory does not grow with
    its size and the result equals whole-raster prediction (to float32 rounding with
    --precision fp32; in bf16, which rounds tiles of each shape differently, within the model's
    recorded bf16 error). Finished tiles are kept in
    OUTPUT.partial.zarr: an interrupted run (Ctrl-C, a full disk, a crash) continues with --resume.

    Under torchrun (torchrun --nproc_per_node N -m demsr predict ...) the N ranks share the
    tiles, each on its own GPU (or CPU process), writing into the one partial store; rank 0
    writes the product. A rerun with --resume predicts only what no rank finished.
    """
    from demsr.datum import datum_transform
    from demsr.distributed import context
    from demsr.partial import partial_path, partial_progress
    from demsr.predict import predict_raster
    from demsr.pretrained import resolve_checkpoint

    model, (input_path, output_path) = positional_checkpoint(
        checkpoint, paths, "[CHECKPOINT] INPUT OUTPUT", "the output"
    )
    resolved = resolve_checkpoint(model)
    settings = PredictSettings(
        band=band,
        variable=variable,
        crs=crs,
        device=device,
        tile_px=tile_px,
        batch_size=batch_size,
        memory_bytes=memory_bytes,
        precision=precision,
        compile=compile_model,
        wrap=wrap,
        ensemble=ensemble,
        fmt=fmt,
        output_dtype=dtype,
        keep_row_order=keep_row_order,
        overwrite=overwrite,
        resume=resume,
        progress=progress,
    )
    if dry_run:
        from demsr.cli.plan import print_dry_run

        params = click.get_current_context().params
        print_dry_run(resolved, input_path, output_path, settings, params)
        return

    input_datum = _input_datum(input_path, input_datum, band, variable, crs)
    output_datum = output_datum or input_datum

    before = partial_progress(output_path)

    def resume_hint() -> str | None:
        """What this run kept for --resume (not said when it refused an earlier partial run)."""
        progress_made = partial_progress(output_path)
        if progress_made is None or progress_made == before:
            return None
        done, total = progress_made
        return (
            f"{done} of {total} tiles are kept in {partial_path(output_path)}: rerun with "
            "--resume to continue"
        )

    click.get_current_context().meta[ERROR_HINT] = resume_hint
    # The network works in EGM96 orthometric heights, like the data it was trained on.
    path = predict_raster(
        resolved,
        input_path,
        output_path,
        dataclasses.replace(
            settings,
            transform_input=datum_transform(input_datum, "egm96"),
            transform_output=datum_transform("egm96", output_datum),
            tags={"vertical_datum": output_datum},
        ),
    )
    if context().is_main:
        click.echo(str(path))


def _input_datum(
    input_path: str, given: str | None, band: int, variable: str | None, crs: str | None
) -> str:
    """--input-datum, checked against (or taken from) the heights' datum in INPUT's CRS."""
    from demsr.datum import resolve_input_datum
    from demsr.io import open_raster

    with open_raster(input_path, band=band, variable=variable, crs=crs) as reader:
        return resolve_input_datum(given, reader.vertical_datum, reader.path)
