"""The DEM inside demsr: the in-memory :class:`Raster`, the :class:`RasterReader` API, errors."""

from __future__ import annotations

import dataclasses
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
import rasterio
import rasterio.windows
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

log = logging.getLogger("demsr.io")  # the package's one logger, as before the split

PLAUSIBLE_ELEVATION_M = (-12_000.0, 10_000.0)
"""Heights (metres) an input DEM may hold: the Earth's surface spans about -10,935 m (Challenger
Deep) to 8,849 m (Everest), or a hundred metres more either way as ellipsoidal heights. A value
outside is an undeclared nodata marker (-32767, -32768, 1e30, ...) or a file not in metres,
and is refused rather than fed to the network (:meth:`RasterReader.read`)."""


class RasterError(ValueError):
    """A raster that cannot be used, with a message naming the file and the problem."""


RasterError.__module__ = "demsr.io"  # tracebacks name it where it is imported from


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
