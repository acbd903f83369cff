"""Output formats: the one registry of the formats a prediction is written in
(:data:`PRODUCT_FORMATS`) and :func:`finalise_output`, which turns a prediction's partial store
into the product. The writers live by backend: :mod:`demsr.io.cog` (Cloud-Optimized GeoTIFF) and
:mod:`demsr.io.netcdf_zarr` (CF NetCDF, Zarr), both on the block encoder and reader of
:mod:`demsr.io.blocks`."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from demsr.io.blocks import INT16_NODATA, AncillaryBand, _Encoder
from demsr.io.cog import _write_cog
from demsr.io.netcdf_zarr import _write_netcdf, _write_zarr
from demsr.io.raster import RasterError, RasterLayout, RasterReader
from demsr.io.readers import ZARR_SUFFIX, _GdalReader

log = logging.getLogger("demsr.io")  # the package's one logger, as before the split

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
        _finalise(src, output, kind, dtype, metadata, layout, progress, uncertainty)
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
