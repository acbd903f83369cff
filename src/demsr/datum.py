"""Vertical datums: heights above the EGM96 geoid <-> heights above the WGS84 ellipsoid.

DEM-SRNet works in EGM96 orthometric heights, as SRTM, NASADEM and GEBCO are published. Some
DEMs (GNSS-derived, many lidar and satellite products such as Copernicus' ellipsoidal variants)
carry heights above the WGS84 ellipsoid instead. The two differ by the geoid undulation N,
between about -107 m and +85 m::

    h_wgs84 = H_egm96 + N(lon, lat)

N comes from the EGM96 15-arc-minute grid (``egm96_15.gtx``, NGA, public domain) bundled in
``demsr/data``; ``DEMSR_GEOID_GRID`` points to another copy. N is interpolated bilinearly
between the grid's nodes (as PROJ's ``vgridshift`` does), with longitudes wrapped around the
globe and latitudes clamped at the poles. Without the grid nothing is converted: a
:class:`DatumError` is raised rather than heights passed through unchanged.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from pyproj.exceptions import CRSError

from demsr.tiling import TileTransform

if TYPE_CHECKING:
    from rasterio.windows import Window

logger = logging.getLogger(__name__)

DATUMS = ("egm96", "wgs84")
"""Vertical datum names: ``egm96`` (orthometric, above the geoid), ``wgs84`` (ellipsoidal)."""

GEOID_GRID_ENV = "DEMSR_GEOID_GRID"
"""Environment variable naming a ``.gtx`` geoid grid to use instead of the bundled one."""

_BUNDLED_GRID = "data/egm96_15.gtx"
_GTX_HEADER_BYTES = 40  # lat0, lon0, dlat, dlon (float64), nrows, ncols (int32)
_GTX_NODATA = np.float32(-88.8888)
_ROWS_PER_CHUNK_CELLS = 1 << 20  # cells per chunk of convert_heights: bounds temporary memory


class DatumError(ValueError):
    """A vertical datum conversion cannot be done (unknown datum, no CRS, no geoid grid)."""


@dataclass(frozen=True, eq=False)
class GeoidGrid:
    """A global geoid undulation grid on regular latitude/longitude nodes.

    ``values_m[i, j]`` is N in metres at latitude ``lat0_deg + i * dlat_deg`` (rows run south
    to north, as in the GTX file) and longitude ``lon0_deg + j * dlon_deg``. The grid covers
    all longitudes (``ncols * dlon_deg == 360``); missing nodes are NaN.
    """

    values_m: np.ndarray
    lat0_deg: float
    lon0_deg: float
    dlat_deg: float
    dlon_deg: float
    source: str

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the grid's nodes."""
        return (int(self.values_m.shape[0]), int(self.values_m.shape[1]))

    def undulation(self, lon_deg: Any, lat_deg: Any) -> np.ndarray:
        """Geoid undulation N in metres (geoid height above the WGS84 ellipsoid).

        ``lon_deg`` and ``lat_deg`` are WGS84 degrees, arrays or scalars that broadcast together
        (e.g. a (1, cols) row of longitudes and a (rows, 1) column of latitudes give a
        (rows, cols) result). Longitudes may use any convention (-180..180, 0..360, or beyond):
        they wrap around the globe, and the interpolation crosses the antimeridian. Latitudes
        beyond the grid's first/last row (the poles) are clamped to it. Returns float64; NaN
        where a coordinate is not finite.
        """
        lon = np.asarray(lon_deg, dtype=np.float64)
        lat = np.asarray(lat_deg, dtype=np.float64)
        finite_lon = np.isfinite(lon)
        finite_lat = np.isfinite(lat)
        all_finite = bool(finite_lon.all() and finite_lat.all())
        if not all_finite:
            lon = np.where(finite_lon, lon, 0.0)
            lat = np.where(finite_lat, lat, 0.0)
        rows, cols = self.shape

        col = np.mod(lon - self.lon0_deg, 360.0) / self.dlon_deg
        col0 = np.floor(col)
        weight_x = col - col0
        # np.mod may round a tiny negative offset up to exactly 360 degrees: % cols folds it back.
        j0 = col0.astype(np.intp) % cols
        j1 = (j0 + 1) % cols

        lat_top = self.lat0_deg + (rows - 1) * self.dlat_deg
        row = (np.clip(lat, self.lat0_deg, lat_top) - self.lat0_deg) / self.dlat_deg
        row0 = np.minimum(np.floor(row), rows - 2)
        weight_y = row - row0
        i0 = row0.astype(np.intp)
        i1 = i0 + 1

        grid = self.values_m
        south = grid[i0, j0] * (1.0 - weight_x) + grid[i0, j1] * weight_x
        north = grid[i1, j0] * (1.0 - weight_x) + grid[i1, j1] * weight_x
        undulation_m = np.asarray(south * (1.0 - weight_y) + north * weight_y, dtype=np.float64)
        if not all_finite:
            undulation_m = np.where(finite_lon & finite_lat, undulation_m, np.nan)
        return undulation_m


def _grid_location(path: str | os.PathLike[str] | None) -> tuple[str, Path | None]:
    """(description, file path) of the grid to load; path None means the bundled resource."""
    if path is not None:
        return str(path), Path(path)
    env_path = os.environ.get(GEOID_GRID_ENV)
    if env_path:
        return f"{env_path} (from {GEOID_GRID_ENV})", Path(env_path)
    return f"demsr/{_BUNDLED_GRID} (bundled)", None


def _read_grid_bytes(description: str, path: Path | None) -> bytes:
    try:
        if path is None:
            return resources.files("demsr").joinpath(_BUNDLED_GRID).read_bytes()
        return path.read_bytes()
    except OSError as error:
        raise DatumError(
            f"the EGM96 geoid grid could not be read from {description}: {error}. Vertical datum "
            f"conversion needs it; set {GEOID_GRID_ENV} to an egm96_15.gtx file (e.g. from "
            "Debian's proj-data package) or reinstall demsr."
        ) from error


def _parse_gtx(raw: bytes, description: str) -> GeoidGrid:
    """Parse a GTX grid (NOAA VDatum format; big-endian, or little-endian as GDAL also reads)."""
    if len(raw) < _GTX_HEADER_BYTES:
        raise DatumError(f"{description} is not a GTX geoid grid: only {len(raw)} bytes")
    for order in (">", "<"):
        lat0, lon0, dlat, dlon = np.frombuffer(raw[:32], dtype=f"{order}f8").tolist()
        nrows, ncols = np.frombuffer(raw[32:40], dtype=f"{order}i4").tolist()
        if (
            0 < dlat <= 180
            and 0 < dlon <= 360
            and 1 < nrows
            and 1 < ncols
            and len(raw) == _GTX_HEADER_BYTES + 4 * nrows * ncols
        ):
            break
    else:
        raise DatumError(
            f"{description} is not a GTX geoid grid (its header does not match its size, "
            f"{len(raw)} bytes)"
        )
    if abs(ncols * dlon - 360.0) > 1e-6 * dlon:
        raise DatumError(
            f"{description} is not a global grid ({ncols} columns x {dlon} degrees); "
            "a global geoid model such as egm96_15.gtx is needed"
        )
    if lat0 < -90 - 1e-9 or lat0 + (nrows - 1) * dlat > 90 + 1e-9:
        raise DatumError(f"{description}: latitudes beyond +-90 degrees in its header")
    values = np.frombuffer(raw, dtype=f"{order}f4", offset=_GTX_HEADER_BYTES)
    values = values.reshape(nrows, ncols).astype(np.float32)  # native byte order, own copy
    missing = values == _GTX_NODATA
    if missing.any():
        logger.warning("geoid grid %s: %d nodes without data", description, int(missing.sum()))
        values[missing] = np.nan
    values.flags.writeable = False
    return GeoidGrid(values, lat0, lon0, dlat, dlon, description)


@functools.lru_cache(maxsize=4)
def _load_cached(description: str, path: Path | None) -> GeoidGrid:
    grid = _parse_gtx(_read_grid_bytes(description, path), description)
    logger.debug(
        "loaded geoid grid %s: %d x %d nodes of %g x %g degrees from (%g, %g)",
        description,
        *grid.shape,
        grid.dlat_deg,
        grid.dlon_deg,
        grid.lat0_deg,
        grid.lon0_deg,
    )
    return grid


def load_geoid(path: str | os.PathLike[str] | None = None) -> GeoidGrid:
    """Load the EGM96 geoid grid (a GTX file), once per file.

    ``path`` defaults to ``$DEMSR_GEOID_GRID`` if set, else the grid bundled with demsr
    (``demsr/data/egm96_15.gtx``: 721 x 1440 nodes, 15', -90..90 N, -180..179.75 E).
    Raises :class:`DatumError` if the file is missing, unreadable or not a global GTX grid.
    """
    description, file_path = _grid_location(path)
    return _load_cached(description, file_path)


def _check_datum(name: str) -> str:
    datum = str(name).strip().lower()
    if datum not in DATUMS:
        raise DatumError(f"unknown vertical datum {name!r}; expected one of {', '.join(DATUMS)}")
    return datum


def _horizontal_crs(crs: Any) -> ProjCRS:
    if crs is None:
        raise DatumError(
            "the raster has no CRS: its cells cannot be located on the geoid for a vertical "
            "datum conversion"
        )
    try:
        proj_crs = ProjCRS.from_user_input(crs)
    except CRSError as error:
        raise DatumError(f"unusable CRS for a vertical datum conversion: {error}") from error
    if proj_crs.is_compound:
        # the vertical part does not move cells; locate them with the horizontal one
        proj_crs = proj_crs.sub_crs_list[0]
    return proj_crs


_WGS84 = ProjCRS.from_epsg(4326)


@functools.lru_cache(maxsize=16)
def _to_lonlat(wkt: str) -> Transformer | None:
    """Transformer from a CRS (by its WKT) to WGS84 lon/lat; None when it is WGS84 lon/lat."""
    crs = ProjCRS.from_wkt(wkt)
    if crs.equals(_WGS84, ignore_axis_order=True):
        return None
    return Transformer.from_crs(crs, _WGS84, always_xy=True)


def _undulation_rows(
    grid: GeoidGrid,
    transform: Affine,
    to_lonlat: Transformer | None,
    row_start: int,
    row_stop: int,
    cols: int,
) -> np.ndarray:
    """N in metres at the cell centres of rows [row_start, row_stop), shape (rows, cols)."""
    col_centres = np.arange(cols, dtype=np.float64)[np.newaxis, :] + 0.5
    row_centres = np.arange(row_start, row_stop, dtype=np.float64)[:, np.newaxis] + 0.5
    a, b, c, d, e, f = (float(v) for v in tuple(transform)[:6])
    if to_lonlat is None and b == 0.0 and d == 0.0:
        # north-up WGS84 lon/lat: a row of longitudes and a column of latitudes suffice
        return grid.undulation(c + a * col_centres, f + e * row_centres)
    x = c + a * col_centres + b * row_centres
    y = f + d * col_centres + e * row_centres
    if to_lonlat is None:
        return grid.undulation(x, y)
    lon, lat = to_lonlat.transform(x, y, errcheck=False)
    return grid.undulation(lon, lat)


def convert_heights(
    values_m: np.ndarray,
    transform: Affine,
    crs: Any,
    from_datum: str,
    to_datum: str,
    grid: GeoidGrid | None = None,
) -> np.ndarray:
    """Convert heights in metres between vertical datums, cell by cell.

    ``values_m`` is a (rows, cols) array (or (..., rows, cols): every band gets the same N) on
    the grid of ``transform`` (cell (row, col) has its centre at
    ``transform * (col + 0.5, row + 0.5)``) in ``crs`` (anything pyproj reads: a rasterio or
    pyproj CRS, ``"EPSG:32633"``, WKT). Cell centres are located in WGS84 lon/lat (through
    pyproj for other CRSs) and N is interpolated there; ``egm96 -> wgs84`` adds N,
    ``wgs84 -> egm96`` subtracts it. Same datum: an unchanged copy (no CRS needed).

    Returns a new array: float dtypes are kept, integers become float32. NaN (nodata) stays
    NaN; cells whose lon/lat cannot be computed become NaN (logged). Temporary memory is
    bounded by processing about 1 M cells at a time.

    Raises :class:`DatumError` for an unknown datum, a missing CRS, or a missing geoid grid.
    """
    source = _check_datum(from_datum)
    target = _check_datum(to_datum)
    converted = _float_copy(values_m)
    if source == target:
        return converted
    _check_grid_shape(converted)
    proj_crs = _horizontal_crs(crs)
    if grid is None:
        grid = load_geoid()
    _shift_heights(converted, transform, _to_lonlat(proj_crs.to_wkt()), grid, target)
    return converted


def _float_copy(values_m: np.ndarray) -> np.ndarray:
    """A copy of ``values_m``: float dtypes kept, integers become float32."""
    values = np.asarray(values_m)
    dtype = values.dtype if np.issubdtype(values.dtype, np.floating) else np.dtype(np.float32)
    return values.astype(dtype, copy=True)


def _check_grid_shape(values: np.ndarray) -> None:
    if values.ndim < 2:
        raise DatumError(f"expected a (rows, cols) array of heights, got shape {values.shape}")


def _shift_heights(
    converted: np.ndarray,
    transform: Affine,
    to_lonlat: Transformer | None,
    grid: GeoidGrid,
    target: str,
) -> None:
    """Add N to (``target`` ``wgs84``) or subtract it from (``egm96``) float (..., rows, cols)
    heights in place, in chunks of about 1 M cells; cells not located on the geoid become NaN."""
    sign = 1.0 if target == "wgs84" else -1.0
    rows, cols = converted.shape[-2:]
    chunk_rows = max(1, _ROWS_PER_CHUNK_CELLS // max(cols, 1))
    unlocated = 0
    for row_start in range(0, rows, chunk_rows):
        row_stop = min(rows, row_start + chunk_rows)
        undulation_m = _undulation_rows(grid, transform, to_lonlat, row_start, row_stop, cols)
        unlocated += int(np.count_nonzero(np.isnan(undulation_m)))
        block = converted[..., row_start:row_stop, :]
        # float64 N is added in place to float32 heights: 8000 m keeps ~0.5 mm resolution
        np.add(block, sign * undulation_m, out=block, casting="same_kind")
    if unlocated:
        logger.warning(
            "%d of %d cells could not be located on the geoid (outside the CRS's domain?): "
            "set to nodata",
            unlocated,
            rows * cols,
        )


def datum_transform(
    from_datum: str, to_datum: str, grid: GeoidGrid | None = None
) -> TileTransform | None:
    """A per-tile datum conversion for predict_raster's ``transform_input``/``transform_output``.

    Returns None when no conversion is needed (same datum), else a callable
    ``(values_m, window, transform, crs) -> values_m`` that applies :func:`convert_heights`.
    ``transform`` must be the tile's own affine transform (its top-left cell at (0, 0), i.e.
    the window transform already applied); ``window`` (a rasterio Window of the tile in the
    raster's grid) is only used for logging. Datum names are checked and the geoid grid loaded
    now, so that a missing grid fails before any prediction runs.
    """
    source = _check_datum(from_datum)
    target = _check_datum(to_datum)
    if source == target:
        return None
    geoid = grid if grid is not None else load_geoid()
    # Every tile of a raster has the same CRS: resolve its lon/lat transformer once, not per tile.
    # (The resume manifest records the closure's plain values, source and target: keep it so.)
    transformers: dict[Any, Transformer | None] = {}

    def convert_tile(
        values_m: np.ndarray, window: Window | None, transform: Affine, crs: Any
    ) -> np.ndarray:
        logger.debug("vertical datum %s -> %s on tile %s", source, target, window)
        converted = _float_copy(values_m)
        _check_grid_shape(converted)
        try:
            to_lonlat = transformers[crs]
        except KeyError:
            to_lonlat = transformers[crs] = _to_lonlat(_horizontal_crs(crs).to_wkt())
        except TypeError:  # an unhashable CRS description (e.g. a PROJ dict)
            to_lonlat = _to_lonlat(_horizontal_crs(crs).to_wkt())
        _shift_heights(converted, transform, to_lonlat, geoid, target)
        return converted

    return convert_tile


# --------------------------------------------------------------------------------------------
# Vertical CRSs: the datum of a raster's heights as part of its CRS
# --------------------------------------------------------------------------------------------

EGM96_HEIGHT_EPSG = 5773
"""EPSG code of the vertical CRS "EGM96 height" (orthometric heights above the EGM96 geoid)."""

_WGS84_3D_EPSG = 4979


def crs_with_heights(horizontal: Any, datum: str) -> ProjCRS:
    """The 3D CRS of heights above ``datum`` on the grid of a 2D ``horizontal`` CRS.

    ``egm96``: a compound CRS, the horizontal CRS + EGM96 height (EPSG:5773; EPSG:4326 gives
    EPSG:9707, "WGS 84 + EGM96 height"). ``wgs84`` (heights above the ellipsoid): the 3D
    variant of the horizontal CRS (EPSG:4326 gives EPSG:4979); ellipsoidal heights cannot be a
    vertical part of a compound CRS. A 3D or compound ``horizontal`` is reduced to its 2D part
    first. Raises :class:`DatumError` for an unknown datum or an unusable CRS.
    """
    target = _check_datum(datum)
    proj_crs = split_heights(horizontal)[0]
    if target == "egm96":
        vertical = ProjCRS.from_epsg(EGM96_HEIGHT_EPSG)
        if proj_crs.to_epsg() == 4326:
            return ProjCRS.from_user_input(f"EPSG:4326+{EGM96_HEIGHT_EPSG}")
        from pyproj.crs import CompoundCRS

        return CompoundCRS(f"{proj_crs.name} + {vertical.name}", [proj_crs, vertical])
    if proj_crs.to_epsg() == 4326:
        return ProjCRS.from_epsg(_WGS84_3D_EPSG)
    return proj_crs.to_3d()


def split_heights(crs: Any) -> tuple[ProjCRS, str | None]:
    """(2D horizontal CRS, vertical datum of the heights) of a CRS (anything pyproj reads).

    The datum is ``egm96`` for a compound CRS whose vertical part is EGM96 height (EPSG:5773),
    ``wgs84`` for a 3D geographic or projected CRS (heights above its ellipsoid), the vertical
    CRS's own name for any other compound CRS (e.g. ``NAVD88 height``), and None for a 2D CRS,
    which says nothing about heights. Raises :class:`DatumError` for an unusable CRS.
    """
    try:
        proj_crs = ProjCRS.from_user_input(crs)
    except CRSError as error:
        raise DatumError(f"unusable CRS: {error}") from error
    if proj_crs.is_compound:
        horizontal, *rest = proj_crs.sub_crs_list
        vertical = rest[-1] if rest else None
        if vertical is None or not vertical.is_vertical:
            return horizontal, None
        if vertical.to_epsg() == EGM96_HEIGHT_EPSG or "egm96" in vertical.name.lower():
            return horizontal, "egm96"
        return horizontal, vertical.name
    if len(proj_crs.axis_info) == 3 and (proj_crs.is_geographic or proj_crs.is_projected):
        return proj_crs.to_2d(), "wgs84"
    return proj_crs, None


def resolve_input_datum(given: str | None, found: str | None, path: str) -> str:
    """The vertical datum of an input's heights: the one its CRS declares (``found``, see
    :func:`split_heights`), else ``given``, else ``egm96``.

    Raises :class:`DatumError` naming ``path`` when the two differ, or when the CRS declares a
    datum that demsr does not convert (one of :data:`DATUMS` only).
    """
    if found is not None and found not in DATUMS:
        raise DatumError(
            f"{path}: its CRS gives heights in {found}; demsr converts only "
            f"{' and '.join(DATUMS)} heights (convert the input first, e.g. with gdalwarp -t_srs)"
        )
    if given is not None and found is not None and _check_datum(given) != found:
        raise DatumError(
            f"{path}: its CRS gives {found} heights, not the {given} of --input-datum "
            "(leave the option out to use the CRS's)"
        )
    return _check_datum(given or found or "egm96")
