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
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import math
import os
import re
import shutil
import tempfile
import warnings
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
import rasterio.windows
from affine import Affine
from pyproj import CRS as ProjCRS
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import CRSError, RasterioIOError
from rasterio.windows import Window

from demsr.stops import stop_point
from demsr.tiling import tile_grid

try:  # GDAL's own errors (a failed read or write) are not RasterioError subclasses
    from rasterio._err import CPLE_BaseError
except ImportError:  # pragma: no cover - private module moved
    from rasterio.errors import RasterioError as CPLE_BaseError

log = logging.getLogger(__name__)

BLOCK_PX = 512
"""Block edge of every product :func:`finalise_output` writes: COG tiles, NetCDF/Zarr chunks."""

INT16_NODATA = -32768
"""Nodata value of int16 products; valid int16 elevations are -32767..32767 m."""

ZARR_CRS_ATTRIBUTE = "_CRS"
"""Attribute of a Zarr product's elevation array holding its CRS as ``{"wkt": ...}``, where
GDAL's Zarr driver looks for one (its CF grid-mapping reading came with GDAL 3.9)."""

NETCDF_SUFFIXES = (".nc", ".nc3", ".nc4", ".netcdf", ".cdf")
ZARR_SUFFIX = ".zarr"
ZIP_RASTER_SUFFIXES = (".hgt", ".tif", ".tiff", ".asc", ".dem", ".img", ".bil", ".flt", ".grd")
"""Members of a ``.zip`` that count as rasters (sidecars such as ``.prj`` or ``.aux.xml`` don't)."""

Y_NAMES = ("lat", "latitude", "y")
X_NAMES = ("lon", "longitude", "x")
DEFAULT_VARIABLE = "elevation"

# A 1-D coordinate is accepted as regular when every step is within this fraction of a cell of
# the mean step (float32 coordinates of a global 15" grid are off by up to ~0.2 % of a cell).
_REGULAR_TOLERANCE = 0.01

PLAUSIBLE_ELEVATION_M = (-12_000.0, 10_000.0)
"""Heights (metres) an input DEM may hold: the Earth's surface spans about -10,935 m (Challenger
Deep) to 8,849 m (Everest), or a hundred metres more either way as ellipsoidal heights. A value
outside is an undeclared nodata marker (-32767, -32768, 1e30, ...) or a file not in metres,
and is refused rather than fed to the network (:meth:`RasterReader.read`)."""


# Vertical units a DEM may declare (GDAL's band unit type, CF ``units``), lower-cased, and their
# length in metres. Undeclared units are taken as metres.
_METRE_NAMES = ("m", "metre", "meter", "metres", "meters", "m above sea level")
_FOOT_NAMES = ("ft", "foot", "feet", "international foot", "international feet", "ft_intl")
_US_FOOT_NAMES = (
    "us survey foot",
    "us survey feet",
    "us_survey_foot",
    "us_survey_feet",
    "us-ft",
    "ftus",
    "ft_us",
    "foot_us",
    "us foot",
    "survey foot",
)
VERTICAL_UNITS: dict[str, float] = {
    **dict.fromkeys(_METRE_NAMES, 1.0),
    **dict.fromkeys(_FOOT_NAMES, 0.3048),
    **dict.fromkeys(_US_FOOT_NAMES, 1200.0 / 3937.0),
    "km": 1000.0,
    "kilometre": 1000.0,
    "kilometer": 1000.0,
    "cm": 0.01,
    "dm": 0.1,
    "mm": 0.001,
}
"""Metres per unit of each vertical unit a DEM may declare."""

CANONICAL_UNITS = {0.3048: "ft", 1200.0 / 3937.0: "US_survey_foot"}
"""How an output in feet declares its unit (UDUNITS names, which CF checkers and GDAL accept)."""


def metres_per_unit(unit: str | None, path: str) -> float:
    """Metres per ``unit`` (a vertical unit a file declares; None or empty: metres); a
    RasterError naming the unit for one that is not a known length."""
    if unit is None or not str(unit).strip():
        return 1.0
    key = " ".join(str(unit).strip().lower().split())
    if key in VERTICAL_UNITS:
        return VERTICAL_UNITS[key]
    raise RasterError(
        f"{path}: elevations are declared in {unit!r}, not a vertical unit demsr converts "
        "(metres, feet, US survey feet, km, cm, mm)"
    )


class RasterError(ValueError):
    """A raster that cannot be used, with a message naming the file and the problem."""


@dataclass
class Raster:
    """A single-band DEM in memory.

    ``data`` is (rows, cols) float32 metres, NaN where the source has no data. ``transform`` maps
    (col, row) of the top-left corner of a cell to CRS coordinates. ``nodata`` is the source
    file's nodata value (``None`` if it declares none).
    """

    data: np.ndarray
    transform: Affine
    crs: CRS | None
    nodata: float | None = None
    path: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.data.shape[0]), int(self.data.shape[1]))

    @property
    def valid(self) -> np.ndarray:
        """Boolean mask, True where the cell has data."""
        return np.isfinite(self.data)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in CRS units."""
        return _bounds(self.transform, self.shape)


def _bounds(transform: Affine, shape: tuple[int, int]) -> tuple[float, float, float, float]:
    rows, cols = shape
    left, top = transform @ (0, 0)
    right, bottom = transform @ (cols, rows)
    return (min(left, right), min(bottom, top), max(left, right), max(bottom, top))


def to_float32_heights(values: Any, *, copy: bool = False) -> np.ndarray:
    """``values`` as a writable float32 array with NaN wherever a cell is not finite.

    Converts in place when ``values`` already is a writable float32 array, unless ``copy``
    (then the caller's array is never changed).
    """
    data = np.array(values, dtype=np.float32) if copy else np.asarray(values, dtype=np.float32)
    if not data.flags.writeable:  # some backends hand out read-only buffers
        data = data.copy()
    data[~np.isfinite(data)] = np.nan
    return data


def fill_nearest(values: np.ndarray) -> np.ndarray:
    """Replace NaN cells of a (rows, cols) array by the value of the nearest valid cell.

    Returns ``values`` itself when it has no NaN; ValueError when it has no valid cell.
    """
    from scipy import ndimage

    invalid = np.isnan(values)
    if not invalid.any():
        return values
    if invalid.all():
        raise ValueError("the array holds no valid cells")
    indices = ndimage.distance_transform_edt(invalid, return_distances=False, return_indices=True)
    return values[tuple(indices)]


def _check_north_up(transform: Affine, path: str) -> None:
    if transform.b != 0 or transform.d != 0 or transform.a <= 0 or transform.e >= 0:
        raise RasterError(
            f"{path}: transform is rotated or not north-up ({tuple(transform)[:6]}); "
            "warp it to a north-up grid first (e.g. gdalwarp)"
        )


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RasterLayout:
    """How a source raster is laid out on disk: what a writer needs to mirror it.

    ``kind`` is ``"gdal"`` (``driver`` names the GDAL driver), ``"netcdf"`` or ``"zarr"``.
    For NetCDF/Zarr: ``variable`` is the elevation variable, ``x_name``/``y_name`` its 1-D
    coordinates, ``lon_0_360`` is True when longitudes run over 0..360 (some beyond 180), and
    ``lat_ascending`` is True when the y coordinate ascends (row 0 of the file is the south).
    ``source_dtype`` is the stored data type (e.g. ``"int16"``).
    """

    kind: str
    driver: str | None = None
    variable: str | None = None
    x_name: str | None = None
    y_name: str | None = None
    lon_0_360: bool = False
    lat_ascending: bool = False
    source_dtype: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable), e.g. to pass as :func:`finalise_output`'s ``layout``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RasterLayout:
        """Inverse of :meth:`as_dict`; unknown keys are rejected."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown raster layout keys: {', '.join(unknown)}")
        return cls(**dict(values))


class RasterReader(ABC):
    """One band of a raster, open for windowed reads; use as a context manager.

    Attributes: ``shape`` (rows, cols); ``transform`` (north-up affine of the presented grid:
    row 0 is the north, columns in increasing x); ``crs`` (rasterio CRS or None); ``nodata``
    (the file's nodata value or None); ``path`` (the path as given); ``layout``
    (:class:`RasterLayout`).
    """

    shape: tuple[int, int]
    transform: Affine
    crs: CRS | None
    nodata: float | None
    path: str
    layout: RasterLayout
    valid_range_m: tuple[float, float] | None = None
    """Readers made by :func:`open_raster` refuse cells outside this range (None: any value)."""
    units: str | None = None
    """The vertical unit the file declares (None: none, taken as metres)."""
    metres_per_unit: float = 1.0
    """What :meth:`read` multiplies the file's values by: it always returns metres."""
    vertical_datum: str | None = None
    """Datum of the heights as the file's CRS declares it (``egm96``, ``wgs84``, or a vertical
    CRS's name; None for a 2D CRS): readers made by :func:`open_raster` present a compound or
    3D CRS as its 2D horizontal part in :attr:`crs` and its heights' datum here
    (:func:`demsr.datum.split_heights`)."""

    def __enter__(self) -> RasterReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in CRS units."""
        return _bounds(self.transform, self.shape)

    def window_transform(self, window: Window) -> Affine:
        """Transform of ``window``'s top-left cell (the window's own georeferencing)."""
        return rasterio.windows.transform(window, self.transform)

    def read(self, window: Window | None = None) -> np.ndarray:
        """Read ``window`` (the whole raster if None) as (rows, cols) float32 metres.

        Cells equal to the file's nodata value (or its ``_FillValue``/``missing_value``), masked
        cells and non-finite cells are NaN. The window must lie inside the raster. A RasterError
        names the file when the window cannot be read (a truncated or corrupt file) or holds a
        value outside :attr:`valid_range_m` (an undeclared nodata marker such as -32767).
        """
        row_off, col_off, height, width = self._window_bounds(window)
        values = to_float32_heights(self._read(row_off, col_off, height, width))
        if self.metres_per_unit != 1.0:
            values *= np.float32(self.metres_per_unit)
        if self.valid_range_m is not None:
            self._check_range(values, row_off, col_off)
        return values

    def _check_range(self, values: np.ndarray, row_off: int, col_off: int) -> None:
        low, high = self.valid_range_m or (-math.inf, math.inf)
        with np.errstate(invalid="ignore"):
            outside = (values < low) | (values > high)
        if not outside.any():
            return
        row, col = (int(i) for i in np.argwhere(outside)[0])
        value = float(values[row, col])
        if self.metres_per_unit != 1.0:  # a marker would not be read in metres: no advice on it
            raise RasterError(
                f"{self.path}: cell (row {row_off + row}, col {col_off + col}) holds "
                f"{value / self.metres_per_unit:g} {self.units} = {value:g} m, not an elevation "
                f"({low:g}..{high:g} m)"
            )
        raise RasterError(
            f"{self.path}: cell (row {row_off + row}, col {col_off + col}) holds {value:g}, not an "
            f"elevation in metres ({low:g}..{high:g} m); if {value:g} marks missing data, declare "
            f"it as the file's nodata value (e.g. rio edit-info --nodata {value:g} {self.path})"
        )

    def summarise(self, progress: bool = False) -> RasterSummary:
        """Read every cell once, in strips of at most 2**22 cells, and count the valid ones.

        Reading all of a raster before a long job finds a truncated file, an implausible value or
        an all-nodata band in seconds rather than hours in (the errors of :meth:`read`).
        """
        from tqdm import tqdm

        rows, cols = self.shape
        strip_rows = max(1, min(rows, (1 << 22) // cols))
        valid, low, high = 0, math.inf, -math.inf
        starts = range(0, rows, strip_rows)
        # A bar only where reading takes seconds (8 strips: 32 M cells); it clears itself.
        quiet = not progress or len(starts) <= 8
        with tqdm(total=len(starts), desc="checking input", leave=False, disable=quiet) as bar:
            for start in starts:
                values = self.read(Window(0, start, cols, min(strip_rows, rows - start)))
                finite = values[np.isfinite(values)]
                if finite.size:
                    valid += int(finite.size)
                    low, high = min(low, float(finite.min())), max(high, float(finite.max()))
                bar.update(1)
        return RasterSummary(self.path, self.shape, valid, low, high)

    @abstractmethod
    def _read(self, row_off: int, col_off: int, height: int, width: int) -> np.ndarray:
        """The window's cells, any float dtype, NaN for masked cells."""

    @abstractmethod
    def close(self) -> None:
        """Release the file."""

    def _window_bounds(self, window: Window | None) -> tuple[int, int, int, int]:
        rows, cols = self.shape
        if window is None:
            return 0, 0, rows, cols
        row_off, col_off = int(round(window.row_off)), int(round(window.col_off))
        height, width = int(round(window.height)), int(round(window.width))
        if (
            min(row_off, col_off, height, width) < 0
            or row_off + height > rows
            or col_off + width > cols
        ):
            raise ValueError(
                f"{self.path}: window (rows {row_off}..{row_off + height}, cols "
                f"{col_off}..{col_off + width}) is not inside the raster ({rows} x {cols})"
            )
        return row_off, col_off, height, width


@dataclass(frozen=True)
class RasterSummary:
    """What :meth:`RasterReader.summarise` found: cell counts and the range of the valid cells
    (metres; infinite when there are none)."""

    path: str
    shape: tuple[int, int]
    valid_cells: int
    min_m: float
    max_m: float

    def describe(self) -> str:
        """One line for the log, e.g. ``a.tif: 90 x 120 cells, 3.2% nodata, -12..845 m``."""
        rows, cols = self.shape
        nodata = 100.0 * (1 - self.valid_cells / (rows * cols))
        span = f"{self.min_m:.0f}..{self.max_m:.0f} m" if self.valid_cells else "no valid cell"
        return f"{self.path}: {rows} x {cols} cells, {nodata:.1f}% nodata, {span}"


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


class _GridReader(RasterReader):
    """An elevation variable of a NetCDF or Zarr dataset with 1-D coordinates, read lazily.

    The file's grid is presented north-up: rows are flipped when latitudes ascend, and a global
    0..360 longitude grid has its columns rotated so that presented column ``c`` is file column
    ``(c + col_shift) % cols`` (-180..180 order); a regional grid entirely east of 180 is shifted
    by -360 degrees without reordering.
    """

    def __init__(self, path: str, kind: str, band: int, variable: str | None) -> None:
        import xarray as xr

        self.path = path
        try:
            if kind == "zarr":
                with warnings.catch_warnings():
                    # unconsolidated stores are fine here: the metadata is a handful of arrays
                    warnings.filterwarnings(
                        "ignore", "Failed to open Zarr store with consolidated", RuntimeWarning
                    )
                    dataset = xr.open_dataset(
                        path, engine="zarr", chunks=None, cache=False, decode_times=False
                    )
            else:
                dataset = xr.open_dataset(path, chunks=None, cache=False, decode_times=False)
        except Exception as exc:  # xarray raises many types for unreadable files
            raise RasterError(f"{path}: cannot be read as {kind} ({exc})") from None
        self._dataset = dataset
        try:
            self._setup(kind, band, variable)
        except BaseException:
            dataset.close()
            raise

    def _setup(self, kind: str, band: int, variable: str | None) -> None:
        dataset, path = self._dataset, self.path
        name = _pick_variable(dataset, variable, path)
        data_array = dataset[name]
        y_dim = next(d for d in data_array.dims if str(d).lower() in Y_NAMES)
        x_dim = next(d for d in data_array.dims if str(d).lower() in X_NAMES)
        extra = [d for d in data_array.dims if d not in (y_dim, x_dim)]
        selection: dict[Any, int] = {}
        bands = math.prod(int(data_array.sizes[d]) for d in extra)
        big_extra = [d for d in extra if data_array.sizes[d] > 1]
        if len(big_extra) > 1 or not 1 <= band <= bands:
            raise RasterError(
                f"{path}: band {band} does not exist (variable {name!r} has dimensions "
                f"{dict(data_array.sizes)}; bands count along at most one non-spatial dimension)"
            )
        for dim in extra:
            selection[dim] = band - 1 if dim in big_extra else 0
        self._data = data_array.isel(selection) if selection else data_array
        self._y_dim, self._x_dim = y_dim, x_dim
        self.units = data_array.attrs.get("units") or None
        self.metres_per_unit = metres_per_unit(self.units, path)
        _describe_band_choice(path, band, bands, str(data_array.dtype), str(name))

        ys = _coordinate(dataset, y_dim, path)
        xs = _coordinate(dataset, x_dim, path)
        if xs[-1] < xs[0]:
            raise RasterError(f"{path}: longitudes/x run east to west; only west to east is read")
        dx = _regular_step(xs, str(x_dim), path)
        dy = _regular_step(ys, str(y_dim), path)
        lat_ascending = bool(ys[-1] > ys[0])

        self.crs = _grid_crs(dataset, data_array, str(x_dim), str(y_dim), path)
        geographic = bool(self.crs is not None and self.crs.is_geographic)
        lon_0_360 = geographic and float(xs[-1]) > 180.0
        cols = xs.size
        self._col_shift = 0
        west_edge = float(xs[0]) - dx / 2
        if lon_0_360:
            if xs[0] >= 180.0:
                west_edge -= 360.0
            elif abs(cols * dx - 360.0) < dx / 2:
                # Global grid: start at the first column at or east of 180 (i.e. -180).
                self._col_shift = int(np.searchsorted(xs, 180.0, side="left"))
                west_edge = float(xs[self._col_shift]) - 360.0 - dx / 2
            else:
                log.info(
                    "%s: regional grid across 180 degrees in 0..360 longitudes; kept as 0..360",
                    path,
                )
        north_edge = float(max(ys[0], ys[-1])) + dy / 2
        self.shape = (int(ys.size), int(cols))
        self.transform = Affine(dx, 0.0, west_edge, 0.0, -dy, north_edge)
        self.nodata = _grid_nodata(data_array)
        self._lat_ascending = lat_ascending
        self.layout = RasterLayout(
            kind=kind,
            variable=str(name),
            x_name=str(x_dim),
            y_name=str(y_dim),
            lon_0_360=lon_0_360,
            lat_ascending=lat_ascending,
            source_dtype=str(data_array.encoding.get("dtype", data_array.dtype)),
        )

    def _read(self, row_off: int, col_off: int, height: int, width: int) -> np.ndarray:
        row_slice, col_slices = _file_slices(
            (row_off, col_off, height, width), self.shape, self._lat_ascending, self._col_shift
        )
        pieces = [
            self._data.isel({self._y_dim: row_slice, self._x_dim: col_slice})
            .transpose(self._y_dim, self._x_dim)
            .values
            for col_slice in col_slices
        ]
        data = pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=1)
        data = np.asarray(data, dtype=np.float32)
        return data[::-1] if self._lat_ascending else data

    def close(self) -> None:
        self._dataset.close()


def _file_slices(
    window: tuple[int, int, int, int], shape: tuple[int, int], flip_rows: bool, col_shift: int
) -> tuple[slice, list[slice]]:
    """Where a presented (north-up) window lies in a NetCDF/Zarr grid's file order.

    ``window`` is (row_off, col_off, height, width) of the presented (rows, cols) ``shape``.
    Returns the file's row slice (counted from the far end when ``flip_rows``; the rows then
    run in reverse) and its column slices: presented column ``c`` is file column
    ``(c + col_shift) % cols``, so a window across the file's last column takes two slices,
    to be placed side by side.
    """
    row_off, col_off, height, width = window
    rows, cols = shape
    if flip_rows:
        row_slice = slice(rows - row_off - height, rows - row_off)
    else:
        row_slice = slice(row_off, row_off + height)
    start = (col_off + col_shift) % cols
    if start + width <= cols:
        return row_slice, [slice(start, start + width)]
    return row_slice, [slice(start, cols), slice(0, start + width - cols)]


def _pick_variable(dataset: Any, variable: str | None, path: str) -> str:
    """The name of the elevation variable: ``variable``, else ``elevation``, else the only one."""

    def is_grid(name: Any) -> bool:
        dims = [str(d).lower() for d in dataset[name].dims]
        return any(d in Y_NAMES for d in dims) and any(d in X_NAMES for d in dims)

    gridded = [str(name) for name in dataset.data_vars if is_grid(name)]
    listing = ", ".join(str(name) for name in dataset.data_vars) or "none"
    if variable is not None:
        if variable not in dataset.data_vars:
            raise RasterError(f"{path}: no variable {variable!r} (variables: {listing})")
        if not is_grid(variable):
            raise RasterError(
                f"{path}: variable {variable!r} has dimensions {tuple(dataset[variable].dims)}, "
                f"not a lat/lon (or y/x) grid"
            )
        return variable
    if DEFAULT_VARIABLE in gridded:
        return DEFAULT_VARIABLE
    if len(gridded) == 1:
        return gridded[0]
    raise RasterError(
        f"{path}: no {DEFAULT_VARIABLE!r} variable and "
        + ("several gridded ones" if gridded else "no lat/lon (or y/x) gridded one")
        + f"; choose one with variable= / --variable (variables: {listing})"
    )


def _coordinate(dataset: Any, dim: Any, path: str) -> np.ndarray:
    if dim not in dataset.variables or dataset[dim].ndim != 1:
        raise RasterError(f"{path}: dimension {dim!r} has no 1-D coordinate variable")
    values = np.asarray(dataset[dim].values, dtype=np.float64)
    if values.size < 2:
        raise RasterError(f"{path}: coordinate {dim!r} needs at least 2 cells to give a cell size")
    return values


def _regular_step(values: np.ndarray, name: str, path: str) -> float:
    """The absolute cell size of a regular, monotonic 1-D coordinate of cell centres."""
    step = (values[-1] - values[0]) / (values.size - 1)
    if step == 0 or np.any(np.abs(np.diff(values) - step) > _REGULAR_TOLERANCE * abs(step)):
        raise RasterError(
            f"{path}: coordinate {name!r} is not regularly spaced; only regular grids are read"
        )
    return float(abs(step))


def _describe_band_choice(
    path: str, band: int, bands: int, dtype: str, variable: str | None = None
) -> None:
    """Say which band of a multi-band raster is read, and warn about a data type that does not
    hold elevations (8-bit integers, booleans, complex numbers: an image, a mask)."""
    where = f"variable {variable!r}, " if variable else ""
    if bands > 1:
        log.info("%s: %s%d bands; reading band %d (choose with --band)", path, where, bands, band)
    try:
        data_type = np.dtype(dtype)
    except TypeError:
        return
    if data_type.itemsize == 1 or data_type.kind in ("b", "c"):
        log.warning(
            "%s: band %d is %s, a type that holds images or masks rather than elevations; "
            "its values are read as elevations",
            path,
            band,
            dtype,
        )


def _grid_nodata(data_array: Any) -> float | None:
    for key in ("_FillValue", "missing_value"):
        value = data_array.encoding.get(key, data_array.attrs.get(key))
        if value is not None:
            return float(np.asarray(value).ravel()[0])
    return None


def _grid_crs(dataset: Any, data_array: Any, x_name: str, y_name: str, path: str) -> CRS | None:
    """CRS from the CF grid mapping (crs_wkt, spatial_ref, or its parameters), else EPSG:4326
    for latitude/longitude coordinates, else None."""
    mapping_name = data_array.attrs.get("grid_mapping", data_array.encoding.get("grid_mapping"))
    if mapping_name is not None and str(mapping_name) in dataset.variables:
        attrs = dict(dataset[str(mapping_name)].attrs)
        readers: list[tuple[str, Callable[[str], CRS]]] = [
            ("crs_wkt", CRS.from_wkt),
            ("spatial_ref", CRS.from_wkt),
            ("epsg_code", CRS.from_string),
        ]
        for key, parse in readers:
            if attrs.get(key):
                try:
                    return parse(str(attrs[key]))
                except CRSError:
                    log.warning("%s: unreadable %s in grid mapping; trying others", path, key)
        try:
            return CRS.from_wkt(ProjCRS.from_cf(attrs).to_wkt())
        except Exception:  # pyproj raises several types for incomplete grid mappings
            log.warning("%s: grid mapping %r not understood", path, mapping_name)
    gdal_crs = data_array.attrs.get(ZARR_CRS_ATTRIBUTE)
    if isinstance(gdal_crs, Mapping) and gdal_crs.get("wkt"):
        try:
            return CRS.from_wkt(str(gdal_crs["wkt"]))
        except CRSError:
            log.warning("%s: unreadable %s attribute; trying others", path, ZARR_CRS_ATTRIBUTE)
    units = " ".join(
        str(dataset[name].attrs.get("units", "")) for name in (x_name, y_name) if name in dataset
    )
    if x_name.lower() in ("lon", "longitude") or "degree" in units.lower():
        return CRS.from_epsg(4326)
    log.warning("%s: no grid mapping and no latitude/longitude coordinates: no CRS", path)
    return None


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


def _split_heights(crs: CRS) -> tuple[CRS, str | None]:
    """(2D CRS, datum of the heights) of a rasterio CRS: see :func:`demsr.datum.split_heights`."""
    from demsr.datum import split_heights

    horizontal, datum = split_heights(crs.to_wkt())
    if datum is None and not ProjCRS.from_wkt(crs.to_wkt()).is_compound:
        return crs, None  # a 2D CRS stays as the file gives it
    return CRS.from_wkt(horizontal.to_wkt()), datum


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


# --------------------------------------------------------------------------------------------
# Grids that must agree (a low-res input, its prediction, a high-res truth)
# --------------------------------------------------------------------------------------------

GRID_TOLERANCE = 1e-3
"""Fraction of a cell by which cell sizes and origins of grids that agree may differ."""


def same_crs(first: Any, second: Any) -> bool:
    """True when both CRSs are equal, or both are missing."""
    if first is None or second is None:
        return first is None and second is None
    return bool(first == second)


def integer_scale(lowres: RasterReader, highres: RasterReader) -> int:
    """How many ``highres`` cells span one ``lowres`` cell along each axis (an integer)."""
    ratio_x = lowres.transform.a / highres.transform.a
    ratio_y = lowres.transform.e / highres.transform.e
    scale = round(ratio_x)
    if scale < 1 or max(abs(ratio_x - scale), abs(ratio_y - scale)) > GRID_TOLERANCE * scale:
        raise ValueError(
            f"{lowres.path}: its cells are {ratio_x:.4g} x {ratio_y:.4g} times those of "
            f"{highres.path}, not one integer scale"
        )
    return scale


def locate_grid(
    reader: RasterReader, transform: Affine, shape: tuple[int, int], reference: str
) -> tuple[int, int]:
    """(row, col) of the grid (``transform``, ``shape``), named ``reference`` in messages, on
    ``reader``'s grid, which must hold it: same cell size, cell edges aligned, covering it."""
    own = reader.transform
    if abs(own.a - transform.a) > GRID_TOLERANCE * abs(transform.a) or abs(
        own.e - transform.e
    ) > GRID_TOLERANCE * abs(transform.e):
        raise ValueError(
            f"{reader.path}: cells of {own.a:.6g} x {-own.e:.6g} differ from the "
            f"{transform.a:.6g} x {-transform.e:.6g} of {reference}"
        )
    col = (transform.c - own.c) / own.a
    row = (transform.f - own.f) / own.e
    col_off, row_off = round(col), round(row)
    if max(abs(col - col_off), abs(row - row_off)) > GRID_TOLERANCE:
        raise ValueError(
            f"{reader.path}: its cells are offset from those of {reference} by "
            f"({col - col_off:+.3f}, {row - row_off:+.3f}) cells"
        )
    rows, cols = shape
    if (
        row_off < 0
        or col_off < 0
        or row_off + rows > reader.shape[0]
        or col_off + cols > reader.shape[1]
    ):
        raise ValueError(
            f"{reader.path}: does not cover {reference} ({rows} x {cols} cells from "
            f"row {row_off}, column {col_off} of its {reader.shape[0]} x {reader.shape[1]})"
        )
    return row_off, col_off


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _same_file(first: str | os.PathLike[str], second: str | os.PathLike[str]) -> bool:
    """Whether two paths name one file or folder: equal once resolved (``..``, symlinks), or the
    same inode (a hard link)."""
    if os.path.realpath(first) == os.path.realpath(second):
        return True
    try:
        return os.path.samefile(first, second)
    except OSError:  # one of them does not exist (yet)
        return False


def refuse_output_over_input(
    outputs: Iterable[str | os.PathLike[str] | None],
    inputs: Iterable[str | os.PathLike[str] | None],
) -> None:
    """Raise ValueError when an output would be written over one of the inputs: the same path,
    another spelling of it (``./x/../in.tif``), a symlink or a hard link to it. ``--overwrite``
    never allows it (as GDAL's tools refuse a destination that is the source)."""
    sources = [source for source in inputs if source is not None]
    for output in outputs:
        if output is None:
            continue
        for source in sources:
            if _same_file(output, source):
                raise ValueError(
                    f"{output}: is the input {source}; write the output to another path "
                    "(an input is never overwritten)"
                )


def refuse_existing(
    *paths: str | os.PathLike[str] | None,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
) -> None:
    """Raise FileExistsError naming the first of ``paths`` that exists, unless ``overwrite``;
    a ValueError, whatever ``overwrite``, for a path that is one of ``inputs``
    (:func:`refuse_output_over_input`).

    Called before any work, so that a refused run costs nothing and writes nothing.
    """
    refuse_output_over_input(paths, inputs)
    for path in paths:
        if path is not None and not overwrite and Path(path).exists():
            raise FileExistsError(f"{path}: already exists (use --overwrite to replace it)")


def require_crs(reader: RasterReader) -> CRS:
    """The raster's CRS; a RasterError for one without (its output could not be
    georeferenced)."""
    if reader.crs is None:
        raise RasterError(
            f"{reader.path}: has no CRS; give it with --crs (crs=), e.g. --crs EPSG:4326, so "
            "that the output is georeferenced"
        )
    return reader.crs


def require_writable_folder(folder: str | os.PathLike[str]) -> None:
    """Raise FileNotFoundError / PermissionError naming ``folder`` unless a file can be created
    in it (a probe file, removed at once): a job that will write there fails before it starts."""
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such folder for the output", str(path))
    try:
        fd, probe = tempfile.mkstemp(prefix=".demsr-probe.", dir=path)
    except OSError as exc:
        raise type(exc)(
            exc.errno, f"cannot write in this folder ({exc.strerror})", str(path)
        ) from None
    os.close(fd)
    os.unlink(probe)


_TEMPORARY_SUFFIXES = ("part", "staging\\.tif", "old")
# What GDAL itself may put next to a file it writes: the COG driver's overview temporaries
# (``NAME.ovr.tmp``, ``NAME.msk.ovr.tmp``), external overviews and PAM side-cars.
_GDAL_SIDECARS = r"(\.(ovr\.tmp|msk\.ovr\.tmp|msk|ovr|aux\.xml|warped\.tif\.tmp))?"


def remove_stale_temporaries(*paths: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files and folders that writes to ``paths`` left when their process
    was killed (``.NAME.XXXXXXXX.part`` of :func:`atomic_path` and :func:`atomic_directory`,
    ``.staging.tif`` and ``.old``, and what GDAL writes beside them: ``.ovr.tmp``,
    ``.msk.ovr.tmp``, ``.aux.xml``, ...); returns them. For a run that resumes its own outputs."""
    removed = []
    for path in map(Path, paths):
        pattern = re.compile(
            rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.({'|'.join(_TEMPORARY_SUFFIXES)})"
            + _GDAL_SIDECARS
        )
        if not path.parent.is_dir():
            continue
        for candidate in path.parent.iterdir():
            if pattern.fullmatch(candidate.name):
                if candidate.is_dir() and not candidate.is_symlink():
                    shutil.rmtree(candidate, ignore_errors=True)
                else:
                    candidate.unlink(missing_ok=True)
                removed.append(candidate)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted run", len(removed))
    return removed


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a file's data to the disk, so that a crash after a rename never shows it empty.

    An OSError (a full disk reports ENOSPC here at the latest) names ``path``.
    """
    with open(path, "rb") as handle:
        try:
            os.fsync(handle.fileno())
        except OSError as exc:
            if exc.filename is not None:
                raise
            raise type(exc)(exc.errno, exc.strerror, os.fspath(path)) from None


def _umask() -> int:
    """The process's umask (reading it means setting it; it is restored at once)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    An interrupted write never leaves a file at ``path`` that looks complete, and a failed one
    removes its temporary file. The file's data reach the disk before the rename, and the rename
    itself after it (the folder is synced), so that not even a power cut shows a truncated file.
    """
    final = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        fsync_file(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp made it owner-only; give the usual mode
        os.replace(tmp, final)
        _fsync_folder(final.parent)
    finally:
        tmp.unlink(missing_ok=True)
        remove_gdal_sidecars(tmp)


def remove_gdal_sidecars(path: Path) -> None:
    """Delete what GDAL may have written beside ``path`` (a temporary of ours) on its own:
    overview temporaries, external overviews, PAM side-cars."""
    for suffix in (".ovr.tmp", ".msk.ovr.tmp", ".msk", ".ovr", ".aux.xml", ".warped.tif.tmp"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    """Make the entries of ``folder`` (a rename into it) durable; a no-op where the file
    system cannot sync folders."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; rename it onto ``path`` only on success.

    For directory outputs (Zarr stores). An existing ``path`` is moved aside just before the
    rename and deleted after it; a failed write removes the temporary directory. Every file and
    folder in it is synced before the rename, and the rename after it.
    """
    final = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent))
    try:
        yield tmp
        for folder, _, files in os.walk(tmp):
            for name in files:
                fsync_file(Path(folder) / name)
            _fsync_folder(Path(folder))
        os.chmod(tmp, 0o777 & ~_umask())
        old: Path | None = None
        if final.is_dir() and not final.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.replace(final, old)
            stop_point("zarr-swap")
        elif final.exists() or final.is_symlink():
            final.unlink()
        os.replace(tmp, final)
        _fsync_folder(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def fill_nodata(values: np.ndarray, nodata: float | None) -> np.ndarray:
    """``values`` with its NaN cells set to ``nodata`` (as float32), for writing.

    The same array comes back, unchanged, when ``nodata`` is None or NaN.
    """
    if nodata is None or math.isnan(nodata):
        return values
    return np.where(np.isnan(values), np.float32(nodata), values)


def gtiff_profile(
    shape: tuple[int, int],
    transform: Affine,
    crs: CRS | None,
    nodata: float,
    *,
    dtype: str = "float32",
    block_px: int | None = None,
    **options: Any,
) -> dict[str, Any]:
    """rasterio creation profile of a single-band DEFLATE-compressed GeoTIFF of (rows, cols)
    ``shape``: floating-point predictor for float32, horizontal for integers; tiled in
    ``block_px`` squares when given (else striped); ``options`` (e.g. ``BIGTIFF``) added as is."""
    rows, cols = shape
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": cols,
        "height": rows,
        "count": 1,
        "dtype": dtype,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        "compress": "deflate",
        "predictor": 3 if dtype == "float32" else 2,
    }
    if block_px is not None:
        profile.update(tiled=True, blockxsize=block_px, blockysize=block_px)
    profile.update(options)
    return profile


def write_geotiff(
    path: str | os.PathLike[str],
    data: np.ndarray,
    transform: Affine,
    crs: CRS | None,
    nodata: float | None = None,
) -> Path:
    """Write a (rows, cols) float array as a tiled, DEFLATE-compressed float32 GeoTIFF.

    NaN cells are written as ``nodata`` (NaN itself when ``nodata`` is None). The file appears
    at ``path`` only once complete.
    """
    values = np.asarray(data, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"expected a (rows, cols) array, got shape {values.shape}")
    values = fill_nodata(values, nodata)
    fill = np.float32(np.nan if nodata is None else nodata)
    rows, cols = values.shape
    block_px = 256 if rows >= 256 and cols >= 256 else None
    profile = gtiff_profile((rows, cols), transform, crs, float(fill), block_px=block_px)
    with atomic_path(path) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(values, 1)
    return Path(path)


FORMATS = ("cog", "netcdf", "zarr")
"""Output formats of :func:`finalise_output`."""

_FORMAT_NAMES = {
    "cog": "cog",
    "gtiff": "cog",
    "geotiff": "cog",
    "tif": "cog",
    "tiff": "cog",
    "netcdf": "netcdf",
    "nc": "netcdf",
    "zarr": "zarr",
}
_FORMAT_SUFFIXES = {".tif": "cog", ".tiff": "cog", ".nc": "netcdf", ".nc4": "netcdf"}
_FORMAT_SUFFIXES[ZARR_SUFFIX] = "zarr"
OUTPUT_DTYPES = ("float32", "int16")

# Vertical datums whose heights are above the ellipsoid (demsr.datum calls WGS84 ellipsoidal
# heights "wgs84"); any other named datum (egm96, egm2008, navd88, msl, ...) is geoid-based.
_ELLIPSOIDAL_DATUMS = {"wgs84", "epsg:4979", "epsg:4326", "ellipsoid", "ellipsoidal"}


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


def height_standard_name(vertical_datum: str | None) -> str:
    """CF standard name of a DEM's heights above ``vertical_datum``.

    ``height_above_reference_ellipsoid`` for ellipsoidal heights (``wgs84``, ``EPSG:4979``,
    anything mentioning an ellipsoid); ``surface_altitude`` (the height of the Earth's surface
    above the geoid) for geoid-based datums such as ``egm96`` or ``egm2008`` and when the datum
    is not given.
    """
    if vertical_datum is None:
        return "surface_altitude"
    key = re.sub(r"[\s_-]", "", vertical_datum.lower())
    if key in _ELLIPSOIDAL_DATUMS or "ellipsoid" in key:
        return "height_above_reference_ellipsoid"
    return "surface_altitude"


def output_crs(crs: CRS | None, vertical_datum: str | None, kind: str = "netcdf") -> CRS | None:
    """The CRS a product of format ``kind`` (:data:`FORMATS`) declares: the 2D ``crs`` with the
    heights' ``vertical_datum`` (``egm96`` or ``wgs84``; others and None leave it 2D) as a
    compound or 3D CRS (:func:`demsr.datum.crs_with_heights`).

    GeoTIFF keys hold a compound CRS and EPSG-coded 3D CRSs (EPSG:4979) but not a 3D projected
    CRS: a COG of ellipsoidal heights on such a grid keeps the 2D CRS (GDAL would put the 3D
    one in a ``.aux.xml`` sidecar, which a product must not need); its ``vertical_datum`` tag
    still says ``wgs84``.
    """
    from demsr.datum import DATUMS, crs_with_heights

    if crs is None or vertical_datum is None or vertical_datum.lower() not in DATUMS:
        return crs
    full = crs_with_heights(crs.to_wkt(), vertical_datum)
    if kind == "cog" and not full.is_compound and full.to_epsg() is None:
        return crs
    return CRS.from_wkt(full.to_wkt())


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


@dataclass(frozen=True)
class _GridPlan:
    """Where presented (north-up, as in the GeoTIFF) blocks go in a NetCDF/Zarr grid.

    ``x_values``/``y_values`` are the cell-centre coordinates in file order. A presented block
    at (row, col) lands at rows flipped when ``flip_rows`` and at columns
    ``(col - col_rotation) % cols``, split in two where that wraps.
    """

    x_name: str
    y_name: str
    geographic: bool
    x_values: np.ndarray
    y_values: np.ndarray
    flip_rows: bool
    col_rotation: int

    def place(
        self, row_off: int, col_off: int, block: np.ndarray
    ) -> Iterator[tuple[slice, slice, np.ndarray]]:
        """(row slice, col slice, values) writes in file order for one presented block."""
        height, width = block.shape
        row_slice, col_slices = _file_slices(
            (row_off, col_off, height, width),
            (self.y_values.size, self.x_values.size),
            self.flip_rows,
            -self.col_rotation,
        )
        if self.flip_rows:
            block = block[::-1]
        first = 0
        for col_slice in col_slices:
            last = first + col_slice.stop - col_slice.start
            yield row_slice, col_slice, block[:, first:last]
            first = last


def _plan_grid(
    transform: Affine, shape: tuple[int, int], crs: CRS | None, layout: RasterLayout | None
) -> _GridPlan:
    rows, cols = shape
    xs = transform.c + (np.arange(cols) + 0.5) * transform.a
    ys = transform.f + (np.arange(rows) + 0.5) * transform.e
    geographic = bool(crs is not None and crs.is_geographic)
    x_name, y_name = ("lon", "lat") if geographic else ("x", "y")
    if geographic and layout is not None and layout.x_name and layout.y_name:
        if layout.x_name.lower() in X_NAMES and layout.y_name.lower() in Y_NAMES:
            x_name, y_name = layout.x_name, layout.y_name
    flip_rows = bool(layout is not None and layout.lat_ascending)
    rotation = 0
    if geographic and layout is not None and layout.lon_0_360:
        west = xs < 0
        if west.all() or not west.any():
            xs = np.where(west, xs + 360.0, xs)
        elif abs(cols * transform.a - 360.0) < transform.a / 2:
            rotation = int(west.sum())
            xs = np.roll(np.where(west, xs + 360.0, xs), -rotation)
        else:
            log.warning(
                "the output crosses 0 degrees without covering the globe; its longitudes stay "
                "in -180..180 rather than the input's 0..360"
            )
    return _GridPlan(
        x_name=x_name,
        y_name=y_name,
        geographic=geographic,
        x_values=xs,
        y_values=ys[::-1] if flip_rows else ys,
        flip_rows=flip_rows,
        col_rotation=rotation,
    )


def _coordinate_attrs(plan: _GridPlan, crs: CRS | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """CF attributes of the (x, y) coordinate variables."""
    if plan.geographic:
        return (
            {
                "standard_name": "longitude",
                "long_name": "longitude",
                "units": "degrees_east",
                "axis": "X",
            },
            {
                "standard_name": "latitude",
                "long_name": "latitude",
                "units": "degrees_north",
                "axis": "Y",
            },
        )
    x_attrs: dict[str, Any] = {
        "standard_name": "projection_x_coordinate",
        "long_name": "x coordinate of projection",
        "axis": "X",
    }
    y_attrs: dict[str, Any] = {
        "standard_name": "projection_y_coordinate",
        "long_name": "y coordinate of projection",
        "axis": "Y",
    }
    if crs is not None:
        units = crs.linear_units or "m"
        units = "m" if units.lower() in ("metre", "meter", "m", "metres", "meters") else units
        x_attrs["units"] = y_attrs["units"] = units
    return x_attrs, y_attrs


def _grid_mapping_attrs(crs: CRS) -> dict[str, Any]:
    """CF grid-mapping attributes (pyproj's, with the WKT as ``crs_wkt`` and GDAL's
    ``spatial_ref``); a compound CRS adds CF's ``geopotential_datum_name`` for its vertical
    part (CF allows it or ``geoid_name``, not both)."""
    proj_crs = ProjCRS.from_wkt(_crs_wkt(crs))
    attrs: dict[str, Any] = {}
    for key, value in proj_crs.to_cf().items():
        if isinstance(value, (str, int, float)):
            attrs[key] = value
    attrs["crs_wkt"] = attrs["spatial_ref"] = _crs_wkt(crs)
    epsg = crs.to_epsg()
    if epsg is not None:
        attrs["epsg_code"] = f"EPSG:{epsg}"
    return attrs


def _crs_wkt(crs: CRS) -> str:
    """WKT2 of a CRS: WKT1 cannot describe a 3D projected CRS (ellipsoidal heights)."""
    return str(crs.to_wkt(version="WKT2_2019"))


def _global_attrs(metadata: Mapping[str, str], partial: Path) -> dict[str, str]:
    from demsr import __version__

    attrs: dict[str, str] = {
        "Conventions": "CF-1.8",
        "title": "DEM-SRNet super-resolved digital elevation model",
    }
    provenance = ", ".join(f"{key}={value}" for key, value in metadata.items())
    attrs["source"] = "demsr DEM-SRNet super-resolution" + (
        f" ({provenance})" if provenance else ""
    )
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    attrs["history"] = f"{stamp}: demsr {__version__} finalise_output from {partial.name}"
    for key, value in metadata.items():
        if key not in attrs and key != "units":  # units belong to the elevation variable
            attrs[key] = value
    return attrs


def _elevation_attrs(metadata: Mapping[str, str], has_crs: bool) -> dict[str, Any]:
    vertical_datum = metadata.get("vertical_datum")
    attrs: dict[str, Any] = {
        "long_name": "elevation",
        "standard_name": height_standard_name(vertical_datum),
        "units": metadata.get("units", "m"),
    }
    # No ``positive``: CF gives it to vertical coordinates only; with a surface_altitude or
    # height_above_reference_ellipsoid name neither checker asks for it, and cfchecks calls it
    # non-standard on a data variable.
    if vertical_datum is not None:
        attrs["vertical_datum"] = vertical_datum
    if has_crs:
        attrs["grid_mapping"] = "crs"
    return attrs


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
    if kind == "cog":
        _write_cog(src, output, encode, metadata, progress, ancillary)
    elif kind == "netcdf":
        _write_netcdf(src, output, encode, metadata, layout, progress, ancillary)
    else:
        _write_zarr(src, output, encode, metadata, layout, progress, ancillary)
    log.info("wrote %s", output)


def _write_cog(
    src: RasterReader,
    output: Path,
    encode: _Encoder,
    metadata: Mapping[str, str],
    progress: bool,
    ancillary: AncillaryBand | None = None,
) -> None:
    """COG through a tiled staging GeoTIFF (converted dtype, nodata and tags), then GDAL's COG
    driver, which adds the overviews and reorders the file for HTTP range reads."""
    fd, staging_name = tempfile.mkstemp(
        prefix=f".{output.name}.", suffix=".staging.tif", dir=output.parent
    )
    os.close(fd)
    staging = Path(staging_name)
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
            count=1 if ancillary is None else 2,
        )
        with rasterio.Env(GDAL_PAM_ENABLED="NO"):
            with rasterio.open(staging, "w", **profile) as dst:
                blocks = _read_blocks(src, progress, f"writing {output.name}", "cog-staging")
                for window, block in blocks:
                    dst.write(encode(block), 1, window=window)
                dst.update_tags(**metadata)
                if ancillary is None:
                    dst.units = (metadata.get("units", "m"),)
                    dst.descriptions = ("elevation",)
                else:
                    _write_cog_band(dst, ancillary, encode, metadata, progress, output.name)
            # The overviews go into the staging file itself, so that the COG driver copies them
            # instead of building them in a ``.ovr.tmp`` file of its own beside the output.
            stop_point("cog-overviews")
            factors = _overview_factors(src.shape)
            if factors:
                with rasterio.open(staging, "r+") as dst:
                    dst.build_overviews(factors, Resampling.average)
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
            )
            stop_point("cog-copy")
    finally:
        staging.unlink(missing_ok=True)
        remove_gdal_sidecars(staging)


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
    plan = _plan_grid(src.transform, src.shape, crs, layout)
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
    plan = _plan_grid(src.transform, src.shape, crs, layout)
    x_attrs, y_attrs = _coordinate_attrs(plan, crs)
    zarr_v3 = int(zarr.__version__.split(".")[0]) >= 3

    def create(group: Any, name: str, shape: tuple[int, ...], dtype: str, fill: Any) -> Any:
        chunks = tuple(min(BLOCK_PX, n) for n in shape) if len(shape) == 2 else shape
        if zarr_v3:
            return group.create_array(
                name, shape=shape, dtype=dtype, chunks=chunks, fill_value=fill
            )
        return group.create_dataset(  # zarr 2
            name, shape=shape, dtype=dtype, chunks=chunks, fill_value=fill
        )

    def set_attrs(node: Any, attrs: Mapping[str, Any]) -> None:
        """Add ``attrs`` in one metadata write (zarr 3 writes one per key in attrs.update)."""
        if zarr_v3:
            node.update_attributes(dict(attrs))
        else:
            node.attrs.update(attrs)

    with atomic_directory(output) as tmp:
        if zarr_v3:
            root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        else:
            root = zarr.open_group(str(tmp), mode="w")
        for name, values, attrs in (
            (plan.y_name, plan.y_values, y_attrs),
            (plan.x_name, plan.x_values, x_attrs),
        ):
            array = create(root, name, (values.size,), "float64", None)
            array[:] = values
            set_attrs(array, {**attrs, "_ARRAY_DIMENSIONS": [name]})
        full_crs = output_crs(crs, metadata.get("vertical_datum"))
        if full_crs is not None:
            crs_array = create(root, "crs", (), "int32", None)
            crs_array[...] = 0
            set_attrs(crs_array, {**_grid_mapping_attrs(full_crs), "_ARRAY_DIMENSIONS": []})
        shape = (plan.y_values.size, plan.x_values.size)
        fill = float(encode.fill) if encode.dtype == "float32" else int(encode.fill)
        elevation = create(root, "elevation", shape, encode.dtype, fill)
        set_attrs(
            elevation,
            {
                **_elevation_attrs(metadata, crs is not None),
                "_ARRAY_DIMENSIONS": [plan.y_name, plan.x_name],
            },
        )
        if full_crs is not None:
            # GDAL's Zarr driver reads a CRS from this attribute (before 3.9, its only way);
            # xarray shows it as an attribute, which to_netcdf refuses: drop it on reading
            # (docs/opening-outputs.md).
            set_attrs(elevation, {ZARR_CRS_ATTRIBUTE: {"wkt": _crs_wkt(full_crs)}})
        _write_blocks(
            src, plan, encode, elevation.__setitem__, progress, output.name, "zarr-blocks"
        )
        if ancillary is not None:
            set_attrs(elevation, {"ancillary_variables": ancillary.name})
            band = create(root, ancillary.name, shape, "float32", float(encode.fill))
            set_attrs(
                band,
                {
                    **_ancillary_attrs(ancillary, crs is not None),
                    "_ARRAY_DIMENSIONS": [plan.y_name, plan.x_name],
                },
            )
            if full_crs is not None:  # as the elevation's, for GDAL
                set_attrs(band, {ZARR_CRS_ATTRIBUTE: {"wkt": _crs_wkt(full_crs)}})
            _write_blocks(
                ancillary.reader,
                plan,
                encode,
                band.__setitem__,
                progress,
                output.name,
                "zarr-band-2",
            )
        set_attrs(root, _global_attrs(metadata, Path(src.path)))
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
