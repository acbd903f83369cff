"""The public Python API: what ``import demsr`` offers, and the functions made for scripts and
notebooks (predict and evaluate on arrays, trainer callbacks), used as a scientist would."""

from __future__ import annotations

import ast
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from conftest import DEM_TEST, REPO, read_metrics_rows, tiny_overrides, write_untrained_checkpoint
from rasterio.windows import Window

import demsr
from demsr.checkpoint import load_checkpoint
from demsr.config import load_config
from demsr.evaluation_inputs import inputs_from_raster
from demsr.train import BEST, METRIC_FIELDS, EpochRecord, Trainer, TrainerCallback, TrainResult

JACKSBORO = DEM_TEST / "mpl_jacksboro_3s.tif"  # 3", 344 x 403, no nodata
FRONT_RANGE = DEM_TEST / "landlab_srtmgl3_frontrange.tif"  # 3", 144 x 240


# --------------------------------------------------------------------------------------------
# import demsr
# --------------------------------------------------------------------------------------------


def _run_python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_demsr_does_not_import_torch() -> None:
    out = _run_python(
        "import sys, demsr\n"
        "print('torch' in sys.modules)\n"
        "demsr.read_raster, demsr.pretrained_path, demsr.bundled_dem\n"  # no torch needed
        "print('torch' in sys.modules)\n"
        "demsr.Trainer\n"
        "print('torch' in sys.modules)\n"
    )
    assert out.split() == ["False", "False", "True"]


def test_every_public_name_resolves_to_its_module_object() -> None:
    exported = [name for name in demsr.__all__ if name != "__version__"]
    assert len(exported) == len(set(exported))
    for name in exported:
        value = getattr(demsr, name)
        module = sys.modules[demsr._MODULE_OF[name]]
        assert value is getattr(module, name), name
    assert set(exported) <= set(dir(demsr))
    assert demsr.__version__


def test_public_names_agree_with_the_type_checking_imports() -> None:
    """``__all__``, the lazy table and the imports type checkers see list the same names."""
    tree = ast.parse(Path(demsr.__file__).read_text())
    guarded = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
    )
    seen = {
        alias.name: node.module
        for node in guarded.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert seen == demsr._MODULE_OF
    assert set(demsr.__all__) == {"__version__", *seen}


def test_unknown_names_fail_and_no_public_name_hides_a_submodule() -> None:
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        demsr.no_such_name  # noqa: B018
    submodules = {module.name for module in pkgutil.iter_modules(demsr.__path__)}
    assert {"evaluate", "predict", "train", "io"} <= submodules
    assert not submodules & set(demsr.__all__)
    out = _run_python(
        "import demsr, demsr.evaluate as module\n"
        "from demsr import *\n"
        "print(module.__name__, Trainer.__name__, predict_array.__name__)"
    )
    assert out.split() == ["demsr.evaluate", "Trainer", "predict_array"]


# --------------------------------------------------------------------------------------------
# Rasters and arrays
# --------------------------------------------------------------------------------------------


def test_read_raster_window_keeps_georeferencing() -> None:
    whole = demsr.read_raster(JACKSBORO)
    part = demsr.read_raster(JACKSBORO, window=Window(30, 20, 100, 50))  # col, row, width, height
    assert part.data.shape == (50, 100) and part.data.dtype == np.float32
    np.testing.assert_array_equal(part.data, whole.data[20:70, 30:130])
    # Its own transform: the window's top-left cell is cell (20, 30) of the file.
    assert part.transform == whole.transform @ Affine.translation(30, 20)
    assert part.crs == whole.crs and part.nodata == whole.nodata


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_untrained_checkpoint(tmp_path_factory.mktemp("api") / "model.safetensors")


def test_predict_array_takes_a_checkpoint_file_a_checkpoint_or_a_resolver(
    checkpoint_path: Path,
) -> None:
    lowres = demsr.degrade(demsr.read_raster(FRONT_RANGE).data[:140, :240], 5)  # (28, 48)
    lowres[3:5, 7:9] = np.nan
    before = lowres.copy()
    checkpoint = demsr.load_checkpoint(checkpoint_path)
    from_path = demsr.predict_array(checkpoint_path, lowres)
    from_checkpoint = demsr.predict_array(checkpoint, lowres, device="auto")
    from_resolver = demsr.predict_array(checkpoint.build_resolver(), lowres.tolist())
    assert from_path.shape == (140, 240) and from_path.dtype == np.float32
    np.testing.assert_allclose(from_path, from_checkpoint, rtol=0, atol=1e-3)  # auto: any device
    np.testing.assert_array_equal(from_path, from_resolver)
    # Nodata stays nodata over its 5 x 5 footprint, the caller's array is left alone.
    assert np.isnan(from_path[15:25, 35:45]).all()
    assert np.isfinite(from_path).sum() == from_path.size - 4 * 25
    np.testing.assert_array_equal(lowres, before)


def test_inputs_from_arrays_match_the_rasters() -> None:
    raster = demsr.read_raster(JACKSBORO)
    from_file = inputs_from_raster(JACKSBORO, 5)
    degraded = demsr.inputs_from_arrays(
        raster.data, scale=5, transform=raster.transform, crs=raster.crs
    )
    given = demsr.inputs_from_arrays(
        from_file.highres[0], from_file.lowres[0], cell_size_m=(70, 90)
    )
    for inputs in (degraded, given):
        assert inputs.scale == 5 and inputs.highres.shape == (1, 340, 400)
        np.testing.assert_array_equal(inputs.lowres, from_file.lowres)
        np.testing.assert_array_equal(inputs.highres, from_file.highres)
    np.testing.assert_allclose(degraded.dx_m, from_file.dx_m)
    np.testing.assert_allclose(degraded.dy_m, from_file.dy_m)
    assert given.dx_m is not None and (given.dx_m == 70).all() and (given.dy_m == 90).all()
    # Without cell sizes slope and aspect cannot be scored.
    assert demsr.inputs_from_arrays(raster.data, scale=5).dx_m is None


def test_inputs_from_arrays_refuses_inconsistent_shapes() -> None:
    highres = np.zeros((2, 40, 60), np.float32)
    assert demsr.inputs_from_arrays(highres, np.zeros((2, 8, 12))).scale == 5
    with pytest.raises(ValueError, match="give scale"):
        demsr.inputs_from_arrays(highres)
    with pytest.raises(ValueError, match="one integer scale"):
        demsr.inputs_from_arrays(highres, np.zeros((2, 8, 11)))
    with pytest.raises(ValueError, match="x5, not x4"):
        demsr.inputs_from_arrays(highres, np.zeros((2, 8, 12)), scale=4)
    with pytest.raises(ValueError, match="does not match"):
        demsr.inputs_from_arrays(highres, np.zeros((8, 12)))


def test_evaluate_array_equals_evaluate_raster(checkpoint_path: Path, tmp_path: Path) -> None:
    raster = demsr.read_raster(FRONT_RANGE)
    options = {"baselines": ["bicubic"], "device": "cpu", "progress": False}
    on_arrays = demsr.evaluate_array(
        checkpoint_path, raster.data, transform=raster.transform, crs=raster.crs, **options
    )
    on_file = demsr.evaluate_raster(checkpoint_path, FRONT_RANGE, **options)
    lowres = demsr.degrade_raster(FRONT_RANGE, tmp_path / "lowres.tif", 5)
    on_files = demsr.evaluate_raster(checkpoint_path, FRONT_RANGE, lowres, **options)
    assert set(on_arrays.methods) == {"model", "bicubic"}
    assert on_arrays.cells == 140 * 240
    for other in (on_file, on_files):
        assert other.cells == on_arrays.cells
        for method, values in on_arrays.methods.items():
            for key in ("rmse", "bias", "slope_rmse_deg"):
                assert other.methods[method][key] == pytest.approx(values[key], rel=1e-5)
    assert on_arrays.to_dict()["methods"]["bicubic"]["rmse"] > 0


def test_evaluate_array_with_a_given_lowres_scores_that_input(checkpoint_path: Path) -> None:
    truth = demsr.read_raster(FRONT_RANGE).data[:140, :240]
    options = {"baselines": ["bilinear"], "device": "cpu", "progress": False}
    plain = demsr.evaluate_array(checkpoint_path, truth, **options)
    # A biased input (100 m too high): the model (shift-equivariant) and the baseline inherit it.
    lowres = demsr.degrade(truth, 5) + 100.0
    shifted = demsr.evaluate_array(checkpoint_path, truth, lowres, **options)
    for method in ("model", "bilinear"):
        bias = shifted.methods[method]["bias"]
        assert bias == pytest.approx(plain.methods[method]["bias"] + 100.0, abs=0.01)
    assert shifted.methods["bilinear"]["slope_rmse_deg"] is None  # no cell sizes given


# --------------------------------------------------------------------------------------------
# Training with callbacks
# --------------------------------------------------------------------------------------------


class Recorder(TrainerCallback):
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.steps: list[tuple[int, float]] = []
        self.epochs: list[EpochRecord] = []
        self.result: TrainResult | None = None
        self.trainable_at_start: int | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        self.calls.append("start")
        self.trainable_at_start = demsr.count_parameters(trainer.model, trainable_only=True)

    def on_step_end(self, trainer: Trainer, global_step: int, loss: float) -> None:
        self.calls.append("step")
        self.steps.append((global_step, loss))

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        self.calls.append("epoch")
        self.epochs.append(record)

    def on_train_end(self, trainer: Trainer, result: TrainResult) -> None:
        self.calls.append("end")
        self.result = result


def test_trainer_callbacks_follow_fit_and_finetune(tiny_pairs: Path, tmp_path: Path) -> None:
    recorder = Recorder()
    config = load_config(None, tiny_overrides(tiny_pairs, tmp_path / "fit", "train.epochs=2"))
    result = Trainer(config, progress=False, callbacks=[recorder]).fit()

    assert recorder.calls == ["start", *["step"] * 8, "epoch", *["step"] * 8, "epoch", "end"]
    assert [step for step, _ in recorder.steps] == list(range(1, 17))
    assert all(np.isfinite(loss) and loss > 0 for _, loss in recorder.steps)
    assert recorder.result == result
    # The records are what metrics.csv holds.
    rows = read_metrics_rows(tmp_path / "fit")
    assert rows == [
        {key: str(value) for key, value in record.csv_row().items()} for record in recorder.epochs
    ]
    assert list(rows[0]) == METRIC_FIELDS
    assert recorder.epochs[-1].global_step == result.global_step == 16
    best = min(recorder.epochs, key=lambda record: record.valid_loss)
    assert best.is_best and best.valid_rmse_m == pytest.approx(result.best_valid_rmse_m)

    tuned = Recorder()
    config = load_config(None, tiny_overrides(tiny_pairs, tmp_path / "tune", "train.epochs=1"))
    Trainer(config, progress=False, callbacks=[tuned]).finetune(
        tmp_path / "fit" / BEST, freeze="all-but-tail"
    )
    assert tuned.calls[0] == "start" and tuned.calls[-2:] == ["epoch", "end"]
    full = demsr.count_parameters(load_checkpoint(tmp_path / "fit" / BEST).build_model())
    assert tuned.trainable_at_start is not None and 0 < tuned.trainable_at_start < full


def test_a_failing_callback_stops_the_run_and_it_resumes(tiny_pairs: Path, tmp_path: Path) -> None:
    class StopAfterFirstEpoch(TrainerCallback):
        def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
            raise RuntimeError("enough")

    run = tmp_path / "run"
    config = load_config(None, tiny_overrides(tiny_pairs, run, "train.epochs=2"))
    with pytest.raises(RuntimeError, match="enough"):
        Trainer(config, progress=False, callbacks=[StopAfterFirstEpoch()]).fit()
    assert [row["epoch"] for row in read_metrics_rows(run)] == ["1"]
    result = Trainer(config, progress=False).fit(resume=True)
    assert result.epochs_run == 2 and result.global_step == 16


# --------------------------------------------------------------------------------------------
# The Python API page's example
# --------------------------------------------------------------------------------------------


def _api_page_example() -> str:
    text = (REPO / "docs" / "python-api.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S)
    assert block is not None, "docs/python-api.md has no python example"
    return block.group(1)


def test_api_page_example_runs_as_pasted(tmp_path: Path) -> None:
    code = _api_page_example()
    lines = [line for line in code.strip().splitlines() if line.strip()]
    assert len(lines) <= 12, "the Python API page promises a short example"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env={**os.environ, "MPLBACKEND": "Agg"},
    )
    assert done.returncode == 0, done.stderr
    assert "bicubic" in done.stdout
    assert (tmp_path / "comparison.png").stat().st_size > 10_000
