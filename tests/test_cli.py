"""The command line end to end on real rasters, and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from conftest import TINY_MODEL, set_options, tiny_overrides, write_untrained_checkpoint

from demsr.checkpoint import load_checkpoint
from demsr.cli import main


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def test_prepare_train_evaluate_predict(dem_test_dir: Path, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs"
    code, out = run(
        "prepare",
        dem_test_dir / "mpl_jacksboro_3s.tif",
        "-o",
        pairs,
        "--patch-px",
        "8",
        "--stride-px",
        "20",
        "--split-block-px",
        "80",
        "--no-progress",
    )
    assert code == 0, out
    assert all((pairs / s / f"{s}.h5").is_file() for s in ("train", "valid", "test"))

    run_dir = tmp_path / "run"
    sets = set_options(tiny_overrides(pairs, run_dir, "train.epochs=2"))
    code, out = run("train", *sets, "--no-progress")
    assert code == 0, out
    assert "best validation RMSE" in out

    metrics_json = tmp_path / "metrics.json"
    code, out = run(
        "evaluate",
        run_dir / "best.safetensors",
        pairs / "test" / "test.h5",
        "--json",
        metrics_json,
        "--device",
        "cpu",
        "--no-progress",
    )
    assert code == 0, out
    assert "bicubic" in out and "model" in out
    metrics = json.loads(metrics_json.read_text())
    assert metrics["units"] == "m" and metrics["methods"]["bicubic"]["rmse"] > 0

    coarse = tmp_path / "coarse.tif"
    code, out = run("degrade", dem_test_dir / "mpl_jacksboro_3s.tif", coarse, "--scale", "5")
    assert code == 0, out
    fine = tmp_path / "fine.tif"
    code, out = run("predict", run_dir / "best.safetensors", coarse, fine, "--device", "cpu")
    assert code == 0, out
    with rasterio.open(coarse) as low, rasterio.open(fine) as high:
        assert (high.width, high.height) == (low.width * 5, low.height * 5)
        assert high.bounds == low.bounds
        # the input's CRS, with the output's EGM96 heights (EPSG:5773)
        assert high.crs == rasterio.crs.CRS.from_user_input(f"EPSG:{low.crs.to_epsg()}+5773")


def test_degrade_is_the_block_mean_with_georeferencing(dem_test_dir: Path, tmp_path: Path) -> None:
    source = dem_test_dir / "mpl_jacksboro_3s.tif"  # 344 x 403: cropped to 344 x 400
    code, out = run("degrade", source, tmp_path / "c.tif", "--scale", "4")
    assert code == 0, out
    with rasterio.open(source) as src, rasterio.open(tmp_path / "c.tif") as dst:
        fine = src.read(1).astype(np.float64)[:344, :400]
        assert (dst.height, dst.width) == (86, 100)
        assert dst.transform.c == src.transform.c and dst.transform.f == src.transform.f
        assert dst.res == (src.res[0] * 4, src.res[1] * 4)
        expected = fine.reshape(86, 4, 100, 4).mean(axis=(1, 3))
        assert np.allclose(dst.read(1), expected, atol=1e-3)


def test_import_mindearth_reproduces_the_reference(reference_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "demnet_b2.safetensors"
    code, out = run("import-mindearth", reference_dir / "mindearth_demnet_b2.ckpt", output)
    assert code == 0, out
    assert "2 blocks x 256 channels" in out
    checkpoint = load_checkpoint(output)
    assert checkpoint.model_config.resize == "legacy" and not checkpoint.model_config.bias
    fixture = np.load(reference_dir / "mindearth_demnet_b2_io.npz")
    with torch.no_grad():
        y = checkpoint.build_model()(torch.from_numpy(fixture["x"])).numpy()
    assert np.abs(y - fixture["y"]).max() < 1e-4


def test_config_prints_the_full_defaults() -> None:
    code, out = run("config", *set_options(TINY_MODEL))
    assert code == 0
    assert "blocks: 2" in out and "patience: 6" in out and "learning_rate" in out


def test_errors_are_one_line_with_nonzero_exit(tmp_path: Path) -> None:
    cases = [
        ("predict", tmp_path / "missing.safetensors", tmp_path / "in.tif", tmp_path / "o.tif"),
        ("prepare", tmp_path / "nothing.tif", "-o", tmp_path / "pairs"),
        ("train", "--set", "train.epochs=many"),
        ("import-mindearth", tmp_path / "missing.ckpt", tmp_path / "o.safetensors"),
    ]
    for args in cases:
        code, out = run(*map(str, args))
        assert code != 0, args
        lines = out.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(("demsr: error:", "Error:")), out
        assert "Traceback" not in out
    assert not (tmp_path / "o.tif").exists() and not (tmp_path / "pairs").exists()


def test_predict_options_datum_format_and_dtype(dem_test_dir: Path, tmp_path: Path) -> None:
    from demsr.datum import load_geoid

    checkpoint = write_untrained_checkpoint(tmp_path / "m.safetensors", channels=8, bias=True)
    source = dem_test_dir / "mpl_topobathy_pnw.tif"  # land and sea, EPSG:4326
    common = ["--device", "cpu", "--no-progress", "--tile-px", "40"]
    code, out = run("predict", checkpoint, source, tmp_path / "egm96.tif", *common)
    assert code == 0, out
    code, out = run(
        "predict", checkpoint, source, tmp_path / "wgs84.tif", "--output-datum", "wgs84", *common
    )
    assert code == 0, out
    with rasterio.open(tmp_path / "egm96.tif") as a, rasterio.open(tmp_path / "wgs84.tif") as b:
        assert a.tags()["vertical_datum"] == "egm96" and b.tags()["vertical_datum"] == "wgs84"
        rows, cols = np.mgrid[0 : a.height : 97, 0 : a.width : 89]
        lon, lat = a.transform @ (cols + 0.5, rows + 0.5)
        undulation = load_geoid().undulation(lon, lat)
        difference = b.read(1)[rows, cols] - a.read(1)[rows, cols]
    assert np.abs(difference - undulation).max() < 1e-2  # metres; N is about -17 m here

    code, out = run("predict", checkpoint, source, tmp_path / "out.nc", "--dtype", "int16", *common)
    assert code == 0, out
    import xarray as xr

    with (
        xr.open_dataset(tmp_path / "out.nc") as product,
        rasterio.open(tmp_path / "egm96.tif") as reference,
    ):
        assert product["elevation"].shape == (reference.height, reference.width)
        assert float(product["lon"][0]) == pytest.approx(
            reference.transform.c + reference.res[0] / 2
        )
        expected = np.round(reference.read(1))
        assert np.abs(product["elevation"].values - expected).max() <= 1


def test_gebco_layout_netcdf_comes_out_north_up_and_in_place(
    dem_test_dir: Path, tmp_path: Path
) -> None:
    """A 0..360-longitude, south-up NetCDF gives the same DEM as the north-up GeoTIFF it was
    made from, in the same place; a NetCDF output keeps its 0..360 longitudes and is north-up
    unless --keep-row-order mirrors its ascending latitudes."""
    import xarray as xr

    checkpoint = write_untrained_checkpoint(tmp_path / "m.safetensors", channels=8, bias=True)
    source = dem_test_dir / "mpl_topobathy_pnw.tif"  # 126..122 W, 48..50 N
    with rasterio.open(source) as src:
        values = src.read(1).astype(np.float32)
        t = src.transform
        lon = t.c + t.a * (np.arange(src.width) + 0.5)
        lat = t.f + t.e * (np.arange(src.height) + 0.5)
    gebco = xr.Dataset(
        {"elevation": (("lat", "lon"), values[::-1])},
        coords={"lat": lat[::-1], "lon": lon % 360},
    )
    gebco.to_netcdf(tmp_path / "gebco.nc")

    common = ["--device", "cpu", "--no-progress", "--tile-px", "48"]
    assert run("predict", checkpoint, source, tmp_path / "ref.tif", *common)[0] == 0
    code, out = run("predict", checkpoint, tmp_path / "gebco.nc", tmp_path / "from_nc.tif", *common)
    assert code == 0, out
    with rasterio.open(tmp_path / "ref.tif") as ref, rasterio.open(tmp_path / "from_nc.tif") as got:
        assert got.transform.e < 0  # north-up
        assert np.allclose(tuple(got.bounds), tuple(ref.bounds), atol=1e-9)
        assert got.crs.to_epsg() == 9707  # WGS 84 + EGM96 height
        assert np.allclose(got.read(1), ref.read(1), atol=1e-3)

    code, out = run("predict", checkpoint, tmp_path / "gebco.nc", tmp_path / "out.nc", *common)
    assert code == 0, out
    with (
        xr.open_dataset(tmp_path / "out.nc") as product,
        rasterio.open(tmp_path / "ref.tif") as ref,
    ):
        assert float(product["lon"].min()) > 180  # 0..360 kept
        assert bool((np.diff(product["lat"].values) < 0).all())  # north-up
        assert np.allclose(product["elevation"].values, ref.read(1), atol=1e-3)
    output = tmp_path / "mirror.nc"
    code, out = run(
        "predict", checkpoint, tmp_path / "gebco.nc", output, "--keep-row-order", *common
    )
    assert code == 0, out
    with xr.open_dataset(output) as product, rasterio.open(tmp_path / "ref.tif") as ref:
        assert float(product["lon"].min()) > 180
        assert bool((np.diff(product["lat"].values) > 0).all())  # ascending kept on request
        assert np.allclose(product["elevation"].values[::-1], ref.read(1), atol=1e-3)


def test_no_crs_fails_before_writing_crs_option_and_overwrite_clears_a_partial(
    dem_test_dir: Path, tmp_path: Path
) -> None:
    from demsr.io import read_raster, write_geotiff

    checkpoint = write_untrained_checkpoint(tmp_path / "m.safetensors", seed=None)
    raster = read_raster(dem_test_dir / "landlab_west_bijou_1s.tif")
    no_crs = write_geotiff(tmp_path / "no_crs.tif", raster.data, raster.transform, None)
    output = tmp_path / "out.tif"
    code, out = run(
        "predict",
        checkpoint,
        no_crs,
        output,
        "--input-datum",
        "wgs84",
        "--device",
        "cpu",
        "--no-progress",
    )
    assert code == 1 and "has no CRS" in out and len(out.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "no_crs.tif"]

    # --crs supplies it. A partial run left behind is refused without --resume, and cleared by
    # --overwrite.
    (tmp_path / "out.tif.partial.zarr" / "done").mkdir(parents=True)
    common = ["--crs", "EPSG:4326", "--device", "cpu", "--no-progress"]
    code, out = run("predict", checkpoint, no_crs, output, *common)
    assert code == 1 and "--resume" in out
    code, out = run("predict", checkpoint, no_crs, output, *common, "--overwrite")
    assert code == 0, out
    with rasterio.open(output) as dst:
        assert dst.crs.to_epsg() == 9707 and dst.width == raster.shape[1] * 5  # + EGM96 height
    assert not (tmp_path / "out.tif.partial.zarr").exists()


def test_precision_choices_are_the_models() -> None:
    from demsr.cli.options import precision_option
    from demsr.model import PRECISIONS

    @precision_option
    def command(precision: str) -> None: ...

    (param,) = command.__click_params__  # type: ignore[attr-defined]
    assert tuple(param.type.choices) == ("auto", *PRECISIONS)


# One spelling per idea across the commands; the old spellings stay for a release, hidden.
RENAMED = {"--tile-size": "--tile-px", "--output": "--output-dir"}  # in predict/plan, prepare
MODEL_COMMANDS = (
    ["predict"],
    ["evaluate"],
    ["report"],
    ["finetune"],
    ["plan"],
    ["demo"],
    ["plot", "compare"],
)


def run_split(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("command", [*MODEL_COMMANDS, ["prepare"]], ids=" ".join)
def test_help_shows_the_new_spellings_only(command: list[str]) -> None:
    code, out, _ = run_split(*command, "--help")
    assert code == 0
    assert "--tile-size" not in out
    if command == ["prepare"]:
        assert "--output-dir" in out and "--output " not in out
    else:
        assert "--checkpoint CKPT" in out  # every command that runs a model takes it so
    if command in (["predict"], ["plan"]):
        assert "--tile-px" in out


def test_old_tile_size_spelling_works_and_warns(dem_test_dir: Path, tmp_path: Path) -> None:
    checkpoint = write_untrained_checkpoint(tmp_path / "m.safetensors", channels=4)
    source = dem_test_dir / "landlab_west_bijou_1s.tif"
    for command in (
        ["plan", source, "--checkpoint", checkpoint],
        ["predict", checkpoint, source, tmp_path / "out.tif", "--dry-run"],
    ):
        code, new, err = run_split(*command, "--tile-px", "32", "--device", "cpu")
        assert code == 0, err
        assert "deprecated" not in err
        code, old, err = run_split(*command, "--tile-size", "32", "--device", "cpu")
        assert code == 0, err
        assert old == new and "15 of 32 x 32 cells" in old
        [line] = err.splitlines()
        assert "--tile-size is deprecated, use --tile-px" in line
        code, _, err = run_split(*command, "--tile-size", "32", "--tile-px", "32")
        assert code == 2 and "give --tile-px or --tile-size (its old spelling), not both" in err
        code, _, err = run_split(*command, "--tile-size", "0")
        assert code == 2 and "Invalid value" in err  # checked like the new spelling
    assert list(tmp_path.iterdir()) == [checkpoint]


def test_prepare_output_folder_spellings(dem_test_dir: Path, tmp_path: Path) -> None:
    source = dem_test_dir / "mpl_jacksboro_3s.tif"
    options = ["--patch-px", "8", "--stride-px", "40", "--split-block-px", "80", "--no-progress"]
    written = {}
    for spelling in ("-o", "--output-dir", "--output"):
        folder = tmp_path / spelling.strip("-")
        code, _, err = run_split("prepare", source, spelling, folder, *options)
        assert code == 0, err
        assert ("--output is deprecated, use --output-dir" in err) == (spelling == "--output")
        written[spelling] = (folder / "train" / "train.h5").read_bytes() != b""
    assert all(written.values())
    code, _, err = run_split("prepare", source, *options)
    assert code == 2 and "Missing option '-o' / '--output-dir'" in err
    code, _, err = run_split("prepare", source, "-o", tmp_path / "a", "--output", tmp_path / "b")
    assert code == 2 and "not both" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_checkpoint_option_and_positional_checkpoint_agree(
    tiny_pairs: Path, dem_test_dir: Path, tmp_path: Path
) -> None:
    """--checkpoint CKPT does what the positional CHECKPOINT does; giving both is refused."""
    checkpoint = write_untrained_checkpoint(tmp_path / "m.safetensors", channels=4)
    data = tiny_pairs / "test" / "test.h5"
    common = ["--device", "cpu", "--no-progress", "--baseline", "bicubic"]
    tables = []
    for form in ([checkpoint, data], ["--checkpoint", checkpoint, data]):
        code, out, err = run_split("evaluate", *form, *common)
        assert code == 0, err
        tables.append(out)
    assert tables[0] == tables[1] and "model" in tables[0]
    code, _, err = run_split("evaluate", "--checkpoint", checkpoint, checkpoint, data)
    assert code == 2 and "give the checkpoint once" in err
    code, _, err = run_split("evaluate", checkpoint)
    assert code == 2 and "is a checkpoint" in err

    source = dem_test_dir / "landlab_west_bijou_1s.tif"
    outputs = []
    for form in ([checkpoint, source], ["--checkpoint", checkpoint, source]):
        code, out, err = run_split("predict", *form, tmp_path / "o.tif", "--dry-run")
        assert code == 0, err
        outputs.append(out)
    assert outputs[0] == outputs[1] and f"demsr predict {checkpoint} {source}" in outputs[0]
    code, _, err = run_split("predict", "--checkpoint", checkpoint, checkpoint, source, "o.tif")
    assert code == 2 and "give the checkpoint once" in err
    assert not (tmp_path / "o.tif").exists()


def test_finetune_takes_its_parent_as_checkpoint_option(tiny_pairs: Path, tmp_path: Path) -> None:
    parent = write_untrained_checkpoint(tmp_path / "parent.safetensors", channels=8)
    run_dir = tmp_path / "run"
    sets = set_options(tiny_overrides(tiny_pairs, run_dir, "train.epochs=1"))
    code, _, err = run_split("finetune", parent, "--checkpoint", parent, *sets, "--no-progress")
    assert code == 2 and "give the parent once" in err
    assert not run_dir.exists()
    code, out, err = run_split("finetune", "--checkpoint", parent, *sets, "--no-progress")
    assert code == 0, err
    assert "best validation RMSE" in out
    recorded = load_checkpoint(run_dir / "best.safetensors").metadata["provenance"]["parent"]
    assert recorded["path"] == str(parent.resolve())


def test_report_takes_checkpoints_as_options_too(tiny_pairs: Path, tmp_path: Path) -> None:
    checkpoint = write_untrained_checkpoint(tmp_path / "m.safetensors", channels=4)
    data = tiny_pairs / "test" / "test.h5"
    common = ["--data", data, "--device", "cpu", "--no-progress", "--baseline", "bicubic"]
    tables = []
    for name, form in (("a", [checkpoint]), ("b", ["--checkpoint", checkpoint])):
        code, out, err = run_split("report", *form, *common, "-o", tmp_path / f"{name}.md")
        assert code == 0, err
        tables.append(out.rsplit("\n", 2)[0])  # the table, without the report's path
    assert tables[0] == tables[1] and "m.safetensors" in (tmp_path / "b.md").read_text()
