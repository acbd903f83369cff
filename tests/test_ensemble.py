"""``demsr predict --ensemble``: the mean of the 8 flips/rotations and a calibrated uncertainty
band, in every output format; tiled equals whole for both bands; a checkpoint without a
calibration is refused; the calibration is fitted, recorded and read back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import xarray as xr
from cf_checks import run_cfchecks, run_compliance_checker
from click.testing import CliRunner
from conftest import REPO, write_untrained_checkpoint
from safetensors import safe_open
from test_engine import assert_same_to_rounding

from demsr.checkpoint import load_checkpoint
from demsr.cli import main
from demsr.engine import predict_array, predict_array_ensemble, upscale_mask
from demsr.ensemble import (
    CALIBRATION_KEY,
    CALIBRATION_SCRIPT,
    CalibrationMissing,
    CalibrationSamples,
    UncertaintyCalibration,
    fit_calibration,
    record_calibration,
    recorded_calibration,
)
from demsr.io import Raster, fill_nearest, read_raster, write_geotiff
from demsr.metrics import cell_sizes_m, slope_deg
from demsr.predict import predict_raster

FOOT = 0.3048
# The coefficients make sigma move by at most as much as the spread (a_k / (2 b_k) <= 1), so
# that float32 rounding of the members bounds both bands' tiled-vs-whole differences alike.
CALIBRATION = UncertaintyCalibration(
    slope_edges_deg=(2.0, 5.0, 10.0, 20.0, 30.0),
    spread_coef_m=(1.0, 2.0, 3.0, 4.0, 5.0, 6.0),
    floor_m=(0.5, 1.0, 1.5, 2.0, 2.5, 3.0),
    fitted_on=("synthetic",),
    cells=(1, 1, 1, 1, 1, 1),
)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("calibrated")
    plain = write_untrained_checkpoint(folder / "plain.safetensors", channels=8, bias=True)
    return record_calibration(plain, folder / "calibrated.safetensors", CALIBRATION)


@pytest.fixture(scope="module")
def terrain(dem_test_dir: Path) -> Raster:
    """30 x 36 cells of the Jacksboro fault DEM (3", EPSG:4326) with a 4 x 5 nodata hole."""
    raster = read_raster(dem_test_dir / "mpl_jacksboro_3s.tif")
    data = raster.data[:30, :36].copy()
    data[10:14, 20:25] = np.nan
    return Raster(data, raster.transform, raster.crs)


def cell_sizes(raster: Raster) -> tuple[np.ndarray, np.ndarray]:
    return cell_sizes_m(raster.transform, raster.crs, raster.data.shape[0])


def numpy_dihedral(values: np.ndarray, variant: int) -> np.ndarray:
    flipped = values[:, ::-1] if variant >= 4 else values
    return np.rot90(flipped, k=variant % 4)


def numpy_undo_dihedral(values: np.ndarray, variant: int) -> np.ndarray:
    restored = np.rot90(values, k=-(variant % 4))
    return restored[:, ::-1] if variant >= 4 else restored


def test_mean_and_uncertainty_follow_the_8_flipped_predictions(
    calibrated: Path, terrain: Raster
) -> None:
    # Without nodata: filling a hole breaks ties between equally near cells by position, so a
    # flipped input filled afresh may differ by its fill from the filled input flipped.
    lowres = fill_nearest(terrain.data)
    members = np.stack(
        [
            numpy_undo_dihedral(
                predict_array(
                    calibrated,
                    np.ascontiguousarray(numpy_dihedral(lowres, variant)),
                    precision="fp32",
                ),
                variant,
            )
            for variant in range(8)
        ]
    ).astype(np.float64)
    mean_m, sigma_m = predict_array_ensemble(
        calibrated, lowres, cell_sizes(terrain), precision="fp32"
    )
    np.testing.assert_allclose(mean_m, members.mean(0), rtol=0, atol=1e-3)
    assert not np.allclose(mean_m, members[0], atol=0.01)  # the members do differ
    # sigma = sqrt(a_k * spread + b_k^2), k the class of the (filled) input's slope
    dx_m, dy_m = cell_sizes(terrain)
    padded = np.pad(lowres.astype(np.float64), 1, mode="edge")
    slope = slope_deg(padded, np.pad(dx_m, 1, mode="edge"), np.pad(dy_m, 1, mode="edge"))
    slope = upscale_mask(slope[1:-1, 1:-1], 5)
    classes = np.searchsorted(CALIBRATION.slope_edges_deg, slope, side="right")
    coef = np.take(CALIBRATION.spread_coef_m, classes)
    floor = np.take(CALIBRATION.floor_m, classes)
    expected = np.sqrt(coef * members.std(0) + floor**2)
    np.testing.assert_allclose(sigma_m, expected, rtol=1e-4, atol=1e-3)
    assert sigma_m.min() >= min(CALIBRATION.floor_m) - 1e-6
    assert len(np.unique(classes)) >= 3  # several classes take part


def test_both_bands_are_nodata_where_the_input_is(calibrated: Path, terrain: Raster) -> None:
    mean_m, sigma_m = predict_array_ensemble(
        calibrated, terrain.data, cell_sizes(terrain), precision="fp32"
    )
    nodata = upscale_mask(np.isnan(terrain.data), 5)
    assert nodata.sum() == 4 * 5 * 25
    np.testing.assert_array_equal(np.isnan(mean_m), nodata)
    np.testing.assert_array_equal(np.isnan(sigma_m), nodata)
    assert (sigma_m[~nodata] > 0).all()


def test_tiled_equals_whole_for_both_bands(calibrated: Path, terrain: Raster) -> None:
    # 3 x 3 tiles of 13 cells (smaller than the margin of 19), with a nodata hole
    sizes = cell_sizes(terrain)
    whole = predict_array_ensemble(calibrated, terrain.data, sizes, precision="fp32")
    tiled = predict_array_ensemble(
        calibrated, terrain.data, sizes, tile_px=13, batch_size=3, precision="fp32"
    )
    assert_same_to_rounding(tiled[0], whole[0])
    # the same tolerance, in metres: sigma moves by no more than the members' rounding
    assert np.array_equal(np.isnan(tiled[1]), np.isnan(whole[1]))
    ulp = np.spacing(np.float32(np.nanmax(np.abs(whole[0]))))
    np.testing.assert_allclose(tiled[1], whole[1], rtol=0, atol=8 * ulp)


@pytest.fixture(scope="module")
def products(
    calibrated: Path, terrain: Raster, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("products")
    source = write_geotiff(folder / "in.tif", terrain.data, terrain.transform, terrain.crs, -9999)
    options = {"device": "cpu", "progress": False, "precision": "fp32", "ensemble": True}
    return {
        suffix: predict_raster(calibrated, source, folder / f"out{suffix}", **options)
        for suffix in (".tif", ".nc", ".zarr")
    }


def expected_bands(calibrated: Path, terrain: Raster) -> tuple[np.ndarray, np.ndarray]:
    return predict_array_ensemble(calibrated, terrain.data, cell_sizes(terrain), precision="fp32")


def test_the_cog_holds_both_bands_described(
    products: dict[str, Path], calibrated: Path, terrain: Raster
) -> None:
    mean_m, sigma_m = expected_bands(calibrated, terrain)
    with rasterio.open(products[".tif"]) as dst:
        assert dst.count == 2 and dst.nodata == -9999
        assert dst.descriptions == ("elevation", "uncertainty")
        assert dst.units == ("metre", "metre")
        tags = dst.tags(2)
        assert "one-sigma" in tags["uncertainty"] and tags["units"] == "metre"
        assert "spread" in tags["calibration"] and "synthetic" in tags["calibration"]
        assert dst.tags()["ensemble"] == "mean of the model's 8 flips/rotations"
        elevation = dst.read(1, masked=True)
        uncertainty = dst.read(2, masked=True)
    np.testing.assert_array_equal(elevation.mask, np.isnan(mean_m))
    np.testing.assert_array_equal(uncertainty.mask, elevation.mask)
    np.testing.assert_allclose(elevation.filled(np.nan), mean_m, rtol=0, atol=1e-3)
    np.testing.assert_allclose(uncertainty.filled(np.nan), sigma_m, rtol=0, atol=1e-3)
    assert uncertainty.min() > 0


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_netcdf_and_zarr_hold_an_uncertainty_variable(
    products: dict[str, Path], calibrated: Path, terrain: Raster, suffix: str
) -> None:
    mean_m, sigma_m = expected_bands(calibrated, terrain)
    opener = xr.open_zarr if suffix == ".zarr" else xr.open_dataset
    with opener(products[suffix]) as dataset:
        elevation = dataset["elevation"]
        uncertainty = dataset["elevation_uncertainty"]
        assert elevation.attrs["ancillary_variables"] == "elevation_uncertainty"
        assert uncertainty.attrs["units"] == "metre"
        assert uncertainty.attrs["long_name"] == "estimated error of the elevation (one sigma)"
        assert uncertainty.attrs["grid_mapping"] == "crs"
        assert uncertainty.dims == elevation.dims
        np.testing.assert_allclose(elevation.values, mean_m, rtol=0, atol=1e-3)
        np.testing.assert_allclose(uncertainty.values, sigma_m, rtol=0, atol=1e-3)
    # GDAL opens the uncertainty as its own layer, with the elevation's grid and CRS
    driver = "ZARR" if suffix == ".zarr" else "NETCDF"
    name = f'{driver}:"{products[suffix]}":' + ("/" if suffix == ".zarr" else "")
    with (
        rasterio.open(name + "elevation") as elevation_layer,
        rasterio.open(name + "elevation_uncertainty") as layer,
    ):
        assert layer.crs == elevation_layer.crs and layer.crs is not None
        assert layer.transform == elevation_layer.transform
        assert layer.nodata == elevation_layer.nodata == -9999
        values = layer.read(1, masked=True).filled(np.nan)
        np.testing.assert_allclose(values, sigma_m, rtol=0, atol=1e-3)


def test_the_netcdf_with_uncertainty_passes_the_cf_checkers(products: dict[str, Path]) -> None:
    for report in (run_compliance_checker(products[".nc"]), run_cfchecks(products[".nc"])):
        assert (report.errors, report.warnings) == (0, 0), report.messages


def test_an_input_in_feet_gets_its_uncertainty_in_feet(
    products: dict[str, Path], calibrated: Path, terrain: Raster, tmp_path: Path
) -> None:
    source = write_geotiff(
        tmp_path / "ft.tif", terrain.data / FOOT, terrain.transform, terrain.crs, -9999
    )
    with rasterio.open(source, "r+") as dst:
        dst.units = ("ft",)
    output = predict_raster(
        calibrated,
        source,
        tmp_path / "ft_out.tif",
        device="cpu",
        progress=False,
        precision="fp32",
        ensemble=True,
    )
    with rasterio.open(output) as feet, rasterio.open(products[".tif"]) as metres:
        assert feet.units == ("ft", "ft") and feet.tags(2)["units"] == "ft"
        np.testing.assert_allclose(
            feet.read(2, masked=True).filled(np.nan) * FOOT,
            metres.read(2, masked=True).filled(np.nan),
            rtol=1e-4,
        )


def run_cli(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def test_a_checkpoint_without_calibration_is_refused_in_one_line(
    terrain: Raster, tmp_path: Path
) -> None:
    plain = write_untrained_checkpoint(tmp_path / "plain.safetensors", channels=4)
    source = write_geotiff(tmp_path / "in.tif", terrain.data, terrain.transform, terrain.crs)
    output = tmp_path / "out.tif"
    code, text = run_cli("predict", plain, source, output, "--ensemble", "--device", "cpu")
    assert code == 1
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "no ensemble uncertainty calibration" in lines[0] and CALIBRATION_SCRIPT in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "plain.safetensors"]
    with pytest.raises(CalibrationMissing):
        predict_array_ensemble(plain, terrain.data, cell_sizes(terrain))


def test_an_int16_product_is_refused_with_the_ensemble(
    calibrated: Path, terrain: Raster, tmp_path: Path
) -> None:
    source = write_geotiff(tmp_path / "in.tif", terrain.data, terrain.transform, terrain.crs)
    code, text = run_cli(
        "predict", calibrated, source, tmp_path / "o.tif", "--ensemble", "--dtype", "int16"
    )
    assert code == 1 and "float32" in text and len(text.strip().splitlines()) == 1
    assert not (tmp_path / "o.tif").exists()


def test_help_describes_the_ensemble() -> None:
    code, text = run_cli("predict", "--help")
    assert code == 0
    flat = " ".join(text.split())
    assert "--ensemble" in flat and "8x the compute" in flat and "uncertainty" in flat


def test_the_fit_recovers_known_coefficients() -> None:
    rng = np.random.default_rng(0)
    samples = CalibrationSamples()
    slope = rng.uniform(0, 40, 400_000)
    spread = rng.gamma(2.0, 1.0, slope.size)
    truth = UncertaintyCalibration(
        (2.0, 5.0, 10.0, 20.0, 30.0), (5.0, 10, 20, 30, 40, 50), (1.0, 2, 4, 8, 12, 16)
    )
    error = rng.standard_normal(slope.size) * truth.sigma_m(spread, slope)
    samples.add("a", error[:200_000], spread[:200_000], slope[:200_000])
    samples.add("b", error[200_000:], spread[200_000:], slope[200_000:])
    fitted = fit_calibration(samples, min_cells=1000)
    assert fitted.fitted_on == ("a", "b") and sum(fitted.cells) == slope.size
    np.testing.assert_allclose(fitted.spread_coef_m, truth.spread_coef_m, rtol=0.15)
    # b_k^2 within 15% (or 0.5 m^2 where a_k * spread outweighs it)
    np.testing.assert_allclose(
        np.square(fitted.floor_m), np.square(truth.floor_m), rtol=0.15, atol=0.5
    )
    # fitted on its own cells, the mean of sigma^2 equals the mean squared error per class
    sigma = fitted.sigma_m(spread, slope).astype(np.float64)
    for k in range(6):
        cells = np.searchsorted(truth.slope_edges_deg, slope, side="right") == k
        assert np.mean(sigma[cells] ** 2) == pytest.approx(np.mean(error[cells] ** 2), rel=1e-3)


def test_recording_keeps_the_weights_and_adds_the_calibration(
    calibrated: Path, tmp_path: Path
) -> None:
    plain = write_untrained_checkpoint(tmp_path / "plain.safetensors", channels=8, bias=True)
    source, target = load_checkpoint(plain), load_checkpoint(calibrated)
    assert source.state_dict.keys() == target.state_dict.keys()
    for name, value in source.state_dict.items():
        assert torch.equal(value, target.state_dict[name])
    assert recorded_calibration(target) == CALIBRATION
    with pytest.raises(CalibrationMissing, match=CALIBRATION_SCRIPT):
        recorded_calibration(source)
    with safe_open(str(calibrated), framework="pt") as handle:
        header = json.loads(handle.metadata()["demsr"])
    assert header[CALIBRATION_KEY]["spread_coef_m"] == list(CALIBRATION.spread_coef_m)


def test_the_calibration_script_fits_records_and_reports(
    dem_test_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    # 340 x 400 cells to fit on (enough for classes of 20,000 cells), 100 x 120 to check on
    for name, source, rows, cols in (
        ("fit", "mpl_jacksboro_3s.tif", 340, 400),
        ("check", "landlab_srtmgl3_frontrange.tif", 100, 120),
    ):
        raster = read_raster(dem_test_dir / source)
        write_geotiff(data / f"{name}.tif", raster.data[:rows, :cols], raster.transform, raster.crs)
    plain = write_untrained_checkpoint(tmp_path / "plain.safetensors", channels=4)
    output, report = tmp_path / "calibrated.safetensors", tmp_path / "report.md"
    command = [
        sys.executable,
        str(REPO / "scripts" / "calibrate_uncertainty.py"),
        str(plain),
        "-o",
        str(output),
        "--data",
        str(data),
        "--validation",
        "fit",
        "--held-out",
        "check",
        "--report",
        str(report),
        "--json",
        str(tmp_path / "report.json"),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    subprocess.run(command, check=True, capture_output=True, env=env, timeout=300)
    calibration = recorded_calibration(load_checkpoint(output))
    assert calibration.fitted_on == ("fit",) and sum(calibration.cells) == 340 * 400
    for name, value in load_checkpoint(plain).state_dict.items():
        assert torch.equal(value, load_checkpoint(output).state_dict[name])
    results = json.loads((tmp_path / "report.json").read_text())
    assert [row["raster"] for row in results["held_out_rasters"]] == ["check"]
    overall = results["by_input_slope"][-1]
    assert overall["class"] == "all" and overall["cells"] == 100 * 120
    text = report.read_text()
    assert "| slope class (deg) | cells | RMSE of ensemble mean (m) |" in text
    assert "check" in text and str(plain.name) in text


def test_a_process_predicting_with_and_without_the_ensemble_keeps_them_apart(
    calibrated: Path, terrain: Raster, tmp_path: Path
) -> None:
    source = write_geotiff(tmp_path / "in.tif", terrain.data, terrain.transform, terrain.crs)
    options = {"device": "cpu", "progress": False, "precision": "fp32"}
    first = predict_raster(calibrated, source, tmp_path / "a.tif", ensemble=True, **options)
    plain = predict_raster(calibrated, source, tmp_path / "b.tif", **options)
    again = predict_raster(calibrated, source, tmp_path / "c.tif", ensemble=True, **options)
    with rasterio.open(first) as a, rasterio.open(plain) as b, rasterio.open(again) as c:
        assert (a.count, b.count, c.count) == (2, 1, 2)
        expected = predict_array(calibrated, terrain.data, precision="fp32")
        np.testing.assert_array_equal(b.read(1), expected)
        np.testing.assert_array_equal(a.read(), c.read())
