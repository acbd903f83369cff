"""`demsr calibrate` (demsr.cli.calibrate): the fitted degradation written as a YAML that reads
back, its fits as JSON, and an existing output kept unless --overwrite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import run_split
from conftest import SHARED

from demsr.degradation import DegradationModel

OBAN_PRODUCT = (
    SHARED / "data" / "gebco" / "gebco_2020_n56.53355_s56.34059_w-5.786025_e-5.562533.tif"
)
OBAN_FINE = SHARED / "data" / "dem" / "train" / "srtm3_N56W006.tif"


def test_calibrate_writes_a_degradation_yaml_and_the_fits(tmp_path: Path) -> None:
    output, fits = tmp_path / "degradation.yaml", tmp_path / "fits.json"
    args = ["calibrate", "--pair", OBAN_PRODUCT, OBAN_FINE, "-o", output, "--json", fits]
    code, out, err = run_split(*args)
    assert code == 0, err
    assert "best shift" in out and out.splitlines()[-1] == str(output)
    model = DegradationModel.from_yaml(output)
    recorded = json.loads(fits.read_text())
    assert model.fitted_on == (f"{OBAN_PRODUCT.name} / {OBAN_FINE.name}",)
    assert model.shift_mean_px == pytest.approx(recorded["model"]["shift_mean_px"], abs=1e-4)
    assert model.bias_m == pytest.approx(recorded["model"]["bias_m"], abs=1e-4)
    assert [fit["cells"] for fit in recorded["fits"]] == [recorded["real"][0]["cells"]]

    before = output.read_text()
    code, _, err = run_split(*args)
    assert code == 1 and err.strip().splitlines() == [
        f"demsr: error: {output}: already exists (use --overwrite to replace it)"
    ]
    assert output.read_text() == before
