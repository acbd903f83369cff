"""datasets.raster_windows: windows drawn from rasters (RasterWindowDataset) and the rasters of
a run (select_rasters)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from affine import Affine
from torch.utils.data import DataLoader

from demsr.datasets import (
    RasterWindowDataset,
    block_mean_lowres,
    select_rasters,
)
from demsr.io import write_geotiff
from demsr.prepare import degrade

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
