"""datasets.pair_dataset: PairDataset, normalised tensors from a pair file, augmented from
(seed, epoch, index) alone."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from pair_helpers import consistent_pairs
from torch.utils.data import DataLoader

from demsr.datasets import (
    PairDataset,
    PairMetadata,
    dihedral,
    write_pairs,
)
from demsr.prepare import PrepareOptions, degrade, output_paths, prepare_pairs


def test_pair_dataset_yields_normalised_tensors(dem_test_dir: Path, tmp_path: Path) -> None:
    options = PrepareOptions(lowres_patch_px=8, split_block_px=80, min_relief_m=0.0)
    prepare_pairs(
        [dem_test_dir / "landlab_srtmgl3_frontrange.tif"], tmp_path, options, progress=False
    )
    path = output_paths(tmp_path)["train"]
    dataset = PairDataset(path)
    lazy = PairDataset(path, in_memory=False)
    assert len(dataset) == len(lazy) > 0
    assert dataset.scale == 5 and dataset.normalisation == options.normalisation
    assert dataset.source_files == [
        str((dem_test_dir / "landlab_srtmgl3_frontrange.tif").resolve())
    ]
    lowres, highres = dataset[0]
    assert lowres.shape == (1, 8, 8) and highres.shape == (1, 40, 40)
    assert lowres.dtype == highres.dtype == torch.float32
    # Colorado Front Range, 1943..3286 m, in the default units.
    metres = dataset.normalisation.denormalise(highres)
    assert 1900 < float(metres.min()) and float(metres.max()) < 3300
    for index in (0, len(dataset) - 1, -1):
        for first, second in zip(dataset[index], lazy[index], strict=True):
            torch.testing.assert_close(first, second)
    lazy[1]  # opens the file
    clone = pickle.loads(pickle.dumps(lazy))  # what DataLoader workers receive
    torch.testing.assert_close(clone[1][1], dataset[1][1])
    batch_lowres, batch_highres = next(iter(DataLoader(dataset, batch_size=4)))
    assert batch_lowres.shape == (min(4, len(dataset)), 1, 8, 8)
    assert batch_highres.shape == (min(4, len(dataset)), 1, 40, 40)
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_augmentation_keeps_pairs_consistent(tmp_path: Path) -> None:
    lowres, highres = consistent_pairs(4, lowres_px=3)
    write_pairs(tmp_path / "pairs.h5", lowres, highres, PairMetadata(scale=5))
    dataset = PairDataset(tmp_path / "pairs.h5", augment=True, seed=0)
    seen = set()
    for epoch in range(100):
        dataset.set_epoch(epoch)
        aug_lowres, aug_highres = dataset[1]
        np.testing.assert_allclose(degrade(aug_highres.numpy(), 5), aug_lowres.numpy(), atol=1e-6)
        seen.add(aug_highres.numpy().tobytes())
        assert aug_highres.is_contiguous()
    assert len(seen) == 8  # every dihedral variant drawn, over the epochs
    plain_lowres, plain_highres = PairDataset(tmp_path / "pairs.h5")[1]
    np.testing.assert_array_equal(plain_highres.numpy(), highres[1])
    np.testing.assert_array_equal(plain_lowres.numpy(), lowres[1])


def test_augmentation_depends_on_seed_epoch_and_index_only(tmp_path: Path) -> None:
    # What DataLoader workers and torchrun ranks rely on: a pair's flip/rotation does not depend
    # on the order pairs are read in, on the process reading it or on any random state.
    lowres, highres = consistent_pairs(6, lowres_px=3)
    write_pairs(tmp_path / "pairs.h5", lowres, highres, PairMetadata(scale=5))
    dataset = PairDataset(tmp_path / "pairs.h5", augment=True, seed=7)
    dataset.set_epoch(3)
    forwards = [dataset[index][1] for index in range(6)]
    torch.manual_seed(123)  # the global random state plays no part
    backwards = [dataset[index][1] for index in reversed(range(6))][::-1]
    copy = pickle.loads(pickle.dumps(dataset))  # a DataLoader worker's copy
    for index in range(6):
        torch.testing.assert_close(forwards[index], backwards[index])
        torch.testing.assert_close(copy[index][1], forwards[index])
        expected = dihedral(torch.from_numpy(highres[index]), dataset.variant(index))
        torch.testing.assert_close(forwards[index], expected)
    variants = [dataset.variant(index) for index in range(6)]
    other_seed = PairDataset(tmp_path / "pairs.h5", augment=True, seed=8)
    other_seed.set_epoch(3)
    assert [other_seed.variant(index) for index in range(6)] != variants
    dataset.set_epoch(4)
    assert [dataset.variant(index) for index in range(6)] != variants
