"""Training pairs from real DEMs: degrade high-res patches to low-res, split by space, write HDF5.

For every input raster (one at a time, so memory is bounded by the largest raster):

1. The raster is cut into square *split blocks* (``split_block_px`` high-res cells; the last row
   and column of blocks may be smaller). With ``split_by="file"`` the whole raster is one block.
2. High-res patches (``lowres_patch_px * scale`` cells) are taken every ``stride_px`` cells,
   starting at each block's corner and lying fully inside that block, so no high-res cell is in
   two blocks' patches. Patches with any nodata are dropped; so are patches whose relief
   (max - min) is below ``min_relief_m`` (SRTM writes the sea as a flat 0 m), and patches whose
   sea fraction (cells below 0 m) is outside ``min_sea_fraction..max_sea_fraction`` (land-only
   pretraining, bathymetry-only fine-tuning; by default every fraction is kept).
3. Blocks that keep at least one patch are dealt to train/valid/test: their numbers follow
   ``split_fractions`` (the fractional remainder rounded at random), and which blocks go where
   follows a hash of (seed, file name, block position), so adding a file does not move the blocks
   of the others. If a split with a non-zero fraction would be empty while there are at least
   three blocks overall, one block is moved into it from the largest split. With
   ``split_by="file"`` whole files are dealt the same way, and each non-empty split is
   guaranteed a file when there are at least three.
4. The low-res member of each pair is the block mean of the high-res patch over scale x scale
   cells (:func:`degrade`), both normalised with ``options.normalisation``; the pairs are appended
   to ``out_dir/{train,valid,test}/{split}.h5`` (layout in :mod:`demsr.datasets`).

A first pass reads each raster to find its usable patches and deal the blocks; the second pass
reads it again and writes the pairs. The three files appear only when all are complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import numbers
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from affine import Affine
from tqdm import tqdm

from demsr.datasets import Normalisation, PairMetadata, PairWriter
from demsr.io import (
    INPUT_SUFFIXES,
    ZARR_SUFFIX,
    Raster,
    read_raster,
    refuse_existing,
    refuse_output_over_input,
    write_geotiff,
)
from demsr.model import check_known_keys

_log = logging.getLogger(__name__)

SPLITS: tuple[str, str, str] = ("train", "valid", "test")
SPLIT_BY: tuple[str, ...] = ("block", "file")
SplitBy = Literal["block", "file"]
# A folder's members taken as rasters: the readers' one list of the formats open_raster reads.
RASTER_SUFFIXES: tuple[str, ...] = INPUT_SUFFIXES

_WRITE_BATCH = 256  # patches gathered per HDF5 append; bounds memory for dense strides


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def degrade(highres: np.ndarray, scale: int) -> np.ndarray:
    """Block mean of ``highres`` (..., H, W) over ``scale`` x ``scale`` cells -> (..., H/s, W/s).

    This is how a coarse cell averages the fine cells it covers (a 15" cell and its 5 x 5 3"
    cells). H and W must be multiples of ``scale``. A block holding any NaN (nodata) gives NaN:
    a partial block is not a valid coarse cell. The mean is accumulated in float64; the result
    is float32 for float32 or integer input and float64 for float64 input.
    """
    values = np.asarray(highres)
    if not _is_int(scale) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    if values.ndim < 2:
        raise ValueError(f"expected an array (..., H, W), got shape {values.shape}")
    rows, cols = values.shape[-2:]
    if rows % scale or cols % scale:
        raise ValueError(
            f"high-res shape {rows}x{cols} is not a multiple of the scale {scale} "
            "(crop it to whole blocks first)"
        )
    out_dtype = np.result_type(values.dtype, np.float32)
    blocks = values.reshape(*values.shape[:-2], rows // scale, scale, cols // scale, scale)
    return blocks.mean(axis=(-3, -1), dtype=np.float64).astype(out_dtype, copy=False)


def crop_to_blocks(values: np.ndarray, scale: int, name: str | os.PathLike[str]) -> np.ndarray:
    """The top-left part of ``values`` (..., H, W) made of whole ``scale`` x ``scale`` blocks.

    Rows and columns beyond the last whole block (bottom and right) are left out (a view,
    nothing is copied). A raster smaller than one block is a ValueError naming ``name``.
    """
    rows, cols = values.shape[-2:]
    kept_rows, kept_cols = rows - rows % scale, cols - cols % scale
    if kept_rows == 0 or kept_cols == 0:
        raise ValueError(f"{name}: {rows}x{cols} cells is smaller than one {scale}x{scale} block")
    return values[..., :kept_rows, :kept_cols]


@dataclass(frozen=True)
class PrepareOptions:
    """How :func:`prepare_pairs` cuts rasters into pairs. Sizes are in cells (pixels).

    - ``scale``: high-res cells per low-res cell along each axis (5: 3" -> 15").
    - ``lowres_patch_px``: low-res patch side; the high-res patch is ``lowres_patch_px * scale``
      (32 -> 160, the published layout).
    - ``stride_px``: high-res cells between patch origins; None = the high-res patch side
      (patches touch but do not overlap).
    - ``min_relief_m``: patches whose high-res max - min is below this are dropped as flat.
    - ``min_sea_fraction`` / ``max_sea_fraction``: keep only patches whose fraction of high-res
      cells below 0 m lies in this closed range (0..1 keeps all). A minimum keeps seafloor for
      bathymetry fine-tuning (patches below it are dropped as "land"); a maximum keeps land for
      pretraining (patches above it are dropped as "sea"). Land below sea level counts as sea;
      SRTM's flat 0 m sea counts as land (``min_relief_m`` drops it).
    - ``max_patches_per_file``: keep at most this many patches per raster (a random subset drawn
      from ``seed``, stratified by split); None keeps all.
    - ``split_fractions``: (train, valid, test), non-negative, summing to 1.
    - ``split_by``: ``"block"`` deals split blocks of each raster; ``"file"`` deals whole files.
    - ``split_block_px``: side of a split block in high-res cells; None = 3 high-res patches.
    - ``seed``: seeds the split assignment and the subsets.
    - ``normalisation``: metres -> stored values (``value = (metres - offset_m) / scale_m``).
    - ``band``: raster band to read (1-based).
    """

    scale: int = 5
    lowres_patch_px: int = 32
    stride_px: int | None = None
    min_relief_m: float = 10.0
    min_sea_fraction: float = 0.0
    max_sea_fraction: float = 1.0
    max_patches_per_file: int | None = None
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_by: SplitBy = "block"
    split_block_px: int | None = None
    seed: int = 0
    normalisation: Normalisation = field(default_factory=Normalisation)
    band: int = 1

    def __post_init__(self) -> None:
        if not _is_int(self.scale) or self.scale < 2:
            raise ValueError(f"scale must be an integer >= 2, got {self.scale!r}")
        if not _is_int(self.lowres_patch_px) or self.lowres_patch_px < 1:
            raise ValueError(
                f"lowres_patch_px must be an integer >= 1, got {self.lowres_patch_px!r}"
            )
        if self.stride_px is not None and (not _is_int(self.stride_px) or self.stride_px < 1):
            raise ValueError(f"stride_px must be an integer >= 1 or None, got {self.stride_px!r}")
        relief = self.min_relief_m
        if not _is_real(relief):
            raise ValueError(f"min_relief_m must be a number, got {relief!r}")
        if not np.isfinite(relief) or relief < 0:
            raise ValueError(f"min_relief_m must be finite and >= 0, got {relief!r}")
        for name in ("min_sea_fraction", "max_sea_fraction"):
            value = getattr(self, name)
            if not _is_real(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a number in 0..1, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.min_sea_fraction > self.max_sea_fraction:
            raise ValueError(
                f"min_sea_fraction ({self.min_sea_fraction:g}) is above max_sea_fraction "
                f"({self.max_sea_fraction:g}): no patch could be kept"
            )
        cap = self.max_patches_per_file
        if cap is not None and (not _is_int(cap) or cap < 1):
            raise ValueError(f"max_patches_per_file must be an integer >= 1 or None, got {cap!r}")
        fractions = tuple(self.split_fractions)
        if len(fractions) != 3 or not all(_is_real(f) for f in fractions):
            raise ValueError(
                f"split_fractions must be three numbers (train, valid, test), got {fractions!r}"
            )
        if any(not np.isfinite(f) or f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
            raise ValueError(
                f"split_fractions must be >= 0 and sum to 1, got {fractions!r} "
                f"(sum {sum(fractions):g})"
            )
        object.__setattr__(self, "split_fractions", tuple(float(f) for f in fractions))
        if self.split_by not in SPLIT_BY:
            raise ValueError(f"split_by must be one of {SPLIT_BY}, got {self.split_by!r}")
        block = self.split_block_px
        if block is not None and (not _is_int(block) or block < self.highres_patch_px):
            raise ValueError(
                f"split_block_px must be an integer >= the high-res patch size "
                f"({self.highres_patch_px}), got {block!r}"
            )
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.normalisation, Normalisation):
            raise ValueError(
                f"normalisation must be a Normalisation, got {type(self.normalisation).__name__}"
            )
        if not _is_int(self.band) or self.band < 1:
            raise ValueError(f"band must be an integer >= 1, got {self.band!r}")

    @property
    def highres_patch_px(self) -> int:
        return self.lowres_patch_px * self.scale

    @property
    def filters_sea_fraction(self) -> bool:
        return self.min_sea_fraction > 0.0 or self.max_sea_fraction < 1.0

    @property
    def effective_stride_px(self) -> int:
        return self.highres_patch_px if self.stride_px is None else self.stride_px

    @property
    def effective_split_block_px(self) -> int:
        return 3 * self.highres_patch_px if self.split_block_px is None else self.split_block_px

    def resolved(self) -> PrepareOptions:
        """A copy with the defaults that depend on other fields (stride, block) written out."""
        return dataclasses.replace(
            self, stride_px=self.effective_stride_px, split_block_px=self.effective_split_block_px
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``normalisation`` as a nested dict); :meth:`from_dict` inverts it."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["split_fractions"] = list(self.split_fractions)
        values["normalisation"] = self.normalisation.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PrepareOptions:
        """Build options from a dict such as a YAML section; unknown keys are refused."""
        check_known_keys(cls, values, "prepare option")
        values = dict(values)
        if isinstance(values.get("normalisation"), dict):
            values["normalisation"] = Normalisation.from_dict(values["normalisation"])
        if "split_fractions" in values and not isinstance(values["split_fractions"], str):
            values["split_fractions"] = tuple(values["split_fractions"])
        return cls(**values)


# --- Where pairs come from ---------------------------------------------------------------------


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


# --- Geometry -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitBlock:
    """A block of a raster dealt to one split: (block_row, block_col) and its cell extent."""

    block_row: int
    block_col: int
    row_off: int
    col_off: int
    height: int
    width: int


def split_blocks(shape: tuple[int, int], block_px: int | None) -> list[SplitBlock]:
    """Cut a (rows, cols) raster into a row-major grid of ``block_px`` blocks.

    The last row/column of blocks holds the remainder and may be smaller. ``None`` gives one
    block covering the whole raster (``split_by="file"``).
    """
    rows, cols = shape
    if block_px is None:
        return [SplitBlock(0, 0, 0, 0, rows, cols)]
    return [
        SplitBlock(i, j, r, c, min(block_px, rows - r), min(block_px, cols - c))
        for i, r in enumerate(range(0, rows, block_px))
        for j, c in enumerate(range(0, cols, block_px))
    ]


def patch_origins(block: SplitBlock, patch_px: int, stride_px: int) -> np.ndarray:
    """(n, 2) int64 (row_off, col_off) of the patches fully inside ``block``, row-major.

    Patches start at the block's corner and step by ``stride_px``; a block smaller than one
    patch gives none. Number along an axis: ``max(0, (size - patch_px) // stride_px + 1)``.
    """
    rows = np.arange(block.row_off, block.row_off + block.height - patch_px + 1, stride_px)
    cols = np.arange(block.col_off, block.col_off + block.width - patch_px + 1, stride_px)
    grid = np.stack(np.meshgrid(rows, cols, indexing="ij"), axis=-1)
    return grid.reshape(-1, 2).astype(np.int64)


def _count_table(mask: np.ndarray) -> np.ndarray:
    """Summed-area table of True cells: (rows+1, cols+1) int64, zero first row and column."""
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    table[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1)
    return table


def _window_counts(table: np.ndarray, origins: np.ndarray, patch_px: int) -> np.ndarray:
    """Number of counted cells in each ``patch_px`` window at ``origins``, O(1) per window."""
    r, c = origins[:, 0], origins[:, 1]
    p = patch_px
    return table[r + p, c + p] - table[r, c + p] - table[r + p, c] + table[r, c]


def _block_relief(data: np.ndarray, block: SplitBlock, patch_px: int, stride_px: int) -> np.ndarray:
    """High-res max - min (float64) of each patch of :func:`patch_origins` (same order).

    Patches holding nodata give NaN. A strided view of the block: nothing is copied.
    """
    cells = data[
        block.row_off : block.row_off + block.height, block.col_off : block.col_off + block.width
    ]
    windows = np.lib.stride_tricks.sliding_window_view(cells, (patch_px, patch_px))
    windows = windows[::stride_px, ::stride_px]
    highest = windows.max(axis=(-2, -1)).astype(np.float64)
    lowest = windows.min(axis=(-2, -1)).astype(np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf in patches already dropped as nodata
        return (highest - lowest).reshape(-1)


# --- Reproducible dealing -----------------------------------------------------------------------


def _hash64(*parts: object) -> int:
    text = "\0".join(str(part) for part in parts).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def _apportion(
    total: int, weights: Sequence[float], rng: np.random.Generator, at_least_one: bool
) -> list[int]:
    """Split ``total`` items in proportion to ``weights``; fractional parts are rounded at random.

    Each share gets the floor of its exact value, and the leftover items go to shares drawn
    without replacement with probability proportional to their fractional parts, so the
    expected share is exact. With ``at_least_one``, every positive-weight share gets >= 1 item
    when ``total`` allows, taken from the largest share.
    """
    w = np.asarray(weights, dtype=np.float64)
    counts = np.zeros(len(w), dtype=np.int64)
    if total <= 0 or w.sum() <= 0:
        return counts.tolist()
    exact = total * w / w.sum()
    counts = np.floor(exact + 1e-9).astype(np.int64)
    leftover = int(total - counts.sum())
    if leftover > 0:
        remainder = np.clip(exact - counts, 0.0, None)
        # Weighted sampling without replacement (Efraimidis-Spirakis keys u ** (1 / weight)).
        draws = rng.random(len(w)) ** (1.0 / np.maximum(remainder, 1e-12))
        keys = np.where(remainder > 0, draws, np.where(w > 0, -1.0, -2.0))
        for index in np.argsort(-keys, kind="stable")[:leftover]:
            counts[index] += 1
    positive = np.flatnonzero(w > 0)
    if at_least_one and total >= len(positive):
        for index in positive:
            if counts[index] == 0:
                counts[int(np.argmax(counts))] -= 1
                counts[index] += 1
    return counts.tolist()


# --- Plan and report ----------------------------------------------------------------------------


@dataclass
class FileReport:
    """What prepare made of one raster. Counts are patches unless named blocks."""

    path: str
    shape: tuple[int, int]
    crs: str
    cell_size: tuple[float, float]  # (x, y) in CRS units
    nodata_fraction: float
    candidates: int = 0  # windows that fit inside a block
    dropped_nodata: int = 0
    dropped_flat: int = 0
    dropped_land: int = 0  # sea fraction below min_sea_fraction
    dropped_sea: int = 0  # sea fraction above max_sea_fraction
    dropped_limit: int = 0  # usable but beyond max_patches_per_file
    patches: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    blocks: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    empty_blocks: int = 0  # blocks without a usable patch (dealt to no split)

    @property
    def kept(self) -> int:
        return sum(self.patches.values())

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["kept"] = self.kept
        return values


@dataclass
class PrepareReport:
    """Counts of a prepare run, per file and in total; ``outputs`` maps split -> written file."""

    options: PrepareOptions
    files: list[FileReport]
    outputs: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def counts(self) -> dict[str, int]:
        """Patches per split."""
        return {split: sum(f.patches[split] for f in self.files) for split in SPLITS}

    @property
    def block_counts(self) -> dict[str, int]:
        return {split: sum(f.blocks[split] for f in self.files) for split in SPLITS}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def candidates(self) -> int:
        return sum(f.candidates for f in self.files)

    @property
    def dropped_nodata(self) -> int:
        return sum(f.dropped_nodata for f in self.files)

    @property
    def dropped_flat(self) -> int:
        return sum(f.dropped_flat for f in self.files)

    @property
    def dropped_land(self) -> int:
        return sum(f.dropped_land for f in self.files)

    @property
    def dropped_sea(self) -> int:
        return sum(f.dropped_sea for f in self.files)

    @property
    def dropped_limit(self) -> int:
        return sum(f.dropped_limit for f in self.files)

    def summary(self) -> str:
        """A plain-text table: one line per file, then the totals.

        The land/sea columns appear only when the options filter on the sea fraction.
        """
        sea = self.options.filters_sea_fraction

        def row(name: str, counts: FileReport | PrepareReport, kept: dict[str, int]) -> str:
            land_sea = f" {counts.dropped_land:>6} {counts.dropped_sea:>6}" if sea else ""
            return (
                f"{name[:36]:<36} {counts.candidates:>7} {counts.dropped_nodata:>7} "
                f"{counts.dropped_flat:>7}{land_sea} {counts.dropped_limit:>6} "
                f"{kept['train']:>7} {kept['valid']:>6} {kept['test']:>6}"
            )

        land_sea = f" {'land':>6} {'sea':>6}" if sea else ""
        lines = [
            f"{'file':<36} {'cand':>7} {'nodata':>7} {'flat':>7}{land_sea} {'limit':>6} "
            f"{'train':>7} {'valid':>6} {'test':>6}"
        ]
        lines += [row(Path(f.path).name, f, f.patches) for f in self.files]
        lines.append(row(f"total ({len(self.files)} files)", self, self.counts))
        blocks = self.block_counts
        lines.append(
            f"blocks dealt: train {blocks['train']}, valid {blocks['valid']}, "
            f"test {blocks['test']} (split_by={self.options.split_by})"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "options": self.options.to_dict(),
            "counts": self.counts,
            "blocks": self.block_counts,
            "candidates": self.candidates,
            "dropped_nodata": self.dropped_nodata,
            "dropped_flat": self.dropped_flat,
            "dropped_land": self.dropped_land,
            "dropped_sea": self.dropped_sea,
            "dropped_limit": self.dropped_limit,
            "seconds": self.seconds,
            "outputs": {split: str(path) for split, path in self.outputs.items()},
            "files": [f.to_dict() for f in self.files],
        }


@dataclass
class _Unit:
    """A block (or a whole file) with usable patches, waiting for its split."""

    key: int  # hash of (seed, file name[, block position]): the dealing order
    origins: np.ndarray  # (n, 2) row_off, col_off of its usable patches
    split: str = ""


@dataclass
class PreparePlan:
    """Which windows of which rasters go to which split (no pixels): the output of pass one.

    ``windows[i][split]`` is an (n, 2) int64 array of (row_off, col_off) high-res patch origins in
    ``paths[i]``; each patch is ``options.highres_patch_px`` square.
    """

    options: PrepareOptions
    paths: list[Path]
    windows: list[dict[str, np.ndarray]]
    report: PrepareReport


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
    _refuse_duplicates(found)
    return found


def _refuse_duplicates(paths: Iterable[Path]) -> None:
    """ValueError when one file is named twice (patches would be counted twice)."""
    seen: dict[Path, Path] = {}
    for path in paths:
        resolved = path.resolve()
        if resolved in seen:
            raise ValueError(f"{path}: named twice (also as {seen[resolved]})")
        seen[resolved] = path


def _scan_file(
    raster: Raster,
    valid: np.ndarray,
    options: PrepareOptions,
    report: FileReport,
) -> list[_Unit]:
    """Find the usable patches of one raster, grouped by split block (pass one).

    ``valid`` is ``raster.valid``. A unit's key hashes the seed, the file name and, when
    dealing blocks, the block's position.
    """
    patch_px = options.highres_patch_px
    stride_px = options.effective_stride_px
    block_px = options.effective_split_block_px if options.split_by == "block" else None
    name = Path(raster.path).name
    nodata_table = _count_table(~valid)
    sea_table = _count_table(raster.data < 0) if options.filters_sea_fraction else None
    units: list[_Unit] = []
    for block in split_blocks(raster.shape, block_px):
        origins = patch_origins(block, patch_px, stride_px)
        report.candidates += len(origins)
        if len(origins) == 0:
            continue
        has_nodata = _window_counts(nodata_table, origins, patch_px) > 0
        report.dropped_nodata += int(has_nodata.sum())
        flat = ~has_nodata & (
            _block_relief(raster.data, block, patch_px, stride_px) < options.min_relief_m
        )
        report.dropped_flat += int(flat.sum())
        keep = ~(has_nodata | flat)
        if sea_table is not None:
            sea_fraction = _window_counts(sea_table, origins, patch_px) / patch_px**2
            too_dry = keep & (sea_fraction < options.min_sea_fraction)
            too_wet = keep & (sea_fraction > options.max_sea_fraction)
            report.dropped_land += int(too_dry.sum())
            report.dropped_sea += int(too_wet.sum())
            keep &= ~(too_dry | too_wet)
        if not keep.any():
            report.empty_blocks += 1
            continue
        if block_px is None:  # the whole file is one unit
            key = _hash64(options.seed, name)
        else:
            key = _hash64(options.seed, name, block.block_row, block.block_col)
        units.append(_Unit(key=key, origins=origins[keep]))
    return units


def _deal(
    units: Sequence[_Unit],
    fractions: Sequence[float],
    rng: np.random.Generator,
    at_least_one: bool,
) -> None:
    """Deal ``units`` to splits: how many go to each from :func:`_apportion`, which ones by
    hash key (the lowest keys to train, then valid, then test)."""
    ordered = sorted(units, key=lambda u: u.key)
    counts = _apportion(len(ordered), fractions, rng, at_least_one=at_least_one)
    splits = [s for s, n in zip(SPLITS, counts, strict=True) for _ in range(n)]
    for unit, split in zip(ordered, splits, strict=True):
        unit.split = split


def _ensure_nonempty_splits(units: list[_Unit], fractions: Sequence[float]) -> None:
    """Move one unit into each empty split with a positive fraction, if there are enough units."""
    wanted = [s for s, f in zip(SPLITS, fractions, strict=True) if f > 0]
    if len(units) < len(wanted):
        return
    for split in wanted:
        members = {s: [u for u in units if u.split == s] for s in SPLITS}
        if members[split]:
            continue
        donor = max(SPLITS, key=lambda s: len(members[s]))
        unit = min(members[donor], key=lambda u: u.key)
        _log.info("split %r would be empty: moving one block from %r to it", split, donor)
        unit.split = split


def plan_pairs(
    rasters: Sequence[str | os.PathLike[str]],
    options: PrepareOptions | None = None,
    *,
    progress: bool = True,
    source: PairSource | None = None,
) -> PreparePlan:
    """Pass one of :func:`prepare_pairs`: find usable patches and deal them to splits.

    Reads each raster once (one at a time) and keeps only window positions. The returned plan's
    ``report`` has every count that the written files will have (``outputs`` empty).
    """
    options = options or PrepareOptions()
    source = source or BlockMeanSource()
    paths = [Path(p) for p in rasters]
    if not paths:
        raise ValueError("no rasters given")
    _refuse_duplicates(paths)
    reports: list[FileReport] = []
    units_by_file: list[list[_Unit]] = []
    skipped: list[str] = []  # files too small for a patch, warned about when others give pairs
    for path in tqdm(paths, desc="scanning", unit="file", disable=not progress):
        raster = source.highres(path, options.band)
        valid = raster.valid
        report = FileReport(
            path=str(path.resolve()),
            shape=raster.shape,
            crs=raster.crs.to_string() if raster.crs is not None else "",  # the patches' grid
            cell_size=(float(raster.transform.a), float(-raster.transform.e)),
            nodata_fraction=float(1.0 - valid.mean()) if raster.data.size else 0.0,
        )
        file_units = _scan_file(raster, valid, options, report)
        if report.candidates == 0:
            rows, cols = raster.shape
            skipped.append(
                f"{path} ({rows}x{cols}) is smaller than one {options.highres_patch_px} px patch "
                "(or split block): no pairs from it"
            )
        units_by_file.append(file_units)
        reports.append(report)
        del raster, valid

    fractions = options.split_fractions
    units = [unit for file_units in units_by_file for unit in file_units]
    if options.split_by == "block":
        for path, file_units in zip(paths, units_by_file, strict=True):
            rng = np.random.default_rng(_hash64(options.seed, path.name, "apportion"))
            _deal(file_units, fractions, rng, at_least_one=False)
        _ensure_nonempty_splits(units, fractions)
    else:
        rng = np.random.default_rng(_hash64(options.seed, "files"))
        _deal(units, fractions, rng, at_least_one=True)

    windows: list[dict[str, np.ndarray]] = []
    lines: list[str] = []  # what each file gave, logged when there is something to write
    for path, report, file_units in zip(paths, reports, units_by_file, strict=True):
        by_split: dict[str, np.ndarray] = {}
        for split in SPLITS:
            own = [u.origins for u in file_units if u.split == split]
            report.blocks[split] = len(own)
            by_split[split] = np.concatenate(own) if own else np.zeros((0, 2), dtype=np.int64)
        cap = options.max_patches_per_file
        usable = sum(len(w) for w in by_split.values())
        if cap is not None and usable > cap:
            rng = np.random.default_rng(_hash64(options.seed, path.name, "subset"))
            quotas = _apportion(cap, [len(by_split[s]) for s in SPLITS], rng, at_least_one=True)
            for split, quota in zip(SPLITS, quotas, strict=True):
                chosen = np.sort(rng.choice(len(by_split[split]), size=quota, replace=False))
                by_split[split] = by_split[split][chosen]
            report.dropped_limit = usable - cap
        for split in SPLITS:
            report.patches[split] = len(by_split[split])
        windows.append(by_split)
        lines.append(
            f"{path.name}: {report.candidates} candidate patches, {report.dropped_nodata} with "
            f"nodata, {report.dropped_flat} flat (< {options.min_relief_m:g} m), "
            f"{report.dropped_land} with too little sea, {report.dropped_sea} with too much sea, "
            f"{report.dropped_limit} over the limit; train/valid/test "
            + "/".join(str(report.patches[split]) for split in SPLITS)
        )

    report_all = PrepareReport(options=options, files=reports)
    if report_all.total > 0:  # else the caller's one-line error says it all
        for line in skipped:
            _log.warning(line)
        for line in lines:
            _log.info(line)
    for split, fraction, count in zip(SPLITS, fractions, report_all.counts.values(), strict=True):
        if count == 0 and report_all.total > 0:
            why = (
                "its fraction is 0"
                if fraction == 0
                else (
                    f"only {len(units)} usable {'file' if options.split_by == 'file' else 'block'}s"
                )
            )
            _log.warning("split %r is empty (%s)", split, why)
    return PreparePlan(options=options, paths=paths, windows=windows, report=report_all)


def output_paths(out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Where :func:`prepare_pairs` writes each split: ``out_dir/{split}/{split}.h5``."""
    root = Path(out_dir)
    return {split: root / split / f"{split}.h5" for split in SPLITS}


def _pairs_from(
    raster: Raster, origins: np.ndarray, options: PrepareOptions, source: PairSource
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised float32 lowres (n,1,h,w) and highres (n,1,H,W) for patch ``origins``."""
    patch_px = options.highres_patch_px
    highres_m = np.stack(
        [raster.data[r : r + patch_px, c : c + patch_px] for r, c in origins]
    ).astype(np.float64)[:, None]
    lowres_m = np.asarray(source.lowres_m(raster, highres_m, origins, options.scale), np.float64)
    norm = options.normalisation
    return (
        norm.normalise(lowres_m).astype(np.float32),
        norm.normalise(highres_m).astype(np.float32),
    )


def _first_of(items: Sequence[str | os.PathLike[str]]) -> str:
    """``a.tif``, or ``a.tif (and 2 more)``: files named in a one-line error."""
    more = f" (and {len(items) - 1} more)" if len(items) > 1 else ""
    return f"{os.fspath(items[0])}{more}"


def prepare_pairs(
    rasters: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    options: PrepareOptions | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    source: PairSource | None = None,
) -> PrepareReport:
    """Cut ``rasters`` into (low-res, high-res) training pairs and write the three split files.

    ``source`` says where the pairs come from (default :class:`BlockMeanSource`: each raster
    and its block mean; :class:`demsr.products.ProductSource`: a real coarse product).

    Writes ``out_dir/train/train.h5``, ``out_dir/valid/valid.h5`` and ``out_dir/test/test.h5``
    in the layout of :mod:`demsr.datasets` (values normalised with ``options.normalisation``;
    provenance in ``source_windows`` and the attributes). Patches with nodata, with relief
    below ``options.min_relief_m`` or with a sea fraction outside the options' range are dropped
    and counted. The files appear only when all three are complete; existing ones are refused
    (FileExistsError) unless ``overwrite``. An empty split is written as an empty file, with a
    warning; no usable patch at all is a ValueError.
    """
    start = time.perf_counter()
    options = options or PrepareOptions()
    outputs = output_paths(out_dir)
    refuse_output_over_input(outputs.values(), rasters)
    existing = [str(p) for p in outputs.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{_first_of(existing)}: already exists; use --overwrite (overwrite=True) to replace"
        )

    source = source or BlockMeanSource()
    plan = plan_pairs(rasters, options, progress=progress, source=source)
    report = plan.report
    if report.candidates == 0:
        raise ValueError(
            f"{_first_of(rasters)}: no patches: smaller than one {options.highres_patch_px} px "
            "patch (or split block); lower --patch-px"
        )
    if report.total == 0:
        raise ValueError(
            f"{_first_of(rasters)}: no usable patches: every candidate window has nodata, is flat "
            f"or is outside the sea-fraction range (candidates {report.candidates}, nodata "
            f"{report.dropped_nodata}, flat {report.dropped_flat}, land {report.dropped_land}, "
            f"sea {report.dropped_sea}); lower min_relief_m or the patch size, or widen the "
            "sea-fraction range\n" + report.summary()
        )
    metadata_common: dict[str, Any] = dict(
        scale=options.scale,
        normalisation=options.normalisation,
        seed=options.seed,
        source_files=tuple(f.path for f in report.files),
        source_crs=tuple(f.crs for f in report.files),
        prepare_options=options.resolved().to_dict(),
        provenance=source.provenance(),
    )
    patch_px = options.highres_patch_px
    with contextlib.ExitStack() as stack:
        writers = {
            split: stack.enter_context(
                PairWriter(
                    path,
                    options.lowres_patch_px,
                    PairMetadata(split=split, **metadata_common),
                    overwrite=overwrite,
                )
            )
            for split, path in outputs.items()
        }
        bar = stack.enter_context(
            tqdm(total=report.total, desc="writing", unit="patch", disable=not progress)
        )
        for file_index, (path, by_split) in enumerate(zip(plan.paths, plan.windows, strict=True)):
            if not any(len(w) for w in by_split.values()):
                continue
            bar.set_postfix_str(path.name)
            raster = source.highres(path, options.band)
            for split, origins in by_split.items():
                for begin in range(0, len(origins), _WRITE_BATCH):
                    batch = origins[begin : begin + _WRITE_BATCH]
                    lowres, highres = _pairs_from(raster, batch, options, source)
                    provenance = np.column_stack(
                        [
                            np.full(len(batch), file_index),
                            batch,
                            np.full((len(batch), 2), patch_px),
                        ]
                    ).astype(np.int64)
                    writers[split].append(lowres, highres, provenance)
                    bar.update(len(batch))
            del raster
    report.outputs = outputs
    report.seconds = time.perf_counter() - start
    _log.info(
        "wrote %s pairs (train/valid/test) to %s in %.1f s; dropped %d with nodata, %d flat, "
        "%d with too little sea, %d with too much sea, %d over the per-file limit",
        "/".join(str(n) for n in report.counts.values()),
        Path(out_dir),
        report.seconds,
        report.dropped_nodata,
        report.dropped_flat,
        report.dropped_land,
        report.dropped_sea,
        report.dropped_limit,
    )
    return report


def degrade_raster(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    scale: int,
    band: int = 1,
    overwrite: bool = False,
) -> Path:
    """Write the block mean of a raster over ``scale`` x ``scale`` cells as a GeoTIFF.

    This makes a coarse input from a fine DEM (e.g. 3" -> 15" with scale 5), exactly as the
    training pairs are made. Rows and columns beyond the last whole block (bottom and right)
    are cropped; the output keeps the input's origin and CRS, with ``scale`` times its cell size.
    A coarse cell is nodata if any of its fine cells is.
    """
    output = Path(output_path)
    refuse_existing(output, overwrite=overwrite, inputs=[input_path])
    raster = read_raster(input_path, band=band)
    lowres = degrade(crop_to_blocks(raster.data, scale, raster.path), scale)
    transform = raster.transform @ Affine.scale(scale)
    write_geotiff(output, lowres, transform, raster.crs, raster.nodata)
    _log.info(
        "wrote %s (%d x %d cells, x%d coarser)", output, lowres.shape[1], lowres.shape[0], scale
    )
    return output
