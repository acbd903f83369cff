"""The shared block encoder: int16 products rounded, nodata -32768, out-of-range refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from io_helpers import RELIEF, make_partial, open_product

from demsr.io import RasterError, finalise_output, read_raster, write_geotiff


@pytest.mark.parametrize("suffix", [".tif", ".nc", ".zarr"])
def test_finalise_int16(tmp_path: Path, dem_test_dir: Path, suffix: str) -> None:
    partial = tmp_path / "partial.tif"
    data, _, _ = make_partial(partial, dem_test_dir / RELIEF, upscale=1)
    data[0, :4] = [10.4, 10.6, -3.5, -2.5]  # numpy rounds halves to even
    write_geotiff(partial, data, read_raster(partial).transform, read_raster(partial).crs)
    output = finalise_output(partial, tmp_path / f"out{suffix}", dtype="int16")
    expected = np.where(np.isnan(data), -32768, np.rint(data)).astype(np.int16)
    assert list(expected[0, :4]) == [10, 11, -4, -2]
    if suffix == ".tif":
        with rasterio.open(output) as src:
            assert src.dtypes == ("int16",) and src.nodata == -32768
            np.testing.assert_array_equal(src.read(1), expected)
    else:
        with open_product(output) as product:
            elevation = product["elevation"]
            assert elevation.encoding["dtype"] == np.int16
            assert elevation.encoding["_FillValue"] == -32768
            masked = np.where(expected == -32768, np.nan, expected)
            np.testing.assert_array_equal(elevation.values, masked)


def test_int16_refuses_out_of_range_and_leaves_no_trace(tmp_path: Path, dem_test_dir: Path) -> None:
    partial = tmp_path / "partial.tif"
    data, transform, crs = make_partial(partial, dem_test_dir / RELIEF, upscale=1)
    data[599, 599] = 40000.0  # in the last block
    write_geotiff(partial, data, transform, crs)
    for suffix in (".tif", ".nc", ".zarr"):
        with pytest.raises(RasterError, match=rf"{partial}: elevations reach .*40000.0 m"):
            finalise_output(partial, tmp_path / f"out{suffix}", dtype="int16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["partial.tif"]
