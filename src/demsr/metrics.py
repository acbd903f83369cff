"""Error metrics in metres, computed on valid (finite) cells only."""

from __future__ import annotations

import numpy as np


def _errors(prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    prediction = np.asarray(prediction, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if prediction.shape != truth.shape:
        raise ValueError(f"shape mismatch: prediction {prediction.shape} vs truth {truth.shape}")
    errors = prediction - truth
    errors = errors[np.isfinite(errors)]
    if errors.size == 0:
        raise ValueError("no cell is valid in both prediction and truth")
    return errors


def rmse(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Root-mean-square error over cells finite in both arrays (same units as the inputs)."""
    return float(np.sqrt(np.mean(_errors(prediction, truth) ** 2)))


def mae(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Mean absolute error over cells finite in both arrays."""
    return float(np.mean(np.abs(_errors(prediction, truth))))
