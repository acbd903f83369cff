"""Raster input and output: any DEM in (GDAL formats, NetCDF, Zarr), georeferenced products out.

Inside demsr a DEM is a float32 array (rows, cols) in metres with NaN where the file has no data,
north-up (row 0 is the northern edge), with an affine ``transform`` from (col, row) of a cell's
top-left corner to CRS coordinates. The file's own nodata value is kept alongside so that outputs
can write it back.

Reading: :func:`open_raster` returns a :class:`RasterReader` that reads windows lazily, so memory
does not grow with the size of the raster:

- anything GDAL opens (GeoTIFF/COG, SRTM ``.hgt``, ESRI ASCII, ...), also inside a ``.zip``
  holding one raster (opened in place through GDAL's ``/vsizip/``);
- NetCDF and Zarr grids in the GEBCO layout: 1-D ``lat``/``lon`` (or ``latitude``/``longitude``,
  ``y``/``x``) coordinates of cell centres and an ``elevation`` variable. Latitudes may ascend or
  descend and longitudes may run over -180..180 or 0..360; the reader presents them north-up and,
  for a global 0..360 grid, with its columns rotated into -180..180 order.

:func:`read_raster` reads a whole raster (or one window) into a :class:`Raster`.

Writing: :func:`write_geotiff` writes an in-memory array; :func:`finalise_output` converts a
complete single-band raster (tiled prediction's partial Zarr store, or a float32 GeoTIFF) into the
final product (Cloud-Optimized GeoTIFF, CF NetCDF or Zarr), block by block, mirroring the
input's NetCDF/Zarr layout on request.
Products are north-up and declare the heights' vertical datum in their CRS (:func:`output_crs`);
docs/opening-outputs.md says how GIS software opens them.

The package, by job: :mod:`~demsr.io.raster` (the in-memory DEM, the reader interface,
:class:`RasterError`), :mod:`~demsr.io.readers` (the one list of input formats,
:func:`open_raster`), :mod:`~demsr.io.gridded` (NetCDF/Zarr grids and their CF layout),
:mod:`~demsr.io.units` (vertical units and datums), :mod:`~demsr.io.grids` (grids that must
agree), :mod:`~demsr.io.safety` (atomic writes, temporaries, outputs never over inputs),
:mod:`~demsr.io.geotiff` (GeoTIFF writing), :mod:`~demsr.io.formats` (the registry of output
formats and :func:`finalise_output`), :mod:`~demsr.io.blocks` (the block encoder and reader the
product writers share), :mod:`~demsr.io.cog` (the Cloud-Optimized GeoTIFF product) and
:mod:`~demsr.io.netcdf_zarr` (the CF NetCDF and Zarr products). Every name is imported from
here, ``demsr.io``; the private helpers :mod:`demsr.xr` shares with the NetCDF/Zarr reader are
re-exported too.
"""

from __future__ import annotations

from demsr.io.blocks import (
    BLOCK_PX,
    INT16_NODATA,
    AncillaryBand,
)
from demsr.io.formats import (
    FORMATS,
    OUTPUT_DTYPES,
    PRODUCT_FORMATS,
    ProductFormat,
    finalise_output,
    output_format,
)
from demsr.io.geotiff import (
    fill_nodata,
    gtiff_profile,
    write_geotiff,
)
from demsr.io.gridded import (
    DEFAULT_VARIABLE,
    X_NAMES,
    Y_NAMES,
    ZARR_CRS_ATTRIBUTE,
)
from demsr.io.gridded import _coordinate as _coordinate
from demsr.io.gridded import _grid_crs as _grid_crs
from demsr.io.gridded import _grid_mapping_attrs as _grid_mapping_attrs
from demsr.io.gridded import _grid_nodata as _grid_nodata
from demsr.io.gridded import _regular_step as _regular_step
from demsr.io.grids import (
    GRID_TOLERANCE,
    integer_scale,
    locate_grid,
    same_crs,
)
from demsr.io.raster import (
    PLAUSIBLE_ELEVATION_M,
    Raster,
    RasterError,
    RasterLayout,
    RasterReader,
    RasterSummary,
    fill_nearest,
    to_float32_heights,
)
from demsr.io.readers import (
    INPUT_SUFFIXES,
    NETCDF_SUFFIXES,
    ZARR_SUFFIX,
    ZIP_RASTER_SUFFIXES,
    CPLE_BaseError,
    open_raster,
    read_raster,
    require_crs,
)
from demsr.io.safety import (
    atomic_directory,
    atomic_path,
    fsync_file,
    fsync_files,
    refuse_existing,
    refuse_output_over_input,
    remove_gdal_sidecars,
    remove_stale_temporaries,
    require_writable_folder,
)
from demsr.io.units import (
    CANONICAL_UNITS,
    VERTICAL_UNITS,
    height_standard_name,
    metres_per_unit,
    output_crs,
)

__all__ = [
    "AncillaryBand",
    "BLOCK_PX",
    "CANONICAL_UNITS",
    "CPLE_BaseError",
    "DEFAULT_VARIABLE",
    "FORMATS",
    "GRID_TOLERANCE",
    "INPUT_SUFFIXES",
    "INT16_NODATA",
    "NETCDF_SUFFIXES",
    "OUTPUT_DTYPES",
    "PLAUSIBLE_ELEVATION_M",
    "PRODUCT_FORMATS",
    "ProductFormat",
    "Raster",
    "RasterError",
    "RasterLayout",
    "RasterReader",
    "RasterSummary",
    "VERTICAL_UNITS",
    "X_NAMES",
    "Y_NAMES",
    "ZARR_CRS_ATTRIBUTE",
    "ZARR_SUFFIX",
    "ZIP_RASTER_SUFFIXES",
    "atomic_directory",
    "atomic_path",
    "fill_nearest",
    "fill_nodata",
    "finalise_output",
    "fsync_file",
    "fsync_files",
    "gtiff_profile",
    "height_standard_name",
    "integer_scale",
    "locate_grid",
    "metres_per_unit",
    "open_raster",
    "output_crs",
    "output_format",
    "read_raster",
    "refuse_existing",
    "refuse_output_over_input",
    "remove_gdal_sidecars",
    "remove_stale_temporaries",
    "require_crs",
    "require_writable_folder",
    "same_crs",
    "to_float32_heights",
    "write_geotiff",
]
