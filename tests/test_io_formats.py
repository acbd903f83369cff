"""The registry of output formats: unknown formats and dtypes refused, a format given wins."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from io_helpers import make_partial

from demsr.io import AncillaryBand, RasterError, finalise_output, open_raster


def test_finalise_rejects_unknown_formats_and_dtypes(tmp_path: Path, dem_test_dir: Path) -> None:
    partial = tmp_path / "partial.tif"
    make_partial(partial, dem_test_dir / "landlab_west_bijou_1s.tif", upscale=1)
    with pytest.raises(RasterError, match="unknown output format 'png'"):
        finalise_output(partial, tmp_path / "out.tif", fmt="png")
    with pytest.raises(
        RasterError, match=r"cannot tell the output format from the extension '\.png'"
    ):
        finalise_output(partial, tmp_path / "out.png")
    with pytest.raises(RasterError, match="unsupported output dtype 'uint8'"):
        finalise_output(partial, tmp_path / "out.tif", dtype="uint8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["partial.tif"]
    # an explicit format wins over the extension
    output = finalise_output(partial, tmp_path / "out.dem", fmt="netcdf")
    with xr.open_dataset(output) as product:
        assert product.attrs["Conventions"] == "CF-1.8"


def test_a_partial_file_is_finalised_with_its_ancillary_band(
    tmp_path: Path, dem_test_dir: Path
) -> None:
    """The uncertainty band is written whether the partial is an open reader or a file."""
    partial = tmp_path / "partial.tif"
    data, _, _ = make_partial(partial, dem_test_dir / "landlab_west_bijou_1s.tif", upscale=1)
    spread = tmp_path / "spread.tif"
    _, transform, crs = make_partial(spread, dem_test_dir / "landlab_west_bijou_1s.tif", 1)
    with open_raster(spread) as reader:
        band = AncillaryBand(reader, "elevation_uncertainty", "uncertainty", {"units": "m"})
        output = finalise_output(partial, tmp_path / "out.tif", uncertainty=band)
    with rasterio.open(output) as product:
        assert product.count == 2 and product.descriptions == ("elevation", "uncertainty")
        np.testing.assert_array_equal(product.read(1), data)
        np.testing.assert_array_equal(product.read(2), data)
