"""Property tests (hypothesis) over random sizes, scales and origins: tiled work equals
whole-raster work, the network's reach stays within the tile margin, georeferencing survives
prediction, degradation and NetCDF layouts, and shapes scale as they should.

Tile geometry itself (cores partition the raster, read windows, counts, batches) is in
test_tiling.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import rasterio.windows
import torch
import xarray as xr
from affine import Affine
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS
from rasterio.windows import Window
from scipy import ndimage

from demsr.io import open_raster, write_geotiff
from demsr.model import DEMSRNet, ModelConfig, SuperResolver
from demsr.predict import predict_raster
from demsr.prepare import crop_to_blocks, degrade, degrade_raster
from demsr.scaling import ElevationScaling
from demsr.tiling import scale_window, tile_grid

FAST = settings(max_examples=60, deadline=None)
# Examples that write files or run a network: fewer, and tmp_path is shared between them.
SLOWER = settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# -- tiling: a local operation done tile by tile equals the whole-raster one -------------------


@FAST
@given(
    rows=st.integers(1, 90),
    cols=st.integers(1, 90),
    tile_px=st.integers(1, 40),
    radius=st.integers(0, 6),
    extra_margin=st.integers(0, 4),
    scale=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_tiles_with_a_margin_reassemble_any_local_operation(
    rows: int, cols: int, tile_px: int, radius: int, extra_margin: int, scale: int, seed: int
) -> None:
    """What predict relies on: with a margin at least an operation's reach, each core cut from
    its tile's result (at ``scale`` times the resolution) equals the whole raster's result."""
    values = np.random.default_rng(seed).normal(size=(rows, cols))

    def operation(array: np.ndarray) -> np.ndarray:  # reach: radius cells, edges replicated
        local_max = ndimage.maximum_filter(array, size=2 * radius + 1, mode="nearest")
        return np.kron(local_max, np.ones((scale, scale)))

    whole = operation(values)
    tiled = np.full_like(whole, np.nan)
    for tile in tile_grid(rows, cols, tile_px, radius + extra_margin):
        result = operation(values[tile.read.toslices()])
        core = scale_window(tile.core_in_read, scale)
        target = scale_window(tile.core, scale)
        tiled[target.toslices()] = result[core.toslices()]
    np.testing.assert_array_equal(tiled, whole)


# -- the network: output shapes, and a reach within SuperResolver.margin_px --------------------


@st.composite
def resolvers(draw: st.DrawFn) -> SuperResolver:
    config = ModelConfig(
        blocks=draw(st.integers(0, 2)),
        channels=draw(st.integers(1, 3)),
        scale=draw(st.integers(2, 5)),
        bias=draw(st.booleans()),
        resize=draw(st.sampled_from(["legacy", "half_pixel"])),
    )
    scaling = ElevationScaling(
        scale_m=100.0,
        trend_sigma_px=draw(st.sampled_from([0.0, 0.7, 1.5])),
        base=draw(st.sampled_from(["trend", "bicubic"])),
        backprojection_iterations=draw(st.integers(0, 2)),
    )
    torch.manual_seed(draw(st.integers(0, 1000)))
    return SuperResolver(DEMSRNet(config), scaling).eval()


@settings(max_examples=20, deadline=None)
@given(resolver=resolvers(), rows=st.integers(1, 24), cols=st.integers(1, 24))
def test_the_network_output_is_the_input_times_the_scale(
    resolver: SuperResolver, rows: int, cols: int
) -> None:
    lowres = 1000 + 50 * torch.randn(2, 1, rows, cols)
    with torch.inference_mode():
        highres = resolver(lowres)
        bare = resolver.net(lowres / 1000)
    s = resolver.scale
    assert highres.shape == bare.shape == (2, 1, rows * s, cols * s)
    assert highres.dtype == torch.float32 and torch.isfinite(highres).all()


@settings(max_examples=30, deadline=None)
@given(resolver=resolvers(), data=st.data())
def test_a_cell_changes_no_output_beyond_the_margin(resolver: SuperResolver, data: Any) -> None:
    """Changing one low-res cell changes only outputs whose low-res parent lies within
    ``margin_px`` cells of it: the margin tiles are read with is enough."""
    margin, s = resolver.margin_px, resolver.scale
    rows = data.draw(st.integers(1, 2 * margin + 8), label="rows")
    cols = data.draw(st.integers(1, 2 * margin + 8), label="cols")
    row = data.draw(st.integers(0, rows - 1), label="row")
    col = data.draw(st.integers(0, cols - 1), label="col")
    lowres = 500 + 30 * torch.randn(1, 1, rows, cols, generator=torch.Generator().manual_seed(1))
    changed = lowres.clone()
    changed[0, 0, row, col] += 250.0
    with torch.inference_mode():
        difference = (resolver(changed) - resolver(lowres))[0, 0].numpy()
    parent_rows = np.arange(rows * s)[:, None] // s
    parent_cols = np.arange(cols * s)[None, :] // s
    far = np.maximum(abs(parent_rows - row), abs(parent_cols - col)) > margin
    assert not difference[far].any()


# -- georeferencing ----------------------------------------------------------------------------


@st.composite
def grids(draw: st.DrawFn) -> tuple[Affine, CRS]:
    """A north-up transform and CRS: geographic (cells 1e-4..0.5 degrees) or UTM (1..1000 m)."""
    if draw(st.booleans()):
        cell = draw(st.floats(1e-4, 0.5))
        west = draw(st.floats(-180.0, 170.0))
        north = draw(st.floats(-60.0, 85.0))
        crs = CRS.from_epsg(4326)
    else:
        cell = draw(st.floats(1.0, 1000.0))
        west = draw(st.floats(1e5, 8e5))
        north = draw(st.floats(1e5, 9e6))
        crs = CRS.from_epsg(32633)
    height = cell * draw(st.sampled_from([1.0, 0.5, 1.25]))  # square or not
    return Affine(cell, 0.0, west, 0.0, -height, north), crs


@FAST
@given(
    grid=grids(),
    scale=st.integers(2, 8),
    window=st.tuples(
        st.integers(0, 500), st.integers(0, 500), st.integers(1, 64), st.integers(1, 64)
    ),
)
def test_a_window_keeps_its_place_at_a_finer_scale(
    grid: tuple[Affine, CRS], scale: int, window: tuple[int, int, int, int]
) -> None:
    """Output grid = input grid with cells / scale; a tile's high-res window (how the partial
    output is written) covers exactly the ground of its low-res window."""
    transform, _ = grid
    output_transform = transform @ Affine.scale(1 / scale)
    lowres = Window(*window)
    highres = scale_window(lowres, scale)
    low_t = rasterio.windows.transform(lowres, transform)
    high_t = rasterio.windows.transform(highres, output_transform)
    assert high_t.almost_equals(
        low_t @ Affine.scale(1 / scale), precision=1e-9 * abs(low_t.c) + 1e-12
    )
    low_bounds = rasterio.windows.bounds(lowres, transform)
    high_bounds = rasterio.windows.bounds(highres, output_transform)
    np.testing.assert_allclose(high_bounds, low_bounds, rtol=1e-12, atol=1e-9 * transform.a)
    # Every high-res cell centre lies inside its low-res parent cell.
    centres = np.array(
        [output_transform @ (c + 0.5, r + 0.5) for r in (0, scale - 1) for c in (0, scale - 1)]
    )
    parent = ~transform @ (centres[:, 0], centres[:, 1])
    assert (np.floor(parent[0]) == 0).all() and (np.floor(parent[1]) == 0).all()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Untrained 1-block checkpoints for scales 2..5 (bicubic base: a margin of a few cells)."""
    from demsr.checkpoint import save_checkpoint

    folder = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    for scale in (2, 3, 4, 5):
        torch.manual_seed(scale)
        model = DEMSRNet(ModelConfig(blocks=1, channels=2, scale=scale))
        scaling = ElevationScaling(scale_m=100.0, base="bicubic")
        paths[scale] = save_checkpoint(folder / f"x{scale}.safetensors", model, scaling)
    return paths


@SLOWER
@given(
    grid=grids(),
    scale=st.sampled_from([2, 3, 4, 5]),
    rows=st.integers(2, 12),  # a raster under 2 x 2 cells is refused (test_reliability)
    cols=st.integers(2, 12),
    seed=st.integers(0, 1000),
)
def test_prediction_keeps_the_bounds_and_crs_with_cells_divided_by_the_scale(
    checkpoints: dict[int, Path],
    tmp_path: Path,
    grid: tuple[Affine, CRS],
    scale: int,
    rows: int,
    cols: int,
    seed: int,
) -> None:
    transform, crs = grid
    values = np.random.default_rng(seed).uniform(-100, 3000, (rows, cols)).astype(np.float32)
    source = write_geotiff(tmp_path / "in.tif", values, transform, crs)
    output = predict_raster(
        checkpoints[scale],
        source,
        tmp_path / "out.tif",
        device="cpu",
        overwrite=True,
        progress=False,
    )
    with rasterio.open(output) as dst:
        assert (dst.height, dst.width) == (rows * scale, cols * scale)
        assert dst.crs == crs
        assert dst.transform.almost_equals(
            transform @ Affine.scale(1 / scale),
            precision=1e-12 * max(abs(transform.c), abs(transform.f), 1),
        )
        with rasterio.open(source) as src:
            np.testing.assert_allclose(dst.bounds, src.bounds, rtol=1e-12, atol=1e-9 * transform.a)


@SLOWER
@given(grid=grids(), scale=st.integers(2, 5), rows=st.integers(1, 30), cols=st.integers(1, 30))
def test_degrading_a_raster_keeps_its_origin_with_cells_times_the_scale(
    tmp_path: Path, grid: tuple[Affine, CRS], scale: int, rows: int, cols: int
) -> None:
    transform, crs = grid
    values = np.arange(rows * cols, dtype=np.float32).reshape(rows, cols)
    source = write_geotiff(tmp_path / "fine.tif", values, transform, crs)
    if rows < scale or cols < scale:
        with pytest.raises(ValueError, match="smaller than one"):
            degrade_raster(source, tmp_path / "coarse.tif", scale, overwrite=True)
        return
    coarse = degrade_raster(source, tmp_path / "coarse.tif", scale, overwrite=True)
    with rasterio.open(coarse) as dst:
        assert (dst.height, dst.width) == (rows // scale, cols // scale)
        assert dst.crs == crs and dst.transform.almost_equals(transform @ Affine.scale(scale))
        np.testing.assert_allclose(dst.read(1), degrade(crop_to_blocks(values, scale, "x"), scale))


@st.composite
def netcdf_layouts(draw: st.DrawFn) -> dict[str, Any]:
    """1-D lat/lon cell-centre coordinates: latitudes up or down; longitudes in -180..180, in
    0..360 east of 180, or a whole 0..360 globe (whose columns the reader rotates)."""
    rows = draw(st.integers(2, 12))
    kind = draw(st.sampled_from(["-180..180", "east of 180", "globe 0..360"]))
    if kind == "globe 0..360":
        cols = draw(st.sampled_from([4, 6, 12, 18, 36]))
        dx = 360.0 / cols
        first = dx / 2
    else:
        cols = draw(st.integers(2, 20))
        dx = draw(st.sampled_from([0.25, 0.5, 1.0, 2.0]))
        low, high = (-180.0, 180.0) if kind == "-180..180" else (180.0, 360.0)
        first = low + dx / 2 + dx * draw(st.integers(0, int((high - low) / dx) - cols))
    dy = draw(st.sampled_from([0.25, 0.5, 1.0]))
    limit = int(90 / dy)  # whole grids within the poles (others are refused: test_reliability)
    south = dy * draw(st.integers(-limit, limit - rows))
    lat = south + dy / 2 + dy * np.arange(rows)
    return {
        "lat": lat if draw(st.booleans()) else lat[::-1],
        "lon": first + dx * np.arange(cols),
    }


@SLOWER
@given(layout=netcdf_layouts())
def test_netcdf_cells_are_presented_north_up_where_their_coordinates_say(
    tmp_path: Path, layout: dict[str, Any]
) -> None:
    lat, lon = layout["lat"], layout["lon"]
    values = np.arange(lat.size * lon.size, dtype=np.float32).reshape(lat.size, lon.size)
    path = tmp_path / "grid.nc"
    xr.Dataset({"elevation": (("lat", "lon"), values)}, coords={"lat": lat, "lon": lon}).to_netcdf(
        path
    )
    with open_raster(path) as reader:
        presented = reader.read()
        transform = reader.transform
    assert transform.e < 0 < transform.a and presented.shape == values.shape
    for row in range(presented.shape[0]):
        for col in range(presented.shape[1]):
            file_row, file_col = np.argwhere(values == presented[row, col])[0]
            x, y = transform @ (col + 0.5, row + 0.5)
            assert y == pytest.approx(lat[file_row], abs=1e-9)
            assert (x - lon[file_col]) % 360 == pytest.approx(0, abs=1e-9) or (
                x - lon[file_col]
            ) % 360 == pytest.approx(360, abs=1e-9)


# -- degradation shapes and values -------------------------------------------------------------


@FAST
@given(
    rows=st.integers(1, 40),
    cols=st.integers(1, 40),
    scale=st.integers(1, 7),
    seed=st.integers(0, 2**16),
    holes=st.integers(0, 3),
)
def test_degrade_is_the_block_mean_of_the_cropped_raster(
    rows: int, cols: int, scale: int, seed: int, holes: int
) -> None:
    assume(rows >= scale and cols >= scale)
    rng = np.random.default_rng(seed)
    highres = rng.uniform(-500, 4000, (rows, cols)).astype(np.float32)
    for _ in range(holes):
        highres[rng.integers(rows), rng.integers(cols)] = np.nan
    cropped = crop_to_blocks(highres, scale, "random")
    assert cropped.shape == (rows - rows % scale, cols - cols % scale)
    np.testing.assert_array_equal(cropped, highres[: cropped.shape[0], : cropped.shape[1]])
    lowres = degrade(cropped, scale)
    assert lowres.shape == (rows // scale, cols // scale) and lowres.dtype == np.float32
    blocks = cropped.reshape(rows // scale, scale, cols // scale, scale).astype(np.float64)
    np.testing.assert_allclose(lowres, blocks.mean(axis=(1, 3)), rtol=1e-6)
    # A hole spoils exactly the blocks that hold one.
    spoiled = np.isnan(blocks).any(axis=(1, 3))
    np.testing.assert_array_equal(np.isnan(lowres), spoiled)


@FAST
@given(rows=st.integers(1, 12), cols=st.integers(1, 12), scale=st.integers(2, 6))
def test_crop_refuses_a_raster_smaller_than_one_block(rows: int, cols: int, scale: int) -> None:
    values = np.zeros((rows, cols), np.float32)
    if rows < scale or cols < scale:
        with pytest.raises(ValueError, match=f"smaller than one {scale}x{scale} block"):
            crop_to_blocks(values, scale, "tiny.tif")
    else:
        assert crop_to_blocks(values, scale, "tiny.tif").shape == (
            rows // scale * scale,
            cols // scale * scale,
        )
