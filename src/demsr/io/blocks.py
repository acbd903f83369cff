"""The block encoder and reader every product writer shares: the partial read in 512 x 512
blocks (:func:`_read_blocks`), each turned into the product's data type (:class:`_Encoder`), and
:class:`AncillaryBand`, a second band a product carries beside the elevation."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from rasterio.windows import Window

from demsr.io.geotiff import fill_nodata
from demsr.io.raster import RasterError, RasterReader
from demsr.stops import stop_point
from demsr.tiling import tile_grid

BLOCK_PX = 512
"""Block edge of every product :func:`finalise_output` writes: COG tiles, NetCDF/Zarr chunks."""

INT16_NODATA = -32768
"""Nodata value of int16 products; valid int16 elevations are -32767..32767 m."""


@dataclass(frozen=True)
class _Encoder:
    """Turns float32 blocks with NaN nodata into the output data type."""

    dtype: str
    fill: float
    source: str

    def __call__(self, block: np.ndarray) -> np.ndarray:
        if self.dtype == "float32":
            return fill_nodata(block, self.fill)
        valid = np.isfinite(block)
        rounded = np.rint(block, where=valid, out=np.zeros(block.shape, np.float32))
        if valid.any():
            low, high = float(rounded[valid].min()), float(rounded[valid].max())
            if low < INT16_NODATA + 1 or high > np.iinfo(np.int16).max:
                raise RasterError(
                    f"{self.source}: elevations reach {low:.1f}..{high:.1f} m, outside int16 "
                    f"(-32767..32767 m; -32768 is nodata); write float32 instead"
                )
        rounded[~valid] = INT16_NODATA
        return rounded.astype(np.int16)


def _read_blocks(
    src: RasterReader, progress: bool, description: str, stop_at: str
) -> Iterator[tuple[Window, np.ndarray]]:
    """(window, float32 block with NaN nodata) for each 512 x 512 block of ``src``; the stop
    point ``stop_at`` (:mod:`demsr.stops`) once the caller has used the first block."""
    from tqdm import tqdm

    blocks = tile_grid(*src.shape, BLOCK_PX, 0)
    for index, tile in enumerate(
        tqdm(blocks, desc=description, unit="block", disable=not progress)
    ):
        yield tile.core, src.read(tile.core)
        if index == 0:
            stop_point(stop_at)


@dataclass(frozen=True)
class AncillaryBand:
    """A second band a product carries beside the elevation, on the same grid (e.g. the
    ensemble's uncertainty, :mod:`demsr.ensemble`): read from ``reader`` (float32, NaN =
    nodata), written as band 2 of a COG described by ``description`` with ``attrs`` as its band
    tags, or as the NetCDF/Zarr variable ``name`` with ``attrs`` (and the grid mapping), which
    the elevation names in its ``ancillary_variables``. Always float32."""

    reader: RasterReader
    name: str
    description: str
    attrs: dict[str, str]
