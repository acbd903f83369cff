"""Pass one of prepare (:func:`plan_pairs`): each raster cut into split blocks, its usable
patches found (nodata, relief, sea fraction), and blocks (or files) dealt to train/valid/test by
hashes of the seed, file name and position; the result is a :class:`PreparePlan` of window
positions, no pixels."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from demsr.io import Raster
from demsr.prepare.options import SPLITS, PrepareOptions
from demsr.prepare.report import FileReport, PrepareReport
from demsr.prepare.sources import BlockMeanSource, PairSource, refuse_duplicates

_log = logging.getLogger("demsr.prepare")  # the package's one logger, as before the split


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
    refuse_duplicates(paths)
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
