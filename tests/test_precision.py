"""--precision auto picks bf16 only for a model whose bf16 error is recorded in its checkpoint
(on a device with native bf16); the choice and the bound are logged and tagged in the output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

import demsr.precision
from demsr.checkpoint import as_checkpoint, load_checkpoint
from demsr.cli import main
from demsr.engine import predict_array
from demsr.io import read_raster
from demsr.layers import ring_padding
from demsr.precision import choose_precision, recorded_bf16_bound
from demsr.prepare import crop_to_blocks, degrade
from demsr.pretrained import pretrained_path

FIXTURE_CKPT = "mindearth_demnet_b2.ckpt"
FIXTURE_IO = "mindearth_demnet_b2_io.npz"


@pytest.fixture
def native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """Act as a device with native bf16 (as this project's CPU, AMX, is; CI's may not be)."""
    monkeypatch.setattr(demsr.precision, "bf16_supported", lambda device: True)


@pytest.fixture(scope="module")
def imported_reference(reference_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The MindEarth fixture imported as a user does, with the defaults."""
    output = tmp_path_factory.mktemp("imported") / "demnet_b2.safetensors"
    source = reference_dir / FIXTURE_CKPT
    result = CliRunner().invoke(main, ["import-mindearth", str(source), str(output)])
    assert result.exit_code == 0, result.output
    return output


def test_auto_runs_an_unmeasured_model_in_float32_and_matches_the_reference(
    native_bf16: None, imported_reference: Path, reference_dir: Path
) -> None:
    io = np.load(reference_dir / FIXTURE_IO)
    reference = io["y"][0, 0]
    assert recorded_bf16_bound(load_checkpoint(imported_reference)) is None
    auto = predict_array(imported_reference, io["x"][0, 0], "cpu")
    assert float(np.abs(auto - reference).max()) < 1e-4  # float32: 1.3e-5 measured
    # What auto used to pick on such a device: bf16 is off by far more for this model.
    bf16 = predict_array(imported_reference, io["x"][0, 0], "cpu", precision="bf16")
    assert float(np.abs(bf16 - reference).max()) > 1e-3


def test_auto_runs_the_shipped_model_in_bf16_only_where_bf16_is_native(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    shipped = as_checkpoint("lite")
    bound = recorded_bf16_bound(shipped)
    assert bound is not None and 0 < bound < 1.0  # measured on 9 real DEMs
    assert shipped.metadata["bf16_error"]["dems"]  # on which DEMs, with their own figures
    cpu = torch.device("cpu")
    monkeypatch.setattr(demsr.precision, "bf16_supported", lambda device: True)
    assert choose_precision("auto", cpu, bound).precision == "bf16"
    assert choose_precision("auto", cpu, None).precision == "fp32"
    assert choose_precision("fp32", cpu, bound).precision == "fp32"
    monkeypatch.setattr(demsr.precision, "bf16_supported", lambda device: False)
    assert choose_precision("auto", cpu, bound).precision == "fp32"


@pytest.mark.parametrize("model", ["lite", "imported"])
def test_the_precision_and_its_bound_are_logged_and_tagged(
    native_bf16: None,
    imported_reference: Path,
    dem_test_dir: Path,
    tmp_path: Path,
    model: str,
) -> None:
    checkpoint = "lite" if model == "lite" else str(imported_reference)
    source = dem_test_dir / "landlab_west_bijou_1s.tif"
    output = tmp_path / "out.tif"
    args = ["predict", checkpoint, str(source), str(output), "--device", "cpu", "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    with rasterio.open(output) as dst:
        tags = dst.tags()
    if model == "lite":
        assert tags["precision"] == "bf16"
        bound = load_checkpoint(pretrained_path()).metadata["bf16_error"]["max_abs_m"]
        assert tags["bf16_error_bound_m"] == str(bound)
        expected = (
            "precision bf16 (auto: native bf16 on cpu; recorded bf16 error of this model "
            f"<= {bound:.3f} m)"
        )
    else:
        assert tags["precision"] == "fp32"
        assert tags["bf16_error_bound_m"] == "not measured"
        expected = (
            "precision fp32 (auto: bf16 not measured for this model; no bf16 error recorded "
            "for this model)"
        )
    summary = [line for line in result.stderr.splitlines() if line.startswith("predicted ")]
    assert len(summary) == 1 and summary[0].endswith(expected), result.stderr


def test_bf16_asked_for_an_unmeasured_model_warns(
    native_bf16: None, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    choice = choose_precision("bf16", torch.device("cpu"), None)
    assert choice.precision == "bf16"
    assert any("bf16 error of this model was never measured" in m for m in caplog.messages)


def test_the_measured_bf16_error_is_the_worse_of_both_ways_of_padding(dem_test_dir: Path) -> None:
    dem = dem_test_dir / "gmt_tut_relief_30s.tif"
    checkpoint = as_checkpoint(pretrained_path())
    measured = demsr.precision.measure_bf16_error(checkpoint, [dem], max_cells=200)
    data = read_raster(dem).data[:200, :200]
    lowres = degrade(crop_to_blocks(data, 5, str(dem)), 5)
    resolver = checkpoint.build_resolver()
    fp32 = predict_array(resolver, lowres, "cpu", precision="fp32")
    worst = []
    for mode in ("never", "always"):
        with ring_padding(mode):
            bf16 = predict_array(resolver, lowres, "cpu", precision="bf16")
        worst.append(float(np.nanmax(np.abs(bf16 - fp32))))
    assert measured["max_abs_m"] == round(max(worst), 4) > 0
    assert measured["dems"][dem.name]["max_abs_m"] == measured["max_abs_m"]


def test_a_bf16_output_with_holes_gets_no_bound(
    dem_test_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import demsr.engine

    real = demsr.engine.predict_array

    def holed(*args: object, precision: str = "auto", **kwargs: object) -> np.ndarray:
        values = real(*args, precision=precision, **kwargs)  # type: ignore[arg-type]
        if precision == "bf16":
            values[3, 4] = np.nan  # a cell the float32 output has
        return values

    monkeypatch.setattr(demsr.engine, "predict_array", holed)
    dem = dem_test_dir / "pysheds_hydrosheds_3s.tif"
    with pytest.raises(ValueError, match="bf16 output is not finite where the float32"):
        demsr.precision.measure_bf16_error(pretrained_path(), [dem], max_cells=100)
