"""Planning a prediction: the plan's tiles, output and sizes are what ``demsr predict`` does; ranks
share the tiles; the time follows from the throughput; a global grid is planned from its metadata
alone; ``demsr plan`` and ``demsr predict --dry-run`` print it and write nothing."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from conftest import write_untrained_checkpoint
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.transform import from_origin

import demsr.io
from demsr.checkpoint import Checkpoint, load_checkpoint
from demsr.cli import main
from demsr.io import write_geotiff
from demsr.model import ModelConfig
from demsr.plan import (
    MAX_TILE_PX,
    choose_tile_px,
    estimate_memory,
    grid_geometry,
    plan_prediction,
    shard_tiles,
)
from demsr.predict import predict_raster
from demsr.tiling import batch_tiles, tile_grid

SOURCE = "landlab_west_bijou_1s.tif"  # 67 x 129 cells, EPSG:4326, no nodata
GEBCO_SHAPE = (43_200, 86_400)  # GEBCO's global 15" grid


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    return write_untrained_checkpoint(path, channels=4)


@pytest.fixture(scope="module")
def global_grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GEBCO-sized 15" GeoTIFF with no cell written: tiled and sparse, so it takes no room."""
    path = tmp_path_factory.mktemp("global") / "gebco_15s.tif"
    profile = {
        "driver": "GTiff",
        "width": GEBCO_SHAPE[1],
        "height": GEBCO_SHAPE[0],
        "count": 1,
        "dtype": "int16",
        "crs": "EPSG:4326",
        "transform": from_origin(-180, 90, 1 / 240, 1 / 240),
        "nodata": -32768,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
        "SPARSE_OK": True,
        "BIGTIFF": "YES",
    }
    with rasterio.open(path, "w", **profile):
        pass
    return path


def count_network_tiles(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Read-window shapes of the tiles that go through the network, one per tile, from now on."""
    seen: list[tuple[int, int]] = []
    build = Checkpoint.build_resolver

    def build_counting(self: Checkpoint, device: Any = "cpu") -> Any:
        resolver = build(self, device)

        def record(_module: Any, inputs: tuple[torch.Tensor, ...]) -> None:
            batch = inputs[0]
            seen.extend([tuple(batch.shape[-2:])] * batch.shape[0])  # type: ignore[list-item]

        resolver.register_forward_pre_hook(record)
        return resolver

    monkeypatch.setattr(Checkpoint, "build_resolver", build_counting)
    return seen


@pytest.mark.parametrize(("tile_px", "batch_size", "dtype"), [(32, 1, "float32"), (24, 3, "int16")])
def test_plan_matches_what_predict_does(
    checkpoint: Path,
    dem_test_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tile_px: int,
    batch_size: int,
    dtype: str,
) -> None:
    """Tiles through the network, the largest read window, the product's shape and its
    uncompressed bytes are the plan's."""
    source = dem_test_dir / SOURCE
    plan = plan_prediction(
        source, checkpoint, device="cpu", tile_px=tile_px, batch_size=batch_size, dtype=dtype
    )
    seen = count_network_tiles(monkeypatch)
    output = predict_raster(
        checkpoint,
        source,
        tmp_path / "out.tif",
        device="cpu",
        tile_px=tile_px,
        batch_size=batch_size,
        output_dtype=dtype,
        progress=False,
    )
    assert plan.tiles == len(seen) == math.ceil(67 / tile_px) * math.ceil(129 / tile_px)
    assert plan.read_window == max(seen, key=lambda shape: shape[0] * shape[1])
    with rasterio.open(output) as product:
        assert plan.output_shape == product.shape == (67 * 5, 129 * 5)
        assert plan.product_bytes == product.width * product.height * np.dtype(dtype).itemsize
        assert product.dtypes[0] == dtype
    assert plan.partial_bytes == 67 * 5 * 129 * 5 * 4
    assert sum(plan.tiles_per_rank) == plan.tiles


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 300),
    cols=st.integers(1, 300),
    tile_px=st.integers(8, 96),
    margin_px=st.integers(0, 60),
    batch_size=st.integers(1, 6),
    ranks=st.integers(1, 9),
)
def test_ranks_share_the_batches_of_the_real_grid(
    rows: int, cols: int, tile_px: int, margin_px: int, batch_size: int, ranks: int
) -> None:
    """Per-rank counts sum to the tiles; they are those of the real grid's batches dealt
    round-robin; with batches of one, the busiest rank has ceil(tiles / ranks)."""
    sharding = shard_tiles(rows, cols, tile_px, margin_px, batch_size, ranks)
    tiles = tile_grid(rows, cols, tile_px, margin_px)
    batches = list(batch_tiles(tiles, batch_size))
    expected = [sum(len(b) for b in batches[rank::ranks]) for rank in range(ranks)]
    assert list(sharding.tiles_per_rank) == expected
    assert sum(sharding.tiles_per_rank) == len(tiles)
    if batch_size == 1:
        assert max(sharding.tiles_per_rank) == math.ceil(len(tiles) / ranks)
    largest = max(len(b) * b[0].read_shape[0] * b[0].read_shape[1] for b in batches)
    assert sharding.largest_batch[0] * sharding.largest_batch[1] == largest
    geometry = grid_geometry(rows, cols, tile_px, margin_px)
    assert geometry.window_cells == sum(t.read.width * t.read.height for t in tiles)
    assert geometry.largest_window == (
        max(t.read_shape[0] for t in tiles),
        max(t.read_shape[1] for t in tiles),
    )


LITE = ModelConfig(blocks=16, channels=64, scale=5)
LITE_PARAMETERS = 1_200_000


def memory_for(tile_px: int, rows: int, cols: int, margin_px: int, batch_size: int = 1) -> int:
    """What estimate_memory says a batch of tiles of ``tile_px`` needs (lite's shape)."""
    side = tile_px + 2 * margin_px
    window = min(rows, side) * min(cols, side)
    return estimate_memory(LITE, LITE_PARAMETERS, (batch_size, window), "cpu").total


@settings(max_examples=80, deadline=None)
@given(
    rows=st.integers(2, 5000),
    cols=st.integers(2, 5000),
    margin_px=st.integers(0, 120),
    batch_size=st.integers(1, 4),
    memory_mib=st.integers(400, 8000),
)
def test_the_chosen_tile_is_the_largest_that_fits(
    rows: int, cols: int, margin_px: int, batch_size: int, memory_mib: int
) -> None:
    """Within the cap by the memory estimate; no fewer tiles along either axis would fit; the
    whole raster is one tile when it fits; never above MAX_TILE_PX."""
    budget = memory_mib * 2**20
    try:
        tile_px = choose_tile_px(
            rows, cols, margin_px, LITE, LITE_PARAMETERS, batch_size, "cpu", budget
        )
    except ValueError as error:
        assert "raise --memory" in str(error)
        assert memory_for(1, rows, cols, margin_px, batch_size) > budget
        return
    assert 1 <= tile_px <= MAX_TILE_PX
    assert memory_for(tile_px, rows, cols, margin_px, batch_size) <= budget
    row_tiles, col_tiles = math.ceil(rows / tile_px), math.ceil(cols / tile_px)
    # One tile fewer along an axis needs a larger tile, which does not fit (or passes the cap).
    for tiles, length in ((row_tiles, rows), (col_tiles, cols)):
        if tiles > 1:
            larger = math.ceil(length / (tiles - 1))
            assert (
                larger > MAX_TILE_PX
                or memory_for(larger, rows, cols, margin_px, batch_size) > budget
            )
    # The tile is no larger than its tile counts need: the last tiles are not mostly overlap.
    assert tile_px == max(math.ceil(rows / row_tiles), math.ceil(cols / col_tiles))
    if memory_for(max(rows, cols), rows, cols, margin_px, batch_size) <= budget:
        if max(rows, cols) <= MAX_TILE_PX:
            assert row_tiles == col_tiles == 1


def test_plan_and_predict_choose_the_same_tiles(
    checkpoint: Path, dem_test_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --tile-px both take the largest tile --memory allows: the same read windows go
    through the network as the plan says, the product records that tile size, and the plan's
    command line carries the cap."""
    source = dem_test_dir / SOURCE  # 67 x 129
    whole = plan_prediction(source, checkpoint, device="cpu", memory_bytes=2**40)
    assert whole.tile_px == 129 and whole.tiles == 1  # the raster fits: one tile, no margin
    assert whole.geometry.core_share == 1.0
    # A cap that allows a 50-cell tile but not 51 (a 50 + 2 x margin window, clipped) -> 2 x 3
    # tiles of max(ceil(67 / 2), ceil(129 / 3)) = 43 cells.
    margin, parameters = whole.margin_px, whole.parameters
    config = load_checkpoint(checkpoint).model_config

    def memory(tile_px: int) -> int:
        window = min(67, tile_px + 2 * margin) * min(129, tile_px + 2 * margin)
        return estimate_memory(config, parameters, (1, window), "cpu").total

    needed = memory(50)
    assert memory(51) > needed
    capped = plan_prediction(source, checkpoint, device="cpu", memory_bytes=needed)
    assert capped.tile_px == 43 and capped.tiles == 2 * 3
    assert capped.memory.total <= needed
    assert f"--memory {needed / 2**20:g}MiB" in capped.describe()
    seen = count_network_tiles(monkeypatch)
    output = predict_raster(
        checkpoint, source, tmp_path / "out.tif", device="cpu", memory_bytes=needed, progress=False
    )
    assert len(seen) == capped.tiles
    assert max(seen, key=lambda shape: shape[0] * shape[1]) == capped.read_window
    with rasterio.open(output) as product:
        assert product.tags()["tile_px"] == "43"


def test_too_small_a_memory_cap_fails_in_one_line(dem_test_dir: Path, tmp_path: Path) -> None:
    source = dem_test_dir / SOURCE
    for command in (["plan", source], ["predict", source, tmp_path / "out.tif"]):
        code, _, err = run_cli(*command, "--device", "cpu", "--memory", "100MiB")
        assert code == 1 and err.count("\n") == 1, err
        assert "a memory cap of 100 MiB is below the" in err and "raise --memory" in err
    code, _, err = run_cli("plan", source, "--memory", "lots")
    assert code == 2 and "'lots' is not a memory size" in err
    assert list(tmp_path.iterdir()) == []


def test_time_follows_from_the_throughput(checkpoint: Path, dem_test_dir: Path) -> None:
    source = dem_test_dir / SOURCE
    one = plan_prediction(source, checkpoint, device="cpu", tile_px=16, throughput_mpx_s=0.5)
    four = plan_prediction(
        source, checkpoint, device="cpu", tile_px=16, ranks=4, throughput_mpx_s=0.5
    )
    output_mpx = 67 * 129 * 25 / 1e6
    assert one.time.tile_loop == pytest.approx(output_mpx / 0.5)
    assert four.tiles_per_rank == (12, 11, 11, 11)  # 5 x 9 tiles, dealt round-robin
    busiest = max(four.tiles_per_rank) / four.tiles
    assert four.time.tile_loop == pytest.approx(output_mpx * busiest / 0.5)
    assert four.time.total == pytest.approx(four.time.tile_loop + sum(four.time.one_time.values()))
    assert "0.5 output Mpx/s per rank (given)" in four.describe()


def test_a_global_grid_is_planned_from_its_metadata(
    global_grid: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GEBCO's 43,200 x 86,400 grid -> 216,000 x 432,000 cells at 3", without reading a cell."""
    assert global_grid.stat().st_size < 1_000_000

    def no_reads(*_: Any, **__: Any) -> None:
        raise AssertionError("the plan read raster cells")

    monkeypatch.setattr(demsr.io.RasterReader, "read", no_reads)
    plan = plan_prediction(global_grid, device="cpu", ranks=8, tile_px=128)  # shipped lite
    assert plan.output_shape == (216_000, 432_000)
    assert plan.tiles == 338 * 675  # ceil(43,200 / 128) x ceil(86,400 / 128)
    assert plan.read_window == (128 + 2 * plan.margin_px,) * 2
    assert sum(plan.tiles_per_rank) == plan.tiles and max(plan.tiles_per_rank) == 28_519
    assert plan.product_bytes == 216_000 * 432_000 * 4  # 373 GB of float32
    assert plan.time.tile_loop is not None and plan.time.tile_loop > 0
    text = plan.describe()
    assert "216,000 x 432,000 cells" in text and "228,150 of 128 x 128 cells" in text
    assert "torchrun --nproc_per_node 8 -m demsr predict" in text


def test_no_gpu_figure_is_invented(global_grid: Path) -> None:
    plan = plan_prediction(global_grid, device="cuda", ranks=8, tile_px=512, batch_size=8)
    assert plan.time.tile_loop is None and plan.time.total is None
    text = plan.describe()
    assert "time     unknown: no recorded figure for lite on cuda" in text
    assert "--measure" in text and "--throughput" in text
    assert "GPU memory" in text
    given = plan_prediction(global_grid, device="cuda", ranks=8, throughput_mpx_s=40.0)
    assert given.time.tile_loop == pytest.approx(216_000 * 432_000 / 1e6 / 8 / 40.0, rel=1e-3)


def test_measure_times_real_tiles(checkpoint: Path, dem_test_dir: Path) -> None:
    plan = plan_prediction(
        dem_test_dir / SOURCE, checkpoint, device="cpu", tile_px=24, measure=True
    )
    assert plan.measurement is not None and plan.measurement.window_mpx_s > 0
    assert plan.time.output_mpx_s == pytest.approx(
        plan.measurement.window_mpx_s * plan.geometry.core_share
    )
    assert plan.time.source.startswith("measured here on cpu")


def run_cli(*args: Any) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(arg) for arg in args])
    return result.exit_code, result.stdout, result.stderr


def test_plan_command_prints_the_plan(
    checkpoint: Path, dem_test_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "3")  # the default number of ranks
    source = dem_test_dir / SOURCE
    args = ["plan", source, "--checkpoint", checkpoint, "--tile-px", "32", "--device", "cpu"]
    code, out, err = run_cli(*args, "--format", "netcdf", "--dtype", "int16")
    assert code == 0, err
    assert "tiles    15 of 32 x 32 cells (3 x 5)" in out
    assert "ranks    3: 5 tiles each" in out
    assert "output   335 x 645 cells" in out and "netcdf int16" in out
    assert "product 432 kB uncompressed" in out  # 335 x 645 x 2 bytes
    assert (
        f"run      torchrun --nproc_per_node 3 -m demsr predict {checkpoint} {source} OUTPUT.nc "
        "--dtype int16 --tile-px 32 --device cpu"
    ) in out


def test_predict_dry_run_prints_the_plan_and_writes_nothing(
    checkpoint: Path, dem_test_dir: Path, tmp_path: Path
) -> None:
    source = dem_test_dir / SOURCE
    output = tmp_path / "out.nc"
    code, out, err = run_cli(
        "predict", checkpoint, source, output, "--tile-px", "32", "--output-datum", "wgs84",
        "--dry-run",
    )  # fmt: skip
    assert code == 0, err
    assert "tiles    15 of 32 x 32 cells" in out and "netcdf float32" in out
    assert (
        f"run      demsr predict {checkpoint} {source} {output} --tile-px 32 --output-datum wgs84"
    ) in out
    assert list(tmp_path.iterdir()) == []


def test_predict_dry_run_under_torchrun(
    checkpoint: Path, dem_test_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rank 0 prints the plan for torchrun's ranks, with what an earlier run left; the others
    print nothing."""
    source, output = dem_test_dir / SOURCE, tmp_path / "out.tif"
    output.write_bytes(b"an earlier product")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "1")
    args = ["predict", checkpoint, source, output, "--tile-px", "32", "--dry-run"]
    assert run_cli(*args) == (0, "", "")
    monkeypatch.setenv("RANK", "0")
    code, out, err = run_cli(*args)
    assert code == 0, err
    assert "ranks    4: 3-4 tiles each" in out  # 3 x 5 tiles dealt round-robin
    assert (
        f"torchrun --nproc_per_node 4 -m demsr predict {checkpoint} {source} {output} "
        "--tile-px 32\n"
    ) in out
    assert f"note     {output} exists: demsr predict refuses it without --overwrite" in out
    assert output.read_bytes() == b"an earlier product"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["plan", "{tmp}/missing.tif"], "{tmp}/missing.tif: no such file"),
        (["plan", "{tmp}/notes.tif"], "{tmp}/notes.tif: cannot be read as a raster"),
        (["plan", "{tmp}/no_crs.tif"], "{tmp}/no_crs.tif: has no CRS; give it with --crs"),
        (["plan", "{source}", "--device", "tpu:0"], "unknown device 'tpu:0'"),
        (["plan", "{source}", "--checkpoint", "{tmp}/none.safetensors"], "no such checkpoint"),
        (["predict", "{source}", "{tmp}/out.xyz", "--dry-run"], "cannot tell the output format"),
    ],
)
def test_bad_input_fails_in_one_line(
    dem_test_dir: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "notes.tif").write_text("not a raster\n")
    write_geotiff(
        tmp_path / "no_crs.tif", np.zeros((4, 4), np.float32), from_origin(0, 4, 1, 1), None
    )
    names = {"tmp": str(tmp_path), "source": str(dem_test_dir / SOURCE)}
    before = set(tmp_path.iterdir())
    code, out, err = run_cli(*[arg.format(**names) for arg in args])
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith("demsr: error: ") and message.format(**names) in lines[0], err
    assert set(tmp_path.iterdir()) == before


def test_measure_needs_the_device(dem_test_dir: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    code, _, err = run_cli("plan", dem_test_dir / SOURCE, "--device", "cuda", "--measure")
    assert code == 1 and err.strip() == (
        "demsr: error: device 'cuda' requested but CUDA is not available"
    )
