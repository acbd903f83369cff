"""Scores: metrics and breakdowns (land, sea, slope classes) on the cells every method has."""

from __future__ import annotations

import math

import numpy as np
import pytest

from demsr.evaluation_inputs import EvaluationInputs
from demsr.prepare import degrade
from demsr.scoring import score


def synthetic_inputs(truth: np.ndarray, cell_m: float = 30.0) -> EvaluationInputs:
    rows = truth.shape[-2]
    return EvaluationInputs(
        lowres=degrade(truth, 5),
        highres=truth,
        scale=5,
        source="synthetic",
        kind="raster",
        dx_m=np.full((len(truth), rows), cell_m),
        dy_m=np.full((len(truth), rows), cell_m),
    )


def test_score_breaks_errors_down_by_land_and_sea() -> None:
    truth = np.zeros((1, 20, 20), np.float32)
    truth[0, :, :10] = np.linspace(10, 200, 20)[:, None]  # land on the west half
    truth[0, :, 10:] = -np.linspace(10, 200, 20)[:, None]  # sea on the east half
    prediction = truth.copy()
    prediction[0, :, :10] += 1.0
    prediction[0, :, 10:] -= 2.0
    prediction[0, 0, 0] = np.nan  # not scored, for any method
    result = score(synthetic_inputs(truth), {"model": prediction, "exact": truth.copy()})
    assert result.cells == 399
    land, sea = result.breakdown["land"]["model"], result.breakdown["sea"]["model"]
    assert (land["cells"], land["rmse"], land["bias"]) == (
        199,
        pytest.approx(1.0),
        pytest.approx(1.0),
    )
    assert (sea["cells"], sea["rmse"], sea["bias"]) == (
        200,
        pytest.approx(2.0),
        pytest.approx(-2.0),
    )
    overall = result.methods["model"]
    assert overall["rmse"] == pytest.approx(math.sqrt((199 * 1 + 200 * 4) / 399))
    assert overall["max_abs_error"] == pytest.approx(2.0)
    assert overall["bias"] == pytest.approx((199 - 400) / 399)
    # PSNR over the truth's range on the scored cells (the NaN cell excluded).
    data_range = float(np.nanmax(truth) - truth[0].ravel()[1:].min())
    assert result.data_range_m == pytest.approx(data_range)
    assert overall["psnr_db"] == pytest.approx(20 * math.log10(data_range / overall["rmse"]))
    exact = result.methods["exact"]
    assert exact["rmse"] == 0 and exact["ssim"] == pytest.approx(1.0)
    assert exact["slope_rmse_deg"] == 0 and exact["aspect_mae_deg"] == 0
    # The same cell set for every method: the exact method is scored without the NaN cell too.
    assert result.breakdown["land"]["exact"]["cells"] == 199


def test_score_slope_classes_follow_the_truth_slope() -> None:
    cols = np.arange(40, dtype=np.float32)
    truth = np.zeros((1, 40, 40), np.float32)
    truth[0, :, :20] = 0.5 * cols[:20]  # 0.5 m per 30 m cell: about 1 deg
    truth[0, :, 20:] = 10 + 20 * (cols[20:] - 20)  # 20 m per 30 m cell: about 34 deg
    result = score(synthetic_inputs(truth), {"model": truth + 1})
    groups = result.breakdown
    assert groups["slope 0-2 deg"]["model"]["cells"] > 0
    assert groups["slope 30-90 deg"]["model"]["cells"] > 0
    assert "slope 5-15 deg" not in groups  # no such cells (the seam cells are 15-30)
    assert sum(g["model"]["cells"] for k, g in groups.items() if k.startswith("slope")) <= (
        result.cells
    )
