"""DEM-SRNet: the EDSR-style residual network of Zhang et al. (Science Bulletin, 2022).

The layer names, shapes and order follow the reference implementation (MindEarth ``DEMNet``) so
that its weights load one-to-one::

    x (N,1,h,w) -> conv1 -> body (B residual blocks) -> conv2 -> + x (broadcast to C channels)
                -> conv_up -> bilinear resize x scale -> conv_out -> (N,1,h*scale,w*scale)

Every convolution is 3x3 with padding 1. A residual block is conv3x3 -> ReLU -> conv3x3, scaled by
0.1 and added to the block's input.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

ResizeMode = Literal["legacy", "half_pixel"]
RESIZE_MODES: tuple[str, ...] = ("legacy", "half_pixel")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a DEM-SRNet.

    ``resize`` chooses the bilinear mapping of the upsampling stage: ``legacy`` is the reference's
    asymmetric mapping (source index = output index / scale, clamped at the last row/column),
    needed to run weights trained by the reference; ``half_pixel`` registers pixel centres
    (source = (output + 0.5) / scale - 0.5) and is the default for models demsr trains.
    """

    blocks: int = 16
    channels: int = 64
    scale: int = 5
    bias: bool = False
    resize: ResizeMode = "half_pixel"

    def __post_init__(self) -> None:
        if self.blocks < 0:
            raise ValueError(f"blocks must be >= 0, got {self.blocks}")
        if self.channels < 1:
            raise ValueError(f"channels must be >= 1, got {self.channels}")
        if self.scale < 2:
            raise ValueError(f"scale must be an integer >= 2, got {self.scale}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**values)


PRESETS: dict[str, ModelConfig] = {
    # The reference network exactly: 42 x 256, x5, no biases, legacy resize (50,729,472 params).
    "paper": ModelConfig(blocks=42, channels=256, scale=5, bias=False, resize="legacy"),
    # Small enough to train on a laptop CPU.
    "lite": ModelConfig(blocks=16, channels=64, scale=5, bias=True, resize="half_pixel"),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """Return the named preset (``paper`` or ``lite``), with fields replaced by ``overrides``."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


def _conv3x3(in_channels: int, out_channels: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=bias)


class ResidualBlock(nn.Module):
    """conv3x3 -> ReLU -> conv3x3, scaled by ``res_scale`` and added to the input."""

    def __init__(self, channels: int, bias: bool, res_scale: float = 0.1) -> None:
        super().__init__()
        self.res_conv1 = _conv3x3(channels, channels, bias)
        self.res_conv2 = _conv3x3(channels, channels, bias)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.res_conv2(F.relu(self.res_conv1(x)))


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


class DEMSRNet(nn.Module):
    """DEM super-resolution network.

    Input: (N, 1, h, w) normalised elevations. Output: (N, 1, h*scale, w*scale) in the same
    normalised units. The network has no notion of nodata: callers fill or mask it.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        channels, bias = config.channels, config.bias
        self.conv1 = _conv3x3(1, channels, bias)
        self.body = nn.Sequential(*(ResidualBlock(channels, bias) for _ in range(config.blocks)))
        self.conv2 = _conv3x3(channels, channels, bias)
        self.conv_up = _conv3x3(channels, channels, bias)
        self.conv_out = _conv3x3(channels, 1, bias)

    @property
    def scale(self) -> int:
        return self.config.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv2(self.body(self.conv1(x))) + x  # global residual, broadcast to C
        features = upsample_bilinear(self.conv_up(features), self.config.scale, self.config.resize)
        return self.conv_out(features)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; ``cpu``, ``cuda``, ``cuda:N`` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device
