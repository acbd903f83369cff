"""Grids that must agree (a low-res input, its prediction, a high-res truth): CRS, scale, offset."""

from __future__ import annotations

from typing import Any

from affine import Affine

from demsr.io.raster import RasterReader

GRID_TOLERANCE = 1e-3
"""Fraction of a cell by which cell sizes and origins of grids that agree may differ."""


def same_crs(first: Any, second: Any) -> bool:
    """True when both CRSs are equal, or both are missing."""
    if first is None or second is None:
        return first is None and second is None
    return bool(first == second)


def integer_scale(lowres: RasterReader, highres: RasterReader) -> int:
    """How many ``highres`` cells span one ``lowres`` cell along each axis (an integer)."""
    ratio_x = lowres.transform.a / highres.transform.a
    ratio_y = lowres.transform.e / highres.transform.e
    scale = round(ratio_x)
    if scale < 1 or max(abs(ratio_x - scale), abs(ratio_y - scale)) > GRID_TOLERANCE * scale:
        raise ValueError(
            f"{lowres.path}: its cells are {ratio_x:.4g} x {ratio_y:.4g} times those of "
            f"{highres.path}, not one integer scale"
        )
    return scale


def locate_grid(
    reader: RasterReader, transform: Affine, shape: tuple[int, int], reference: str
) -> tuple[int, int]:
    """(row, col) of the grid (``transform``, ``shape``), named ``reference`` in messages, on
    ``reader``'s grid, which must hold it: same cell size, cell edges aligned, covering it."""
    own = reader.transform
    if abs(own.a - transform.a) > GRID_TOLERANCE * abs(transform.a) or abs(
        own.e - transform.e
    ) > GRID_TOLERANCE * abs(transform.e):
        raise ValueError(
            f"{reader.path}: cells of {own.a:.6g} x {-own.e:.6g} differ from the "
            f"{transform.a:.6g} x {-transform.e:.6g} of {reference}"
        )
    col = (transform.c - own.c) / own.a
    row = (transform.f - own.f) / own.e
    col_off, row_off = round(col), round(row)
    if max(abs(col - col_off), abs(row - row_off)) > GRID_TOLERANCE:
        raise ValueError(
            f"{reader.path}: its cells are offset from those of {reference} by "
            f"({col - col_off:+.3f}, {row - row_off:+.3f}) cells"
        )
    rows, cols = shape
    if (
        row_off < 0
        or col_off < 0
        or row_off + rows > reader.shape[0]
        or col_off + cols > reader.shape[1]
    ):
        raise ValueError(
            f"{reader.path}: does not cover {reference} ({rows} x {cols} cells from "
            f"row {row_off}, column {col_off} of its {reader.shape[0]} x {reader.shape[1]})"
        )
    return row_off, col_off
