"""The CF products: NetCDF-4 and Zarr (format 2, consolidated), with the same variables and
attributes, laid out by :mod:`demsr.io.gridded` and written block by block
(:func:`_write_netcdf`, :func:`_write_zarr`, registered in :mod:`demsr.io.formats`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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
    ``_FillValue``), built with zarr directly so that the elevation is written block by block.
    The group, its attributes and every array (the coordinates with their values) are created
    and their metadata consolidated first, in one go (:func:`_create_zarr`: the chunks written
    after change no metadata), then the gridded variables are written block by block."""

    crs = src.crs
    plan = _plan_grid(Grid.of(src), layout)
    x_attrs, y_attrs = _coordinate_attrs(plan, crs)
    arrays = [
        _ZarrArray(
            name, (values.size,), "float64", None, {**attrs, "_ARRAY_DIMENSIONS": [name]}, values
        )
        for name, values, attrs in (
            (plan.y_name, plan.y_values, y_attrs),
            (plan.x_name, plan.x_values, x_attrs),
        )
    ]
    full_crs = output_crs(crs, metadata.get("vertical_datum"))
    # GDAL's Zarr driver reads a CRS from this attribute (before 3.9, its only way); xarray
    # shows it as an attribute, which to_netcdf refuses: drop it on reading
    # (docs/opening-outputs.md).
    gdal_crs = {} if full_crs is None else {ZARR_CRS_ATTRIBUTE: {"wkt": _crs_wkt(full_crs)}}
    if full_crs is not None:
        attrs = {**_grid_mapping_attrs(full_crs), "_ARRAY_DIMENSIONS": []}
        arrays.append(_ZarrArray("crs", (), "int32", None, attrs, np.int32(0)))
    shape = (plan.y_values.size, plan.x_values.size)
    dims = [plan.y_name, plan.x_name]
    fill = float(encode.fill) if encode.dtype == "float32" else int(encode.fill)
    attrs = {**_elevation_attrs(metadata, crs is not None), "_ARRAY_DIMENSIONS": dims}
    attrs.update(gdal_crs)
    if ancillary is not None:
        attrs["ancillary_variables"] = ancillary.name
    gridded = [(_ZarrArray("elevation", shape, encode.dtype, fill, attrs), src, "zarr-blocks")]
    if ancillary is not None:
        attrs = {**_ancillary_attrs(ancillary, crs is not None), "_ARRAY_DIMENSIONS": dims}
        attrs.update(gdal_crs)  # as the elevation's, for GDAL
        band = _ZarrArray(ancillary.name, shape, "float32", float(encode.fill), attrs)
        gridded.append((band, ancillary.reader, "zarr-band-2"))

    with atomic_directory(output) as tmp:
        created = _create_zarr(
            tmp, _global_attrs(metadata, Path(src.path)), [*arrays, *(g[0] for g in gridded)]
        )
        for spec, reader, stop_at in gridded:
            setitem = created[spec.name].__setitem__
            _write_blocks(reader, plan, encode, setitem, progress, output.name, stop_at)


@dataclass(frozen=True)
class _ZarrArray:
    """An array of a Zarr product: its shape, dtype, fill value and attributes, and its values
    when they are written with it (the coordinates); chunks of :data:`BLOCK_PX` a side."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    fill: Any
    attrs: Mapping[str, Any]
    data: Any = None

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(min(BLOCK_PX, n) for n in self.shape) if len(self.shape) == 2 else self.shape


def _create_zarr(
    folder: Path, group_attrs: Mapping[str, Any], arrays: Sequence[_ZarrArray]
) -> dict[str, Any]:
    """A Zarr format 2 group in ``folder`` with ``group_attrs`` and ``arrays`` (with their
    attributes and any values), its metadata consolidated, as zarr arrays by name. zarr 3
    creates them all concurrently and consolidates in one call into its event loop (each step
    on its own would be a round trip into it, and most of the writing time of a small product);
    zarr 2 one after the other."""
    import zarr

    if int(zarr.__version__.split(".")[0]) < 3:
        root = zarr.open_group(str(folder), mode="w")
        root.attrs.update(group_attrs)
        made = {}
        for spec in arrays:
            array = root.create_dataset(
                spec.name,
                shape=spec.shape,
                dtype=spec.dtype,
                chunks=spec.chunks,
                fill_value=spec.fill,
            )
            array.attrs.update(spec.attrs)
            if spec.data is not None:
                array[...] = spec.data
            made[spec.name] = array
        zarr.consolidate_metadata(str(folder))
        return made

    from zarr.api.asynchronous import consolidate_metadata, open_group
    from zarr.core.sync import sync

    async def create() -> list[Any]:
        root = await open_group(
            store=str(folder), mode="w", zarr_format=2, attributes=dict(group_attrs)
        )
        # Every creation ends before this returns, a failed one too (then the first error is
        # raised): nothing still writes into the folder when the caller removes it.
        results = await asyncio.gather(
            *(
                root.create_array(
                    spec.name,
                    chunks=spec.chunks,
                    fill_value=spec.fill,
                    attributes=dict(spec.attrs),
                    **(
                        {"shape": spec.shape, "dtype": spec.dtype}
                        if spec.data is None
                        else {"data": np.asarray(spec.data, dtype=spec.dtype)}
                    ),
                )
                for spec in arrays
            ),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        await consolidate_metadata(str(folder))
        return list(results)

    return {
        spec.name: zarr.Array(array) for spec, array in zip(arrays, sync(create()), strict=True)
    }


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
