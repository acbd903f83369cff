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

The package, by job: :mod:`~demsr.prepare.options` (:class:`PrepareOptions`, the split names),
:mod:`~demsr.prepare.block_mean` (:func:`degrade`, :func:`crop_to_blocks`,
:func:`degrade_raster`), :mod:`~demsr.prepare.sources` (the rasters of folders,
:func:`collect_rasters`; where the pairs come from, :class:`PairSource`),
:mod:`~demsr.prepare.plan` (pass one, :func:`plan_pairs`), :mod:`~demsr.prepare.report`
(:class:`PrepareReport`) and :mod:`~demsr.prepare.write` (pass two, :func:`prepare_pairs`).
Every name is imported from here, ``demsr.prepare``.
"""

from __future__ import annotations

from demsr.prepare.block_mean import crop_to_blocks, degrade, degrade_raster
from demsr.prepare.options import SPLIT_BY, SPLITS, PrepareOptions, SplitBy
from demsr.prepare.plan import PreparePlan, SplitBlock, patch_origins, plan_pairs, split_blocks
from demsr.prepare.report import FileReport, PrepareReport
from demsr.prepare.sources import RASTER_SUFFIXES, BlockMeanSource, PairSource, collect_rasters
from demsr.prepare.write import output_paths, prepare_pairs

__all__ = [
    "RASTER_SUFFIXES",
    "SPLITS",
    "SPLIT_BY",
    "BlockMeanSource",
    "FileReport",
    "PairSource",
    "PrepareOptions",
    "PreparePlan",
    "PrepareReport",
    "SplitBlock",
    "SplitBy",
    "collect_rasters",
    "crop_to_blocks",
    "degrade",
    "degrade_raster",
    "output_paths",
    "patch_origins",
    "plan_pairs",
    "prepare_pairs",
    "split_blocks",
]
