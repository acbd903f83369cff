"""Calibration of the degradation model: its fit recovers a known degradation, and on a real
pair the fitted model reproduces the pair's statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import SHARED, jacksboro_3s

from demsr.calibration import calibrate, fit_pair
from demsr.degradation import DegradationModel

GEBCO = SHARED / "data" / "gebco"
OBAN_PRODUCT = GEBCO / "gebco_2020_n56.53355_s56.34059_w-5.786025_e-5.562533.tif"
OBAN_FINE = SHARED / "data" / "dem" / "train" / "srtm3_N56W006.tif"


def test_fit_recovers_a_known_degradation(dem_test_dir: Path) -> None:
    truth = jacksboro_3s(dem_test_dir)
    known = DegradationModel(
        shift_mean_px=(0.5, -0.5),
        smoothing_sigma_px=1.0,
        bias_m=3.0,
        noise_rms_m=(5.0,) * 5,
        noise_correlation_px=0.7,
    )
    lowres = known.apply(truth, 5, np.random.default_rng(0), cell_size_m=(71.0, 92.5))
    fit = fit_pair("synthetic", lowres, truth, 5, (71.0, 92.5))
    shift_x, shift_y, sigma, rms_m = fit.best
    assert abs(shift_x - 0.5) < 0.15 and abs(shift_y + 0.5) < 0.15
    assert abs(sigma - 1.0) < 0.3
    assert abs(fit.bias_after_m - 3.0) < 1.0
    populated = [rms for rms, n in zip(fit.noise_rms_m, fit.noise_cells, strict=True) if n > 200]
    assert populated and all(abs(rms - 5.0) < 1.0 for rms in populated)
    assert abs(fit.correlation_px - 0.7) < 0.2
    assert rms_m < fit.detrended_rms_m  # the shift and smoothing explain part of it


def test_calibration_on_oban_reproduces_its_statistics() -> None:
    """Tolerances of a model fitted on one real pair, synthetic vs real on the same truth:
    RMS within 15 %, bias within 1.5 m, RMS per slope class (>= 100 cells) within 30 %, RMS
    per spectral band within 35 %."""
    result = calibrate([(OBAN_PRODUCT, OBAN_FINE)], 5, seed=0)
    (real,), (synthetic,) = result.real, result.synthetic
    assert 800 < real.cells == synthetic.cells
    assert 8 < real.rms_m < 12  # GEBCO_2020 vs SRTM3 at Oban: about 10 m on land
    assert abs(synthetic.rms_m - real.rms_m) < 0.15 * real.rms_m
    assert abs(synthetic.bias_m - real.bias_m) < 1.5
    for key, (count, rms) in real.by_slope.items():
        if count >= 100:
            assert abs(synthetic.by_slope[key][1] - rms) < 0.3 * rms, key
    for band_real, band_synthetic in zip(real.spectrum_m, synthetic.spectrum_m, strict=True):
        assert abs(band_synthetic - band_real) < 0.35 * band_real
    (fit,) = result.fits
    assert fit.best[3] < 0.7 * fit.detrended_rms_m  # a half-cell shift explains much of it
    assert "best shift" in result.summary() and "synthetic" in result.summary()
