"""The Python API on xarray: super-resolve an ``xarray.DataArray`` with coordinates and a CRS.

:func:`predict_dataarray` takes a DEM as xarray holds it (1-D x/y or lon/lat cell-centre
coordinates, north-up or south-up, a CRS in rioxarray's conventions) and returns one on the
grid ``scale`` times finer: the refined cell-centre coordinates in the input's orientation, the
CRS as a ``spatial_ref`` grid-mapping coordinate (CF attributes with the WKT, which rioxarray
and GDAL read), NaN nodata and predict's provenance attributes. The values are
:func:`demsr.engine.predict_array`'s on the grid presented north-up, so they equal
``demsr predict``'s on the same grid written as a raster. rioxarray is not needed: the CRS is
read from the grid-mapping coordinate as :mod:`demsr.io` reads NetCDF and Zarr files, and only
an array whose CRS rioxarray alone can say (``da.rio.crs`` without a grid-mapping coordinate)
imports it.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import TYPE_CHECKING, Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS

from demsr.grid import Grid
from demsr.io import (
    X_NAMES,
    Y_NAMES,
    _coordinate,
    _grid_crs,
    _grid_mapping_attrs,
    _grid_nodata,
    _regular_step,
    metres_per_unit,
)

if TYPE_CHECKING:
    import torch
    import xarray as xr

    from demsr.checkpoint import Checkpoint
    from demsr.model import SuperResolver

GRID_MAPPING = "spatial_ref"
"""Name of the output's grid-mapping coordinate (rioxarray's default)."""

# Attributes of the input that describe its encoding or grid, not the output's values.
_DROPPED_ATTRS = (
    "_FillValue",
    "missing_value",
    "nodata",
    "scale_factor",
    "add_offset",
    "valid_range",
    "valid_min",
    "valid_max",
    "actual_range",
    "grid_mapping",
    "transform",
    "crs",
    "res",
)


def predict_dataarray(
    model: SuperResolver | Checkpoint | str | os.PathLike[str],
    dataarray: xr.DataArray,
    *,
    crs: CRS | str | None = None,
    device: torch.device | str = "cpu",
    tile_px: int | None = None,
    batch_size: int = 4,
    precision: str = "auto",
    compile: bool = False,
    wrap: bool | None = None,
) -> xr.DataArray:
    """Super-resolve the DEM ``dataarray`` with ``model``; a DataArray ``scale`` times finer.

    ``dataarray``: elevations (float or integer; a ``units`` attribute in metres, feet, ...,
    metres when absent) on dimensions named y/lat/latitude and x/lon/longitude (any order;
    another dimension of size 1, such as rioxarray's ``band``, is dropped) with regular 1-D
    cell-centre coordinates, north-up (y descending) or south-up, west-east or east-west.
    Nodata: NaN, or the ``_FillValue``/``missing_value`` its attributes or encoding give.
    The CRS: ``crs`` when given, else the grid-mapping coordinate that the ``grid_mapping``
    attribute or encoding names (rioxarray's ``spatial_ref`` when none does), read from its
    ``crs_wkt``/``spatial_ref`` WKT or CF parameters; lon/lat coordinates without one are
    EPSG:4326 (as ``demsr predict`` reads NetCDF). ``model``, ``device``, ``tile_px``,
    ``batch_size``, ``precision`` and ``compile`` as for :func:`demsr.engine.predict_array`;
    ``wrap`` as ``demsr predict --wrap`` (None: when the grid is geographic and covers 360
    degrees of longitude).

    Returns a float32 DataArray on the same dimension names, in the same orientation, with the
    coordinates of the cells of the grid ``scale`` times finer over the same bounds (what
    ``demsr predict`` writes for the same grid), NaN nodata (``_FillValue`` NaN), the input's
    unit and other attributes plus ``source``, ``demsr_version``, ``checkpoint_sha256`` (for a
    checkpoint) and ``model_config``, and the CRS as the ``spatial_ref`` coordinate.

    Raises ValueError for an array without a CRS, with non-uniform or missing coordinates or
    with other dimensions.
    """
    import xarray as xr

    from demsr import __version__
    from demsr.checkpoint import as_checkpoint, checkpoint_sha256
    from demsr.engine import predict_array
    from demsr.model import SuperResolver
    from demsr.tiling import global_period

    if not isinstance(dataarray, xr.DataArray):
        raise ValueError(f"expected an xarray.DataArray, got {type(dataarray).__name__}")
    where = f"DataArray {dataarray.name!r}" if dataarray.name is not None else "DataArray"
    data, y_dim, x_dim = _spatial(dataarray, where)
    dataset = data.to_dataset(name="__elevation__")
    ys = _coordinate(dataset, y_dim, where)
    xs = _coordinate(dataset, x_dim, where)
    dy, dx = _regular_step(ys, str(y_dim), where), _regular_step(xs, str(x_dim), where)
    grid_crs = _crs(data, dataset, crs, str(x_dim), str(y_dim), where)

    units = data.attrs.get("units") or None
    to_metres = metres_per_unit(units, where)
    values = np.asarray(data.transpose(y_dim, x_dim).values, dtype=np.float64)
    nodata = _grid_nodata(data)
    if nodata is not None:
        values = np.where(values == nodata, np.nan, values)
    # Presented north-up and west-east, as a raster reader presents the same grid.
    south_up, east_west = bool(ys[-1] > ys[0]), bool(xs[-1] < xs[0])
    values = values[:: -1 if south_up else 1, :: -1 if east_west else 1] * to_metres
    transform = Affine(dx, 0.0, float(xs.min()) - dx / 2, 0.0, -dy, float(ys.max()) + dy / 2)

    checkpoint: Checkpoint | None = None
    if isinstance(model, SuperResolver):
        runner: SuperResolver | Checkpoint = model
    else:
        checkpoint = runner = as_checkpoint(model)
    period = None
    if wrap is not False:
        period = global_period(transform, values.shape, bool(grid_crs.is_geographic))
        if wrap and period is None:
            raise ValueError(
                f"{where}: cannot wrap east-west: not a geographic grid covering 360 degrees"
            )
    highres = predict_array(
        runner,
        values,
        device=device,
        tile_px=tile_px,
        batch_size=batch_size,
        precision=precision,
        compile=compile,
        wrap_cols=period,
    )
    scale = highres.shape[0] // values.shape[0]
    highres = highres[:: -1 if south_up else 1, :: -1 if east_west else 1]
    if to_metres != 1.0:
        highres = (highres / to_metres).astype(np.float32)

    # Cell centres of the finer grid, computed as rioxarray computes them from a transform
    # (affine's x * a + y * b + c: the same rounding).
    fine = Grid(values.shape, transform).refine(scale).transform
    cols, rows = np.arange(highres.shape[1]) + 0.5, np.arange(highres.shape[0]) + 0.5
    fine_x = cols * fine.a + 0.5 * fine.b + fine.c
    fine_y = 0.5 * fine.d + rows * fine.e + fine.f
    coords: dict[Any, Any] = {
        y_dim: (y_dim, fine_y[::-1] if south_up else fine_y, data[y_dim].attrs),
        x_dim: (x_dim, fine_x[::-1] if east_west else fine_x, data[x_dim].attrs),
        GRID_MAPPING: ((), 0, _grid_mapping_attrs(grid_crs)),
    }
    attrs = {key: value for key, value in data.attrs.items() if key not in _DROPPED_ATTRS}
    attrs.update(
        units=units or "m",
        _FillValue=np.float32(np.nan),
        source="demsr DEM-SRNet super-resolution"
        + (f" of {dataarray.name}" if dataarray.name is not None else ""),
        demsr_version=__version__,
        scale=scale,
    )
    if checkpoint is not None:
        attrs["checkpoint_sha256"] = checkpoint_sha256(checkpoint)
        attrs["model_config"] = json.dumps(checkpoint.model_config.to_dict(), sort_keys=True)
    result = xr.DataArray(
        highres, dims=(y_dim, x_dim), coords=coords, attrs=attrs, name=dataarray.name
    )
    result.encoding["grid_mapping"] = GRID_MAPPING
    return result


def _spatial(dataarray: xr.DataArray, where: str) -> tuple[xr.DataArray, Any, Any]:
    """(the array without size-1 extra dimensions, its y dimension, its x dimension)."""
    y_dims = [d for d in dataarray.dims if str(d).lower() in Y_NAMES]
    x_dims = [d for d in dataarray.dims if str(d).lower() in X_NAMES]
    if len(y_dims) != 1 or len(x_dims) != 1:
        raise ValueError(
            f"{where}: expected one y dimension ({', '.join(Y_NAMES)}) and one x dimension "
            f"({', '.join(X_NAMES)}), got dimensions {tuple(map(str, dataarray.dims))}"
        )
    extra = [d for d in dataarray.dims if d not in (y_dims[0], x_dims[0])]
    if any(dataarray.sizes[d] != 1 for d in extra):
        raise ValueError(
            f"{where}: dimensions {dict(dataarray.sizes)}: select one band (another dimension "
            "than y and x must have size 1)"
        )
    data = dataarray.isel({d: 0 for d in extra}, drop=True) if extra else dataarray
    return data, y_dims[0], x_dims[0]


def _crs(
    data: xr.DataArray, dataset: xr.Dataset, given: CRS | str | None, x: str, y: str, where: str
) -> CRS:
    """The CRS of ``data`` (see :func:`predict_dataarray`); a ValueError when it has none."""
    if given is not None:
        return given if isinstance(given, CRS) else CRS.from_user_input(given)
    elevation = dataset["__elevation__"]
    if "grid_mapping" not in elevation.attrs and "grid_mapping" not in data.encoding:
        if GRID_MAPPING in dataset.coords:  # rioxarray's default name
            elevation.attrs["grid_mapping"] = GRID_MAPPING
    elif "grid_mapping" not in elevation.attrs:
        elevation.attrs["grid_mapping"] = data.encoding["grid_mapping"]
    found = _grid_crs(dataset, elevation, x, y, where)
    if found is None:
        with contextlib.suppress(ImportError):
            import rioxarray  # noqa: F401 - registers the .rio accessor

            rio_crs = data.rio.crs
            if rio_crs is not None:
                found = CRS.from_wkt(rio_crs.to_wkt())
    if found is None:
        raise ValueError(
            f"{where}: no CRS: give crs=, or write one (rioxarray: da.rio.write_crs(...); or "
            "a spatial_ref coordinate with a crs_wkt attribute)"
        )
    return found
