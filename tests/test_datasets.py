"""datasets: the HDF5 pair layout (ours and the published one), PairDataset, and windows drawn
from rasters (RasterWindowDataset)."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from affine import Affine
from torch.utils.data import DataLoader

from demsr.datasets import (
    IDENTITY,
    Normalisation,
    PairDataset,
    PairMetadata,
    PairWriter,
    RasterWindowDataset,
    block_mean_lowres,
    dihedral,
    inspect_pair_file,
    patch_key,
    read_pair_file,
    select_rasters,
    write_pairs,
)
from demsr.io import write_geotiff
from demsr.prepare import PrepareOptions, degrade, output_paths, prepare_pairs


def consistent_pairs(n: int, lowres_px: int = 4, scale: int = 5, seed: int = 0):
    """Random high-res patches (n,1,H,W) in 0..1 and their block means, float32."""
    rng = np.random.default_rng(seed)
    highres = rng.random((n, 1, lowres_px * scale, lowres_px * scale)).astype(np.float32)
    return degrade(highres, scale), highres


def write_published(path: Path, n: int = 3, dtype: str = "float32") -> tuple[np.ndarray, ...]:
    """A file as MindEarth publishes it: only the two datasets, no attributes."""
    rng = np.random.default_rng(1)
    lowres = rng.random((n, 1, 32, 32)).astype(dtype)
    highres = rng.random((n, 1, 160, 160)).astype(dtype)
    with h5py.File(path, "w") as handle:
        handle["32_32"] = lowres
        handle["160_160"] = highres
    return lowres, highres


def test_patch_key() -> None:
    assert patch_key(32) == "32_32"
    assert patch_key(160) == "160_160"
    assert patch_key(8, 12) == "8_12"


def test_written_pairs_round_trip(tmp_path: Path) -> None:
    lowres, highres = consistent_pairs(5)
    windows = np.arange(25, dtype=np.int64).reshape(5, 5)
    metadata = PairMetadata(
        scale=5,
        normalisation=Normalisation(offset_m=-500.0, scale_m=3000.0),
        split="valid",
        seed=7,
        source_files=("/data/a.tif", "/data/b.tif"),
        source_crs=("EPSG:4326", "EPSG:32611"),
        prepare_options={"scale": 5, "lowres_patch_px": 4},
    )
    path = write_pairs(tmp_path / "valid.h5", lowres, highres, metadata, windows)
    pf = read_pair_file(path)
    assert pf.layout.lowres_key == "4_4" and pf.layout.highres_key == "20_20"
    np.testing.assert_array_equal(pf.lowres, lowres)
    np.testing.assert_array_equal(pf.highres, highres)
    np.testing.assert_array_equal(pf.source_windows, windows)
    assert pf.metadata.has_attributes
    assert pf.units == "m"
    assert (pf.lowres_patch_px, pf.highres_patch_px) == (4, 20)
    for name in ("scale", "normalisation", "split", "seed", "source_files", "source_crs"):
        assert getattr(pf.metadata, name) == getattr(metadata, name), name
    assert pf.metadata.prepare_options == metadata.prepare_options
    assert pf.metadata.demsr_version == metadata.demsr_version != ""
    with pytest.raises(FileExistsError):
        write_pairs(path, lowres, highres, metadata)
    write_pairs(path, lowres[:2], highres[:2], metadata, overwrite=True)
    assert len(read_pair_file(path)) == 2


def test_published_file_reads_with_scale_5_and_identity(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lowres, highres = write_published(tmp_path / "train.h5", dtype="float64")
    with caplog.at_level(logging.WARNING, logger="demsr.datasets"):
        pf = read_pair_file(tmp_path / "train.h5")
    assert "normalised units" in caplog.text
    assert pf.scale == 5
    assert pf.normalisation == IDENTITY
    assert pf.units == "normalised"
    assert not pf.metadata.has_attributes
    assert pf.source_windows is None
    assert pf.lowres.dtype == np.float32 and pf.lowres.shape == (3, 1, 32, 32)
    assert pf.highres.shape == (3, 1, 160, 160)
    np.testing.assert_allclose(pf.highres, highres, rtol=1e-7)
    dataset = PairDataset(tmp_path / "train.h5")
    assert dataset.scale == 5 and dataset.normalisation == IDENTITY and len(dataset) == 3
    assert dataset.lowres_patch_px == 32 and dataset.units == "normalised"


def _only(key: str, shape: tuple[int, ...]):
    def build(handle: h5py.File) -> None:
        handle[key] = np.zeros(shape, dtype=np.float32)

    return build


def _pair(lowres_shape: tuple[int, ...], highres_shape: tuple[int, ...], **names: str):
    def build(handle: h5py.File) -> None:
        low_key = names.get("low", f"{lowres_shape[-2]}_{lowres_shape[-1]}")
        high_key = names.get("high", f"{highres_shape[-2]}_{highres_shape[-1]}")
        handle[low_key] = np.zeros(lowres_shape, dtype=np.float32)
        handle[high_key] = np.zeros(highres_shape, dtype=np.float32)

    return build


def _with(base, extra):
    def build(handle: h5py.File) -> None:
        base(handle)
        extra(handle)

    return build


def _attr(name: str, value: object):
    def build(handle: h5py.File) -> None:
        handle.attrs[name] = value

    return build


GOOD = _pair((2, 1, 32, 32), (2, 1, 160, 160))


@pytest.mark.parametrize(
    "build, message",
    [
        (_only("32_32", (2, 1, 32, 32)), "exactly two patch datasets"),
        (_pair((2, 1, 32, 32), (2, 1, 160, 160), low="lowres", high="highres"), "found none"),
        (_with(GOOD, _only("64_64", (2, 1, 64, 64))), "exactly two patch datasets"),
        (_pair((2, 1, 32, 32), (3, 1, 160, 160)), "holds 2 patches but '160_160' holds 3"),
        (_pair((2, 1, 32, 32), (2, 1, 100, 100)), "integer scale"),
        (
            _pair((2, 32, 32), (2, 160, 160), low="32_32", high="160_160"),
            r"expected \(N, 1, h, w\)",
        ),
        (_pair((2, 1, 32, 32), (2, 1, 160, 160), high="150_150"), "not"),
        (_with(GOOD, _attr("scale", 4)), "disagrees"),
        (_with(GOOD, _only("source_windows", (2, 4))), "source_windows"),
        (_with(GOOD, _attr("scale", 5)), None),  # valid: attributes without normalisation
    ],
)
def test_bad_pair_files_raise_naming_the_file(tmp_path: Path, build, message: str | None) -> None:
    path = tmp_path / "pairs.h5"
    with h5py.File(path, "w") as handle:
        build(handle)
    if message is None:
        layout = inspect_pair_file(path)
        assert layout.scale == 5 and layout.metadata.units == "normalised"
        return
    with pytest.raises(ValueError, match=message) as caught:
        read_pair_file(path)
    assert str(path) in str(caught.value)


def test_not_hdf5_or_missing_raises(tmp_path: Path) -> None:
    text = tmp_path / "train.h5"
    text.write_text("not hdf5")
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        read_pair_file(text)
    with pytest.raises(ValueError, match="no such pair file"):
        PairDataset(tmp_path / "missing.h5")


def test_writer_leaves_nothing_on_error_and_refuses_nan(tmp_path: Path) -> None:
    lowres, highres = consistent_pairs(2)
    path = tmp_path / "split" / "train.h5"
    with pytest.raises(RuntimeError, match="interrupted"):
        with PairWriter(path, 4, PairMetadata(scale=5)) as writer:
            writer.append(lowres, highres)
            raise RuntimeError("interrupted")
    assert not path.exists() and not list(path.parent.iterdir())
    highres[0, 0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        with PairWriter(path, 4, PairMetadata(scale=5)) as writer:
            writer.append(lowres, highres)
    with pytest.raises(ValueError, match="expected lowres"):
        with PairWriter(path, 4, PairMetadata(scale=5)) as writer:
            writer.append(lowres, highres[:, :, :10])
    assert not path.exists()


def test_writer_appends_in_pieces(tmp_path: Path) -> None:
    lowres, highres = consistent_pairs(30)
    path = tmp_path / "train.h5"
    with PairWriter(path, 4, PairMetadata(scale=5)) as writer:
        for begin in range(0, 30, 7):
            writer.append(lowres[begin : begin + 7], highres[begin : begin + 7])
    pf = read_pair_file(path)
    np.testing.assert_array_equal(pf.highres, highres)
    assert (pf.source_windows == -1).all()


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


def test_dihedral_gives_eight_distinct_variants() -> None:
    patch = torch.arange(9.0).reshape(1, 3, 3)
    variants = {tuple(dihedral(patch, k).flatten().tolist()) for k in range(8)}
    assert len(variants) == 8
    with pytest.raises(ValueError):
        dihedral(patch, 8)


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


# --------------------------------------------------------------------------------------------
# Windows drawn from rasters
# --------------------------------------------------------------------------------------------

# Low-res cells of a window (x5: 20 high-res cells).
WINDOW_PX = 4


def _coastal_raster(tmp_path: Path, name: str = "coast.tif") -> tuple[Path, np.ndarray]:
    """120 x 150 cells of relief (100..600 m) with the sea (exactly 0 m) in the left 40 columns,
    a void (nodata) at rows 60..69, columns 100..109, and single land cells at exactly 0 m."""
    rng = np.random.default_rng(5)
    rows, cols = np.mgrid[0:120, 0:150]
    values = (100 + 3 * rows + 2 * cols + rng.normal(0, 5, (120, 150))).astype(np.float32)
    values[:, :40] = 0.0
    values[60:70, 100:110] = np.nan
    values[10, 80] = values[100, 130] = 0.0
    transform = Affine(1 / 1200, 0, 10.0, 0, -1 / 1200, 46.0)
    path = write_geotiff(tmp_path / name, values, transform, "EPSG:4326", nodata=-32768)
    return path, values


def _windows(dataset: RasterWindowDataset, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [dataset[index] for index in range(count)]


def test_raster_windows_refuse_nodata_and_sea_and_are_block_means(tmp_path: Path) -> None:
    path, values = _coastal_raster(tmp_path)
    dataset = RasterWindowDataset([path], lowres_patch_px=WINDOW_PX, scale=5, length=300, seed=3)
    size = WINDOW_PX * 5
    positions = set()
    for index in range(len(dataset)):
        where, _ = dataset.draw(index)
        window = values[where.row : where.row + size, where.col : where.col + size]
        assert np.isfinite(window).all() and not (window == 0).any()
        positions.add((where.row, where.col))
        lowres, highres = dataset[index]
        assert lowres.shape == (1, WINDOW_PX, WINDOW_PX) and highres.shape == (1, size, size)
        np.testing.assert_array_equal(highres[0].numpy(), window)  # no augmentation asked
        np.testing.assert_array_equal(lowres.numpy(), degrade(highres.numpy(), 5))
    assert len(positions) > 250  # windows all over the valid area, not a few repeated
    # Up to half of a window at 0 m admits coastal windows, never void ones.
    coastal = RasterWindowDataset(
        [path], lowres_patch_px=WINDOW_PX, scale=5, length=200, max_sea_fraction=0.5
    )
    seen_sea = False
    for index in range(len(coastal)):
        where, _ = coastal.draw(index)
        window = values[where.row : where.row + size, where.col : where.col + size]
        assert np.isfinite(window).all() and (window == 0).mean() <= 0.5
        seen_sea |= bool((window == 0).any())
    assert seen_sea


def test_raster_windows_depend_on_seed_epoch_and_index_only(tmp_path: Path) -> None:
    path, _ = _coastal_raster(tmp_path)
    options = {"lowres_patch_px": WINDOW_PX, "scale": 5, "length": 40, "augment": True}
    first = RasterWindowDataset([path], seed=7, **options)
    second = RasterWindowDataset([path], seed=7, **options)
    first.set_epoch(3)
    second.set_epoch(3)
    # Read in another order (and after other reads), the items are the same.
    backwards = {index: second[index] for index in reversed(range(40))}
    for index, (lowres, highres) in enumerate(_windows(first, 40)):
        assert torch.equal(lowres, backwards[index][0])
        assert torch.equal(highres, backwards[index][1])
    # Two DataLoader workers deal out the same batches as the main process.
    in_workers = [b for b in DataLoader(first, batch_size=8, num_workers=2)]
    in_process = [b for b in DataLoader(second, batch_size=8, num_workers=0)]
    for (a_low, a_high), (b_low, b_high) in zip(in_workers, in_process, strict=True):
        assert torch.equal(a_low, b_low) and torch.equal(a_high, b_high)
    # Another epoch or seed draws other windows.
    second.set_epoch(4)
    other_seed = RasterWindowDataset([path], seed=8, **options)
    other_seed.set_epoch(3)
    assert not torch.equal(first[0][1], second[0][1])
    assert not torch.equal(first[0][1], other_seed[0][1])
    # Augmentation uses all eight flips/rotations, and pairs stay consistent.
    assert {first.draw(index)[0].variant for index in range(40)} == set(range(8))
    for lowres, highres in _windows(first, 10):
        np.testing.assert_allclose(lowres.numpy(), degrade(highres.numpy(), 5), atol=1e-4)


def test_raster_windows_mix_two_lowres_makers_with_their_rng(tmp_path: Path) -> None:
    path, _ = _coastal_raster(tmp_path)

    def noisy(highres_m: np.ndarray, scale: int, rng: np.random.Generator) -> np.ndarray:
        mean = block_mean_lowres(highres_m, scale, rng)
        return mean + 1000.0 + rng.normal(0, 1, mean.shape).astype(np.float32)

    options = {"lowres_patch_px": WINDOW_PX, "scale": 5, "length": 400, "seed": 1}
    mixed = RasterWindowDataset(
        [path], alternative_lowres=noisy, alternative_probability=0.3, **options
    )
    again = RasterWindowDataset(
        [path], alternative_lowres=noisy, alternative_probability=0.3, **options
    )
    used = []
    for index in range(len(mixed)):
        lowres, highres = mixed[index]
        offset = float((lowres.numpy() - degrade(highres.numpy(), 5)).mean())
        alternative = mixed.draw(index)[0].alternative
        assert (offset > 900) == alternative
        used.append(alternative)
        assert torch.equal(
            lowres, again[index][0]
        )  # the maker's noise is drawn from the item's rng
    assert 0.22 < np.mean(used) < 0.38
    never = RasterWindowDataset([path], alternative_lowres=noisy, **options)
    assert not any(never.draw(index)[0].alternative for index in range(100))
    with pytest.raises(ValueError, match="needs an alternative_lowres"):
        RasterWindowDataset([path], alternative_probability=0.5, **options)


def test_rasters_without_a_valid_window_are_left_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    land, _ = _coastal_raster(tmp_path)
    transform = Affine(1 / 1200, 0, 0.0, 0, -1 / 1200, 0.0)
    sea = write_geotiff(tmp_path / "sea.tif", np.zeros((50, 50)), transform, "EPSG:4326")
    small = write_geotiff(tmp_path / "small.tif", np.ones((10, 50)), transform, "EPSG:4326")
    with caplog.at_level(logging.WARNING):
        dataset = RasterWindowDataset(
            [sea, land, small], lowres_patch_px=WINDOW_PX, scale=5, length=10
        )
    assert dataset.paths == [land]
    assert "sea.tif: no 20-cell window without nodata or sea" in caplog.text
    assert "small.tif: smaller than one 20-cell window" in caplog.text
    with pytest.raises(ValueError, match="no raster of 2 holds a valid 20 x 20 window"):
        RasterWindowDataset([sea, small], lowres_patch_px=WINDOW_PX, scale=5, length=10)


def test_select_rasters_keeps_heldout_and_validation_rasters_apart(tmp_path: Path) -> None:
    for name in ("a", "b", "c", "d"):
        _coastal_raster(tmp_path, f"tile_{name}.tif")
    selection = select_rasters(
        [str(tmp_path / "tile_*.tif")], ["tile_b"], [str(tmp_path / "tile_d.tif")]
    )
    assert [p.name for p in selection.train] == ["tile_a.tif", "tile_c.tif"]
    assert [p.name for p in selection.heldout] == ["tile_b.tif"]
    assert [p.name for p in selection.valid] == ["tile_d.tif"]
    folder = select_rasters([str(tmp_path)], ["tile_b.tif"], ["tile_c"])
    assert [p.name for p in folder.train] == ["tile_a.tif", "tile_d.tif"]
    with pytest.raises(ValueError, match="held-out raster 'tile_x' matches 0 of the 4 rasters"):
        select_rasters([str(tmp_path)], ["tile_x"], ["tile_a"])
    with pytest.raises(ValueError, match="both held out and used for validation: tile_a.tif"):
        select_rasters([str(tmp_path)], ["tile_a"], ["tile_a"])
    with pytest.raises(ValueError, match="no raster is left to train on"):
        select_rasters([str(tmp_path)], ["tile_a", "tile_b"], ["tile_c", "tile_d"])
    with pytest.raises(ValueError, match="matches no file"):
        select_rasters([str(tmp_path / "none_*.tif")])
