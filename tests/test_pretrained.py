"""The shipped ``lite`` weights: where they are, what their header says, and that predict and
evaluate use them by default and by name."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from conftest import DEM_TRAIN

from demsr.baselines import BACKPROJECTION, upsample_baseline
from demsr.checkpoint import checkpoint_sha256, load_checkpoint
from demsr.cli import main
from demsr.demo import bundled_dem
from demsr.engine import predict_array
from demsr.evaluate import MODEL, evaluate
from demsr.evaluation_inputs import EvaluationInputs, inputs_from_product, inputs_from_raster
from demsr.metrics import texture_index
from demsr.model import ModelConfig
from demsr.pretrained import DEFAULT_MODEL, PRETRAINED, pretrained_path, resolve_checkpoint
from demsr.scaling import ElevationScaling


def run(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def test_the_shipped_file_sits_inside_the_package() -> None:
    import demsr

    path = pretrained_path()
    assert DEFAULT_MODEL == "lite" and set(PRETRAINED) == {"lite"}
    assert path.is_file() and path.suffix == ".safetensors"
    assert Path(demsr.__file__).parent in path.parents
    with pytest.raises(ValueError, match="unknown pretrained model 'paper'"):
        pretrained_path("paper")


def test_shipped_metadata_preset_scale_normalisation_and_lineage() -> None:
    model = load_checkpoint(pretrained_path())
    assert model.model_config == ModelConfig(
        blocks=16, channels=64, scale=5, bias=False, resize="half_pixel", padding="replicate"
    )
    assert model.scale == 5
    training = model.metadata["training"]
    assert training["model"]["preset"] == "lite"
    # elevations go in and out in metres; the network sees (h - trend - 0 m) / 1000 m, its
    # output adds to GDAL's cubic (a = -0.5) interpolation, and an exact layer makes every
    # 5 x 5 block of the output average to its input cell
    assert model.scaling == ElevationScaling(
        offset_m=0.0,
        scale_m=1000.0,
        trend_sigma_px=4.0,
        base="cubic",
        backprojection_iterations=0,
        block_mean_constraint=True,
    )
    assert model.build_resolver().margin_px == 63
    assert "training_state" not in model.metadata  # weights only, no optimizer moments
    assert 0 < model.metadata["bf16_error"]["max_abs_m"] < 1.0  # measured, recorded

    # trained from scratch on random windows of land tiles, with a real-product degradation
    provenance = model.metadata["provenance"]
    assert provenance["parent"] is None
    assert provenance["data"]["source"] == "rasters"
    land = [Path(p).name for p in provenance["data"]["train_sources"]]
    assert len(land) > 60 and all(name.startswith(("srtm3_", "viewfinder_")) for name in land)
    assert training["data"]["degradation_probability"] == 0.5

    release = model.metadata["release"]
    assert release["name"] == "lite"
    held_out = set(release["held_out"]["land"]) | set(release["held_out"]["sea"])
    assert "srtm3_N37W004.tif" in held_out  # the demo tile is never trained on
    assert held_out.isdisjoint(land)
    valid = {f"{name}.tif" for name in training["data"]["valid_rasters"]}
    assert valid.isdisjoint(land) and valid.isdisjoint(held_out)
    # the held-out tiles the land run names are the ones scored, and none was read in training
    named = {f"{name}.tif" for name in training["data"]["heldout"]}
    assert named <= held_out
    for key in ("hardware", "wall_time_s", "steps", "valid_rmse_m", "recipe", "real_products"):
        assert release[key], key
    # the degradation the inputs were made with travels by value
    degradation = release["land_degradation"]["model"]
    assert degradation["shift_mean_px"] and degradation["noise_rms_m"]
    # the recorded scores: better than GDAL cubic and the parameter-free method everywhere
    for group in ("land", "sea"):
        pooled = release["held_out_pooled"][group]
        assert pooled["model_rmse_m"] < pooled["bicubic_bp_rmse_m"] < pooled["cubic_rmse_m"]
    assert release["flat_in_flat_out_max_deviation_m"] < 0.01


@pytest.mark.parametrize(
    ("shape", "tile_px"), [((1, 1), None), ((7, 13), None), ((40, 40), None), ((90, 70), 24)]
)
@pytest.mark.parametrize("height_m", [-4000.0, 0.0, 1234.5])
def test_a_flat_input_comes_back_flat(
    shape: tuple[int, int], tile_px: int | None, height_m: float
) -> None:
    # lakes, plains and abyssal plains get no invented relief, edges and tile seams included
    lowres = np.full(shape, height_m, np.float32)
    highres = predict_array(pretrained_path(), lowres, tile_px=tile_px, precision="fp32")
    assert highres.shape == (shape[0] * 5, shape[1] * 5)
    assert np.max(np.abs(highres - height_m)) < 0.01


def test_a_flat_geotiff_comes_back_flat_through_predict(tmp_path: Path) -> None:
    lowres = tmp_path / "lake.tif"
    profile = {
        "driver": "GTiff",
        "width": 30,
        "height": 20,
        "count": 1,
        "dtype": "float32",
        "crs": "EPSG:4326",
        "transform": rasterio.transform.from_origin(10.0, 46.0, 1 / 240, 1 / 240),
    }
    with rasterio.open(lowres, "w", **profile) as dst:
        dst.write(np.full((1, 20, 30), 372.0, np.float32))
    code, out = run("predict", lowres, tmp_path / "out.tif", "--no-progress")
    assert code == 0, out
    with rasterio.open(tmp_path / "out.tif") as src:
        values = src.read(1)
    assert values.shape == (100, 150)
    assert np.max(np.abs(values - 372.0)) < 0.01


def test_resolve_checkpoint_names_and_paths(tmp_path: Path) -> None:
    assert resolve_checkpoint(None) == pretrained_path()
    assert resolve_checkpoint("lite") == pretrained_path()
    assert resolve_checkpoint(tmp_path / "run.safetensors") == tmp_path / "run.safetensors"
    # a file called "lite" in the working directory wins over the shipped name
    local = tmp_path / "lite"
    local.write_bytes(b"")
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        assert resolve_checkpoint("lite") == Path("lite")
    finally:
        os.chdir(cwd)


def _scores_against_baselines(
    inputs: EvaluationInputs,
) -> tuple[dict[str, float], dict[str, float]]:
    """RMSE (m) and slope RMSE (deg) of the shipped model, GDAL cubic and bicubic +
    back-projection on ``inputs``."""
    result = evaluate(
        pretrained_path(),
        inputs,
        baselines=["bicubic", BACKPROJECTION],
        device="cpu",
        progress=False,
    )
    rmse = {name: metrics["rmse"] for name, metrics in result.methods.items()}
    slope = {name: metrics["slope_rmse_deg"] for name, metrics in result.methods.items()}
    return rmse, slope


def test_shipped_model_beats_cubic_and_backprojection_on_unseen_terrain(
    dem_test_dir: Path,
) -> None:
    # Colorado Front Range, SRTM 3": a region none of the training tiles covers
    inputs = inputs_from_raster(dem_test_dir / "landlab_srtmgl3_frontrange.tif", scale=5)
    rmse, slope = _scores_against_baselines(inputs)
    assert rmse[MODEL] < 0.85 * rmse["bicubic"]
    assert rmse[MODEL] < 0.95 * rmse[BACKPROJECTION]
    assert slope[MODEL] < slope[BACKPROJECTION] < slope["bicubic"]


def test_shipped_model_beats_cubic_and_backprojection_on_a_real_product() -> None:
    # SRTM15+ over Taiwan in, SRTMGL1 aggregated onto its 3" sub-grid as the truth: a real
    # product, not block means, on terrain the model was never trained on
    gebco = DEM_TRAIN.parents[1] / "gebco"
    inputs = inputs_from_product(
        gebco / "earth_relief_15s_taiwan.nc", gebco / "srtmgl1_N23E121_rows0-652_1s.tif", 5
    )
    rmse, _ = _scores_against_baselines(inputs)
    assert rmse[MODEL] < 0.9 * rmse["bicubic"]
    assert rmse[MODEL] < 0.97 * rmse[BACKPROJECTION]


def test_shipped_model_draws_no_five_cell_grid() -> None:
    # the bundled demo tile (held out): the model's hillshade shows no grid at the coarse
    # cells' spacing, which bicubic + back-projection (the model shipped before) imprints
    inputs = inputs_from_raster(bundled_dem(), scale=5)
    highres = predict_array(pretrained_path(), inputs.lowres[0], tile_px=256, precision="fp32")
    assert texture_index(highres) < 0.005
    assert texture_index(upsample_baseline(inputs.lowres[0], 5, BACKPROJECTION)) > 0.02


def _degraded_front_range(dem_test_dir: Path, tmp_path: Path) -> Path:
    """The Front Range test raster degraded x5 by `demsr degrade` (a 15" input)."""
    lowres = tmp_path / "lowres.tif"
    code, out = run("degrade", dem_test_dir / "landlab_srtmgl3_frontrange.tif", lowres)
    assert code == 0, out
    return lowres


def test_the_shipped_model_predicts_an_ensemble_with_its_uncertainty_band(
    dem_test_dir: Path, tmp_path: Path
) -> None:
    lowres = _degraded_front_range(dem_test_dir, tmp_path)
    code, out = run("predict", lowres, tmp_path / "ensemble.tif", "--ensemble", "--no-progress")
    assert code == 0, out
    with rasterio.open(tmp_path / "ensemble.tif") as src:
        assert src.count == 2 and src.descriptions[1] == "uncertainty"
        elevation, uncertainty = src.read(1), src.read(2)
    with rasterio.open(dem_test_dir / "landlab_srtmgl3_frontrange.tif") as src:
        truth = src.read(1, window=((0, elevation.shape[0]), (0, elevation.shape[1])))
    error = elevation.astype(np.float64) - truth
    assert np.all(uncertainty > 0)
    # calibrated on other tiles: of the size of the actual error here, not of the raw spread
    ratio = np.sqrt(np.mean(uncertainty.astype(np.float64) ** 2)) / np.sqrt(np.mean(error**2))
    assert 0.6 < ratio < 1.6


def test_predict_without_a_checkpoint_uses_the_shipped_model(
    dem_test_dir: Path, tmp_path: Path
) -> None:
    lowres = _degraded_front_range(dem_test_dir, tmp_path)
    code, out = run("predict", lowres, tmp_path / "default.tif", "--no-progress")
    assert code == 0, out
    shipped = tmp_path / "copy.safetensors"
    shutil.copy(pretrained_path(), shipped)
    code, out = run("predict", shipped, lowres, tmp_path / "explicit.tif", "--no-progress")
    assert code == 0, out
    code, out = run("predict", "lite", lowres, tmp_path / "named.tif", "--no-progress")
    assert code == 0, out

    sha = checkpoint_sha256(load_checkpoint(pretrained_path()))
    with (
        rasterio.open(lowres) as low,
        rasterio.open(tmp_path / "default.tif") as default,
        rasterio.open(tmp_path / "explicit.tif") as explicit,
        rasterio.open(tmp_path / "named.tif") as named,
    ):
        assert default.tags()["checkpoint_sha256"] == sha
        assert default.shape == (low.height * 5, low.width * 5)
        assert default.bounds == pytest.approx(low.bounds)
        values = default.read(1)
        np.testing.assert_array_equal(values, explicit.read(1))
        np.testing.assert_array_equal(values, named.read(1))


def test_predict_and_evaluate_argument_errors(tmp_path: Path) -> None:
    code, out = run("predict", tmp_path / "only-one.tif")
    assert code == 2 and "expected [CHECKPOINT] INPUT OUTPUT, got 1 argument(s)" in out
    code, out = run("predict", "a", "b", "c", "d")
    assert code == 2 and "got 4 argument(s)" in out
    # a forgotten OUTPUT must not turn the input raster into the output path
    raster = tmp_path / "in.tif"
    raster.write_bytes(b"precious")
    code, out = run("predict", "model.safetensors", raster)
    assert code == 2 and "is a checkpoint" in out and raster.read_bytes() == b"precious"
    code, out = run("predict", "lite", raster)
    assert code == 2 and "is a checkpoint" in out and raster.read_bytes() == b"precious"
    code, out = run("evaluate", "no-such-model", tmp_path / "x.tif")
    assert code == 1 and "no-such-model: no such checkpoint file" in out


def test_plot_and_report_take_the_shipped_name(dem_test_dir: Path, tmp_path: Path) -> None:
    truth = dem_test_dir / "landlab_srtmgl3_frontrange.tif"
    figure = tmp_path / "compare.png"
    code, out = run("plot", "compare", "--checkpoint", "lite", "--truth", truth, "-o", figure)
    assert code == 0, out
    assert figure.stat().st_size > 10_000
    page = tmp_path / "report.md"
    code, out = run("report", "lite", "--data", truth, "--baseline", "bicubic", "-o", page)
    assert code == 0, out
    assert "lite" in page.read_text() and "bicubic" in page.read_text()
