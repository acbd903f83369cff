"""DEM-SRNet: the EDSR-style residual network of Zhang et al. (Science Bulletin, 2022).

The layer names, shapes and order follow the reference implementation (MindEarth ``DEMNet``) so
that its weights load one-to-one::

    x (N,1,h,w) -> conv1 -> body (B residual blocks) -> conv2 -> + x (broadcast to C channels)
                -> conv_up -> bilinear resize x scale -> conv_out -> (N,1,h*scale,w*scale)

Every convolution is 3x3 with padding 1. A residual block is conv3x3 -> ReLU -> conv3x3, scaled by
0.1 and added to the block's input.

:class:`SuperResolver` is the network with its elevation scaling (metres in, metres out); the
scaling and the interpolation kernels it uses are in :mod:`demsr.scaling`, the network's layers
in :mod:`demsr.layers`. Also here: devices
and precision contexts, the initialisations (``model.init``) and the freeze presets.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from demsr.config_keys import check_known_keys
from demsr.layers import (
    OUTPUT_STAGES,
    RESIZE_MODES,
    OutputStage,
    ResidualBlock,
    ResizeMode,
    conv3x3,
    factored_conv_out,
    upsample_bilinear,
)
from demsr.scaling import (
    BICUBIC_REACH_PX,
    ElevationScaling,
    _upsampler,
    backproject,
    constrain_block_means,
    gaussian_trend,
    upsample_bicubic,
    upsample_cubic,
)

# ElevationScaling, the interpolation kernels and check_known_keys live in demsr.scaling and
# demsr.config_keys; SuperResolver uses them, and they stay importable from here.

log = logging.getLogger(__name__)

# How convolutions see beyond the raster's border: zeros (the reference) or the edge cell
# repeated (a constant map stays constant up to the border).
PADDING_MODES: tuple[str, ...] = ("zeros", "replicate")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a DEM-SRNet.

    ``resize`` chooses the bilinear mapping of the upsampling stage: ``legacy`` is the reference's
    asymmetric mapping (source index = output index / scale, clamped at the last row/column),
    needed to run weights trained by the reference; ``half_pixel`` registers pixel centres
    (source = (output + 0.5) / scale - 0.5) and is the default for models demsr trains.

    ``padding`` is what every convolution reads beyond the raster's border: ``zeros`` (the
    reference's, and the shipped models') or ``replicate`` (the edge cell repeated). With
    ``bias=False`` the network maps a zero input to a zero output whatever the padding; with
    biases, only replicate padding keeps a constant map constant up to the border (zeros pull
    the border cells towards zero).
    """

    blocks: int = 16
    channels: int = 64
    scale: int = 5
    bias: bool = False
    resize: ResizeMode = "half_pixel"
    padding: str = "zeros"

    def __post_init__(self) -> None:
        if self.blocks < 0:
            raise ValueError(f"blocks must be >= 0, got {self.blocks}")
        if self.channels < 1:
            raise ValueError(f"channels must be >= 1, got {self.channels}")
        if self.scale < 2:
            raise ValueError(f"scale must be an integer >= 2, got {self.scale}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.padding not in PADDING_MODES:
            raise ValueError(f"padding must be one of {PADDING_MODES}, got {self.padding!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """The config from a checkpoint header (keys missing in older files keep their
        defaults: zero padding)."""
        check_known_keys(cls, values, "model config")
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


class DEMSRNet(nn.Module):
    """DEM super-resolution network.

    Input: (N, 1, h, w) normalised elevations. Output: (N, 1, h*scale, w*scale) in the same
    normalised units. The network has no notion of nodata: callers fill or mask it.

    ``output_stage="factored"`` (the default) computes the same function as the reference
    layer order (``"direct"``), faster and in less memory (:func:`factored_conv_out`). It is
    also the mixed-precision layout: under bf16 autocast only the residual blocks'
    convolutions (all but 4 of the network's convolutions) run in bf16. The input convolution,
    the residual stream the blocks add to, conv2, the global residual, conv_up and the output
    stage stay float32: their errors are not damped by the blocks' 0.1 scale, and bf16 keeps 8
    bits of mantissa (rounding the elevations themselves would cost metres).
    """

    def __init__(self, config: ModelConfig, output_stage: OutputStage = "factored") -> None:
        super().__init__()
        if output_stage not in OUTPUT_STAGES:
            raise ValueError(f"output_stage must be one of {OUTPUT_STAGES}, got {output_stage!r}")
        self.config = config
        self.output_stage = output_stage
        channels, bias, padding = config.channels, config.bias, config.padding
        self.conv1 = conv3x3(1, channels, bias, padding)
        self.body = nn.Sequential(
            *(ResidualBlock(channels, bias, padding=padding) for _ in range(config.blocks))
        )
        self.conv2 = conv3x3(channels, channels, bias, padding)
        self.conv_up = conv3x3(channels, channels, bias, padding)
        self.conv_out = conv3x3(channels, 1, bias, padding)

    @property
    def scale(self) -> int:
        return self.config.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, resize = self.config.scale, self.config.resize
        if self.output_stage == "direct":
            features = self.conv2(self.body(self.conv1(x))) + x  # global residual, broadcast
            return self.conv_out(upsample_bilinear(self.conv_up(features), scale, resize))
        full_precision = torch.autocast(x.device.type, enabled=False)
        x = x.to(self.conv1.weight.dtype)  # float32, unless the whole model was cast
        with full_precision:
            stream = self.conv1(x)
        # Under autocast the blocks' convolutions run in bf16; their outputs, scaled by 0.1,
        # are added to the float32 stream, which therefore stays float32.
        stream = self.body(stream)
        with full_precision:
            features = self.conv_up(self.conv2(stream.to(x.dtype)) + x)
            return factored_conv_out(features, self.conv_out, scale, resize)


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


class SuperResolver(nn.Module):
    """A DEM-SRNet with its elevation scaling: (N,1,h,w) metres in, (N,1,h*s,w*s) metres out.

    No nodata handling: inputs must be finite (see ``demsr.engine`` for filling and masking).
    """

    def __init__(self, net: DEMSRNet, scaling: ElevationScaling) -> None:
        super().__init__()
        self.net = net
        self.scaling = scaling

    @property
    def scale(self) -> int:
        return self.net.scale

    @property
    def margin_px(self) -> int:
        """Low-res cells of context on each side that make a tile's output exact.

        The network's receptive field plus the reach of the trend removal (or the bicubic
        base's, if larger), plus that of the back-projection steps: a tile read with this
        margin around its core gives the same core output as the whole raster.
        """
        reach = receptive_field_px(self.net.config) + self.scaling.trend_radius_px
        if self.scaling.base in ("bicubic", "cubic"):
            reach = max(reach, BICUBIC_REACH_PX)
        return reach + self.scaling.reach_px

    def forward(self, lowres_m: torch.Tensor) -> torch.Tensor:
        scaling, config = self.scaling, self.net.config
        # Elevations stay float32 even under bf16 autocast (bf16 keeps 8 bits of mantissa: a
        # 3000 m value would be off by up to 8 m); only the network itself may run in bf16.
        full_precision = torch.autocast(lowres_m.device.type, enabled=False)
        with full_precision:
            lowres_m = lowres_m.float()
            if scaling.trend_sigma_px > 0:
                base = gaussian_trend(lowres_m, scaling.trend_sigma_px)
            else:
                base = torch.full_like(lowres_m, scaling.offset_m)
            if scaling.base == "bicubic":
                base_up = upsample_bicubic(lowres_m, config.scale)
            elif scaling.base == "cubic":
                base_up = upsample_cubic(lowres_m, config.scale)
            elif scaling.trend_sigma_px > 0:
                # The trend is a smooth field at cell centres: pixel-centre registration,
                # whatever mapping the network's own resize uses.
                base_up = upsample_bilinear(base, config.scale, "half_pixel")
            else:
                base_up = torch.full_like(lowres_m[..., :1, :1], scaling.offset_m)
            inputs = (lowres_m - base) / scaling.scale_m
        relief = self.net(inputs)
        with full_precision:
            highres = base_up + scaling.scale_m * relief.float()
            highres = backproject(
                highres,
                lowres_m,
                scaling.backprojection_iterations,
                _upsampler(scaling.base),
            )
            if scaling.block_mean_constraint:
                highres = constrain_block_means(highres, lowres_m)
            return highres


PRECISIONS: tuple[str, ...] = ("fp32", "bf16")


def network_autocast(device: torch.device, precision: str) -> torch.autocast:
    """bfloat16 autocast for ``precision == "bf16"`` (a no-op for fp32). ``SuperResolver``
    keeps elevations in float32 inside it, and ``DEMSRNet`` runs only its residual blocks'
    convolutions in bf16."""
    check_precision(precision)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def check_precision(precision: str) -> str:
    """``precision`` if it is one of ``PRECISIONS``, else a ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 convolutions natively: a CUDA GPU that supports bf16,
    or a CPU with AVX512-BF16 or AMX instructions (elsewhere oneDNN emulates bf16, slower than
    float32)."""
    if device.type == "cuda":
        # Ampere (compute capability 8.0) and later; older GPUs emulate bf16.
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)
    return False


def resolve_precision(precision: str, device: torch.device, *, cpu_bf16: bool = True) -> str:
    """``auto`` is bf16 where ``device`` computes it natively (:func:`bf16_supported`), else
    fp32; with ``cpu_bf16=False`` it is bf16 on CUDA only. ``fp32`` and ``bf16`` are kept
    (a warning when bf16 would be emulated)."""
    if precision == "auto":
        native = bf16_supported(device) and (cpu_bf16 or device.type == "cuda")
        return "bf16" if native else "fp32"
    check_precision(precision)
    if precision == "bf16" and not bf16_supported(device):
        log.warning("%s has no native bf16: it is emulated, usually slower than fp32", device)
    return precision


def to_channels_last(module: nn.Module) -> nn.Module:
    """``module`` with its 4-d weights stored as NHWC, in place (values unchanged): the
    convolutions then produce NHWC feature maps, the layout oneDNN and cuDNN convolve
    fastest."""
    return module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def prepare_for_inference(
    model: nn.Module,
    device: torch.device,
    *,
    channels_last: bool = True,
    compile: bool = False,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` (a ``SuperResolver`` or a ``DEMSRNet``) on ``device`` in eval mode, ready for
    fast inference.

    ``channels_last``: see :func:`to_channels_last`. ``compile`` returns
    ``torch.compile(resolver)`` (weights frozen into the graph on the CPU; CUDA graphs on a
    GPU): each new input shape compiles once (tens of seconds), so it pays on large rasters
    of many equal tiles. Call it under ``torch.inference_mode()``.
    """
    model = model.to(device).eval()
    if channels_last:
        to_channels_last(model)
    if not compile:
        return model
    if device.type == "cuda":
        return torch.compile(model, mode="reduce-overhead", dynamic=False)
    return torch.compile(model, dynamic=False, options={"freezing": True})


def flops_per_lowres_px(config: ModelConfig) -> int:
    """Floating-point operations (2 per multiply-add) of one forward pass per low-res input
    cell, counted on the reference layer order: the convolutions at low resolution (conv1, two
    per block, conv2, conv_up) and conv_out on the ``scale**2`` output cells. 101.6 M for the
    paper preset. Bilinear resizing, ReLUs and additions are left out (under 0.1% of the total
    for paper, under 1% for lite)."""
    channels, taps = config.channels, 9
    lowres = taps * channels + (2 * config.blocks + 2) * taps * channels * channels
    highres = config.scale**2 * taps * channels
    return 2 * (lowres + highres)


INIT_SCHEMES: tuple[str, ...] = ("interpolation", "residual", "default")


@torch.no_grad()
def init_as_residual(net: DEMSRNet) -> DEMSRNet:
    """Start the network with a zero output (conv_out zeroed), so that a model with a bicubic
    base (``ElevationScaling.base``) starts as that interpolation and learns corrections to
    it. The other layers keep PyTorch's default initialisation; conv_out's gradient is not
    zero, so the first step moves it and the rest follows."""
    net.conv_out.weight.zero_()
    if net.conv_out.bias is not None:
        net.conv_out.bias.zero_()
    return net


@torch.no_grad()
def init_as_interpolation(net: DEMSRNet) -> DEMSRNet:
    """Start the network as plain bilinear interpolation of its input.

    conv2 is zeroed (the residual body starts silent, as in zero-initialised residual
    branches), conv_up is the identity and conv_out averages the channels, so the first output
    is the bilinear upsampling of the input and training learns the detail on top. The other
    layers keep PyTorch's default initialisation, which breaks the channels' symmetry once
    conv2 moves.
    """
    channels = net.config.channels
    eye = torch.zeros_like(net.conv_up.weight)
    eye[torch.arange(channels), torch.arange(channels), 1, 1] = 1.0
    net.conv2.weight.zero_()
    net.conv_up.weight.copy_(eye)
    net.conv_out.weight.zero_()
    net.conv_out.weight[0, :, 1, 1] = 1.0 / channels
    for layer in (net.conv2, net.conv_up, net.conv_out):
        if layer.bias is not None:
            layer.bias.zero_()
    return net


def receptive_field_px(config: ModelConfig) -> int:
    """Low-res cells on each side of an output cell's low-res parent that the output depends on.

    Every 3x3 convolution at low resolution reaches one cell: conv1, two per residual block,
    conv2 and conv_up. The bilinear resize reads the parent and its neighbour (one cell, in both
    pixel mappings), and conv_out reaches one high-res cell, i.e. ``ceil(1 / scale)`` low-res
    cells. The sum is an upper bound that is at most one cell above the exact reach (the high-res
    neighbours that conv_out reads interpolate from cells the resize already reaches). The global
    residual adds the input cell itself and so reaches no further. For the trend removal's reach
    see ``SuperResolver.margin_px``.
    """
    lowres_convs = 1 + 2 * config.blocks + 1 + 1
    resize = 1
    highres_conv = math.ceil(1 / config.scale)
    return lowres_convs + resize + highres_conv


# Which parameters stay fixed when a trained network is fine-tuned (``demsr finetune``):
# ``default`` freezes the input stage and the first residual blocks (the general features) and
# trains the rest; ``all-but-tail`` trains only the upsampling stage; ``none`` trains everything.
FREEZE_PRESETS: tuple[str, ...] = ("default", "none", "all-but-tail")


def freeze_preset_prefixes(
    config: ModelConfig, preset: str = "default", blocks: int | None = None
) -> list[str]:
    """Module names (dotted prefixes of parameter names) that ``preset`` freezes.

    ``default``: ``conv1`` and the first ``blocks`` residual blocks (``body.0`` ...); None means
    half of ``config.blocks``, rounded down. ``none``: nothing. ``all-but-tail``: everything but
    the upsampling stage (``conv_up`` and ``conv_out``). ``blocks`` is only for ``default`` and
    must be in 0..config.blocks.
    """
    if preset not in FREEZE_PRESETS:
        raise ValueError(f"freeze preset must be one of {FREEZE_PRESETS}, got {preset!r}")
    if blocks is not None:
        if preset != "default":
            raise ValueError(
                f"a number of frozen blocks applies only to the default preset, not {preset!r}"
            )
        if not 0 <= blocks <= config.blocks:
            raise ValueError(
                f"frozen blocks must be in 0..{config.blocks} (the model's residual blocks), "
                f"got {blocks}"
            )
    if preset == "none":
        return []
    if preset == "all-but-tail":
        return ["conv1", "body", "conv2"]
    count = config.blocks // 2 if blocks is None else blocks
    return ["conv1", *(f"body.{index}" for index in range(count))]
