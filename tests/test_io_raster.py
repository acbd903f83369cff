"""The raster layout a reader records, and products mirror."""

from __future__ import annotations

import pytest

from demsr.io import RasterLayout


def test_layout_round_trips_through_a_dict() -> None:
    layout = RasterLayout(kind="netcdf", variable="elevation", lon_0_360=True)
    assert RasterLayout.from_mapping(layout.as_dict()) == layout
    with pytest.raises(ValueError, match="unknown raster layout keys: colour"):
        RasterLayout.from_mapping({"kind": "gdal", "colour": "red"})
