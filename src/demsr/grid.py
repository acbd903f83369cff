"""A raster grid as one value: its shape, its affine transform and its CRS.

A coarse grid and the x ``scale`` grid a model writes over it share their bounds and CRS; the
finer grid's cells are the coarse ones divided by ``scale`` (:meth:`Grid.refine`). Windows of a
grid are grids too (:meth:`Grid.window`), with their own transform, as rasterio computes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from affine import Affine
from pyproj import CRS as ProjCRS
from rasterio.transform import array_bounds
from rasterio.windows import Window
from rasterio.windows import transform as window_transform


class _HasGrid(Protocol):
    @property
    def shape(self) -> tuple[int, int]: ...

    @property
    def transform(self) -> Affine: ...

    @property
    def crs(self) -> Any: ...


@dataclass(frozen=True)
class Grid:
    """``shape`` (rows, cols), ``transform`` (the affine of the cells' edges, rasterio's
    convention) and ``crs`` (None when unknown)."""

    shape: tuple[int, int]
    transform: Affine
    crs: Any = None

    @classmethod
    def of(cls, raster: _HasGrid) -> Grid:
        """The grid of anything with ``shape``, ``transform`` and ``crs`` (a reader, a Raster)."""
        rows, cols = raster.shape[-2:]
        return cls((int(rows), int(cols)), raster.transform, raster.crs)

    @property
    def geographic(self) -> bool:
        """Whether the coordinates are longitude and latitude (False when the CRS is unknown)."""
        return self.crs is not None and bool(ProjCRS.from_user_input(self.crs).is_geographic)

    @property
    def coordinate_units(self) -> str:
        """The unit of the coordinates: ``degrees`` on a geographic CRS, else the CRS's linear
        unit (``m`` for metres, and when the CRS is unknown)."""
        if self.crs is None:
            return "m"
        proj_crs = ProjCRS.from_user_input(self.crs)
        if proj_crs.is_geographic:
            return "degrees"
        unit = proj_crs.axis_info[0].unit_name if proj_crs.axis_info else "metre"
        return "m" if unit in ("metre", "meter") else unit

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the CRS's units."""
        rows, cols = self.shape
        west, south, east, north = array_bounds(rows, cols, self.transform)
        return (west, south, east, north)

    def cell_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """The x (cols,) and y (rows,) coordinates of the cells' centres, float64: column ``c``
        at ``c0 + (c + 0.5) * a``, row ``r`` at ``f + (r + 0.5) * e`` (``c0``, ``a``, ``f``,
        ``e`` the transform's terms). For north-up grids: a rotation (``b``, ``d``) is not used.
        """
        rows, cols = self.shape
        transform = self.transform
        xs = transform.c + (np.arange(cols) + 0.5) * transform.a
        ys = transform.f + (np.arange(rows) + 0.5) * transform.e
        return xs, ys

    def refine(self, scale: int) -> Grid:
        """The grid of ``scale`` x ``scale`` cells per cell over the same bounds."""
        if scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale}")
        rows, cols = self.shape
        return Grid(
            (rows * scale, cols * scale), self.transform @ Affine.scale(1 / scale), self.crs
        )

    def coarsen(self, scale: int) -> Grid:
        """The grid of cells ``scale`` times larger from the same origin, whole cells only (the
        rows and columns past the last whole block are left out)."""
        if scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale}")
        rows, cols = self.shape
        transform = self.transform @ Affine.scale(scale)
        return Grid((rows // scale, cols // scale), transform, self.crs)

    def window(self, window: Window) -> Grid:
        """The cells of ``window`` as a grid of their own."""
        return Grid(
            (int(window.height), int(window.width)),
            window_transform(window, self.transform),
            self.crs,
        )
