"""The layers of DEM-SRNet (:mod:`demsr.model`): its 3x3 convolutions, the residual block,
the bilinear upsampling and the factored output stage.

Every convolution is 3x3 with padding 1, of zeros or of the edge cells repeated
(``padding_mode="replicate"``). In inference, a large map's replicate padding is applied
without a padded copy of the map (:func:`replicate_conv3x3`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

ResizeMode = Literal["legacy", "half_pixel"]
RESIZE_MODES: tuple[str, ...] = ("legacy", "half_pixel")

RING_MIN_CELLS = 160 * 160
"""Maps of at least this many cells are convolved by :func:`replicate_conv3x3` in inference."""

RING_MODES: tuple[str, ...] = ("auto", "always", "never")
_ring_mode: ContextVar[str] = ContextVar("demsr_ring_mode", default="auto")


@contextlib.contextmanager
def ring_padding(mode: str) -> Iterator[None]:
    """Within it (in this thread), inference convolves replicate padding with
    :func:`replicate_conv3x3` on maps of :data:`RING_MIN_CELLS` or more (``auto``, as
    everywhere else), on every map (``always``), or never (``never``: a padded copy, as in
    training). Both ways give the same sums, rounded apart in bf16: measuring a model's bf16
    error takes the worse of the two (:func:`demsr.precision.measure_bf16_error`)."""
    if mode not in RING_MODES:
        raise ValueError(f"mode must be one of {RING_MODES}, got {mode!r}")
    token = _ring_mode.set(mode)
    try:
        yield
    finally:
        _ring_mode.reset(token)


_RING_EDGES = (  # (the two edge rows or columns read, their padding, the ring cells written)
    ((slice(None, 2), slice(None)), (1, 1, 1, 0), (slice(None, 1), slice(None))),
    ((slice(-2, None), slice(None)), (1, 1, 0, 1), (slice(-1, None), slice(None))),
    ((slice(None), slice(None, 2)), (1, 0, 1, 1), (slice(None), slice(None, 1))),
    ((slice(None), slice(-2, None)), (0, 1, 1, 1), (slice(None), slice(-1, None))),
)


def padded_conv3x3(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding_mode: str,
    groups: int = 1,
) -> torch.Tensor:
    """A 3x3 convolution (stride 1) of ``x`` padded by one cell of ``padding_mode``: zeros
    within the convolution; replicated edges by :func:`replicate_conv3x3` where
    :func:`_ring_pays`, else on a padded copy (as ``nn.Conv2d`` pads)."""
    if padding_mode == "zeros":
        return F.conv2d(x, weight, bias, padding=1, groups=groups)
    if padding_mode == "replicate" and _ring_pays(x):
        return replicate_conv3x3(x, weight, bias, groups)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode=padding_mode), weight, bias, groups=groups)


def replicate_conv3x3(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int = 1
) -> torch.Tensor:
    """A 3x3 convolution (stride 1) of ``x`` padded by one cell of replicated edges, without
    a padded copy of ``x``: convolved with zero padding, then the border ring, the only cells
    that read the padding, convolved again from its two edge rows or columns with their
    replicated padding. The same sums as convolving the padded map (to rounding: the
    convolution may add them in another order). A padded copy costs passes through memory per
    layer that a large map pays dearly for: the shipped network runs 1.58x faster on a 727-cell
    window without them in bf16 on a 2-core CPU (``benchmarks/ring_padding.md``). Needs at least
    2 x 2 cells; for inference (the ring is written in place)."""
    out = F.conv2d(x, weight, bias, padding=1, groups=groups)
    for (rows, cols), pad, (out_rows, out_cols) in _RING_EDGES:
        strip = F.pad(x[..., rows, cols], pad, mode="replicate")
        out[..., out_rows, out_cols] = F.conv2d(strip, weight, bias, groups=groups)
    return out


class Conv3x3(nn.Conv2d):
    """A 3x3 convolution, stride 1, padding 1 (``padding_mode`` zeros or replicate; built by
    :func:`conv3x3`) through :func:`padded_conv3x3`: in inference, replicate padding of a large
    map goes through :func:`replicate_conv3x3` (no padded copy). The parameters are an
    ``nn.Conv2d``'s."""

    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        return padded_conv3x3(input, weight, bias, self.padding_mode, self.groups)


def _ring_pays(x: torch.Tensor) -> bool:
    """Whether :func:`replicate_conv3x3` convolves ``x``: without gradients (training keeps
    the padded copy: the ring is written in place), on a map of at least 2 x 2 cells, and of
    :data:`RING_MIN_CELLS` or more (on a small one, its four extra convolutions cost more
    than the copy) unless :func:`ring_padding` says otherwise."""
    height, width = x.shape[-2:]
    if torch.is_grad_enabled() or min(height, width) < 2:
        return False
    # torch.compile cannot trace a context variable (a graph break at every convolution): a
    # compiled network takes the default.
    mode = "auto" if torch.compiler.is_compiling() else _ring_mode.get()
    return mode == "always" or (mode == "auto" and height * width >= RING_MIN_CELLS)


def conv3x3(in_channels: int, out_channels: int, bias: bool, padding: str = "zeros") -> Conv3x3:
    return Conv3x3(
        in_channels,
        out_channels,
        kernel_size=3,
        padding=1,
        bias=bias,
        padding_mode=padding,  # type: ignore[arg-type]  # checked by ModelConfig
    )


class ResidualBlock(nn.Module):
    """conv3x3 -> ReLU -> conv3x3, scaled by ``res_scale`` and added to the input."""

    def __init__(
        self, channels: int, bias: bool, res_scale: float = 0.1, padding: str = "zeros"
    ) -> None:
        super().__init__()
        self.res_conv1 = conv3x3(channels, channels, bias, padding)
        self.res_conv2 = conv3x3(channels, channels, bias, padding)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x + 0.1 * branch in one kernel; under autocast the branch is bf16 and x float32.
        branch = self.res_conv2(F.relu(self.res_conv1(x), inplace=True))
        return torch.add(x, branch, alpha=self.res_scale)


def upsample_bilinear(x: torch.Tensor, scale: int, mode: ResizeMode) -> torch.Tensor:
    """Bilinear resize of (N,C,h,w) to (N,C,h*scale,w*scale) with the given pixel mapping."""
    if mode == "half_pixel":
        return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
    # Legacy mapping src = dst / scale, clamped at the last row/column. Replicating the last
    # row/column and resizing h+1 -> h*scale+1 with aligned corners gives exactly that mapping
    # (the step (h+1-1)/(h*scale+1-1) is 1/scale); the extra output row/column is dropped.
    height, width = x.shape[-2:]
    padded = F.pad(x, (0, 1, 0, 1), mode="replicate")
    resized = F.interpolate(
        padded, size=(height * scale + 1, width * scale + 1), mode="bilinear", align_corners=True
    )
    return resized[..., : height * scale, : width * scale]


OutputStage = Literal["factored", "direct"]
OUTPUT_STAGES: tuple[str, ...] = ("factored", "direct")


def factored_conv_out(
    features: torch.Tensor, conv_out: nn.Conv2d, scale: int, mode: ResizeMode
) -> torch.Tensor:
    """``conv_out(upsample_bilinear(features))``, computed mostly at low resolution.

    A 3x3 convolution to O channels is a sum of 9 shifted maps, one per tap, each a channel
    mix of its input; the bilinear resize is linear and acts on each channel alone, so it
    commutes with that mix. Hence: project the C-channel low-res ``features`` to O x 9 channels
    (a 1x1 convolution with conv_out's taps), upsample those few channels, and sum the 9 maps
    shifted by their tap's offset, with conv_out's padding beyond the edges (zeros, or the
    edge cells repeated for ``padding_mode="replicate"``), applied after the upsampling. The
    shift-and-sum is a 3x3 convolution whose weights are 0 or 1
    (exact: each output adds the same 9 products as conv_out). Exact in exact arithmetic,
    gradients included; for C = 64 or 256 the high-resolution maps hold 9 channels instead of
    C, so this stage needs about C/9 times less memory and time.
    """
    weight = conv_out.weight
    out_channels, channels = weight.shape[:2]
    taps = weight.permute(0, 2, 3, 1).reshape(out_channels * 9, channels, 1, 1)
    upsampled = upsample_bilinear(F.conv2d(features, taps), scale, mode)
    # Per output channel (a group of 9 maps), map t is 1 at tap t's position (row t // 3,
    # column t % 3) and 0 elsewhere.
    shift = torch.eye(9, dtype=upsampled.dtype, device=upsampled.device).view(1, 9, 3, 3)
    shift = shift.expand(out_channels, 9, 3, 3)
    return padded_conv3x3(upsampled, shift, conv_out.bias, conv_out.padding_mode, out_channels)
