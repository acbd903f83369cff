"""Pairs from a pair file as normalised tensors: :class:`PairDataset`, with flips/rotations and
an optional degradation drawn from (seed, epoch, index)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from demsr.datasets.augment import dihedral
from demsr.datasets.pair_file import LayoutFacts, inspect_pair_file, read_pair_file

if TYPE_CHECKING:  # demsr.degradation imports demsr.prepare, which imports this module
    from demsr.degradation import DegradationModel


class PairDataset(LayoutFacts, Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """(low-res, high-res) float32 tensors (1,h,w) and (1,H,W), normalised, from a pair file.

    The file may be ours or a published one (see :func:`read_pair_file`). By default the whole
    file is loaded into memory (a split of the published size is a few GiB at most); with
    ``in_memory=False`` patches are read on demand (the file is opened lazily in each
    DataLoader worker). ``augment=True`` applies the same flip/rot90 (one of the 8 dihedral
    variants, :meth:`variant`) to both members of a pair; the variant is a function of
    ``seed``, the epoch (:meth:`set_epoch`) and the pair's index only, so it does not depend on
    the order pairs are read in, on which DataLoader worker or torchrun rank reads them, or on
    any global random state. With ``degradation`` (a
    :class:`demsr.degradation.DegradationModel`) the stored low-res patch is replaced by one
    the model makes from the high-res patch (:meth:`degraded`), drawn the same way.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        augment: bool = False,
        in_memory: bool = True,
        seed: int = 0,
        degradation: DegradationModel | None = None,
    ) -> None:
        self.augment = augment
        self.degradation = degradation
        self.seed = seed
        self.epoch = 0
        # The variants of every pair for one (seed, epoch), drawn when first needed.
        self._variants: tuple[tuple[int, int], np.ndarray] | None = None
        self._lowres: np.ndarray | None = None
        self._highres: np.ndarray | None = None
        self._handle: h5py.File | None = None
        if in_memory:
            pairs = read_pair_file(path)
            self.layout = pairs.layout
            self._lowres, self._highres = pairs.lowres, pairs.highres
        else:
            self.layout = inspect_pair_file(path)
        if degradation is not None and not self.metadata.normalisation_known:
            raise ValueError(
                f"{self.path}: records no normalisation (a published file?): a degradation "
                "works in metres and cannot be applied to it"
            )

    @property
    def source_files(self) -> list[str]:
        """Paths of the rasters the patches come from (empty for published files)."""
        return list(self.metadata.source_files)

    def set_epoch(self, epoch: int) -> None:
        """Draw the augmentation of epoch ``epoch`` from now on (set it before making the
        epoch's DataLoader: its workers get a copy of the dataset)."""
        self.epoch = epoch

    def variant(self, index: int) -> int:
        """The dihedral variant (0..7, see :func:`dihedral`) that augmentation applies to pair
        ``index`` in the current epoch: element ``index`` of
        ``numpy.random.default_rng([seed, epoch]).integers(8, size=len(self))``, drawn once
        per epoch (a byte per pair)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} pairs")
        key = (self.seed, self.epoch)
        if self._variants is None or self._variants[0] != key:
            # SeedSequence takes non-negative integers; a negative seed maps to its own value.
            rng = np.random.default_rng([self.seed % 2**64, self.epoch % 2**64])
            self._variants = key, rng.integers(8, size=len(self), dtype=np.uint8)
        return int(self._variants[1][index])

    def degraded(self, index: int, highres: np.ndarray) -> np.ndarray:
        """The low-res patch that ``degradation`` makes from pair ``index``'s (1,H,W) normalised
        high-res patch, normalised: drawn from (seed, epoch, index), so the same in every worker
        and rank, and new each epoch."""
        assert self.degradation is not None
        norm = self.normalisation
        rng = np.random.default_rng([self.seed % 2**64, self.epoch % 2**64, index, 0x5EED])
        highres_m = norm.denormalise(highres.astype(np.float64))
        lowres_m = self.degradation.apply(highres_m, self.scale, rng)
        return np.asarray(norm.normalise(lowres_m), dtype=np.float32)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None  # h5py handles do not pickle; workers reopen the file
        return state

    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """The pair at ``index`` as float32 arrays, and whether they are views of the loaded
        file (True) rather than fresh arrays read from disk."""
        if self._lowres is not None and self._highres is not None:
            return self._lowres[index], self._highres[index], True
        if self._handle is None:
            self._handle = h5py.File(self.path, "r")
        lowres = self._handle[self.layout.lowres_key][index]
        highres = self._handle[self.layout.highres_key][index]
        return (
            np.asarray(lowres, dtype=np.float32),
            np.asarray(highres, dtype=np.float32),
            False,
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} pairs")
        index %= len(self)
        lowres_np, highres_np, shared = self._read(index)
        if self.degradation is not None:
            lowres_np, shared = self.degraded(index, highres_np), False
        lowres, highres = torch.from_numpy(lowres_np), torch.from_numpy(highres_np)
        if self.augment:
            # dihedral returns new tensors, so the loaded patches are never handed out
            variant = self.variant(index)
            lowres = dihedral(lowres, variant).contiguous()
            highres = dihedral(highres, variant).contiguous()
        elif shared:
            # a caller changing a pair in place must not change the loaded file
            lowres, highres = lowres.clone(), highres.clone()
        return lowres, highres
