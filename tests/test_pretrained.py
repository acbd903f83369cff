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

from demsr.checkpoint import checkpoint_sha256, load_checkpoint
from demsr.cli import main
from demsr.evaluate import MODEL, evaluate, inputs_from_raster
from demsr.model import ElevationScaling, ModelConfig
from demsr.pretrained import DEFAULT_MODEL, PRETRAINED, pretrained_path, resolve_checkpoint


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
        blocks=16, channels=64, scale=5, bias=True, resize="half_pixel"
    )
    assert model.scale == 5
    assert model.metadata["training"]["model"]["preset"] == "lite"
    # elevations go in and out in metres; the network sees (h - trend - 0 m) / 1000 m, its
    # output adds to bicubic interpolation, and 4 back-projection steps follow
    assert model.scaling == ElevationScaling(
        offset_m=0.0,
        scale_m=1000.0,
        trend_sigma_px=4.0,
        base="bicubic",
        backprojection_iterations=4,
    )
    assert model.build_resolver().margin_px == 57
    assert "training_state" not in model.metadata  # weights only, no optimizer moments

    # pre-trained on land, then fine-tuned on bathymetry with frozen layers
    provenance = model.metadata["provenance"]
    parent = provenance["parent"]
    assert parent is not None and parent["provenance"]["parent"] is None
    land = [Path(p).name for p in parent["provenance"]["data"]["train_sources"]]
    ocean = [Path(p).name for p in provenance["data"]["train_sources"]]
    assert land and all(name.startswith("srtm3_") for name in land)
    assert ocean and not any(name.startswith("srtm3_") for name in ocean)
    assert model.metadata["frozen"]["parameters"] > 0

    release = model.metadata["release"]
    assert release["name"] == "lite"
    held_out = set(release["held_out"]["land"]) | set(release["held_out"]["sea"])
    assert "srtm3_N37W004.tif" in held_out  # the demo tile is never trained on
    assert held_out.isdisjoint(land + ocean)
    for key in ("hardware", "wall_time_s", "steps", "valid_rmse_m", "recipe"):
        assert release[key], key


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


def test_shipped_model_beats_bicubic_on_unseen_real_terrain(dem_test_dir: Path) -> None:
    # Colorado Front Range, SRTM 3": a region none of the training tiles covers
    inputs = inputs_from_raster(dem_test_dir / "landlab_srtmgl3_frontrange.tif", scale=5)
    result = evaluate(
        pretrained_path(), inputs, baselines=["bicubic"], device="cpu", progress=False
    )
    model_rmse, bicubic_rmse = result.methods[MODEL]["rmse"], result.methods["bicubic"]["rmse"]
    assert model_rmse is not None and bicubic_rmse is not None
    assert model_rmse < 0.97 * bicubic_rmse
    assert result.methods[MODEL]["slope_rmse_deg"] < result.methods["bicubic"]["slope_rmse_deg"]


def test_predict_without_a_checkpoint_uses_the_shipped_model(
    dem_test_dir: Path, tmp_path: Path
) -> None:
    lowres = tmp_path / "lowres.tif"
    code, out = run("degrade", dem_test_dir / "landlab_srtmgl3_frontrange.tif", lowres)
    assert code == 0, out
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
