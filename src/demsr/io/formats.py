"""Output formats: the registry of the formats a prediction is written in and
:func:`finalise_output`'s writers (Cloud-Optimized GeoTIFF, CF NetCDF, Zarr).

Kept whole: one job, turning a prediction's partial store into the product in each format; the
COG, NetCDF and Zarr writers share the block encoder and reader they are registered with here."""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.enums import Resampling
from rasterio.windows import Window

from demsr.grid import Grid
from demsr.io.geotiff import fill_nodata, gtiff_profile
from demsr.io.gridded import (
    ZARR_CRS_ATTRIBUTE,
    _coordinate_attrs,
    _crs_wkt,
    _elevation_attrs,
    _global_attrs,
    _grid_mapping_attrs,
    _GridPlan,
    _plan_grid,
)
from demsr.io.raster import RasterError, RasterLayout, RasterReader
from demsr.io.readers import ZARR_SUFFIX, _GdalReader
from demsr.io.safety import atomic_directory, atomic_path, remove_gdal_sidecars
from demsr.io.units import output_crs
from demsr.stops import stop_point
from demsr.tiling import tile_grid

log = logging.getLogger("demsr.io")  # the package's one logger, as before the split

BLOCK_PX = 512
"""Block edge of every product :func:`finalise_output` writes: COG tiles, NetCDF/Zarr chunks."""

INT16_NODATA = -32768
"""Nodata value of int16 products; valid int16 elevations are -32767..32767 m."""

OUTPUT_DTYPES = ("float32", "int16")
"""Data types a product may be written in (:func:`finalise_output`'s ``dtype``)."""


def output_format(output_path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """The :data:`FORMATS` entry for ``fmt`` (case-insensitive aliases such as ``tif``, ``nc``)
    or, when it is None, for the output's extension; RasterError if neither is known."""
    if fmt is not None:
        try:
            return _FORMAT_NAMES[fmt.lower()]
        except KeyError:
            raise RasterError(
                f"{os.fspath(output_path)}: unknown output format {fmt!r} "
                f"(known: {', '.join(sorted(_FORMAT_NAMES))})"
            ) from None
    suffix = Path(output_path).suffix.lower()
    if suffix not in _FORMAT_SUFFIXES:
        raise RasterError(
            f"{os.fspath(output_path)}: cannot tell the output format from the extension "
            f"{suffix or '(none)'!r}; use {', '.join(sorted(_FORMAT_SUFFIXES))} or give a format "
            f"({', '.join(FORMATS)})"
        )
    return _FORMAT_SUFFIXES[suffix]


@dataclass(frozen=True)
class _Encoder:
    """Turns float32 blocks with NaN nodata into the output data type."""

    dtype: str
    fill: float
    source: str

    def __call__(self, block: np.ndarray) -> np.ndarray:
        if self.dtype == "float32":
            return fill_nodata(block, self.fill)
        valid = np.isfinite(block)
        rounded = np.rint(block, where=valid, out=np.zeros(block.shape, np.float32))
        if valid.any():
            low, high = float(rounded[valid].min()), float(rounded[valid].max())
            if low < INT16_NODATA + 1 or high > np.iinfo(np.int16).max:
                raise RasterError(
                    f"{self.source}: elevations reach {low:.1f}..{high:.1f} m, outside int16 "
                    f"(-32767..32767 m; -32768 is nodata); write float32 instead"
                )
        rounded[~valid] = INT16_NODATA
        return rounded.astype(np.int16)


def _read_blocks(
    src: RasterReader, progress: bool, description: str, stop_at: str
) -> Iterator[tuple[Window, np.ndarray]]:
    """(window, float32 block with NaN nodata) for each 512 x 512 block of ``src``; the stop
    point ``stop_at`` (:mod:`demsr.stops`) once the caller has used the first block."""
    from tqdm import tqdm

    blocks = tile_grid(*src.shape, BLOCK_PX, 0)
    for index, tile in enumerate(
        tqdm(blocks, desc=description, unit="block", disable=not progress)
    ):
        yield tile.core, src.read(tile.core)
        if index == 0:
            stop_point(stop_at)


def _overview_factors(shape: tuple[int, int]) -> list[int]:
    """Overview decimation factors as GDAL's COG driver picks them: halve until both sides
    fit in one block."""
    factors: list[int] = []
    rows, cols = shape
    factor = 1
    while rows > BLOCK_PX or cols > BLOCK_PX:
        factor *= 2
        rows, cols = max(rows // 2, 1), max(cols // 2, 1)
        factors.append(factor)
    return factors


@dataclass(frozen=True)
class AncillaryBand:
    """A second band a product carries beside the elevation, on the same grid (e.g. the
    ensemble's uncertainty, :mod:`demsr.ensemble`): read from ``reader`` (float32, NaN =
    nodata), written as band 2 of a COG described by ``description`` with ``attrs`` as its band
    tags, or as the NetCDF/Zarr variable ``name`` with ``attrs`` (and the grid mapping), which
    the elevation names in its ``ancillary_variables``. Always float32."""

    reader: RasterReader
    name: str
    description: str
    attrs: dict[str, str]


def finalise_output(
    partial_tif: str | os.PathLike[str] | RasterReader,
    output_path: str | os.PathLike[str],
    fmt: str | None = None,
    *,
    dtype: str = "float32",
    metadata: Mapping[str, str] | None = None,
    layout: RasterLayout | Mapping[str, Any] | None = None,
    progress: bool = False,
    uncertainty: AncillaryBand | None = None,
) -> Path:
    """Convert a complete single-band GeoTIFF (tiled prediction's output) into the final product.

    ``partial_tif`` holds float elevations with NaN or its nodata value for nodata; it may also
    be an open single-band reader (e.g. a partial Zarr store's), which the caller closes and
    deletes. ``fmt`` is one
    of :data:`FORMATS` (or an alias; default: from the extension ``.tif``/``.tiff``, ``.nc``,
    ``.zarr``):

    - ``cog``: Cloud-Optimized GeoTIFF (512 x 512 tiles, DEFLATE with predictor, averaged
      overviews); ``metadata`` becomes dataset tags, the band unit is ``units`` (default m);
    - ``netcdf``: CF-1.8 NetCDF-4: 1-D ``lat``/``lon`` cell-centre coordinates (``x``/``y`` with
      units for projected CRSs), ``elevation`` (chunks of 512 x 512, compressed) with units,
      standard name, ``_FillValue`` and a ``crs`` grid-mapping variable (CF parameters,
      ``crs_wkt`` and ``spatial_ref`` in WKT2, ``epsg_code``); ``metadata`` (less ``units``)
      becomes global attributes, with a ``title``, and is summarised in ``source``/``history``;
    - ``zarr``: a Zarr (format 2, consolidated) store with the same variables and attributes as
      the NetCDF, readable by ``xarray.open_zarr``, chunks of 512 x 512; the elevation also
      carries its CRS in :data:`ZARR_CRS_ATTRIBUTE`, where GDAL's Zarr driver reads it.

    The CRS written is :func:`output_crs`: the source's CRS with the heights' datum
    (``metadata["vertical_datum"]``) as a compound or 3D CRS. Rows are written north-up;
    ``layout`` (a reader's :class:`RasterLayout`, or its dict) makes NetCDF/Zarr mirror the
    input: its coordinate names, ascending latitudes when ``layout.lat_ascending`` (predict
    clears it unless asked to keep the input's row order), and 0..360 longitudes (a global
    grid's columns rotated back). ``dtype`` is ``float32`` (nodata: the partial's finite nodata
    value, else NaN) or ``int16`` (rounded to the nearest metre, nodata -32768; values outside
    -32767..32767 are a RasterError). ``metadata["vertical_datum"]`` (``egm96``, ``wgs84``, ...)
    also selects the CF standard name (:func:`height_standard_name`).

    ``uncertainty`` adds a second float32 band (:class:`AncillaryBand`): band 2 of the COG, a
    second variable of the NetCDF/Zarr; it needs ``dtype`` float32.

    Streams in 512 x 512 blocks, so memory stays flat. The product is written next to
    ``output_path`` under a temporary name and renamed into place when complete (a failure leaves
    neither it nor temporary files, and keeps the partial); then the partial is deleted.
    """
    output = Path(output_path)
    kind = output_format(output, fmt)
    if dtype not in OUTPUT_DTYPES:
        raise RasterError(
            f"{output}: unsupported output dtype {dtype!r} (use {', '.join(OUTPUT_DTYPES)})"
        )
    if uncertainty is not None and dtype != "float32":
        raise RasterError(f"{output}: an uncertainty band needs a float32 product, not {dtype}")
    if isinstance(layout, Mapping):
        layout = RasterLayout.from_mapping(layout)
    metadata = {str(key): str(value) for key, value in (metadata or {}).items()}
    if not output.parent.is_dir():
        raise RasterError(f"{output}: the folder {output.parent} does not exist")
    if isinstance(partial_tif, RasterReader):
        _finalise(partial_tif, output, kind, dtype, metadata, layout, progress, uncertainty)
        return output
    partial = Path(partial_tif)
    if not partial.is_file():
        raise RasterError(f"{partial}: no such file (the partial prediction to finalise)")
    with _GdalReader(str(partial), str(partial), band=1) as src:
        _finalise(src, output, kind, dtype, metadata, layout, progress)
    if partial.resolve() != output.resolve():
        partial.unlink()
    return output


def _finalise(
    src: RasterReader,
    output: Path,
    kind: str,
    dtype: str,
    metadata: Mapping[str, str],
    layout: RasterLayout | None,
    progress: bool,
    ancillary: AncillaryBand | None = None,
) -> None:
    partial = src.path
    bands = getattr(src, "band_count", 1)
    if bands != 1:
        raise RasterError(f"{partial}: expected one band, found {bands}")
    if dtype == "float32" and src.nodata is not None and math.isfinite(src.nodata):
        fill = float(np.float32(src.nodata))
    else:
        fill = float("nan") if dtype == "float32" else float(INT16_NODATA)
    encode = _Encoder(dtype=dtype, fill=fill, source=str(partial))
    log.info("finalising %s -> %s (%s, %s)", partial, output, kind, dtype)
    _BY_NAME[kind].writer(src, output, encode, metadata, layout, progress, ancillary)
    log.info("wrote %s", output)


def _write_cog(
    src: RasterReader,
    output: Path,
    encode: _Encoder,
    metadata: Mapping[str, str],
    layout: RasterLayout | None,
    progress: bool,
    ancillary: AncillaryBand | None = None,
) -> None:
    """COG through a tiled staging GeoTIFF (converted dtype, nodata and tags), then GDAL's COG
    driver, which adds the overviews and reorders the file for HTTP range reads. A GeoTIFF is
    always north-up in -180..180: ``layout`` (the input's NetCDF/Zarr layout) does not apply."""
    fd, staging_name = tempfile.mkstemp(
        prefix=f".{output.name}.", suffix=".staging.tif", dir=output.parent
    )
    os.close(fd)
    staging = Path(staging_name)
    bands = 1 if ancillary is None else 2
    try:
        profile = gtiff_profile(
            src.shape,
            src.transform,
            output_crs(src.crs, metadata.get("vertical_datum"), "cog"),
            encode.fill,
            dtype=encode.dtype,
            block_px=BLOCK_PX,
            zlevel=1,
            bigtiff="if_safer",
            count=bands,
        )
        attempts = [profile]
        if _stage_uncompressed(src.shape, bands, encode.dtype, output.parent):
            raw = {k: v for k, v in profile.items() if k not in ("predictor", "zlevel")}
            attempts.insert(0, {**raw, "compress": "none"})
        for attempt in attempts:
            try:
                _write_staging(
                    src, staging, attempt, encode, metadata, progress, ancillary, output.name
                )
                break
            except OSError as exc:  # a quota smaller than the free space, say
                if attempt is attempts[-1]:
                    raise
                log.warning(
                    "%s: no room for an uncompressed staging file (%s); writing it compressed",
                    output,
                    exc,
                )
                staging.unlink(missing_ok=True)
                remove_gdal_sidecars(staging)
        with atomic_path(output) as tmp:
            rasterio.shutil.copy(
                staging,
                tmp,
                driver="COG",
                BLOCKSIZE=BLOCK_PX,
                COMPRESS="DEFLATE",
                PREDICTOR="YES",
                OVERVIEWS="AUTO",
                RESAMPLING="AVERAGE",
                BIGTIFF="IF_SAFER",
                # Every core compresses: nothing else runs while the product is written
                # (3.9 -> 2.3 s at 36 Mpx on 2 cores; the same bytes).
                NUM_THREADS="ALL_CPUS",
            )
            stop_point("cog-copy")
    finally:
        staging.unlink(missing_ok=True)
        remove_gdal_sidecars(staging)


def _write_staging(
    src: RasterReader,
    staging: Path,
    profile: dict[str, Any],
    encode: _Encoder,
    metadata: Mapping[str, str],
    progress: bool,
    ancillary: AncillaryBand | None,
    name: str,
) -> None:
    """The COG's staging GeoTIFF: the values (and the ancillary band), tags, units and
    descriptions, then its overviews (built in the file itself, so that the COG driver copies
    them instead of building them in a ``.ovr.tmp`` file of its own beside the output)."""
    with rasterio.Env(GDAL_PAM_ENABLED="NO"):
        with rasterio.open(staging, "w", **profile) as dst:
            for window, block in _read_blocks(src, progress, f"writing {name}", "cog-staging"):
                dst.write(encode(block), 1, window=window)
            dst.update_tags(**metadata)
            if ancillary is None:
                dst.units = (metadata.get("units", "m"),)
                dst.descriptions = ("elevation",)
            else:
                _write_cog_band(dst, ancillary, encode, metadata, progress, name)
        stop_point("cog-overviews")
        factors = _overview_factors(src.shape)
        if factors:
            with rasterio.open(staging, "r+") as dst:
                dst.build_overviews(factors, Resampling.average)


def _stage_uncompressed(shape: tuple[int, int], bands: int, dtype: str, folder: Path) -> bool:
    """Whether the COG's staging file can be left uncompressed: when twice its size, overviews
    included, is free in ``folder``. Writing and reading it back then take about half the time
    of DEFLATE level 1 (6.7 -> 3.6 s at 36 Mpx); the product is the same to the byte, since the
    COG driver compresses it anew. A product too large for that (a global grid) is staged
    compressed, and so is one whose uncompressed staging file fails to write (a quota smaller
    than the free space)."""
    rows, cols = shape
    staging_bytes = rows * cols * bands * np.dtype(dtype).itemsize * 4 // 3
    return 2 * staging_bytes <= shutil.disk_usage(folder).free


def _write_cog_band(
    dst: Any,
    ancillary: AncillaryBand,
    encode: _Encoder,
    metadata: Mapping[str, str],
    progress: bool,
    name: str,
) -> None:
    """Band 2 of an open two-band staging GeoTIFF: the ancillary band's values and tags, and
    both bands' descriptions and units."""
    blocks = _read_blocks(ancillary.reader, progress, f"writing {name} band 2", "cog-band-2")
    for window, block in blocks:
        dst.write(encode(block), 2, window=window)
    dst.update_tags(2, **ancillary.attrs)
    units = metadata.get("units", "m")
    dst.units = (units, ancillary.attrs.get("units", units))
    dst.descriptions = ("elevation", ancillary.description)


def _ancillary_attrs(ancillary: AncillaryBand, has_crs: bool) -> dict[str, Any]:
    """NetCDF/Zarr attributes of an ancillary variable (CF: no standard name of its own)."""
    attrs: dict[str, Any] = dict(ancillary.attrs)
    if has_crs:
        attrs["grid_mapping"] = "crs"
    return attrs


def _write_netcdf(
    src: RasterReader,
    output: Path,
    encode: _Encoder,
    metadata: Mapping[str, str],
    layout: RasterLayout | None,
    progress: bool,
    ancillary: AncillaryBand | None = None,
) -> None:
    import netCDF4

    crs = src.crs
    plan = _plan_grid(Grid.of(src), layout)
    x_attrs, y_attrs = _coordinate_attrs(plan, crs)
    with atomic_path(output) as tmp:
        with netCDF4.Dataset(tmp, "w", format="NETCDF4") as nc:
            nc.createDimension(plan.y_name, plan.y_values.size)
            nc.createDimension(plan.x_name, plan.x_values.size)
            for name, values, attrs in (
                (plan.y_name, plan.y_values, y_attrs),
                (plan.x_name, plan.x_values, x_attrs),
            ):
                variable = nc.createVariable(name, "f8", (name,))
                variable.setncatts(attrs)
                variable[:] = values
            full_crs = output_crs(crs, metadata.get("vertical_datum"))
            if full_crs is not None:
                crs_variable = nc.createVariable("crs", "i4", ())
                crs_variable.setncatts(_grid_mapping_attrs(full_crs))
            chunks = (min(BLOCK_PX, plan.y_values.size), min(BLOCK_PX, plan.x_values.size))
            elevation = nc.createVariable(
                "elevation",
                "f4" if encode.dtype == "float32" else "i2",
                (plan.y_name, plan.x_name),
                zlib=True,
                complevel=4,
                shuffle=True,
                chunksizes=chunks,
                fill_value=np.dtype(encode.dtype).type(encode.fill),
            )
            elevation.setncatts(_elevation_attrs(metadata, crs is not None))
            elevation.set_auto_maskandscale(False)
            _write_blocks(
                src, plan, encode, elevation.__setitem__, progress, output.name, "netcdf-blocks"
            )
            if ancillary is not None:
                elevation.setncattr("ancillary_variables", ancillary.name)
                band = nc.createVariable(
                    ancillary.name,
                    "f4",
                    (plan.y_name, plan.x_name),
                    zlib=True,
                    complevel=4,
                    shuffle=True,
                    chunksizes=chunks,
                    fill_value=np.float32(encode.fill),
                )
                band.setncatts(_ancillary_attrs(ancillary, crs is not None))
                band.set_auto_maskandscale(False)
                _write_blocks(
                    ancillary.reader,
                    plan,
                    encode,
                    band.__setitem__,
                    progress,
                    output.name,
                    "netcdf-band-2",
                )
            nc.setncatts(_global_attrs(metadata, Path(src.path)))


def _write_zarr(
    src: RasterReader,
    output: Path,
    encode: _Encoder,
    metadata: Mapping[str, str],
    layout: RasterLayout | None,
    progress: bool,
    ancillary: AncillaryBand | None = None,
) -> None:
    """Zarr format 2 in the layout xarray writes (``_ARRAY_DIMENSIONS``, fill value as
    ``_FillValue``), built with zarr directly so that the elevation is written block by block."""
    import zarr

    crs = src.crs
    plan = _plan_grid(Grid.of(src), layout)
    x_attrs, y_attrs = _coordinate_attrs(plan, crs)
    zarr_v3 = int(zarr.__version__.split(".")[0]) >= 3

    def create(
        group: Any,
        name: str,
        shape: tuple[int, ...],
        dtype: str,
        fill: Any,
        attrs: Mapping[str, Any],
        data: np.ndarray | None = None,
    ) -> Any:
        """An array with its attributes (and ``data``, when given) in as few writes as the
        zarr version allows: zarr 3 takes both at creation."""
        chunks = tuple(min(BLOCK_PX, n) for n in shape) if len(shape) == 2 else shape
        if zarr_v3 and data is not None:
            return group.create_array(
                name,
                data=np.asarray(data, dtype=dtype),
                chunks=chunks,
                fill_value=fill,
                attributes=dict(attrs),
            )
        if zarr_v3:
            array = group.create_array(
                name,
                shape=shape,
                dtype=dtype,
                chunks=chunks,
                fill_value=fill,
                attributes=dict(attrs),
            )
        else:
            array = group.create_dataset(  # zarr 2
                name, shape=shape, dtype=dtype, chunks=chunks, fill_value=fill
            )
            array.attrs.update(attrs)
        if data is not None:
            array[...] = data
        return array

    with atomic_directory(output) as tmp:
        if zarr_v3:
            root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        else:
            root = zarr.open_group(str(tmp), mode="w")
        for name, values, attrs in (
            (plan.y_name, plan.y_values, y_attrs),
            (plan.x_name, plan.x_values, x_attrs),
        ):
            attrs = {**attrs, "_ARRAY_DIMENSIONS": [name]}
            create(root, name, (values.size,), "float64", None, attrs, values)
        full_crs = output_crs(crs, metadata.get("vertical_datum"))
        # GDAL's Zarr driver reads a CRS from this attribute (before 3.9, its only way); xarray
        # shows it as an attribute, which to_netcdf refuses: drop it on reading
        # (docs/opening-outputs.md).
        gdal_crs = {} if full_crs is None else {ZARR_CRS_ATTRIBUTE: {"wkt": _crs_wkt(full_crs)}}
        if full_crs is not None:
            attrs = {**_grid_mapping_attrs(full_crs), "_ARRAY_DIMENSIONS": []}
            create(root, "crs", (), "int32", None, attrs, np.int32(0))
        shape = (plan.y_values.size, plan.x_values.size)
        dims = [plan.y_name, plan.x_name]
        fill = float(encode.fill) if encode.dtype == "float32" else int(encode.fill)
        attrs = {**_elevation_attrs(metadata, crs is not None), "_ARRAY_DIMENSIONS": dims}
        attrs.update(gdal_crs)
        if ancillary is not None:
            attrs["ancillary_variables"] = ancillary.name
        elevation = create(root, "elevation", shape, encode.dtype, fill, attrs)
        _write_blocks(
            src, plan, encode, elevation.__setitem__, progress, output.name, "zarr-blocks"
        )
        if ancillary is not None:
            attrs = {**_ancillary_attrs(ancillary, crs is not None), "_ARRAY_DIMENSIONS": dims}
            attrs.update(gdal_crs)  # as the elevation's, for GDAL
            band = create(root, ancillary.name, shape, "float32", float(encode.fill), attrs)
            _write_blocks(
                ancillary.reader,
                plan,
                encode,
                band.__setitem__,
                progress,
                output.name,
                "zarr-band-2",
            )
        if zarr_v3:  # one metadata write (zarr 3 writes one per key in attrs.update)
            root.update_attributes(_global_attrs(metadata, Path(src.path)))
        else:
            root.attrs.update(_global_attrs(metadata, Path(src.path)))
        zarr.consolidate_metadata(str(tmp))


def _write_blocks(
    src: RasterReader,
    plan: _GridPlan,
    encode: _Encoder,
    setitem: Callable[[tuple[slice, slice], np.ndarray], None],
    progress: bool,
    name: str,
    stop_at: str,
) -> None:
    for window, block in _read_blocks(src, progress, f"writing {name}", stop_at):
        encoded = encode(block)
        for row_slice, col_slice, values in plan.place(
            int(window.row_off), int(window.col_off), encoded
        ):
            setitem((row_slice, col_slice), np.ascontiguousarray(values))


# --------------------------------------------------------------------------------------------
# The registry: one entry per output format
# --------------------------------------------------------------------------------------------

_Writer = Callable[
    [
        RasterReader,
        Path,
        _Encoder,
        Mapping[str, str],
        RasterLayout | None,
        bool,
        AncillaryBand | None,
    ],
    None,
]


@dataclass(frozen=True)
class ProductFormat:
    """One output format of :func:`finalise_output`: its ``name`` (an entry of :data:`FORMATS`),
    the other names it is given by (``--format``, case-insensitive), the output suffixes that
    select it when no format is given, and the function that writes it from a reader."""

    name: str
    aliases: tuple[str, ...]
    suffixes: tuple[str, ...]
    writer: _Writer


PRODUCT_FORMATS: tuple[ProductFormat, ...] = (
    ProductFormat("cog", ("gtiff", "geotiff", "tif", "tiff"), (".tif", ".tiff"), _write_cog),
    ProductFormat("netcdf", ("nc",), (".nc", ".nc4"), _write_netcdf),
    ProductFormat("zarr", (), (ZARR_SUFFIX,), _write_zarr),
)
"""The output formats, the one place a format is added."""

FORMATS = tuple(entry.name for entry in PRODUCT_FORMATS)
"""Output formats of :func:`finalise_output`."""

_BY_NAME = {entry.name: entry for entry in PRODUCT_FORMATS}
_FORMAT_NAMES = {alias: e.name for e in PRODUCT_FORMATS for alias in (e.name, *e.aliases)}
_FORMAT_SUFFIXES = {suffix: e.name for e in PRODUCT_FORMATS for suffix in e.suffixes}
