"""Where pairs come from: the rasters named by files and folders (:func:`collect_rasters`), and
how each gives its high-res raster and the low-res member of its pairs (:class:`PairSource`;
:class:`BlockMeanSource`, the block mean, by default)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from demsr.io import INPUT_SUFFIXES, ZARR_SUFFIX, Raster, read_raster
from demsr.prepare.block_mean import degrade

# A folder's members taken as rasters: the readers' one list of the formats open_raster reads.
RASTER_SUFFIXES: tuple[str, ...] = INPUT_SUFFIXES


class PairSource(Protocol):
    """How :func:`prepare_pairs` gets the high-res raster it cuts patches from, and the low-res
    member of each pair. :class:`BlockMeanSource` (the default): a fine DEM and its own block
    mean. :class:`demsr.products.ProductSource`: a fine DEM put onto a real coarse product's
    sub-grid, and the product's cells."""

    def highres(self, path: Path, band: int) -> Raster:
        """The high-res raster (metres, NaN nodata) whose windows become the high-res patches;
        windows start at multiples of the scale, so they line up with the low-res cells."""
        ...

    def lowres_m(
        self, raster: Raster, highres_m: np.ndarray, origins: np.ndarray, scale: int
    ) -> np.ndarray:
        """(n,1,h,w) low-res metres for the (n,1,H,W) ``highres_m`` patches at ``origins``."""
        ...

    def provenance(self) -> dict[str, Any] | None:
        """What the pair files record about the sources beyond their paths (None: nothing)."""
        ...


class BlockMeanSource:
    """Pairs from a fine DEM alone: the low-res member is the block mean (:func:`degrade`)."""

    def highres(self, path: Path, band: int) -> Raster:
        return read_raster(path, band=band)

    def lowres_m(
        self, raster: Raster, highres_m: np.ndarray, origins: np.ndarray, scale: int
    ) -> np.ndarray:
        return degrade(highres_m, scale)

    def provenance(self) -> dict[str, Any] | None:
        return None


def collect_rasters(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand ``paths`` into raster files: files as given, folders into their rasters (sorted).

    Folder members are taken by suffix (``RASTER_SUFFIXES``, the formats ``open_raster``
    reads; a ``.zarr`` folder is a raster, not a folder of them). Missing paths and the same
    file named twice are refused with ValueError.
    """
    found: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir() and path.suffix.lower() != ZARR_SUFFIX:
            members = sorted(
                p
                for p in path.iterdir()
                if p.suffix.lower() in RASTER_SUFFIXES
                and (p.is_dir() if p.suffix.lower() == ZARR_SUFFIX else p.is_file())
            )
            if not members:
                raise ValueError(f"{path}: folder holds no rasters ({', '.join(RASTER_SUFFIXES)})")
            found.extend(members)
        elif path.exists():
            found.append(path)
        else:
            raise ValueError(f"{path}: no such file or folder")
    refuse_duplicates(found)
    return found


def refuse_duplicates(paths: Iterable[Path]) -> None:
    """ValueError when one file is named twice (patches would be counted twice)."""
    seen: dict[Path, Path] = {}
    for path in paths:
        resolved = path.resolve()
        if resolved in seen:
            raise ValueError(f"{path}: named twice (also as {seen[resolved]})")
        seen[resolved] = path
