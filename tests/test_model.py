"""DEM-SRNet architecture: output shapes, the reference's parameter count, the scaling around
it (the layers are tested in test_layers)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from demsr.checkpoint import save_checkpoint
from demsr.io import read_raster
from demsr.model import (
    DEMSRNet,
    ModelConfig,
    SuperResolver,
    count_parameters,
    init_as_residual,
    preset,
    receptive_field_px,
)
from demsr.prepare import crop_to_blocks, degrade
from demsr.scaling import ElevationScaling, backproject, gaussian_trend, upsample_bicubic


def _tiny(scale: int, resize: str = "half_pixel", bias: bool = False) -> DEMSRNet:
    torch.manual_seed(0)
    return DEMSRNet(ModelConfig(blocks=2, channels=4, scale=scale, bias=bias, resize=resize))  # type: ignore[arg-type]


@pytest.mark.parametrize("resize", ["legacy", "half_pixel"])
@pytest.mark.parametrize("scale", [2, 3, 4, 5, 8])
def test_output_is_input_times_scale(scale: int, resize: str) -> None:
    model = _tiny(scale, resize)
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 1, 16 * scale, 16 * scale)
    assert torch.isfinite(y).all()


def test_non_square_input() -> None:
    with torch.no_grad():
        y = _tiny(5)(torch.rand(1, 1, 7, 12))
    assert y.shape == (1, 1, 35, 60)


def test_backward_reaches_every_parameter() -> None:
    model = _tiny(3, bias=True)
    model(torch.rand(1, 1, 8, 8)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def _paper_on_meta(**overrides: object) -> DEMSRNet:
    # The meta device gives shapes without allocating 200 MB or drawing 50 M random numbers.
    with torch.device("meta"):
        return DEMSRNet(preset("paper", **overrides))


def test_paper_preset_matches_the_reference() -> None:
    model = _paper_on_meta()
    assert model.config == ModelConfig(
        blocks=42, channels=256, scale=5, bias=False, resize="legacy"
    )
    assert count_parameters(model) == 50_729_472
    assert len(list(model.parameters())) == 88
    assert all(name.endswith(".weight") for name, _ in model.named_parameters())


def test_paper_preset_with_bias() -> None:
    assert count_parameters(_paper_on_meta(bias=True)) == 50_751_745


def test_reference_parameter_names() -> None:
    names = set(_tiny(5).state_dict())
    assert names == {
        "conv1.weight",
        "body.0.res_conv1.weight",
        "body.0.res_conv2.weight",
        "body.1.res_conv1.weight",
        "body.1.res_conv2.weight",
        "conv2.weight",
        "conv_up.weight",
        "conv_out.weight",
    }


def test_count_trainable_parameters_after_freezing() -> None:
    model = _tiny(2)
    total = count_parameters(model)
    model.conv1.weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == total - model.conv1.weight.numel()
    assert count_parameters(model) == total


@pytest.mark.parametrize(
    "overrides",
    [{"scale": 1}, {"scale": 0}, {"resize": "bicubic"}, {"channels": 0}, {"blocks": -1}],
)
def test_invalid_config_is_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ModelConfig(**overrides)  # type: ignore[arg-type]


def test_unknown_preset_is_refused() -> None:
    with pytest.raises(ValueError, match="nope"):
        preset("nope")


def test_preset_overrides_are_validated() -> None:
    assert preset("lite", scale=4).scale == 4
    with pytest.raises(ValueError):
        preset("paper", scale=1)


def test_config_dict_round_trip_rejects_unknown_keys() -> None:
    config = preset("lite")
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({**config.to_dict(), "dropout": 0.1})


@pytest.mark.parametrize("trend_sigma_px", [0.0, 1.5])
@pytest.mark.parametrize("resize", ["legacy", "half_pixel"])
@pytest.mark.parametrize("blocks", [1, 2])
def test_receptive_field_bounds_the_reach_of_one_input_cell(
    blocks: int, resize: str, trend_sigma_px: float
) -> None:
    """Perturb one low-res cell: only outputs whose parent lies within margin_px change."""
    torch.manual_seed(0)
    config = ModelConfig(blocks=blocks, channels=4, scale=5, bias=False, resize=resize)  # type: ignore[arg-type]
    net = DEMSRNet(config)
    with torch.no_grad():  # positive weights and a zero background: no cancellation, no ReLU cut
        for parameter in net.parameters():
            parameter.uniform_(0.1, 0.3)
    resolver = SuperResolver(net, ElevationScaling(scale_m=1.0, trend_sigma_px=trend_sigma_px))
    margin = resolver.margin_px
    assert margin == receptive_field_px(config) + math.ceil(3 * trend_sigma_px) * (
        trend_sigma_px > 0
    )
    centre = margin + 3
    lowres = torch.zeros(1, 1, 2 * centre + 1, 2 * centre + 1)
    bumped = lowres.clone()
    bumped[..., centre, centre] = 1.0
    with torch.no_grad():
        changed = (resolver(bumped) - resolver(lowres))[0, 0].ne(0).numpy()
    rows, cols = np.nonzero(changed)
    reach = max(np.abs(rows // 5 - centre).max(), np.abs(cols // 5 - centre).max())
    assert reach <= margin
    if trend_sigma_px == 0:
        # The bound is tight to one cell. (With a trend, the input's negative side lobes stop at
        # the first ReLU, so the observed reach is shorter than the bound there.)
        assert reach >= margin - 1


# --------------------------------------------------------------------------------------------
# Bicubic base and back-projection
# --------------------------------------------------------------------------------------------


def _real_pair(dem_test_dir: Path) -> tuple[torch.Tensor, np.ndarray]:
    """Colorado Front Range, SRTM 3": its 5 x 5 block means (low-res) and the original."""
    values = read_raster(dem_test_dir / "landlab_srtmgl3_frontrange.tif").data
    highres = crop_to_blocks(values, 5, "frontrange").astype(np.float64)
    lowres = degrade(highres.astype(np.float32), 5)
    return torch.from_numpy(lowres)[None, None], highres


def test_residual_init_starts_as_bicubic_and_backprojection_honours_the_block_means(
    dem_test_dir: Path,
) -> None:
    lowres, truth = _real_pair(dem_test_dir)
    torch.manual_seed(0)
    net = init_as_residual(DEMSRNet(preset("lite", blocks=2, channels=8)))

    def run(iterations: int) -> np.ndarray:
        scaling = ElevationScaling(
            scale_m=1000.0,
            trend_sigma_px=4.0,
            base="bicubic",
            backprojection_iterations=iterations,
        )
        with torch.no_grad():
            return SuperResolver(net, scaling).eval()(lowres)[0, 0].double().numpy()

    plain, projected = run(0), run(8)
    bicubic = upsample_bicubic(lowres, 5)[0, 0].double().numpy()
    np.testing.assert_array_equal(plain, bicubic)  # a silent network: exactly the base
    means = degrade(projected.astype(np.float32), 5)
    # bicubic misses the block means by metres; 8 steps bring them to within 5 cm
    assert np.abs(degrade(plain.astype(np.float32), 5) - lowres[0, 0].numpy()).max() > 5
    assert np.abs(means - lowres[0, 0].numpy()).max() < 0.05
    # and the consistent surface is closer to the real 3" DEM than bicubic (20.9 m RMSE here)
    rmse = {
        name: float(np.sqrt(np.mean((v - truth) ** 2)))
        for name, v in (("plain", plain), ("projected", projected))
    }
    assert rmse["projected"] < 0.95 * rmse["plain"]


@pytest.mark.parametrize("iterations", [0, 1, 3])
def test_margin_covers_the_backprojection_reach(iterations: int) -> None:
    torch.manual_seed(0)
    config = ModelConfig(blocks=1, channels=4, scale=5, bias=False, resize="half_pixel")
    net = DEMSRNet(config)
    scaling = ElevationScaling(
        scale_m=1.0, trend_sigma_px=0.0, base="bicubic", backprojection_iterations=iterations
    )
    resolver = SuperResolver(net, scaling).eval()
    margin = resolver.margin_px
    assert margin == receptive_field_px(config) + 2 * iterations
    centre = margin + 3
    lowres = torch.zeros(1, 1, 2 * centre + 1, 2 * centre + 1, dtype=torch.float32)
    bumped = lowres.clone()
    bumped[..., centre, centre] = 1.0
    with torch.no_grad():
        changed = (resolver(bumped) - resolver(lowres))[0, 0].abs().gt(1e-7).numpy()
    rows, cols = np.nonzero(changed)
    reach = max(np.abs(rows // 5 - centre).max(), np.abs(cols // 5 - centre).max())
    assert reach <= margin


# --------------------------------------------------------------------------------------------
# Flat in -> flat out, borders, the cubic base and the block-mean constraint
# --------------------------------------------------------------------------------------------


def _random_resolver(scaling: ElevationScaling, seed: int = 0, **config: object) -> SuperResolver:
    """A 2-block, 8-channel x5 network whose every weight and bias is random and nonzero (a
    silent network would be flat for any option)."""
    torch.manual_seed(seed)
    net = DEMSRNet(ModelConfig(blocks=2, channels=8, scale=5, **config))  # type: ignore[arg-type]
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return SuperResolver(net, scaling).eval()


FLAT_OPTIONS = {
    "no bias, cubic base": (
        {"bias": False},
        ElevationScaling(scale_m=1000.0, trend_sigma_px=4.0, base="cubic"),
    ),
    "no bias, replicate, cubic, block-mean constraint": (
        {"bias": False, "padding": "replicate"},
        ElevationScaling(
            scale_m=1000.0, trend_sigma_px=4.0, base="cubic", block_mean_constraint=True
        ),
    ),
    "no bias, bicubic, back-projection": (
        {"bias": False},
        ElevationScaling(
            scale_m=1000.0, trend_sigma_px=4.0, base="bicubic", backprojection_iterations=4
        ),
    ),
    "biases, replicate padding, block-mean constraint": (
        {"bias": True, "padding": "replicate"},
        ElevationScaling(
            scale_m=1000.0, trend_sigma_px=4.0, base="cubic", block_mean_constraint=True
        ),
    ),
    "biases, replicate padding, back-projection": (
        {"bias": True, "padding": "replicate"},
        ElevationScaling(
            scale_m=1000.0, trend_sigma_px=4.0, base="cubic", backprojection_iterations=2
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(FLAT_OPTIONS))
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (40, 40)])
def test_flat_in_flat_out(name: str, shape: tuple[int, int]) -> None:
    config, scaling = FLAT_OPTIONS[name]
    resolver = _random_resolver(scaling, **config)
    levels_m = torch.tensor([1234.5, -4321.0, 0.0]).view(3, 1, 1, 1)
    flat = levels_m.expand(3, 1, *shape).contiguous()
    with torch.no_grad():
        output = resolver(flat)
    assert output.shape == (3, 1, shape[0] * 5, shape[1] * 5)
    # Every cell, edges included, within 1 cm.
    assert (output - levels_m).abs().max().item() < 0.01


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (40, 40)])
def test_the_shipped_options_do_not_give_flat_out(shape: tuple[int, int]) -> None:
    # Biases with zero padding (the shipped lite model's options): the network's biases make
    # relief out of nothing, which the back-projection does not remove.
    scaling = ElevationScaling(
        scale_m=1000.0, trend_sigma_px=4.0, base="bicubic", backprojection_iterations=4
    )
    resolver = _random_resolver(scaling, bias=True)
    with torch.no_grad():
        output = resolver(torch.full((1, 1, *shape), 100.0))
    assert (output - 100.0).abs().max().item() > 0.1


def test_replicate_padding_factored_equals_direct_and_changes_only_the_borders() -> None:
    torch.manual_seed(0)
    replicate = DEMSRNet(ModelConfig(blocks=2, channels=8, scale=5, bias=True, padding="replicate"))
    direct = DEMSRNet(replicate.config, output_stage="direct")
    direct.load_state_dict(replicate.state_dict())
    zeros = DEMSRNet(ModelConfig(blocks=2, channels=8, scale=5, bias=True))
    zeros.load_state_dict(replicate.state_dict())  # the same parameters
    x = torch.randn(1, 1, 30, 30)
    with torch.no_grad():
        factored_out, direct_out, zeros_out = replicate(x), direct(x), zeros(x)
    torch.testing.assert_close(factored_out, direct_out, rtol=1e-5, atol=1e-5)
    # The padding reaches receptive_field_px low-res cells in from the border, no further.
    reach = receptive_field_px(replicate.config)
    inner = slice(5 * reach, 5 * (30 - reach))
    torch.testing.assert_close(factored_out[..., inner, inner], zeros_out[..., inner, inner])
    assert (factored_out[..., :5, :] - zeros_out[..., :5, :]).abs().max() > 1e-3


def test_margin_covers_the_block_mean_constraint_reach() -> None:
    scaling = ElevationScaling(scale_m=1.0, base="cubic", block_mean_constraint=True)
    resolver = _random_resolver(scaling, bias=False, padding="replicate")
    margin = resolver.margin_px
    centre = margin + 3
    lowres = torch.zeros(1, 1, 2 * centre + 1, 2 * centre + 1)
    bumped = lowres.clone()
    bumped[..., centre, centre] = 100.0
    with torch.no_grad():
        changed = (resolver(bumped) - resolver(lowres))[0, 0].abs().gt(1e-5).numpy()
    rows, cols = np.nonzero(changed)
    reach = max(np.abs(rows // 5 - centre).max(), np.abs(cols // 5 - centre).max())
    assert 0 < reach <= margin


def test_checkpoints_from_before_the_new_options_load_as_they_were(
    dem_test_dir: Path, tmp_path: Path
) -> None:
    """A checkpoint written before padding and the block-mean layer existed (the lite model
    shipped then: biases, PyTorch's bicubic base, 4 back-projection steps; no such keys in its
    header) loads with the defaults of the new options (zero padding, no constraint) and
    computes what it computed before: the trend-removed input through the network, the bicubic
    base, 4 back-projection steps with that kernel."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from demsr.checkpoint import _open, load_checkpoint

    scaling = ElevationScaling(
        scale_m=1000.0, trend_sigma_px=4.0, base="bicubic", backprojection_iterations=4
    )
    torch.manual_seed(0)
    net = DEMSRNet(ModelConfig(blocks=2, channels=8, scale=5, bias=True))
    for parameter in net.parameters():  # a network that is not silent
        torch.nn.init.normal_(parameter, std=0.05)
    written = save_checkpoint(tmp_path / "new.safetensors", net, scaling)
    with safe_open(written, "pt") as handle:
        metadata = handle.metadata()
    key = next(name for name in metadata if metadata[name].lstrip().startswith("{"))
    header = json.loads(metadata[key])
    del header["model"]["padding"]
    del header["scaling"]["block_mean_constraint"]
    path = tmp_path / "old.safetensors"
    save_file(load_file(written), path, metadata={**metadata, key: json.dumps(header)})

    header, _ = _open(path, ())
    assert "padding" not in header["model"]
    assert "block_mean_constraint" not in header["scaling"]
    checkpoint = load_checkpoint(path)
    assert checkpoint.model_config.padding == "zeros"
    assert not checkpoint.scaling.block_mean_constraint
    resolver = checkpoint.build_resolver()
    assert all(
        conv.padding_mode == "zeros"
        for conv in resolver.net.modules()
        if isinstance(conv, torch.nn.Conv2d)
    )
    lowres = torch.from_numpy(
        read_raster(dem_test_dir / "mpl_jacksboro_3s.tif").data[:30, :36].copy()
    )[None, None]
    with torch.no_grad():
        output = resolver(lowres)
        trend = gaussian_trend(lowres, scaling.trend_sigma_px)
        relief = resolver.net((lowres - trend) / scaling.scale_m)
        base = torch.nn.functional.interpolate(
            lowres, scale_factor=5, mode="bicubic", align_corners=False
        )
        expected = backproject(base + scaling.scale_m * relief, lowres, 4)
    torch.testing.assert_close(output, expected, rtol=0, atol=0)
    assert (output - base).abs().max() > 1.0  # the network's part is in the comparison


def test_new_options_round_trip_and_are_checked() -> None:
    config = ModelConfig(padding="replicate")
    assert ModelConfig.from_dict(config.to_dict()) == config
    scaling = ElevationScaling(base="cubic", block_mean_constraint=True)
    assert ElevationScaling.from_dict(scaling.to_dict()) == scaling
    with pytest.raises(ValueError, match="padding must be one of"):
        ModelConfig(padding="circular")
    with pytest.raises(ValueError, match="block_mean_constraint must be true or false"):
        ElevationScaling.from_dict({"block_mean_constraint": "yes"})


def test_tiled_prediction_equals_whole_with_the_new_options(dem_test_dir: Path) -> None:
    from demsr.engine import predict_array

    scaling = ElevationScaling(
        scale_m=1000.0, trend_sigma_px=4.0, base="cubic", block_mean_constraint=True
    )
    resolver = _random_resolver(scaling, bias=True, padding="replicate")
    lowres = read_raster(dem_test_dir / "mpl_jacksboro_3s.tif").data[:70, :90]
    whole = predict_array(resolver, lowres, precision="fp32")
    tiled = predict_array(resolver, lowres, tile_px=24, precision="fp32")
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-3)
    np.testing.assert_allclose(degrade(whole, 5), lowres, rtol=0, atol=1e-3)  # exact block means
