"""How elevations in metres enter and leave the network (:class:`ElevationScaling`: a linear
map, a removed trend, or an interpolated base with back-projection or the exact block-mean
constraint) and the interpolation kernels it and the classical baselines use: PyTorch bicubic
(:func:`upsample_bicubic`), Keys' cubic convolution as GDAL applies it (:func:`upsample_cubic`),
iterative back-projection (:func:`backproject`), the exact block-mean layer
(:func:`constrain_block_means`) and the Gaussian trend (:func:`gaussian_trend`).
:class:`demsr.model.SuperResolver` puts a network and its scaling together; these names are
also importable from :mod:`demsr.model`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from demsr.config_keys import check_known_keys


def _gaussian_radius_px(sigma_px: float) -> int:
    """Taps on each side of a Gaussian of ``sigma_px`` truncated at 3 sigma (0 for no sigma)."""
    return math.ceil(3 * sigma_px) if sigma_px > 0 else 0


@dataclass(frozen=True)
class ElevationScaling:
    """How elevations in metres enter and leave the network.

    ``trend_sigma_px == 0``: a fixed linear map, ``units = (metres - offset_m) / scale_m`` (the
    reference's "scaled to 0..1" is offset = minimum, scale = range; imported weights use the
    identity). ``trend_sigma_px > 0``: the low-res input's trend (a Gaussian smoothing with that
    standard deviation in low-res cells, edges replicated) is taken out before the network and
    its bilinear upsampling added back after, so the network only sees and makes relief:
    ``highres = trend_up + scale_m * net((lowres - trend) / scale_m)``. That makes prediction
    exactly shift-equivariant in elevation (land and sea alike) and is what lets a small model
    train in minutes; ``offset_m`` is unused then. The trend is upsampled with half-pixel
    (cell-centre) registration whatever the network's ``resize``.

    ``base="bicubic"`` adds the network's output to the bicubic interpolation of the input
    instead (half-pixel, PyTorch's a = -0.75 kernel, edges replicated): a network whose output
    starts at zero (``init="residual"``) starts as bicubic interpolation. The input the network
    sees is the same as with ``base="trend"``.

    ``base="cubic"`` uses Keys' cubic convolution with a = -0.5 instead (GDAL's ``cubic``,
    half-pixel, edges replicated; :func:`upsample_cubic`). Unlike a = -0.75 it reproduces
    linear ramps exactly, so it imprints no pattern with the period of the scale on sloping
    terrain (texture index 0.0002 on an SRTM tile, against 0.037 for ``bicubic``; see
    :func:`demsr.metrics.texture_index`).

    ``backprojection_iterations = k > 0`` ends with k steps of iterative back-projection:
    ``highres += up(lowres - block_mean(highres))``, which drives the mean of each
    ``scale`` x ``scale`` block of the output towards its low-res cell (the degradation the
    training pairs are made with). ``up`` is the base's kernel for ``base="cubic"`` and
    PyTorch's bicubic otherwise. It adds no parameters, is differentiable, and makes the
    block means close to the input (on an SRTM tile, 0.13 m RMS after 4 steps, against 4.7 m
    for this bicubic interpolation alone).

    ``block_mean_constraint=True`` ends with an exact projection instead of (or after) those
    steps: the smooth correction ``upsample_cubic(z)`` whose block means are exactly
    ``lowres - block_mean(highres)`` is added (:func:`constrain_block_means`), so every block
    of the output averages to its input cell (to float64 rounding), without the blocky steps
    a per-block constant would add.
    """

    offset_m: float = 0.0
    scale_m: float = 1.0
    trend_sigma_px: float = 0.0
    base: str = "trend"
    backprojection_iterations: int = 0
    block_mean_constraint: bool = False

    def __post_init__(self) -> None:
        values = (self.offset_m, self.scale_m, self.trend_sigma_px)
        if (
            not all(math.isfinite(v) for v in values)
            or self.scale_m <= 0
            or self.trend_sigma_px < 0
        ):
            raise ValueError(
                f"invalid elevation scaling offset_m={self.offset_m} scale_m={self.scale_m} "
                f"trend_sigma_px={self.trend_sigma_px}"
            )
        if self.base not in BASES:
            raise ValueError(f"elevation scaling base must be one of {BASES}, got {self.base!r}")
        if (
            isinstance(self.backprojection_iterations, bool)
            or not isinstance(self.backprojection_iterations, int)
            or self.backprojection_iterations < 0
        ):
            raise ValueError(
                "backprojection_iterations must be a whole number >= 0, got "
                f"{self.backprojection_iterations!r}"
            )
        if not isinstance(self.block_mean_constraint, bool):
            raise ValueError(
                f"block_mean_constraint must be true or false, got {self.block_mean_constraint!r}"
            )

    @property
    def trend_radius_px(self) -> int:
        """Low-res cells on each side that the trend of a cell depends on."""
        return _gaussian_radius_px(self.trend_sigma_px)

    @property
    def reach_px(self) -> int:
        """Low-res cells on each side that the base and the back-projection reach, on top of
        what the network and the trend reach (see ``SuperResolver.margin_px``)."""
        reach = BICUBIC_REACH_PX * self.backprojection_iterations
        return reach + (BLOCK_MEAN_REACH_PX if self.block_mean_constraint else 0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ElevationScaling:
        """The scaling from a checkpoint header (keys missing in older files keep their
        defaults: trend base, no back-projection, no block-mean constraint)."""
        check_known_keys(cls, values, "elevation scaling")
        converted: dict[str, Any] = {}
        for key, value in values.items():
            if key == "base":
                converted[key] = str(value)
            elif key == "block_mean_constraint":
                converted[key] = value
            elif key == "backprojection_iterations":
                converted[key] = value if isinstance(value, int) else float("nan")
            else:
                converted[key] = float(value)
        return cls(**converted)


BASES: tuple[str, ...] = ("trend", "bicubic", "cubic")
# Low-res cells on each side that a half-pixel bicubic upsampling reads (4 taps around a point
# within half a cell of the parent cell's centre).
BICUBIC_REACH_PX = 2
# Low-res cells on each side that the block-mean constraint reaches: its low-res solve decays
# by about 0.19 per cell (x5, a = -0.5), below 1e-9 of a cell's residual after 12 cells, plus
# the cubic upsampling of the solution.
BLOCK_MEAN_REACH_PX = 12 + BICUBIC_REACH_PX
# Keys' cubic convolution parameter of GDAL's cubic resampling (and of ``base="cubic"``).
KEYS_A = -0.5


def upsample_bicubic(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic resize of (N,C,h,w) to (N,C,h*scale,w*scale), half-pixel mapping, edges
    replicated (PyTorch's kernel, a = -0.75)."""
    height, width = x.shape[-2:]
    return F.interpolate(
        x, size=(height * scale, width * scale), mode="bicubic", align_corners=False
    )


def keys_kernel(x: float, a: float = KEYS_A) -> float:
    """Keys' (1981) cubic convolution kernel at offset ``x`` (cells); zero beyond 2 cells."""
    x = abs(x)
    if x <= 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
    if x < 2:
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return 0.0


def _cubic_taps(scale: int, a: float) -> torch.Tensor:
    """(scale, 5) float64 weights of the low-res cells i-2..i+2 for the ``scale`` output cells
    of cell i, half-pixel mapping (output phase p sits at i + (p + 0.5) / scale - 0.5)."""
    taps = torch.zeros(scale, 5, dtype=torch.float64)
    for phase in range(scale):
        position = (phase + 0.5) / scale - 0.5
        for index, offset in enumerate(range(-2, 3)):
            taps[phase, index] = keys_kernel(offset - position, a)
    return taps


def upsample_cubic(x: torch.Tensor, scale: int, a: float = KEYS_A) -> torch.Tensor:
    """Cubic-convolution resize of (N,C,h,w) to (N,C,h*scale,w*scale): Keys' kernel with
    parameter ``a`` (default -0.5, GDAL's ``cubic``; PyTorch's ``bicubic`` is a = -0.75),
    half-pixel mapping, edges replicated (a constant comes back exactly, edges included).

    With a = -0.5 a linear ramp is reproduced exactly, so sloping terrain gets no pattern with
    the period of the scale. Computed as two separable 5-tap convolutions, one output channel
    per phase, interleaved.
    """
    batch, channels, height, width = x.shape
    taps = _cubic_taps(scale, a).to(device=x.device, dtype=x.dtype)
    padded = F.pad(x.reshape(batch * channels, 1, height, width), (2, 2, 2, 2), mode="replicate")
    rows = F.conv2d(padded, taps.view(scale, 1, 5, 1))  # (B, scale, h, w + 4)
    rows = rows.permute(0, 2, 1, 3).reshape(batch * channels, 1, height * scale, width + 4)
    cells = F.conv2d(rows, taps.view(scale, 1, 1, 5))  # (B, scale, h * scale, w)
    return cells.permute(0, 2, 3, 1).reshape(batch, channels, height * scale, width * scale)


def _upsampler(base: str) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """The kernel that a scaling's back-projection spreads residuals with (see
    ``ElevationScaling``): the cubic base's own, else PyTorch's bicubic."""
    return upsample_cubic if base == "cubic" else upsample_bicubic


def backproject(
    highres: torch.Tensor,
    lowres: torch.Tensor,
    iterations: int,
    upsample: Callable[[torch.Tensor, int], torch.Tensor] = upsample_bicubic,
) -> torch.Tensor:
    """``iterations`` steps of ``highres += upsample(lowres - block_mean(highres))``.

    ``highres`` is (N,1,h*s,w*s) and ``lowres`` (N,1,h,w), both in metres; the block means of
    the result approach ``lowres``. The steps run in float64 (one channel: cheap), so that
    rounding does not build up; the result has ``highres``'s dtype.
    """
    if iterations == 0:
        return highres
    scale = highres.shape[-1] // lowres.shape[-1]
    result, target = highres.double(), lowres.double()
    for _ in range(iterations):
        residual = target - F.avg_pool2d(result, scale)
        result = result + upsample(residual, scale)
    return result.to(highres.dtype)


_SOLVERS: dict[tuple[int, int], torch.Tensor] = {}


def _block_mean_solver(length: int, scale: int) -> torch.Tensor:
    """The (length, length) float64 inverse of the 1-D map z -> block_mean(upsample_cubic(z))
    along one axis (edges replicated), cached by (length, scale)."""
    key = (length, scale)
    if key not in _SOLVERS:
        impulses = torch.eye(length, dtype=torch.float64).view(length, 1, length, 1)
        responses = upsample_cubic(impulses, scale)[:, 0, :, 0]  # (impulse, length * scale)
        operator = responses.view(length, length, scale).mean(-1).T  # [block, impulse]
        if len(_SOLVERS) > 64:  # tiles come in a few sizes; bound the cache all the same
            _SOLVERS.clear()
        _SOLVERS[key] = torch.linalg.inv(operator)
    return _SOLVERS[key]


def constrain_block_means(highres: torch.Tensor, lowres: torch.Tensor) -> torch.Tensor:
    """``highres`` plus the smooth correction that makes each ``scale`` x ``scale`` block mean
    equal its cell of ``lowres`` exactly.

    The residual ``r = lowres - block_mean(highres)`` is spread as ``upsample_cubic(z)``, with
    ``z`` solving ``block_mean(upsample_cubic(z)) = r``: a separable linear system (one small
    matrix per axis), solved in float64, hence exact to rounding and differentiable. This is
    the limit that back-projection with the cubic kernel converges to. ``highres`` is
    (N,1,h*s,w*s) and ``lowres`` (N,1,h,w), metres; the result has ``highres``'s dtype. The
    solution at a cell depends on residuals up to ``BLOCK_MEAN_REACH_PX`` cells away (it
    decays by about 0.19 per cell).
    """
    height, width = lowres.shape[-2:]
    scale = highres.shape[-1] // width
    result = highres.double()
    residual = lowres.double() - F.avg_pool2d(result, scale)
    rows = _block_mean_solver(height, scale).to(residual.device)
    cols = _block_mean_solver(width, scale).to(residual.device)
    solution = rows @ residual @ cols.T
    return (result + upsample_cubic(solution, scale)).to(highres.dtype)


def gaussian_trend(x: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Separable Gaussian smoothing of (N,1,h,w), truncated at 3 sigma, edges replicated."""
    radius = _gaussian_radius_px(sigma_px)
    # A few taps, computed in float64 on the CPU (the same bits on every device), moved once.
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (taps / sigma_px) ** 2)
    kernel = (kernel / kernel.sum()).to(device=x.device, dtype=x.dtype)
    padded = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(rows, kernel.view(1, 1, -1, 1))
