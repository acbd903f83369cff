"""Fast paths: the factored output stage, mixed precision, channels-last and torch.compile give
the reference network's values (exactly to float32 rounding, or within the stated bf16 error)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

import demsr.model
from demsr.checkpoint import load_checkpoint
from demsr.engine import predict_array
from demsr.io import read_raster
from demsr.layers import factored_conv_out, upsample_bilinear
from demsr.model import (
    DEMSRNet,
    ModelConfig,
    SuperResolver,
    bf16_supported,
    flops_per_lowres_px,
    prepare_for_inference,
    preset,
    resolve_precision,
)
from demsr.predict import predict_raster
from demsr.prepare import crop_to_blocks, degrade
from demsr.pretrained import pretrained_path
from demsr.scaling import ElevationScaling

CPU = torch.device("cpu")
needs_native_bf16 = pytest.mark.skipif(
    not bf16_supported(CPU), reason="this CPU has no native bf16 (AMX or AVX512-BF16)"
)


def _random_net(config: ModelConfig, output_stage: str = "factored") -> DEMSRNet:
    """A network whose every weight matters (default init leaves outputs tiny)."""
    torch.manual_seed(0)
    net = DEMSRNet(config, output_stage=output_stage)  # type: ignore[arg-type]
    for parameter in net.parameters():
        torch.nn.init.normal_(parameter, std=0.1)
    return net


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(blocks=2, channels=16, scale=5, bias=True, resize="half_pixel"),
        ModelConfig(blocks=2, channels=16, scale=5, bias=False, resize="legacy"),
        ModelConfig(blocks=1, channels=8, scale=3, bias=True, resize="legacy"),
        ModelConfig(blocks=1, channels=8, scale=2, bias=False, resize="half_pixel"),
    ],
    ids=["x5-half_pixel-bias", "x5-legacy", "x3-legacy-bias", "x2-half_pixel"],
)
def test_factored_output_stage_equals_the_reference_layer_order(config: ModelConfig) -> None:
    factored = _random_net(config)
    direct = _random_net(config, output_stage="direct")
    x = torch.randn(3, 1, 13, 17).cumsum(-1)  # odd sizes: the zero padding at all four edges
    y_factored, y_direct = factored(x), direct(x)
    assert y_factored.shape == (3, 1, 13 * config.scale, 17 * config.scale)
    scale = y_direct.abs().max().item()
    assert (y_factored - y_direct).abs().max().item() < 1e-5 * scale
    # Exact gradients too: training uses the factored stage.
    grads_f = torch.autograd.grad(y_factored.square().mean(), list(factored.parameters()))
    grads_d = torch.autograd.grad(y_direct.square().mean(), list(direct.parameters()))
    names = [name for name, _ in factored.named_parameters()]
    for name, g_f, g_d in zip(names, grads_f, grads_d, strict=True):
        assert (g_f - g_d).abs().max() <= 1e-4 * g_d.abs().max(), name


@pytest.mark.parametrize("resize", ["legacy", "half_pixel"])
def test_factored_stage_with_several_output_channels(resize: str) -> None:
    torch.manual_seed(0)
    conv_out = torch.nn.Conv2d(6, 3, 3, padding=1, bias=True)
    features = torch.randn(2, 6, 9, 11)
    expected = conv_out(upsample_bilinear(features, 4, resize))  # type: ignore[arg-type]
    factored = factored_conv_out(features, conv_out, 4, resize)  # type: ignore[arg-type]
    assert factored.shape == (2, 3, 36, 44)
    torch.testing.assert_close(factored, expected, rtol=0, atol=1e-5)


def test_unknown_output_stage_is_refused() -> None:
    with pytest.raises(ValueError, match="output_stage"):
        DEMSRNet(ModelConfig(blocks=1, channels=4), output_stage="fast")  # type: ignore[arg-type]


def test_bf16_keeps_the_global_residual_in_float32() -> None:
    """Raw metres in (as imported reference weights take them): plain autocast of the reference
    layer order runs conv1 on bf16-rounded elevations and conv_up (which carries the global
    residual) and conv_out in bf16, which costs metres; the factored layout keeps them float32."""
    config = ModelConfig(blocks=2, channels=16, scale=5, resize="legacy")
    x = 3000 + 200 * torch.rand(1, 1, 24, 24).cumsum(-1) / 24
    errors = {}
    with torch.no_grad():
        for stage in ("direct", "factored"):
            net = DEMSRNet(config, output_stage=stage)  # type: ignore[arg-type]
            torch.manual_seed(0)
            net.load_state_dict(DEMSRNet(config).state_dict())
            reference = net(x)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                errors[stage] = (net(x).float() - reference).abs().max().item()
    assert errors["direct"] > 2.0
    assert errors["factored"] < 0.5


def test_channels_last_gives_the_same_values() -> None:
    scaling = ElevationScaling(scale_m=100.0, trend_sigma_px=2.0, base="bicubic")
    plain = SuperResolver(_random_net(preset("lite", blocks=2, channels=16)), scaling)
    fast = SuperResolver(_random_net(preset("lite", blocks=2, channels=16)), scaling)
    fast = prepare_for_inference(fast, CPU)  # type: ignore[assignment]
    assert fast.net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = 500 + 40 * torch.randn(2, 1, 20, 26).cumsum(-1)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-6, atol=1e-3)


def test_auto_precision_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for capability, native in (((7, 0), False), ((8, 0), True), ((9, 0), True)):  # V100, A100, H100
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device, c=capability: c)
        assert bf16_supported(cuda) is native
        assert resolve_precision("auto", cuda) == ("bf16" if native else "fp32")
        assert resolve_precision("auto", cuda, cpu_bf16=False) == ("bf16" if native else "fp32")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (7, 5))  # T4
    warnings: list[str] = []
    monkeypatch.setattr(demsr.model.log, "warning", lambda msg, *a: warnings.append(msg % a))
    assert resolve_precision("bf16", cuda) == "bf16"  # kept, but it is emulated there
    assert len(warnings) == 1 and "emulated" in warnings[0]
    for flags, native in (((False, False), False), ((True, False), True), ((False, True), True)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda f=flags: f[0])
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda f=flags: f[1])
        assert bf16_supported(CPU) is native
        assert resolve_precision("auto", CPU) == ("bf16" if native else "fp32")
        assert resolve_precision("auto", CPU, cpu_bf16=False) == "fp32"  # training's default
    assert resolve_precision("fp32", CPU) == "fp32"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", CPU)


def test_flop_count_matches_the_published_cost() -> None:
    # DESIGN: about 50.78 M multiply-adds per low-res pixel for the reference network.
    assert flops_per_lowres_px(preset("paper")) == 2 * 50_784_768
    lite = preset("lite")
    assert flops_per_lowres_px(lite) == 2 * (9 * 64 + 34 * 9 * 64 * 64 + 25 * 9 * 64)


def _degraded(path: Path, side: int = 400) -> np.ndarray:
    data = read_raster(path).data[:side, :side]
    return degrade(crop_to_blocks(data, 5, path), 5)


@needs_native_bf16
@pytest.mark.parametrize(
    "name",
    [
        "gmt_tut_relief_30s.tif",  # steep relief: the largest bf16 error we measured
        "mpl_topobathy_pnw.tif",  # land and sea
        "pysheds_hydrosheds_3s.tif",
    ],
)
def test_shipped_model_in_bf16_stays_within_its_recorded_bound_on_real_dems(
    dem_test_dir: Path, name: str
) -> None:
    lowres = _degraded(dem_test_dir / name)
    fp32 = predict_array("lite", lowres, tile_px=None, precision="fp32")
    bf16 = predict_array("lite", lowres, tile_px=None, precision="bf16")
    difference = np.abs(bf16 - fp32)
    assert np.isfinite(difference).all()
    # what the checkpoint records for this DEM (scripts/record_bf16_error.py), to rounding
    recorded = load_checkpoint(pretrained_path()).metadata["bf16_error"]["dems"][name]
    assert 0 < difference.max() <= recorded["max_abs_m"] + 0.005
    assert np.sqrt(np.mean(difference**2)) <= recorded["rms_m"] + 0.005
    assert difference.max() < 0.6  # the largest on the test folder's DEMs: 0.51 m


@needs_native_bf16
def test_predict_runs_bf16_by_default_where_the_cpu_has_it(
    dem_test_dir: Path, tmp_path: Path
) -> None:
    source = dem_test_dir / "geoclaw_kahului_1s.tif"
    output = predict_raster("lite", source, tmp_path / "out.tif", device="cpu", progress=False)
    pinned = predict_raster(
        "lite", source, tmp_path / "fp32.tif", device="cpu", precision="fp32", progress=False
    )
    with rasterio.open(output) as fast, rasterio.open(pinned) as reference:
        assert fast.tags()["precision"] == "bf16" and reference.tags()["precision"] == "fp32"
        assert json.loads(fast.tags()["model_config"])["channels"] == 64
        difference = np.abs(fast.read(1) - reference.read(1))
    assert 0 < np.nanmax(difference) < 0.2


@pytest.mark.slow
def test_compiled_model_matches_eager() -> None:
    scaling = ElevationScaling(
        scale_m=100.0, trend_sigma_px=2.0, base="bicubic", backprojection_iterations=2
    )
    eager = SuperResolver(_random_net(ModelConfig(blocks=1, channels=8, bias=True)), scaling)
    x = 1000 + 40 * torch.randn(2, 1, 20, 24).cumsum(-1)
    with torch.inference_mode():
        reference = eager(x)
        compiled = prepare_for_inference(eager, CPU, compile=True)
        torch.testing.assert_close(compiled(x), reference, rtol=0, atol=0.01)
