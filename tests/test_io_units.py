"""Vertical units and datums: the CF standard name of heights."""

from __future__ import annotations

import pytest

from demsr.io import height_standard_name


@pytest.mark.parametrize(
    ("datum", "name"),
    [
        ("egm96", "surface_altitude"),
        ("EGM2008", "surface_altitude"),
        (None, "surface_altitude"),
        ("wgs84", "height_above_reference_ellipsoid"),
        ("WGS 84 ellipsoid", "height_above_reference_ellipsoid"),
    ],
)
def test_height_standard_name(datum: str | None, name: str) -> None:
    assert height_standard_name(datum) == name
