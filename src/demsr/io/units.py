"""Heights' units and datums: metres per declared unit, CF standard names, a product's CRS."""

from __future__ import annotations

import re

from pyproj import CRS as ProjCRS
from rasterio.crs import CRS

from demsr.io.raster import RasterError

# Vertical units a DEM may declare (GDAL's band unit type, CF ``units``), lower-cased, and their
# length in metres. Undeclared units are taken as metres.
_METRE_NAMES = ("m", "metre", "meter", "metres", "meters", "m above sea level")

_FOOT_NAMES = ("ft", "foot", "feet", "international foot", "international feet", "ft_intl")

_US_FOOT_NAMES = (
    "us survey foot",
    "us survey feet",
    "us_survey_foot",
    "us_survey_feet",
    "us-ft",
    "ftus",
    "ft_us",
    "foot_us",
    "us foot",
    "survey foot",
)

VERTICAL_UNITS: dict[str, float] = {
    **dict.fromkeys(_METRE_NAMES, 1.0),
    **dict.fromkeys(_FOOT_NAMES, 0.3048),
    **dict.fromkeys(_US_FOOT_NAMES, 1200.0 / 3937.0),
    "km": 1000.0,
    "kilometre": 1000.0,
    "kilometer": 1000.0,
    "cm": 0.01,
    "dm": 0.1,
    "mm": 0.001,
}
"""Metres per unit of each vertical unit a DEM may declare."""

CANONICAL_UNITS = {0.3048: "ft", 1200.0 / 3937.0: "US_survey_foot"}
"""How an output in feet declares its unit (UDUNITS names, which CF checkers and GDAL accept)."""


def metres_per_unit(unit: str | None, path: str) -> float:
    """Metres per ``unit`` (a vertical unit a file declares; None or empty: metres); a
    RasterError naming the unit for one that is not a known length."""
    if unit is None or not str(unit).strip():
        return 1.0
    key = " ".join(str(unit).strip().lower().split())
    if key in VERTICAL_UNITS:
        return VERTICAL_UNITS[key]
    raise RasterError(
        f"{path}: elevations are declared in {unit!r}, not a vertical unit demsr converts "
        "(metres, feet, US survey feet, km, cm, mm)"
    )


def _split_heights(crs: CRS) -> tuple[CRS, str | None]:
    """(2D CRS, datum of the heights) of a rasterio CRS: see :func:`demsr.datum.split_heights`."""
    from demsr.datum import split_heights

    horizontal, datum = split_heights(crs.to_wkt())
    if datum is None and not ProjCRS.from_wkt(crs.to_wkt()).is_compound:
        return crs, None  # a 2D CRS stays as the file gives it
    return CRS.from_wkt(horizontal.to_wkt()), datum


# Vertical datums whose heights are above the ellipsoid (demsr.datum calls WGS84 ellipsoidal
# heights "wgs84"); any other named datum (egm96, egm2008, navd88, msl, ...) is geoid-based.
_ELLIPSOIDAL_DATUMS = {"wgs84", "epsg:4979", "epsg:4326", "ellipsoid", "ellipsoidal"}


def height_standard_name(vertical_datum: str | None) -> str:
    """CF standard name of a DEM's heights above ``vertical_datum``.

    ``height_above_reference_ellipsoid`` for ellipsoidal heights (``wgs84``, ``EPSG:4979``,
    anything mentioning an ellipsoid); ``surface_altitude`` (the height of the Earth's surface
    above the geoid) for geoid-based datums such as ``egm96`` or ``egm2008`` and when the datum
    is not given.
    """
    if vertical_datum is None:
        return "surface_altitude"
    key = re.sub(r"[\s_-]", "", vertical_datum.lower())
    if key in _ELLIPSOIDAL_DATUMS or "ellipsoid" in key:
        return "height_above_reference_ellipsoid"
    return "surface_altitude"


def output_crs(crs: CRS | None, vertical_datum: str | None, kind: str = "netcdf") -> CRS | None:
    """The CRS a product of format ``kind`` (:data:`FORMATS`) declares: the 2D ``crs`` with the
    heights' ``vertical_datum`` (``egm96`` or ``wgs84``; others and None leave it 2D) as a
    compound or 3D CRS (:func:`demsr.datum.crs_with_heights`).

    GeoTIFF keys hold a compound CRS and EPSG-coded 3D CRSs (EPSG:4979) but not a 3D projected
    CRS: a COG of ellipsoidal heights on such a grid keeps the 2D CRS (GDAL would put the 3D
    one in a ``.aux.xml`` sidecar, which a product must not need); its ``vertical_datum`` tag
    still says ``wgs84``.
    """
    from demsr.datum import DATUMS, crs_with_heights

    if crs is None or vertical_datum is None or vertical_datum.lower() not in DATUMS:
        return crs
    full = crs_with_heights(crs.to_wkt(), vertical_datum)
    if kind == "cog" and not full.is_compound and full.to_epsg() is None:
        return crs
    return CRS.from_wkt(full.to_wkt())
