"""Training windows drawn at random from rasters at every step: the rasters of a run
(:func:`select_rasters`: training, validation and held-out) and :class:`RasterWindowDataset`,
whose item ``index`` of an epoch depends on (seed, epoch, index) alone."""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from demsr.datasets.augment import dihedral
from demsr.datasets.pair_file import IDENTITY

_log = logging.getLogger("demsr.datasets")  # the package's one logger, as before the split


# Makes the low-res input of a training window: (highres_m (H, W) float32 metres, scale, rng)
# -> lowres_m (H/scale, W/scale). The rng is the window's own (see RasterWindowDataset).
LowresMaker = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


def block_mean_lowres(highres_m: np.ndarray, scale: int, rng: np.random.Generator) -> np.ndarray:
    """The exact block mean of ``highres_m`` over ``scale`` x ``scale`` cells (``rng`` unused):
    the default :data:`LowresMaker`."""
    from demsr.prepare import degrade  # prepare imports this module

    return degrade(highres_m, scale)


def _raster_name(path: Path) -> str:
    return path.name.split(".", 1)[0]


@dataclass(frozen=True)
class RasterSelection:
    """The rasters of a run drawn from windows: ``train``, ``valid`` and ``heldout`` paths
    (disjoint; held-out rasters are never read)."""

    train: list[Path]
    valid: list[Path]
    heldout: list[Path]


def select_rasters(
    patterns: Sequence[str], heldout: Sequence[str] = (), valid: Sequence[str] = ()
) -> RasterSelection:
    """Split the rasters named by ``patterns`` (files, folders, glob patterns) into training,
    validation and held-out sets.

    ``heldout`` and ``valid`` name rasters by file name without suffix (``srtm3_N56W006``) or
    by path; each must match exactly one of the rasters found (a typo must not let a held-out
    raster into training), and no raster may be in both. ValueError otherwise, or when no
    raster is left to train on.
    """
    from demsr.prepare import collect_rasters  # prepare imports this module

    expanded: list[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise ValueError(f"{pattern}: matches no file")
            expanded.extend(matches)
        else:
            expanded.append(pattern)
    found = collect_rasters(expanded)

    def pick(names: Sequence[str], what: str) -> list[Path]:
        chosen = []
        for name in names:
            matches = [
                path
                for path in found
                if name in (_raster_name(path), path.name) or Path(name).resolve() == path.resolve()
            ]
            if len(matches) != 1:
                raise ValueError(
                    f"{what} raster {name!r} matches {len(matches)} of the {len(found)} rasters "
                    "of data.rasters (name one file, by its name without suffix or its path)"
                )
            chosen.append(matches[0])
        return chosen

    kept_out = pick(heldout, "held-out")
    validation = pick(valid, "validation")
    both = sorted({p.name for p in kept_out} & {p.name for p in validation})
    if both:
        raise ValueError(f"rasters both held out and used for validation: {', '.join(both)}")
    excluded = {p.resolve() for p in (*kept_out, *validation)}
    train = [path for path in found if path.resolve() not in excluded]
    if not train:
        raise ValueError("no raster is left to train on once held-out and validation rasters")
    return RasterSelection(train=train, valid=validation, heldout=kept_out)


def _window_sums(mask: np.ndarray, size: int) -> np.ndarray:
    """Counts of True cells in every ``size`` x ``size`` window of ``mask``, by top-left cell:
    (rows - size + 1, cols - size + 1) int64, from a summed-area table."""
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    table[1:, 1:] = mask.cumsum(0).cumsum(1)
    return table[size:, size:] - table[:-size, size:] - table[size:, :-size] + table[:-size, :-size]


@dataclass(frozen=True)
class WindowDraw:
    """Where a training window came from: raster index, top-left row and column (high-res
    cells), the dihedral variant applied (0 = none) and whether the alternative low-res maker
    made its input."""

    raster: int
    row: int
    col: int
    variant: int
    alternative: bool


class RasterWindowDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """(low-res, high-res) float32 tensors (1,h,w) and (1,h*scale,w*scale) in metres, drawn at
    random from rasters held in memory.

    Item ``index`` of epoch ``epoch`` (:meth:`set_epoch`) is drawn from
    ``numpy.random.default_rng([seed, epoch, index])`` alone, so it does not depend on the
    order items are read in, on the DataLoader worker or torchrun rank that reads it, or on any
    global random state: a run resumed at any step sees the same windows as an uninterrupted
    one. The draw: a raster, with probability proportional to the number of valid windows it
    holds; a valid window in it, uniformly (rejection sampling on a precomputed map); with
    ``augment``, one of the 8 flips/rotations (:func:`dihedral`); then the low-res input,
    ``make_lowres(highres_m, scale, rng)``, or with probability ``alternative_probability``
    ``alternative_lowres(...)`` (e.g. a degradation fitted on real products).

    A window is valid when it holds no nodata and at most ``max_sea_fraction`` of its cells at
    exactly ``sea_level_m`` (SRTM writes the sea as a flat 0 m). Rasters without any valid
    window are left out with a warning; ValueError when none is left. Rasters are read whole
    at construction (float32, about 5.8 MB per 1201 x 1201 tile), so drawing costs a copy and
    a block mean.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        lowres_patch_px: int,
        scale: int,
        length: int,
        seed: int = 0,
        augment: bool = False,
        make_lowres: LowresMaker = block_mean_lowres,
        alternative_lowres: LowresMaker | None = None,
        alternative_probability: float = 0.0,
        max_sea_fraction: float = 0.0,
        sea_level_m: float = 0.0,
    ) -> None:
        from demsr.io import read_raster

        if lowres_patch_px < 1 or scale < 2 or length < 1:
            raise ValueError(
                f"need lowres_patch_px >= 1, scale >= 2 and length >= 1, got {lowres_patch_px}, "
                f"{scale}, {length}"
            )
        if not 0.0 <= alternative_probability <= 1.0:
            raise ValueError(
                f"alternative_probability must be in [0, 1], got {alternative_probability}"
            )
        if alternative_probability > 0 and alternative_lowres is None:
            raise ValueError("alternative_probability > 0 needs an alternative_lowres maker")
        self.scale = scale
        self.lowres_patch_px = lowres_patch_px
        self.highres_patch_px = lowres_patch_px * scale
        self.length = length
        self.seed = seed
        self.epoch = 0
        self.augment = augment
        self.make_lowres = make_lowres
        self.alternative_lowres = alternative_lowres
        self.alternative_probability = alternative_probability
        self.normalisation = IDENTITY  # items are in metres
        self.units = "m"
        size = self.highres_patch_px
        self.paths: list[Path] = []
        self._data: list[np.ndarray] = []
        self._valid: list[np.ndarray] = []
        counts: list[int] = []
        for item in paths:
            path = Path(item)
            data = read_raster(path).data
            if min(data.shape) < size:
                _log.warning("%s: smaller than one %d-cell window; left out", path, size)
                continue
            nodata = _window_sums(~np.isfinite(data), size)
            sea = _window_sums(data == sea_level_m, size)
            valid = (nodata == 0) & (sea <= max_sea_fraction * size * size)
            count = int(valid.sum())
            if count == 0:
                _log.warning("%s: no %d-cell window without nodata or sea; left out", path, size)
                continue
            self.paths.append(path)
            self._data.append(data)
            self._valid.append(valid)
            counts.append(count)
        if not self.paths:
            raise ValueError(
                f"no raster of {len(paths)} holds a valid {size} x {size} window (nodata and "
                "sea are refused)"
            )
        self.valid_windows = np.asarray(counts, dtype=np.int64)
        self._weights = self.valid_windows / self.valid_windows.sum()

    @property
    def path(self) -> Path:
        """The first raster (for messages)."""
        return self.paths[0]

    @property
    def source_files(self) -> list[str]:
        return [str(path) for path in self.paths]

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Draw the windows of epoch ``epoch`` from now on (set it before making the epoch's
        DataLoader: its workers get a copy of the dataset)."""
        self.epoch = epoch

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed % 2**64, self.epoch % 2**64, index])

    def draw(self, index: int) -> tuple[WindowDraw, np.random.Generator]:
        """Where item ``index`` of the current epoch comes from, and its generator in the
        state the low-res maker receives it."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} windows")
        rng = self._rng(index)
        raster = int(rng.choice(len(self.paths), p=self._weights))
        valid = self._valid[raster]
        rows, cols = valid.shape
        while True:  # the raster holds a valid window: this ends
            candidate_rows = rng.integers(rows, size=64)
            candidate_cols = rng.integers(cols, size=64)
            hits = np.flatnonzero(valid[candidate_rows, candidate_cols])
            if hits.size:
                row, col = int(candidate_rows[hits[0]]), int(candidate_cols[hits[0]])
                break
        variant = int(rng.integers(8)) if self.augment else 0
        alternative = bool(rng.random() < self.alternative_probability)
        return WindowDraw(raster, row, col, variant, alternative), rng

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        where, rng = self.draw(index)
        size = self.highres_patch_px
        rows, cols = slice(where.row, where.row + size), slice(where.col, where.col + size)
        window = torch.from_numpy(self._data[where.raster][rows, cols])
        # A copy: the raster held in memory is never handed out.
        highres = np.array(dihedral(window, where.variant).numpy(), dtype=np.float32, copy=True)
        maker = self.alternative_lowres if where.alternative else self.make_lowres
        assert maker is not None
        lowres = np.asarray(maker(highres, self.scale, rng), dtype=np.float32)
        expected = (self.lowres_patch_px, self.lowres_patch_px)
        if lowres.shape != expected:
            raise ValueError(f"the low-res maker returned shape {lowres.shape}, not {expected}")
        return torch.from_numpy(np.ascontiguousarray(lowres))[None], torch.from_numpy(highres)[None]
