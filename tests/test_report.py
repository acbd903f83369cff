"""Reports: one page with every method scored on the same cells, the figures and provenance."""

from __future__ import annotations

import base64
import hashlib
import io
import re
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_metrics_csv, write_untrained_checkpoint

from demsr.cli import main
from demsr.evaluate import evaluate
from demsr.evaluation_inputs import inputs_from_raster
from demsr.report import build_report, model_names, write_report


def make_run(folder: Path, seed: int, with_log: bool = True) -> Path:
    """A tiny checkpoint in a run folder, with a three-epoch metrics.csv beside it."""
    folder.mkdir(parents=True)
    metadata = {
        "epoch": 3,
        "metrics": {"best_valid_rmse_m": 12.5},
        "provenance": {"data": {"train_sources": ["/data/a.tif", "/data/b.tif"], "train_pairs": 7}},
    }
    path = write_untrained_checkpoint(folder / "best.safetensors", seed=seed, metadata=metadata)
    if with_log:
        rows = [
            {
                "epoch": epoch,
                "global_step": 8 * epoch,
                "train_loss": 1e-3 / epoch,
                "valid_loss": 2e-3 / epoch,
                "valid_rmse_m": 20.0 / epoch,
                "learning_rate": 1e-4 * 0.9**epoch,
                "epoch_seconds": 1.0,
                "is_best": 1,
            }
            for epoch in (1, 2, 3)
        ]
        write_metrics_csv(folder / "metrics.csv", rows)
    return path


def embedded_pngs(page: str) -> list[np.ndarray]:
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    return [matplotlib.image.imread(io.BytesIO(base64.b64decode(data))) for data in images]


def test_html_report_compares_checkpoints_on_the_same_cells(
    tmp_path: Path, dem_test_dir: Path
) -> None:
    first = make_run(tmp_path / "land", seed=0)
    second = make_run(tmp_path / "ocean", seed=1, with_log=False)
    raster = dem_test_dir / "landlab_srtmgl3_frontrange.tif"
    report = build_report([first, second], raster, device="cpu", progress=False)
    methods = report.evaluation.methods
    assert list(methods)[:2] == ["land/best", "ocean/best"]
    assert {"bilinear", "bicubic", "cubic_spline", "lanczos"} <= set(methods)
    # The same numbers as evaluating the first checkpoint alone.
    alone = evaluate(first, inputs_from_raster(raster, 5), device="cpu", progress=False)
    assert methods["land/best"]["rmse"] == pytest.approx(alone.methods["model"]["rmse"])
    assert methods["lanczos"]["ssim"] == pytest.approx(alone.methods["lanczos"]["ssim"])

    page = write_report(report, tmp_path / "report.html").read_text()
    for name in ("land/best", "ocean/best", "bicubic", "lanczos", "slope 5-15 deg"):
        assert f">{name}<" in page
    images = embedded_pngs(page)
    assert len(images) == 2  # the comparison figure, and the one run with a metrics.csv
    comparison, curves = images
    assert comparison.shape[0] > 1000 and comparison.std() > 0.05
    assert curves.std() > 0.05
    # Provenance: the file's hash, its data, where it came from.
    assert hashlib.sha256(first.read_bytes()).hexdigest() in page
    assert "2 files: a.tif, b.tif" in page
    assert "12.5" in page


def test_markdown_report_writes_its_pictures(tmp_path: Path, tiny_pairs: Path) -> None:
    checkpoint = make_run(tmp_path / "run", seed=0)
    report = build_report(
        [checkpoint], tiny_pairs / "test" / "test.h5", device="cpu", progress=False
    )
    note = report.figure_notes["Low-res input, truth, predictions and errors"]
    assert "largest relief" in note
    path = write_report(report, tmp_path / "report.md")
    text = path.read_text()
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(pictures) == 2
    for picture in pictures:
        image = matplotlib.image.imread(tmp_path / picture)
        assert image.ndim == 3 and image.std() > 0.05
    assert "| run/best |" in text and "| sha256 |" in text


def test_report_refuses_existing_and_unknown_outputs(tmp_path: Path, dem_test_dir: Path) -> None:
    checkpoint = make_run(tmp_path / "run", seed=0)
    raster = str(dem_test_dir / "landlab_srtmgl3_frontrange.tif")
    existing = tmp_path / "report.html"
    existing.write_text("keep me")
    args = ["report", str(checkpoint), "--data", raster, "--device", "cpu", "--no-progress"]
    refused = CliRunner().invoke(main, [*args, "-o", str(existing)])
    assert refused.exit_code == 1 and "already exists" in refused.output
    assert existing.read_text() == "keep me"
    wrong = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "report.pdf")])
    assert wrong.exit_code == 1 and ".html or .md" in wrong.output
    assert not (tmp_path / "report.pdf").exists()
    done = CliRunner().invoke(main, [*args, "-o", str(existing), "--overwrite"])
    assert done.exit_code == 0, done.output
    assert "run/best" in done.output and existing.read_text().startswith("<!DOCTYPE html>")


def test_model_names_are_unique() -> None:
    assert model_names(["runs/a/best.safetensors", "runs/b/best.safetensors"]) == [
        "a/best",
        "b/best",
    ]
    with pytest.raises(ValueError, match="twice"):
        model_names(["runs/a/best.safetensors", "runs/a/best.safetensors"])
