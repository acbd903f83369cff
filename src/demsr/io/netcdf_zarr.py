"""The CF products: NetCDF-4 and Zarr (format 2, consolidated), with the same variables and
attributes, laid out by :mod:`demsr.io.gridded` and written block by block
(:func:`_write_netcdf`, :func:`_write_zarr`, registered in :mod:`demsr.io.formats`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from demsr.grid import Grid
from demsr.io.blocks import BLOCK_PX, AncillaryBand, _Encoder, _read_blocks
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
from demsr.io.raster import RasterLayout, RasterReader
from demsr.io.safety import atomic_directory, atomic_path
from demsr.io.units import output_crs


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
