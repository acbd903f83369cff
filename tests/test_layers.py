"""The network's layers: the bilinear resize mappings, and replicate padding convolved without a
padded copy (the same values as nn.Conv2d's, and what the network computes with it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import demsr.layers
from demsr.layers import Conv3x3, replicate_conv3x3, ring_padding, upsample_bilinear
from demsr.model import DEMSRNet, ModelConfig


def _bilinear_numpy(image: np.ndarray, scale: int, mode: str) -> np.ndarray:
    """Separable bilinear resize of the last two axes, straight from the source-index formula."""

    def resize_axis(a: np.ndarray, axis: int) -> np.ndarray:
        n = a.shape[axis]
        dst = np.arange(n * scale, dtype=np.float64)
        if mode == "legacy":
            src = dst / scale
        else:
            src = np.maximum((dst + 0.5) / scale - 0.5, 0.0)
        src = np.minimum(src, n - 1)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n - 1)
        weight = src - i0
        shape = [1] * a.ndim
        shape[axis] = -1
        weight = weight.reshape(shape)
        return np.take(a, i0, axis=axis) * (1 - weight) + np.take(a, i1, axis=axis) * weight

    return resize_axis(resize_axis(image.astype(np.float64), -2), -1)


@pytest.mark.parametrize("mode", ["legacy", "half_pixel"])
@pytest.mark.parametrize("scale", [2, 3, 5])
def test_upsample_matches_the_mapping(mode: str, scale: int) -> None:
    image = np.random.default_rng(scale).normal(size=(2, 3, 5, 7)).astype(np.float32)
    got = upsample_bilinear(torch.from_numpy(image), scale, mode).numpy()  # type: ignore[arg-type]
    expected = _bilinear_numpy(image, scale, mode)
    assert got.shape == (2, 3, 5 * scale, 7 * scale)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_legacy_and_half_pixel_grids_differ() -> None:
    # The legacy grid starts exactly on the first input pixel; the half-pixel grid is shifted by
    # (scale - 1) / (2 * scale) low-res pixel, so a ramp comes out shifted.
    ramp = torch.arange(6, dtype=torch.float32).expand(1, 1, 6, 6).contiguous()
    legacy = upsample_bilinear(ramp, 5, "legacy")[0, 0, 0]
    half_pixel = upsample_bilinear(ramp, 5, "half_pixel")[0, 0, 0]
    assert legacy[:5].tolist() == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])
    assert half_pixel[10].item() == pytest.approx(1.6)  # (10 + 0.5) / 5 - 0.5
    assert legacy[10].item() == pytest.approx(2.0)


@pytest.mark.parametrize("shape", [(2, 2), (2, 9), (7, 3), (16, 23)])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_replicate_conv3x3_is_the_convolution_of_the_padded_map(
    shape: tuple[int, int], groups: int, bias: bool
) -> None:
    generator = torch.Generator().manual_seed(sum(shape) + groups)
    x = torch.randn(2, 4, *shape, generator=generator, dtype=torch.float64)
    weight = torch.randn(6, 4 // groups, 3, 3, generator=generator, dtype=torch.float64)
    b = torch.randn(6, generator=generator, dtype=torch.float64) if bias else None
    expected = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), weight, b, groups=groups)
    got = replicate_conv3x3(x, weight, b, groups)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_conv3x3_takes_the_ring_in_inference_on_large_maps_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[int, ...]] = []
    real = demsr.layers.replicate_conv3x3
    monkeypatch.setattr(
        demsr.layers,
        "replicate_conv3x3",
        lambda x, *args: calls.append(tuple(x.shape)) or real(x, *args),
    )
    monkeypatch.setattr(demsr.layers, "RING_MIN_CELLS", 20 * 20)
    torch.manual_seed(0)
    conv = Conv3x3(3, 5, kernel_size=3, padding=1, padding_mode="replicate")
    reference = torch.nn.Conv2d(3, 5, kernel_size=3, padding=1, padding_mode="replicate")
    reference.load_state_dict(conv.state_dict())
    large, small = torch.randn(1, 3, 20, 24), torch.randn(1, 3, 19, 20)
    with torch.inference_mode():
        for x in (large, small):
            torch.testing.assert_close(conv(x), reference(x), rtol=1e-6, atol=1e-6)
        assert calls == [(1, 3, 20, 24)]  # the small map is padded as nn.Conv2d pads it
        with ring_padding("never"):
            conv(large)
        with ring_padding("always"):
            conv(small)
        conv(torch.randn(1, 3, 1, 500))  # a single row: no ring to take
    assert calls == [(1, 3, 20, 24), (1, 3, 19, 20)]
    with pytest.raises(ValueError, match="mode must be one of"):
        with ring_padding("sometimes"):
            pass
    # Training keeps the padded copy: gradients flow as through nn.Conv2d.
    conv(large).sum().backward()
    reference(large).sum().backward()
    assert len(calls) == 2
    assert conv.weight.grad is not None and reference.weight.grad is not None
    torch.testing.assert_close(conv.weight.grad, reference.weight.grad)


@pytest.mark.parametrize("padding", ["replicate", "zeros"])
def test_the_network_computes_the_same_values_with_the_ring_as_with_padded_copies(
    monkeypatch: pytest.MonkeyPatch, padding: str
) -> None:
    torch.manual_seed(1)
    config = ModelConfig(blocks=2, channels=8, scale=5, bias=True, padding=padding)
    net = DEMSRNet(config).eval()
    ramp = torch.linspace(0.0, 3.0, 40)
    x = (ramp[:, None] * ramp[None, :] + 0.1 * torch.randn(40, 40))[None, None]
    calls: list[int] = []
    real = demsr.layers.replicate_conv3x3
    monkeypatch.setattr(
        demsr.layers, "replicate_conv3x3", lambda *args: calls.append(1) or real(*args)
    )
    with torch.inference_mode():
        with ring_padding("never"):
            copied = net(x)
        assert calls == []
        with ring_padding("always"):
            ring = net(x)
    torch.testing.assert_close(ring, copied, rtol=0, atol=1e-5)
    assert ring.shape == (1, 1, 200, 200)
    # Every convolution of a replicate-padded network (conv1, two per block, conv2, conv_up and
    # the output stage's), none of a zero-padded one.
    assert len(calls) == (8 if padding == "replicate" else 0)


def test_a_compiled_network_is_one_graph_with_the_ring_in_it() -> None:
    """torch.compile cannot read ring_padding's context variable: a compiled network takes the
    default, the ring on a map this large, without a graph break at each convolution."""
    torch.manual_seed(2)
    net = DEMSRNet(ModelConfig(blocks=1, channels=4, scale=2, padding="replicate")).eval()
    x = torch.rand(1, 1, 160, 160)
    with torch.inference_mode(), ring_padding("always"):
        expected = net(x)
    torch._dynamo.reset()
    with torch.inference_mode():
        explained = torch._dynamo.explain(net)(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    compiled = torch.compile(net, backend="eager", dynamic=False)
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x), expected, rtol=0, atol=1e-6)
