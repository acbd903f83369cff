"""`demsr import-mindearth` (demsr.cli.import_mindearth): a MindEarth checkpoint imported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from cli_helpers import run

from demsr.checkpoint import load_checkpoint


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
