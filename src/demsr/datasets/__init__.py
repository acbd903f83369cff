"""Training pairs: on disk (the published HDF5 layout) and as normalised tensors, or drawn as
random windows from rasters at every step (:class:`RasterWindowDataset`).

The package, by job: :mod:`~demsr.datasets.pair_file` (the HDF5 pair layout, the
:class:`Normalisation` stored with the pairs, :func:`read_pair_file`),
:mod:`~demsr.datasets.pair_writer` (:class:`PairWriter`, :func:`write_pairs`),
:mod:`~demsr.datasets.pair_dataset` (:class:`PairDataset`: a pair file as tensors, augmented),
:mod:`~demsr.datasets.raster_windows` (:func:`select_rasters`, :class:`RasterWindowDataset`),
:mod:`~demsr.datasets.augment` (the 8 flips/rotations, :func:`dihedral`) and
:mod:`~demsr.datasets.sampling` (each epoch's shuffled order, shared between torchrun ranks:
:class:`ShuffledShardSampler`). Every name is imported from here, ``demsr.datasets``.
"""

from __future__ import annotations

from demsr.datasets.augment import dihedral, undo_dihedral
from demsr.datasets.pair_dataset import PairDataset
from demsr.datasets.pair_file import (
    IDENTITY,
    SOURCE_WINDOWS_KEY,
    Normalisation,
    PairFile,
    PairLayout,
    PairMetadata,
    inspect_pair_file,
    patch_key,
    read_pair_file,
)
from demsr.datasets.pair_writer import PairWriter, write_pairs
from demsr.datasets.raster_windows import (
    LowresMaker,
    RasterSelection,
    RasterWindowDataset,
    WindowDraw,
    block_mean_lowres,
    select_rasters,
)
from demsr.datasets.sampling import ShuffledShardSampler, epoch_generator

__all__ = [
    "IDENTITY",
    "SOURCE_WINDOWS_KEY",
    "LowresMaker",
    "Normalisation",
    "PairDataset",
    "PairFile",
    "PairLayout",
    "PairMetadata",
    "PairWriter",
    "RasterSelection",
    "RasterWindowDataset",
    "ShuffledShardSampler",
    "WindowDraw",
    "block_mean_lowres",
    "dihedral",
    "epoch_generator",
    "inspect_pair_file",
    "patch_key",
    "read_pair_file",
    "select_rasters",
    "undo_dihedral",
    "write_pairs",
]
