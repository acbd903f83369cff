"""Opening any DEM: the one list of input formats and :func:`open_raster`'s dispatch on it."""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import CRSError, RasterioIOError
from rasterio.windows import Window

from demsr.io.gridded import _GridReader
from demsr.io.grids import same_crs
from demsr.io.raster import (
    PLAUSIBLE_ELEVATION_M,
    Raster,
    RasterError,
    RasterLayout,
    RasterReader,
    _check_north_up,
    _describe_band_choice,
)
from demsr.io.units import _split_heights, metres_per_unit

try:  # GDAL's own errors (a failed read or write) are not RasterioError subclasses
    from rasterio._err import CPLE_BaseError
except ImportError:  # pragma: no cover - private module moved
    from rasterio.errors import RasterioError as CPLE_BaseError

NETCDF_SUFFIXES = (".nc", ".nc3", ".nc4", ".netcdf", ".cdf")
ZARR_SUFFIX = ".zarr"
ZIP_RASTER_SUFFIXES = (".hgt", ".tif", ".tiff", ".asc", ".dem", ".img", ".bil", ".flt", ".grd")
"""Members of a ``.zip`` that count as rasters (sidecars such as ``.prj`` or ``.aux.xml`` don't)."""

INPUT_SUFFIXES: tuple[str, ...] = (
    *ZIP_RASTER_SUFFIXES,
    ".vrt",
    ".zip",
    *NETCDF_SUFFIXES,
    ZARR_SUFFIX,
)
"""The one list of input formats by suffix: what :func:`open_raster` reads (GDAL's rasters as a
zip may hold them, a zip of one, GDAL's virtual rasters, NetCDF, Zarr stores: folders). A
folder's members are taken as rasters by it (:mod:`demsr.prepare`)."""


class _GdalReader(RasterReader):
    """A band of anything rasterio/GDAL opens, read through rasterio's windowed reads."""

    def __init__(self, path: str, gdal_path: str, band: int) -> None:
        self.path = path
        try:
            self._dataset = rasterio.open(gdal_path)
        except RasterioIOError as exc:
            raise RasterError(f"{path}: cannot be read as a raster ({exc})") from None
        try:
            src = self._dataset
            if not 1 <= band <= src.count:
                raise RasterError(f"{path}: band {band} does not exist (the file has {src.count})")
            _check_north_up(src.transform, path)
        except BaseException:
            self._dataset.close()
            raise
        self.band = band
        self.band_count = int(src.count)
        self.shape = (int(src.height), int(src.width))
        self.transform = src.transform
        self.crs = src.crs
        self.nodata = None if src.nodata is None else float(src.nodata)
        self.layout = RasterLayout(
            kind="gdal", driver=src.driver, source_dtype=str(src.dtypes[band - 1])
        )
        try:
            self.units = src.units[band - 1] or None
            self.metres_per_unit = metres_per_unit(self.units, path)
        except BaseException:
            self._dataset.close()
            raise
        _describe_band_choice(path, band, self.band_count, str(src.dtypes[band - 1]))

    def _read(self, row_off: int, col_off: int, height: int, width: int) -> np.ndarray:
        window = Window(col_off, row_off, width, height)
        try:
            data = self._dataset.read(self.band, window=window, masked=True)
        except (RasterioIOError, CPLE_BaseError) as exc:
            cause = str(exc.__cause__ or exc).strip().splitlines()[0]
            raise RasterError(
                f"{self.path}: cannot read rows {row_off}..{row_off + height}, cols "
                f"{col_off}..{col_off + width}: the file is truncated or corrupt ({cause})"
            ) from None
        return np.ma.filled(data.astype(np.float32), np.nan)

    def close(self) -> None:
        self._dataset.close()


_GDAL_NAME = re.compile(r"^(/vsi[a-z0-9_]+/|[A-Za-z0-9_]{2,}:)")


def _sniff_netcdf(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(3) == b"CDF"
    except OSError:
        return False


def _zip_member(path: str) -> str:
    """The one raster inside a zip archive, or a RasterError saying why there is none."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [info.filename for info in archive.infolist() if not info.is_dir()]
    except (zipfile.BadZipFile, OSError) as exc:
        raise RasterError(f"{path}: not a readable zip archive ({exc})") from None
    for name in names:
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", name):
            raise RasterError(f"{path}: refusing a zip with an unsafe member name {name!r}")
    rasters = [name for name in names if name.lower().endswith(ZIP_RASTER_SUFFIXES)]
    if len(rasters) != 1:
        found = ", ".join(rasters) if rasters else "none"
        raise RasterError(
            f"{path}: a zip must hold exactly one raster ({', '.join(ZIP_RASTER_SUFFIXES)}); "
            f"found {len(rasters)}: {found}"
        )
    return rasters[0]


def open_raster(
    path: str | os.PathLike[str],
    band: int = 1,
    variable: str | None = None,
    *,
    crs: CRS | str | None = None,
    valid_range_m: tuple[float, float] | None = PLAUSIBLE_ELEVATION_M,
) -> RasterReader:
    """Open one band of a raster for windowed reads; use it as a context manager.

    ``path`` may name anything GDAL opens (GeoTIFF/COG, SRTM ``.hgt``, ESRI ASCII, GDAL
    ``/vsi...`` paths), a ``.zip`` holding exactly one raster, a NetCDF file, or a Zarr store (a
    directory). For NetCDF/Zarr, ``variable`` names the elevation variable (default:
    ``elevation``, or the only gridded variable) and ``band`` counts along a non-spatial dimension
    if the variable has one. ``crs`` (a CRS or text such as ``EPSG:4326``) supplies the CRS of a
    file that declares none; a file whose own CRS differs is refused. Reads refuse values outside
    ``valid_range_m`` (default :data:`PLAUSIBLE_ELEVATION_M`; None accepts any). A compound
    or 3D CRS (the file's or ``crs``) is presented as its horizontal part, the datum of its
    heights in :attr:`RasterReader.vertical_datum`. Raises :class:`RasterError` naming the file
    for a missing or empty file, a wrong band or variable, something that is not a raster, a
    rotated / not north-up grid or a conflicting CRS.
    """
    reader = _open_reader(os.fspath(path), band, variable)
    reader.valid_range_m = valid_range_m
    if reader.crs is not None:
        reader.crs, reader.vertical_datum = _split_heights(reader.crs)
    if crs is not None:
        try:
            given, given_datum = _split_heights(CRS.from_user_input(crs))
        except CRSError as exc:
            reader.close()
            raise RasterError(
                f"{reader.path}: the CRS given for it, {str(crs)!r}, is not valid ({exc})"
            ) from None
        reader.vertical_datum = reader.vertical_datum or given_datum
        if reader.crs is not None and not same_crs(reader.crs, given):
            reader.close()
            raise RasterError(
                f"{reader.path}: has its own CRS ({reader.crs}), which differs from the one "
                f"given ({crs}); a CRS is only given for files without one"
            )
        reader.crs = given
    try:
        _check_latitudes(reader)
    except BaseException:
        reader.close()
        raise
    return reader


def _check_latitudes(reader: RasterReader) -> None:
    """A RasterError for a geographic grid whose cells run beyond the poles (more than half a
    cell: grid-registered global grids have their edge cells centred on +-90 degrees)."""
    if reader.crs is None or not reader.crs.is_geographic:
        return
    _, south, _, north = reader.bounds
    slack = abs(reader.transform.e) / 2 + 1e-9
    if north > 90.0 + slack or south < -90.0 - slack:
        raise RasterError(
            f"{reader.path}: latitudes run from {south:g} to {north:g} degrees, beyond +-90: "
            "not a valid geographic grid (a wrong CRS, or a projected grid without its CRS?)"
        )


def _open_reader(path_str: str, band: int, variable: str | None) -> RasterReader:
    local = Path(path_str)
    if not local.exists():
        if _GDAL_NAME.match(path_str):
            return _GdalReader(path_str, path_str, band)
        raise RasterError(f"{path_str}: no such file")
    suffix = local.suffix.lower()
    if local.is_dir():
        if suffix == ZARR_SUFFIX or (local / ".zgroup").exists() or (local / "zarr.json").exists():
            return _GridReader(path_str, "zarr", band, variable)
        raise RasterError(f"{path_str}: is a directory, not a Zarr store")
    if local.stat().st_size == 0:
        raise RasterError(f"{path_str}: is empty (0 bytes), not a raster")
    if suffix in NETCDF_SUFFIXES or _sniff_netcdf(local):
        return _GridReader(path_str, "netcdf", band, variable)
    if suffix == ".zip":
        member = _zip_member(path_str)
        return _GdalReader(path_str, f"/vsizip/{local.resolve()}/{member}", band)
    return _GdalReader(path_str, path_str, band)


def read_raster(
    path: str | os.PathLike[str], band: int = 1, window: Window | None = None
) -> Raster:
    """Read one band of a raster (or a window of it) as float32 metres with NaN nodata.

    Any input :func:`open_raster` takes works. Cells equal to the file's nodata value, masked
    cells and non-finite cells become NaN. The whole raster is loaded: use :func:`open_raster`
    for windowed reads of large rasters.
    """
    with open_raster(path, band=band) as reader:
        data = reader.read(window)
        transform = reader.window_transform(window) if window is not None else reader.transform
        return Raster(
            data=data, transform=transform, crs=reader.crs, nodata=reader.nodata, path=reader.path
        )


def require_crs(reader: RasterReader) -> CRS:
    """The raster's CRS; a RasterError for one without (its output could not be
    georeferenced)."""
    if reader.crs is None:
        raise RasterError(
            f"{reader.path}: has no CRS; give it with --crs (crs=), e.g. --crs EPSG:4326, so "
            "that the output is georeferenced"
        )
    return reader.crs
