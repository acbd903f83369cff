"""A degradation that makes block means look like real coarse products.

A real 15" product (GEBCO, SRTM15+) differs from the block mean of the truth under it by 10-35 m
RMS on land: other source data, other processing, another registration. A model trained only on
exact block means treats such an input as exact. :class:`DegradationModel` turns a high-res patch
into a low-res one the way a product does, drawn per patch:

1. a sub-cell shift of the high-res patch (``shift_mean_px`` + N(0, ``shift_sigma_px``) per axis,
   in high-res cells, bilinear, edges repeated);
2. Gaussian smoothing (``smoothing_sigma_px`` high-res cells);
3. the block mean over ``scale`` x ``scale`` cells (:func:`demsr.prepare.degrade`);
4. a bias (``bias_m`` + N(0, ``bias_sigma_m``));
5. spatially correlated Gaussian noise (white noise smoothed by a Gaussian of
   ``noise_correlation_px`` low-res cells, rescaled to unit variance) whose RMS depends on the
   slope class of the low-res cell (``noise_rms_m[k]`` for ``slope_classes_deg[k]``; slope of the
   high-res patch, averaged over each block), times a per-patch factor
   exp(s N(0, 1) - s^2) with s = ``noise_scale_sigma`` (its mean square is 1);
6. rounding to whole metres with probability ``round_probability`` (GEBCO is int16).

With every parameter at zero (:meth:`DegradationModel.identity`) it is the exact block mean.

Its parameters are fitted on real pairs, and the statistics it must reproduce compared, by
:mod:`demsr.calibration` (``demsr calibrate``); ``calibrate`` stays importable from here.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy import ndimage

from demsr.metrics import SLOPE_CLASSES_DEG, slope_deg
from demsr.prepare import degrade

log = logging.getLogger(__name__)

# High-res cell size assumed for slopes when apply() is given none (3" near 35 degrees N/S).
NOMINAL_CELL_SIZE_M = 80.0


@dataclass(frozen=True)
class DegradationModel:
    """How a real product degrades the truth (see the module docstring). Lengths in cells:
    ``*_px`` of the high-res grid, except ``noise_correlation_px`` (low-res cells)."""

    shift_mean_px: tuple[float, float] = (0.0, 0.0)  # (east, south) shift of the truth
    shift_sigma_px: float = 0.0
    smoothing_sigma_px: float = 0.0
    bias_m: float = 0.0
    bias_sigma_m: float = 0.0
    slope_classes_deg: tuple[tuple[float, float], ...] = SLOPE_CLASSES_DEG
    noise_rms_m: tuple[float, ...] = (0.0,) * len(SLOPE_CLASSES_DEG)
    noise_correlation_px: float = 0.0
    noise_scale_sigma: float = 0.0
    round_probability: float = 0.0
    highres_cell_size_m: float = NOMINAL_CELL_SIZE_M
    fitted_on: tuple[str, ...] = ()  # the pairs it was fitted on (provenance)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shift_mean_px", tuple(float(v) for v in self.shift_mean_px))
        object.__setattr__(
            self,
            "slope_classes_deg",
            tuple((float(lo), float(hi)) for lo, hi in self.slope_classes_deg),
        )
        object.__setattr__(self, "noise_rms_m", tuple(float(v) for v in self.noise_rms_m))
        object.__setattr__(self, "fitted_on", tuple(str(v) for v in self.fitted_on))
        if len(self.shift_mean_px) != 2:
            raise ValueError(f"shift_mean_px must be (east, south), got {self.shift_mean_px!r}")
        if len(self.noise_rms_m) != len(self.slope_classes_deg):
            raise ValueError(
                f"noise_rms_m has {len(self.noise_rms_m)} values for "
                f"{len(self.slope_classes_deg)} slope classes"
            )
        for name in (
            "shift_sigma_px",
            "smoothing_sigma_px",
            "bias_sigma_m",
            "noise_correlation_px",
            "noise_scale_sigma",
        ):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
        if any(not math.isfinite(v) or v < 0 for v in self.noise_rms_m):
            raise ValueError(f"noise_rms_m must be finite and >= 0, got {self.noise_rms_m!r}")
        if not 0.0 <= self.round_probability <= 1.0:
            raise ValueError(f"round_probability must be in 0..1, got {self.round_probability!r}")
        if not self.highres_cell_size_m > 0:
            raise ValueError(f"highres_cell_size_m must be > 0, got {self.highres_cell_size_m!r}")

    @classmethod
    def identity(cls) -> DegradationModel:
        """The exact block mean."""
        return cls()

    # --- YAML -----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["shift_mean_px"] = list(self.shift_mean_px)
        values["slope_classes_deg"] = [list(c) for c in self.slope_classes_deg]
        values["noise_rms_m"] = list(self.noise_rms_m)
        values["fitted_on"] = list(self.fitted_on)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "degradation") -> DegradationModel:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown degradation key(s) {', '.join(unknown)}")
        try:
            return cls(**values)
        except TypeError as exc:
            raise ValueError(f"{source}: {exc}") from None

    def to_yaml(self, path: str | os.PathLike[str]) -> Path:
        """Write the model as YAML (the file appears only when complete)."""
        from demsr.io import atomic_path

        with atomic_path(path) as tmp:
            text = "# demsr degradation model (demsr calibrate; see demsr/degradation.py)\n"
            tmp.write_text(text + yaml.safe_dump(_rounded(self.to_dict()), sort_keys=False))
        return Path(path)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> DegradationModel:
        """Read a model written by :meth:`to_yaml`; unknown keys are refused (ValueError)."""
        try:
            values = yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of degradation parameters")
        return cls.from_dict(values, os.fspath(path))

    # --- Applying ---------------------------------------------------------------------------

    def apply(
        self,
        highres_m: np.ndarray,
        scale: int,
        rng: np.random.Generator,
        *,
        cell_size_m: tuple[float, float] | None = None,
    ) -> np.ndarray:
        """The degraded low-res patch, metres, (..., H/scale, W/scale) from (..., H, W).

        Each (H, W) image gets its own draws from ``rng``. NaN (nodata) cells are filled from
        their nearest neighbours for the shift and smoothing; a low-res cell over any NaN is NaN
        (as in :func:`demsr.prepare.degrade`). ``cell_size_m`` (x, y) of the high-res cells
        sets the slope classes; default ``highres_cell_size_m`` square. The dtype follows
        :func:`demsr.prepare.degrade`.
        """
        values = np.asarray(highres_m)
        if values.ndim < 2:
            raise ValueError(f"expected an array (..., H, W), got shape {values.shape}")
        out_dtype = np.result_type(values.dtype, np.float32)
        images = values.reshape((-1, *values.shape[-2:]))
        result = np.stack([self._apply_one(image, scale, rng, cell_size_m) for image in images])
        rows, cols = result.shape[-2:]
        return result.reshape((*values.shape[:-2], rows, cols)).astype(out_dtype, copy=False)

    def _apply_one(
        self,
        highres_m: np.ndarray,
        scale: int,
        rng: np.random.Generator,
        cell_size_m: tuple[float, float] | None,
    ) -> np.ndarray:
        truth = np.asarray(highres_m, dtype=np.float64)
        missing = ~np.isfinite(truth)
        filled = fill_missing(truth, missing)
        shift = np.asarray(self.shift_mean_px) + self.shift_sigma_px * rng.standard_normal(2)
        moved = shift_and_smooth(filled, float(shift[0]), float(shift[1]), self.smoothing_sigma_px)
        lowres = degrade(np.where(missing, np.nan, moved), scale).astype(np.float64)
        lowres += self.bias_m + self.bias_sigma_m * rng.standard_normal()
        if any(self.noise_rms_m):
            noise = correlated_noise(lowres.shape, self.noise_correlation_px, rng)
            dx, dy = cell_size_m or (self.highres_cell_size_m, self.highres_cell_size_m)
            classes = slope_class(block_slope_deg(filled, scale, dx, dy), self.slope_classes_deg)
            amplitude = np.asarray(self.noise_rms_m)[classes]
            # Log-normal per patch, with a mean square of 1: the mean noise RMS stays as fitted.
            sigma = self.noise_scale_sigma
            factor = math.exp(sigma * rng.standard_normal() - sigma**2)
            lowres += factor * amplitude * noise
        if self.round_probability > 0 and rng.random() < self.round_probability:
            lowres = np.round(lowres)
        return lowres


def _rounded(value: Any) -> Any:
    """Floats to 4 decimals, for a readable YAML file."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


# --- Pieces shared by apply and the fit -----------------------------------------------------------


def fill_missing(values: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """``values`` with its ``missing`` cells filled from their nearest known ones (zeros when
    none is known)."""
    if not missing.any():
        return values
    if missing.all():
        return np.zeros_like(values)
    from demsr.io import fill_nearest

    return fill_nearest(values)


def shift_and_smooth(
    highres_m: np.ndarray, shift_x_px: float, shift_y_px: float, sigma_px: float
) -> np.ndarray:
    """(H, W) finite heights moved by (``shift_x_px`` east, ``shift_y_px`` south) high-res cells
    (bilinear, edges repeated), then smoothed by a Gaussian of ``sigma_px`` cells. Zeros skip."""
    result = highres_m
    if shift_x_px or shift_y_px:
        result = ndimage.shift(result, (shift_y_px, shift_x_px), order=1, mode="nearest")
    if sigma_px > 0:
        result = ndimage.gaussian_filter(result, sigma_px, mode="nearest")
    return result


def correlated_noise(
    shape: tuple[int, ...], correlation_px: float, rng: np.random.Generator
) -> np.ndarray:
    """Unit-variance Gaussian noise whose correlation falls as exp(-d^2 / (4 s^2)) with the
    distance d in cells (white noise smoothed by a Gaussian of s = ``correlation_px``)."""
    white = rng.standard_normal(shape)
    if correlation_px <= 0:
        return white
    smoothed = ndimage.gaussian_filter(white, correlation_px, mode="wrap")
    impulse = np.zeros((8 * int(math.ceil(correlation_px)) + 9,) * 2)
    impulse[impulse.shape[0] // 2, impulse.shape[1] // 2] = 1.0
    kernel = ndimage.gaussian_filter(impulse, correlation_px, mode="constant")
    return smoothed / math.sqrt(float((kernel**2).sum()))


def block_slope_deg(highres_m: np.ndarray, scale: int, dx_m: float, dy_m: float) -> np.ndarray:
    """Mean slope (degrees, Horn) of the high-res cells of each low-res cell: (H/s, W/s)."""
    padded = np.pad(highres_m, 1, mode="edge")
    slope = slope_deg(padded, dx_m, dy_m)[1:-1, 1:-1]
    return degrade(np.nan_to_num(slope), scale)


def slope_class(slope_deg_: np.ndarray, classes: Sequence[tuple[float, float]]) -> np.ndarray:
    """Index of each slope's class (by its lower edges; below the first: class 0)."""
    lowers = np.asarray([lo for lo, _ in classes])
    return np.clip(np.searchsorted(lowers, slope_deg_, side="right") - 1, 0, len(classes) - 1)


def __getattr__(name: str) -> Any:
    # calibrate, documented here before it moved to demsr.calibration (which imports this
    # module, hence the lookup on first use); docs/python-api.md names its new home.
    if name == "calibrate":
        from demsr.calibration import calibrate

        return calibrate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
