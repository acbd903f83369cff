"""Evaluation: baselines from GDAL, metrics and breakdowns on the right cells, the three kinds of
input, self-ensembles, and the command line's outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner
from conftest import SCALING, write_untrained_checkpoint
from rasterio.crs import CRS
from rasterio.enums import Resampling

import demsr.evaluate as evaluate_module
from demsr.checkpoint import save_checkpoint
from demsr.cli import main
from demsr.datasets import read_pair_file
from demsr.evaluate import (
    BASELINES,
    EvaluationInputs,
    evaluate,
    evaluate_pairs,
    inputs_from_pairs,
    inputs_from_raster,
    inputs_from_rasters,
    load_inputs,
    score,
    self_ensemble,
    upsample_baseline,
)
from demsr.io import write_geotiff
from demsr.metrics import cell_sizes_m, rmse
from demsr.model import DEMSRNet, ModelConfig
from demsr.prepare import degrade


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_untrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.safetensors")


def test_bicubic_reproduces_a_plane_with_cell_centre_registration() -> None:
    rows, cols = np.mgrid[0:12, 0:10].astype(np.float32)
    lowres = 3.0 * rows - 2.0 * cols + 100.0  # value at low-res cell centre (i + 0.5, j + 0.5)
    fine_rows, fine_cols = np.mgrid[0:60, 0:50].astype(np.float64)
    # High-res cell centre (r + 0.5) / 5 in low-res cell units; low-res centres at i + 0.5.
    expected = 3.0 * ((fine_rows + 0.5) / 5 - 0.5) - 2.0 * ((fine_cols + 0.5) / 5 - 0.5) + 100.0
    interior = (slice(10, 50), slice(10, 40))  # away from the clamped edges
    for method in ("bilinear", "bicubic"):  # these kernels reproduce a plane exactly
        highres = upsample_baseline(lowres, 5, method)
        assert highres.shape == (60, 50)
        assert np.abs(highres[interior] - expected[interior]).max() < 1e-3, method


def test_baselines_come_from_gdal(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Resampling] = []
    real = evaluate_module.reproject

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(kwargs["resampling"])  # type: ignore[arg-type]
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "reproject", spy)
    lowres = np.random.default_rng(0).random((6, 6)).astype(np.float32) * 100
    outputs = {name: upsample_baseline(lowres, 5, name) for name in BASELINES}
    assert seen == [
        Resampling.bilinear,
        Resampling.cubic,
        Resampling.cubic_spline,
        Resampling.lanczos,
    ]
    # Four different kernels, four different results.
    names = list(outputs)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            assert not np.allclose(outputs[first], outputs[second]), (first, second)


def test_baseline_batches_and_unknown_method() -> None:
    lowres = np.random.default_rng(0).random((3, 1, 4, 4)).astype(np.float32)
    assert upsample_baseline(lowres, 2).shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="unknown baseline"):
        upsample_baseline(lowres, 2, "nearest-ish")


def synthetic_inputs(truth: np.ndarray, cell_m: float = 30.0) -> EvaluationInputs:
    rows = truth.shape[-2]
    return EvaluationInputs(
        lowres=degrade(truth, 5),
        highres=truth,
        scale=5,
        source="synthetic",
        kind="raster",
        dx_m=np.full((len(truth), rows), cell_m),
        dy_m=np.full((len(truth), rows), cell_m),
    )


def test_score_breaks_errors_down_by_land_and_sea() -> None:
    truth = np.zeros((1, 20, 20), np.float32)
    truth[0, :, :10] = np.linspace(10, 200, 20)[:, None]  # land on the west half
    truth[0, :, 10:] = -np.linspace(10, 200, 20)[:, None]  # sea on the east half
    prediction = truth.copy()
    prediction[0, :, :10] += 1.0
    prediction[0, :, 10:] -= 2.0
    prediction[0, 0, 0] = np.nan  # not scored, for any method
    result = score(synthetic_inputs(truth), {"model": prediction, "exact": truth.copy()})
    assert result.cells == 399
    land, sea = result.breakdown["land"]["model"], result.breakdown["sea"]["model"]
    assert (land["cells"], land["rmse"], land["bias"]) == (
        199,
        pytest.approx(1.0),
        pytest.approx(1.0),
    )
    assert (sea["cells"], sea["rmse"], sea["bias"]) == (
        200,
        pytest.approx(2.0),
        pytest.approx(-2.0),
    )
    overall = result.methods["model"]
    assert overall["rmse"] == pytest.approx(math.sqrt((199 * 1 + 200 * 4) / 399))
    assert overall["max_abs_error"] == pytest.approx(2.0)
    assert overall["bias"] == pytest.approx((199 - 400) / 399)
    # PSNR over the truth's range on the scored cells (the NaN cell excluded).
    data_range = float(np.nanmax(truth) - truth[0].ravel()[1:].min())
    assert result.data_range_m == pytest.approx(data_range)
    assert overall["psnr_db"] == pytest.approx(20 * math.log10(data_range / overall["rmse"]))
    exact = result.methods["exact"]
    assert exact["rmse"] == 0 and exact["ssim"] == pytest.approx(1.0)
    assert exact["slope_rmse_deg"] == 0 and exact["aspect_mae_deg"] == 0
    # The same cell set for every method: the exact method is scored without the NaN cell too.
    assert result.breakdown["land"]["exact"]["cells"] == 199


def test_score_slope_classes_follow_the_truth_slope() -> None:
    cols = np.arange(40, dtype=np.float32)
    truth = np.zeros((1, 40, 40), np.float32)
    truth[0, :, :20] = 0.5 * cols[:20]  # 0.5 m per 30 m cell: about 1 deg
    truth[0, :, 20:] = 10 + 20 * (cols[20:] - 20)  # 20 m per 30 m cell: about 34 deg
    result = score(synthetic_inputs(truth), {"model": truth + 1})
    groups = result.breakdown
    assert groups["slope 0-2 deg"]["model"]["cells"] > 0
    assert groups["slope 30-90 deg"]["model"]["cells"] > 0
    assert "slope 5-15 deg" not in groups  # no such cells (the seam cells are 15-30)
    assert sum(g["model"]["cells"] for k, g in groups.items() if k.startswith("slope")) <= (
        result.cells
    )


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


def test_pair_files_take_cell_sizes_from_their_sources(tiny_pairs: Path) -> None:
    path = tiny_pairs / "test" / "test.h5"
    inputs = inputs_from_pairs(path)
    pairs = read_pair_file(path)
    assert inputs.dx_m is not None and inputs.dx_m.shape == (len(pairs), 40)
    # Jacksboro, Tennessee, at 36.4 N: 3" cells are about 74.8 m wide.
    assert 74 < float(inputs.dx_m.mean()) < 76
    given = inputs_from_pairs(path, cell_size_m=(80.0, 90.0))
    assert given.dx_m is not None and np.all(given.dx_m == 80.0) and np.all(given.dy_m == 90.0)


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


def test_cli_writes_json_and_markdown(
    dem_test_dir: Path, tmp_path: Path, tiny_checkpoint: Path
) -> None:
    json_path, markdown_path = tmp_path / "m.json", tmp_path / "m.md"
    args = [
        "evaluate",
        str(tiny_checkpoint),
        str(dem_test_dir / "landlab_srtmgl3_frontrange.tif"),
        "--json",
        str(json_path),
        "--markdown",
        str(markdown_path),
        "--no-progress",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "lanczos" in result.output and "slope RMSE" in result.output
    values = json.loads(json_path.read_text())
    assert values["cells"] == 140 * 240 and values["psnr_ssim_data_range_m"] > 0
    assert set(values["methods"]) == {"model", *BASELINES}
    assert values["methods"]["bicubic"]["slope_rmse_deg"] > 0
    assert "| lanczos |" in markdown_path.read_text()
    # Existing outputs are kept unless --overwrite.
    before = json_path.read_text()
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 1 and "already exists" in refused.output
    assert json_path.read_text() == before


def test_cli_refuses_a_model_of_another_scale(tiny_pairs: Path, tmp_path: Path) -> None:
    model = DEMSRNet(ModelConfig(blocks=1, channels=4, scale=4))
    path = save_checkpoint(tmp_path / "x4.safetensors", model, SCALING)
    result = CliRunner().invoke(
        main, ["evaluate", str(path), str(tiny_pairs / "test" / "test.h5"), "--no-progress"]
    )
    assert result.exit_code == 1
    assert "the data are x5, the model is x4" in result.output


def test_command_line_baselines_are_the_librarys() -> None:
    from demsr.cli.options import BASELINE_NAMES

    assert BASELINE_NAMES == tuple(BASELINES)
