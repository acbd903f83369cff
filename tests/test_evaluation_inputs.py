"""Evaluation inputs: a raster cropped, degraded and georeferenced; pair files' cell sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio

from demsr.datasets import read_pair_file
from demsr.evaluation_inputs import inputs_from_pairs, inputs_from_raster
from demsr.metrics import cell_sizes_m


def test_raster_input_is_cropped_degraded_and_georeferenced(dem_test_dir: Path) -> None:
    path = dem_test_dir / "landlab_srtmgl3_frontrange.tif"  # 144 x 240, 3" geographic
    inputs = inputs_from_raster(path, 5)
    assert inputs.highres.shape == (1, 140, 240) and inputs.lowres.shape == (1, 28, 48)
    with rasterio.open(path) as src:
        truth = src.read(1).astype(np.float32)[:140]
        expected_dx, _ = cell_sizes_m(src.transform, src.crs, 140)
        assert inputs.transform == src.transform
    np.testing.assert_array_equal(inputs.highres[0], truth)
    np.testing.assert_allclose(inputs.lowres[0, 0, 0], truth[:5, :5].mean(), rtol=1e-6)
    # 3" cells at 40 N are about 71 m wide and 92.5 m tall.
    np.testing.assert_allclose(inputs.dx_m[0], expected_dx)
    assert 70 < inputs.dx_m[0].mean() < 72 and 92 < inputs.dy_m[0].mean() < 93


def test_pair_files_take_cell_sizes_from_their_sources(tiny_pairs: Path) -> None:
    path = tiny_pairs / "test" / "test.h5"
    inputs = inputs_from_pairs(path)
    pairs = read_pair_file(path)
    assert inputs.dx_m is not None and inputs.dx_m.shape == (len(pairs), 40)
    # Jacksboro, Tennessee, at 36.4 N: 3" cells are about 74.8 m wide.
    assert 74 < float(inputs.dx_m.mean()) < 76
    given = inputs_from_pairs(path, cell_size_m=(80.0, 90.0))
    assert given.dx_m is not None and np.all(given.dx_m == 80.0) and np.all(given.dy_m == 90.0)
