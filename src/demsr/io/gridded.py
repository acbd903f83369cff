"""Gridded files (NetCDF, Zarr): reading 1-D coordinate grids, the CF layout products mirror."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from pyproj import CRS as ProjCRS
from rasterio.crs import CRS
from rasterio.errors import CRSError

from demsr.grid import Grid
from demsr.io.raster import RasterError, RasterLayout, RasterReader, _describe_band_choice
from demsr.io.units import height_standard_name, metres_per_unit

log = logging.getLogger("demsr.io")  # the package's one logger, as before the split

ZARR_CRS_ATTRIBUTE = "_CRS"
"""Attribute of a Zarr product's elevation array holding its CRS as ``{"wkt": ...}``, where
GDAL's Zarr driver looks for one (its CF grid-mapping reading came with GDAL 3.9)."""

Y_NAMES = ("lat", "latitude", "y")

X_NAMES = ("lon", "longitude", "x")

DEFAULT_VARIABLE = "elevation"

# A 1-D coordinate is accepted as regular when every step is within this fraction of a cell of
# the mean step (float32 coordinates of a global 15" grid are off by up to ~0.2 % of a cell).
_REGULAR_TOLERANCE = 0.01


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


@dataclass(frozen=True)
class _GridPlan:
    """Where presented (north-up, as in the GeoTIFF) blocks of ``grid`` go in a NetCDF/Zarr grid.

    ``x_values``/``y_values`` are the cell-centre coordinates in file order. A presented block
    at (row, col) lands at rows flipped when ``flip_rows`` and at columns
    ``(col - col_rotation) % cols``, split in two where that wraps.
    """

    grid: Grid
    x_name: str
    y_name: str
    x_values: np.ndarray
    y_values: np.ndarray
    flip_rows: bool
    col_rotation: int

    @property
    def geographic(self) -> bool:
        return self.grid.geographic

    def place(
        self, row_off: int, col_off: int, block: np.ndarray
    ) -> Iterator[tuple[slice, slice, np.ndarray]]:
        """(row slice, col slice, values) writes in file order for one presented block."""
        height, width = block.shape
        row_slice, col_slices = _file_slices(
            (row_off, col_off, height, width),
            self.grid.shape,
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


def _plan_grid(grid: Grid, layout: RasterLayout | None) -> _GridPlan:
    """The plan of a product on ``grid`` (the presented grid; its CRS the product's), mirroring
    the input's ``layout`` (names, latitude order, 0..360 longitudes) when given."""
    cols = grid.shape[1]
    transform = grid.transform
    xs, ys = grid.cell_centres()
    geographic = grid.geographic
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
        grid=grid,
        x_name=x_name,
        y_name=y_name,
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
