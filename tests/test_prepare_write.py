"""prepare.write: prepare_pairs writes the published layout from real rasters, pairs that are
block means of their recorded windows, and nothing when it fails."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
from affine import Affine
from pair_helpers import hilly, read_all, write_dem
from rasterio.windows import Window

from demsr.datasets import IDENTITY, Normalisation, read_pair_file
from demsr.io import read_raster
from demsr.prepare import (
    PrepareOptions,
    degrade,
    output_paths,
    prepare_pairs,
)


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


def test_nothing_usable_is_an_error(tmp_path: Path) -> None:
    source = write_dem(tmp_path / "sea.tif", np.zeros((40, 40), dtype=np.float32))
    with pytest.raises(ValueError, match="no usable patches"):
        prepare_pairs([source], tmp_path / "out", PrepareOptions(lowres_patch_px=2), progress=False)
    assert not any((tmp_path / "out").rglob("*.h5"))


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

    import demsr.prepare.write

    calls = {"n": 0}
    real = demsr.prepare.write._pairs_from

    def failing(*args: object, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
        calls["n"] += 1
        if calls["n"] >= 2:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(demsr.prepare.write, "_pairs_from", failing)
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
