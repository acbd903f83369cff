"""Evaluation: a checkpoint and the baselines scored on a raster, on a low-res raster and its
reference, and on pair files; self-ensembles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from conftest import write_untrained_checkpoint
from rasterio.crs import CRS

from demsr.baselines import upsample_baseline
from demsr.datasets import read_pair_file
from demsr.evaluate import evaluate, evaluate_pairs, self_ensemble
from demsr.evaluation_inputs import (
    inputs_from_pairs,
    inputs_from_raster,
    inputs_from_rasters,
    load_inputs,
)
from demsr.io import write_geotiff
from demsr.metrics import rmse
from demsr.prepare import degrade


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_untrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.safetensors")


def test_evaluate_raster_scores_model_and_five_baselines(
    dem_test_dir: Path, tiny_checkpoint: Path
) -> None:
    path = dem_test_dir / "mpl_jacksboro_3s.tif"
    inputs = load_inputs(path, 5)
    result = evaluate(tiny_checkpoint, inputs, device="cpu", progress=False)
    assert list(result.methods) == [
        "model",
        "bilinear",
        "bicubic",
        "cubic_spline",
        "lanczos",
        "bicubic_backprojection",
    ]
    bicubic = upsample_baseline(inputs.lowres, 5, "bicubic")
    assert result.methods["bicubic"]["rmse"] == pytest.approx(rmse(bicubic, inputs.highres))
    for values in result.methods.values():
        assert all(values[key] is not None for key in ("slope_rmse_deg", "aspect_mae_deg"))
    # Interpolating 15" block means of 3" Appalachian ridges is off by metres, not kilometres.
    assert 1 < result.methods["bicubic"]["rmse"] < 50
    assert {"land", "slope 0-2 deg"} <= set(result.breakdown)
    assert "sea" not in result.breakdown  # 236..1076 m: no cell at or below 0 m


def test_lowres_and_reference_rasters(
    tmp_path: Path, dem_test_dir: Path, tiny_checkpoint: Path
) -> None:
    with rasterio.open(dem_test_dir / "mpl_jacksboro_3s.tif") as src:
        highres = src.read(1).astype(np.float32)[:340, :400]
        transform, crs = src.transform, src.crs
    high = write_geotiff(tmp_path / "high.tif", highres, transform, crs)
    low = write_geotiff(tmp_path / "low.tif", degrade(highres, 5), transform @ Affine.scale(5), crs)
    inputs = inputs_from_rasters(low, high)
    assert inputs.scale == 5 and inputs.highres.shape == (1, 340, 400)
    direct = inputs_from_raster(high, 5)
    np.testing.assert_allclose(inputs.lowres, direct.lowres, rtol=1e-6)
    result = evaluate(tiny_checkpoint, inputs, baselines=["bicubic"], device="cpu", progress=False)
    assert set(result.methods) == {"model", "bicubic"}

    # The uncropped original (344 x 403) is read over the low-res bounds only, as after
    # `demsr degrade`, which crops to whole blocks.
    original = inputs_from_rasters(low, dem_test_dir / "mpl_jacksboro_3s.tif")
    np.testing.assert_array_equal(original.highres, inputs.highres)
    assert original.transform == transform

    shifted = write_geotiff(
        tmp_path / "shifted.tif",
        degrade(highres, 5),
        Affine.translation(0.4 * transform.a, 0) @ transform @ Affine.scale(5),
        crs,
    )
    with pytest.raises(ValueError, match="offset from those of"):
        inputs_from_rasters(shifted, high)
    small = write_geotiff(tmp_path / "small.tif", highres[:, :333], transform, crs)
    with pytest.raises(ValueError, match="does not cover"):
        inputs_from_rasters(low, small)
    coarse = write_geotiff(
        tmp_path / "coarse.tif", highres[::3, ::3], transform @ Affine.scale(3.5), crs
    )
    with pytest.raises(ValueError, match="not one integer scale"):
        inputs_from_rasters(coarse, high)
    utm = write_geotiff(
        tmp_path / "utm.tif", degrade(highres, 5), transform @ Affine.scale(5), CRS.from_epsg(32616)
    )
    with pytest.raises(ValueError, match="different CRSs"):
        inputs_from_rasters(utm, high)


def test_pairs_without_known_cell_sizes_skip_slope(
    tiny_pairs: Path, tmp_path: Path, tiny_checkpoint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import h5py

    copy = tmp_path / "copy.h5"
    copy.write_bytes((tiny_pairs / "test" / "test.h5").read_bytes())
    with h5py.File(copy, "a") as handle:
        del handle["source_windows"]
    result = evaluate_pairs(tiny_checkpoint, copy, device="cpu", progress=False)
    assert "cell sizes unknown" in caplog.text
    assert result.methods["model"]["slope_rmse_deg"] is None
    assert result.methods["model"]["rmse"] is not None
    assert not any(group.startswith("slope") for group in result.breakdown)


def test_evaluate_pairs_reports_metres(tiny_pairs: Path, tiny_checkpoint: Path) -> None:
    result = evaluate_pairs(
        tiny_checkpoint, tiny_pairs / "test" / "test.h5", device="cpu", progress=False
    )
    pairs = read_pair_file(tiny_pairs / "test" / "test.h5")
    assert result.pairs == len(pairs) and result.units == "m"
    norm = pairs.normalisation
    expected = rmse(
        upsample_baseline(norm.denormalise(pairs.lowres.astype(np.float64)), 5),
        norm.denormalise(pairs.highres.astype(np.float64)),
    )
    assert result.methods["bicubic"]["rmse"] == pytest.approx(expected, rel=1e-5)
    assert "bicubic" in result.table() and "| model |" in result.markdown()


def test_self_ensemble_averages_the_eight_views() -> None:
    lowres = np.random.default_rng(1).random((2, 4, 6)).astype(np.float32)

    def nearest(x: np.ndarray) -> np.ndarray:  # commutes with flips and rotations
        return np.kron(x, np.ones((2, 2), np.float32))

    np.testing.assert_allclose(self_ensemble(nearest, lowres), nearest(lowres), rtol=1e-6)

    def with_ramp(x: np.ndarray) -> np.ndarray:  # adds 0, 1, 2 ... along the columns of each view
        return nearest(x) + np.arange(x.shape[-1] * 2, dtype=np.float32)

    # Over the 8 views the ramp averages to a constant: (width - 1) / 2 in every cell.
    averaged = self_ensemble(with_ramp, lowres)
    mean_ramp = averaged - nearest(lowres)
    assert mean_ramp[..., :, :].std() < 1.0  # neither a column ramp nor a row ramp survives


def test_model_self_ensemble_is_recorded(tiny_pairs: Path, tiny_checkpoint: Path) -> None:
    inputs = inputs_from_pairs(tiny_pairs / "test" / "test.h5")
    plain = evaluate(tiny_checkpoint, inputs, baselines=[], device="cpu", progress=False)
    ensembled = evaluate(
        tiny_checkpoint, inputs, baselines=[], ensemble=True, device="cpu", progress=False
    )
    assert ensembled.self_ensemble and not plain.self_ensemble
    assert ensembled.methods["model"]["rmse"] != plain.methods["model"]["rmse"]
    assert "self-ensemble" in ensembled.table()
