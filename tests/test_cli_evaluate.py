"""`demsr evaluate` (demsr.cli.evaluate): its JSON and Markdown outputs, kept unless
--overwrite, and a model of another scale refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import SCALING, write_untrained_checkpoint

from demsr.baselines import BASELINES
from demsr.checkpoint import save_checkpoint
from demsr.cli import main
from demsr.model import DEMSRNet, ModelConfig


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_untrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.safetensors")


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
