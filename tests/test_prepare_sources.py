"""prepare.sources: the rasters named by files and folders, in every format predict reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pair_helpers import hilly, read_all, write_dem

from demsr.datasets import IDENTITY
from demsr.prepare import (
    PrepareOptions,
    collect_rasters,
    prepare_pairs,
)


def test_collect_rasters_expands_folders(tmp_path: Path) -> None:
    write_dem(tmp_path / "b.tif", hilly(10, 10))
    write_dem(tmp_path / "a.tif", hilly(10, 10))
    (tmp_path / "notes.txt").write_text("not a raster")
    assert [p.name for p in collect_rasters([tmp_path])] == ["a.tif", "b.tif"]
    with pytest.raises(ValueError, match="named twice"):
        collect_rasters([tmp_path, tmp_path / "a.tif"])
    with pytest.raises(ValueError, match="no such file"):
        collect_rasters([tmp_path / "missing.tif"])


def test_a_folder_of_netcdf_and_zarr_dems_is_prepared(tmp_path: Path) -> None:
    """prepare takes from a folder every format predict reads: a .nc4 file and a .zarr store
    (a folder itself) are rasters, the same cells as the GeoTIFF they were written from."""
    import xarray as xr

    values = hilly(40, 40)
    lat = 47.0 - (np.arange(40) + 0.5) * 3 / 3600
    lon = 8.0 + (np.arange(40) + 0.5) * 3 / 3600
    grid = xr.Dataset(
        {"elevation": (("lat", "lon"), values, {"units": "m"})},
        coords={
            "lat": ("lat", lat, {"units": "degrees_north"}),
            "lon": ("lon", lon, {"units": "degrees_east"}),
        },
    )
    folder = tmp_path / "dems"
    folder.mkdir()
    grid.to_netcdf(folder / "a.nc4")
    grid.to_zarr(folder / "b.zarr", consolidated=False)
    write_dem(folder / "c.tif", values)
    (folder / "notes.txt").write_text("not a raster")
    (folder / "plain_folder").mkdir()
    found = collect_rasters([folder])
    assert [p.name for p in found] == ["a.nc4", "b.zarr", "c.tif"]
    assert collect_rasters([folder / "b.zarr"]) == [folder / "b.zarr"]  # a store, not a folder

    options = PrepareOptions(
        lowres_patch_px=4,
        split_by="file",
        split_fractions=(1.0, 0.0, 0.0),
        normalisation=IDENTITY,
    )
    prepare_pairs(found, tmp_path / "out", options, progress=False)
    train = read_all(tmp_path / "out")["train"]
    # 2 x 2 patches of 20 x 20 cells from each of the three files, the same cells from each.
    windows = sorted(tuple(int(v) for v in window) for window in train.source_windows)
    assert windows == sorted(
        (index, row, col, 20, 20) for index in range(3) for row in (0, 20) for col in (0, 20)
    )
    for patch, (_, row, col, _, _) in zip(train.highres, train.source_windows, strict=True):
        np.testing.assert_allclose(patch[0], values[row : row + 20, col : col + 20], atol=1e-3)
