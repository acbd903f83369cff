"""Raster input and output: whatever rasterio/GDAL opens in, georeferenced GeoTIFF out.

Inside demsr a DEM is a float32 array (rows, cols) in metres with NaN where the file has no data;
the file's own nodata value is kept alongside so that outputs can write it back.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError
from rasterio.windows import Window


class RasterError(ValueError):
    """A raster that cannot be used, with a message naming the file and the problem."""


@dataclass
class Raster:
    """A single-band DEM in memory.

    ``data`` is (rows, cols) float32 metres, NaN where the source has no data. ``transform`` maps
    (col, row) of the top-left corner of a cell to CRS coordinates. ``nodata`` is the source
    file's nodata value (``None`` if it declares none).
    """

    data: np.ndarray
    transform: Affine
    crs: CRS | None
    nodata: float | None = None
    path: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.data.shape[0]), int(self.data.shape[1]))

    @property
    def valid(self) -> np.ndarray:
        """Boolean mask, True where the cell has data."""
        return np.isfinite(self.data)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in CRS units."""
        rows, cols = self.shape
        left, top = self.transform * (0, 0)
        right, bottom = self.transform * (cols, rows)
        return (min(left, right), min(bottom, top), max(left, right), max(bottom, top))


def _check_north_up(transform: Affine, path: str) -> None:
    if transform.b != 0 or transform.d != 0 or transform.a <= 0 or transform.e >= 0:
        raise RasterError(
            f"{path}: transform is rotated or not north-up ({tuple(transform)[:6]}); "
            "warp it to a north-up grid first (e.g. gdalwarp)"
        )


def read_raster(
    path: str | os.PathLike[str], band: int = 1, window: Window | None = None
) -> Raster:
    """Read one band of a raster (or a window of it) as float32 metres with NaN nodata.

    Any format GDAL opens works (GeoTIFF/COG, SRTM .hgt, NetCDF, ESRI ASCII, ...). Cells equal to
    the file's nodata value, and non-finite cells, become NaN.
    """
    path_str = os.fspath(path)
    if not Path(path_str).exists():
        raise RasterError(f"{path_str}: no such file")
    try:
        with rasterio.open(path_str) as src:
            if not 1 <= band <= src.count:
                raise RasterError(
                    f"{path_str}: band {band} does not exist (the file has {src.count})"
                )
            _check_north_up(src.transform, path_str)
            data = src.read(band, window=window, masked=True)
            transform = src.window_transform(window) if window is not None else src.transform
            crs = src.crs
            nodata = src.nodata
    except RasterioIOError as exc:
        raise RasterError(f"{path_str}: cannot be read as a raster ({exc})") from None
    values = np.ma.filled(data.astype(np.float32), np.nan)
    values[~np.isfinite(values)] = np.nan
    return Raster(data=values, transform=transform, crs=crs, nodata=nodata, path=path_str)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    An interrupted write never leaves a file at ``path`` that looks complete, and a failed one
    removes its temporary file.
    """
    final = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp made it owner-only; give the usual mode
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_geotiff(
    path: str | os.PathLike[str],
    data: np.ndarray,
    transform: Affine,
    crs: CRS | None,
    nodata: float | None = None,
) -> Path:
    """Write a (rows, cols) float array as a tiled, DEFLATE-compressed float32 GeoTIFF.

    NaN cells are written as ``nodata`` (NaN itself when ``nodata`` is None). The file appears
    at ``path`` only once complete.
    """
    values = np.asarray(data, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"expected a (rows, cols) array, got shape {values.shape}")
    fill = np.float32(np.nan if nodata is None else nodata)
    if not np.isnan(fill):
        values = np.where(np.isnan(values), fill, values)
    rows, cols = values.shape
    profile = {
        "driver": "GTiff",
        "width": cols,
        "height": rows,
        "count": 1,
        "dtype": "float32",
        "crs": crs,
        "transform": transform,
        "nodata": float(fill),
        "compress": "deflate",
        "predictor": 3,
    }
    if rows >= 256 and cols >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    with atomic_path(path) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(values, 1)
    return Path(path)
