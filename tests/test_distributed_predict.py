"""Prediction shared among torchrun ranks (gloo on the CPU), resumed after a rank dies, and
global grids wrapped across the antimeridian."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import rasterio
from affine import Affine
from conftest import free_port, write_untrained_checkpoint
from rasterio.crs import CRS
from rasterio.windows import Window
from scipy.ndimage import gaussian_filter

from demsr.engine import predict_array
from demsr.io import write_geotiff
from demsr.partial import partial_path
from demsr.predict import predict_raster
from demsr.tilestore import read_done
from demsr.tiling import global_period, tile_grid, wrapped_segments

REPO = Path(__file__).resolve().parents[1]
SOURCE = "landlab_srtmgl3_frontrange.tif"  # 144 x 240 cells: 60 tiles of 24
OPTIONS = ("--tile-px", "24", "--batch-size", "2", "--device", "cpu", "--no-progress")


def environment() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def torchrun(ranks: int, *args: Any) -> list[str]:
    """``torchrun --nproc_per_node RANKS -m demsr ARGS`` on a free local port."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(ranks),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "demsr",
        *map(str, args),
    ]


def run(command: list[str], log: Path, timeout: float = 300) -> str:
    with open(log, "wb") as handle:
        code = subprocess.run(
            command, stdout=handle, stderr=subprocess.STDOUT, env=environment(), timeout=timeout
        ).returncode
    text = log.read_text()
    assert code == 0, text
    return text


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, dem_test_dir: Path) -> dict[str, Any]:
    """An untrained checkpoint, and a single process's product (the reference)."""
    folder = tmp_path_factory.mktemp("single")
    checkpoint = write_untrained_checkpoint(folder / "model.safetensors", channels=4)
    source = dem_test_dir / SOURCE
    reference = folder / "out.tif"
    command = [sys.executable, "-m", "demsr", "predict", checkpoint, source, reference, *OPTIONS]
    run([str(part) for part in command], folder / "log")
    return {"checkpoint": checkpoint, "source": source, "reference": reference}


def assert_same_product(output: Path, reference: Path) -> None:
    with rasterio.open(output) as out, rasterio.open(reference) as ref:
        assert (out.crs, out.transform, out.shape) == (ref.crs, ref.transform, ref.shape)
        assert np.array_equal(out.read(1), ref.read(1), equal_nan=True)
    assert output.read_bytes() == reference.read_bytes()


def test_two_ranks_write_the_product_of_one_process(setup: dict[str, Any], tmp_path: Path) -> None:
    output = tmp_path / "out.tif"
    args = ("predict", setup["checkpoint"], setup["source"], output, *OPTIONS)
    log = run(torchrun(2, *args), tmp_path / "log")
    assert_same_product(output, setup["reference"])
    # Each rank reports its own share and throughput; rank 0 the whole run's.
    assert "[rank 0/2] predicted 30 tiles" in log and "[rank 1/2] predicted 30 tiles" in log
    assert "all 2 ranks: 60 of 60 tiles done, 60 in this run: 0.9 output Mpx in " in log
    assert log.count(str(output)) >= 1  # rank 0 prints the product's path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log", "out.tif"]


def rank_process(launcher: subprocess.Popen[bytes], rank: int) -> psutil.Process | None:
    """The worker process of ``rank`` under a torchrun ``launcher``."""
    try:
        for child in psutil.Process(launcher.pid).children(recursive=True):
            if child.environ().get("RANK") == str(rank) and "demsr" in " ".join(child.cmdline()):
                return child
    except psutil.Error:
        pass
    return None


@pytest.mark.slow
def test_a_rank_killed_mid_run_and_a_rerun_give_the_same_product(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    output = tmp_path / "out.tif"
    args = ("predict", setup["checkpoint"], setup["source"], output, *OPTIONS)
    with open(tmp_path / "killed.log", "wb") as handle:
        launcher = subprocess.Popen(
            torchrun(2, *args), stdout=handle, stderr=subprocess.STDOUT, env=environment()
        )
    logs = partial_path(output) / "done"
    deadline = time.monotonic() + 240
    while not (logs / "rank-00001.log").exists() or len(read_done(partial_path(output))[0]) < 6:
        assert launcher.poll() is None, (tmp_path / "killed.log").read_text()
        assert time.monotonic() < deadline, "timed out waiting for finished tiles"
        time.sleep(0.05)
    victim = rank_process(launcher, 1)
    assert victim is not None
    victim.send_signal(signal.SIGKILL)
    assert launcher.wait(timeout=120) != 0  # torchrun stops the other rank and fails
    assert not output.exists()  # never a half-written product
    kept = len(read_done(partial_path(output))[0])
    assert 0 < kept < 60, kept

    log = run(torchrun(2, *args, "--resume"), tmp_path / "resumed.log")
    assert f"resuming {partial_path(output)}: {kept} of 60 tiles already done" in log
    assert_same_product(output, setup["reference"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed.log", "out.tif", "resumed.log"]


# -- global grids ----------------------------------------------------------------------------


def test_wrapped_segments_continue_across_the_antimeridian() -> None:
    assert wrapped_segments(-3, 10, 360) == [(357, 360), (0, 7)]
    assert wrapped_segments(355, 10, 360) == [(355, 360), (0, 5)]
    assert wrapped_segments(10, 20, 360) == [(10, 30)]
    assert wrapped_segments(-2, 9, 3) == [(1, 3), (0, 3), (0, 3), (0, 1)]  # wider than the globe


def test_global_period_of_cell_and_grid_registered_grids() -> None:
    cell = 1 / 240  # GEBCO's 15"
    gebco = Affine(cell, 0, -180, 0, -cell, 90)
    assert global_period(gebco, (43200, 86400), geographic=True) == 86400
    grid_registered = Affine(cell, 0, -180 - cell / 2, 0, -cell, 90)
    assert global_period(grid_registered, (43201, 86401), geographic=True) == 86400
    assert global_period(gebco, (43200, 86000), geographic=True) is None  # regional
    assert global_period(gebco, (43200, 86400), geographic=False) is None  # projected metres


def test_wrapped_tiles_read_past_both_edges_with_equal_windows() -> None:
    tiles = tile_grid(40, 100, 32, 10, wrap_cols=100)
    widths = {int(tile.read.width) for tile in tiles}
    assert widths == {32 + 20}
    first, last = tiles[0], tiles[3]
    assert first.read.col_off == -10 and last.read.col_off + last.read.width == 96 + 32 + 10
    assert last.core == Window(96, 0, 4, 32)  # cores still partition the raster


def global_grid(west: float, roll: int = 0) -> tuple[np.ndarray, Affine]:
    """A 2-degree global DEM (90 x 180 cells) of smooth random relief, -5000..+4000 m, made
    periodic east-west; its columns rolled by ``roll`` and starting at longitude ``west``."""
    rng = np.random.default_rng(7)
    relief = gaussian_filter(rng.normal(size=(90, 180)), sigma=(2, 3), mode=("nearest", "wrap"))
    relief = (relief - relief.min()) / np.ptp(relief) * 9000.0 - 5000.0
    return np.roll(relief, roll, axis=1).astype(np.float32), Affine(2, 0, west, 0, -2, 90)


def test_a_global_grid_has_no_seam_at_the_antimeridian(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    crs = CRS.from_epsg(4326)
    values, transform = global_grid(-180.0)
    dateline = write_geotiff(tmp_path / "dateline.tif", values, transform, crs)  # -180..180
    rolled, rolled_transform = global_grid(0.0, roll=-90)
    greenwich = write_geotiff(tmp_path / "greenwich.tif", rolled, rolled_transform, crs)  # 0..360
    options: dict[str, Any] = {
        "device": "cpu",
        "tile_px": 32,
        "precision": "fp32",
        "progress": False,
        "ranks": None,
    }

    def predict(source: Path, name: str, **extra: Any) -> np.ndarray:
        output = predict_raster(setup["checkpoint"], source, tmp_path / name, **options, **extra)
        with rasterio.open(output) as dst:
            return dst.read(1)

    wrapped = predict(dateline, "wrapped.tif")
    # The same globe cut at Greenwich: the antimeridian lies inside its tiles' context, so its
    # output there is what a seamless world gives. The wrapped run matches it everywhere.
    seamless = np.roll(predict(greenwich, "greenwich_out.tif"), 90 * 5, axis=1)
    np.testing.assert_allclose(wrapped, seamless, rtol=0, atol=1e-2)
    # Without wrapping, the tiles at both edges lack their context across 180 degrees.
    clipped = predict(dateline, "clipped.tif", wrap=False)
    edge = np.abs(clipped - seamless)[:, list(range(10)) + list(range(-10, 0))]
    assert edge.max() > 1.0
    np.testing.assert_allclose(clipped[:, 200:700], seamless[:, 200:700], rtol=0, atol=1e-2)
    with pytest.raises(ValueError, match="cannot wrap east-west"):
        regional = write_geotiff(tmp_path / "regional.tif", values[:, :90], transform, crs)
        predict(regional, "regional_out.tif", wrap=True)


def test_predict_array_wraps_a_global_array_too(setup: dict[str, Any]) -> None:
    values, _ = global_grid(-180.0)
    options: dict[str, Any] = {"device": "cpu", "precision": "fp32", "wrap_cols": 180}
    whole = predict_array(setup["checkpoint"], values, **options)
    tiled = predict_array(setup["checkpoint"], values, tile_px=40, **options)
    rolled = predict_array(setup["checkpoint"], np.roll(values, 77, axis=1), tile_px=40, **options)
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-2)
    np.testing.assert_allclose(np.roll(rolled, -77 * 5, axis=1), whole, rtol=0, atol=1e-2)
    clipped = predict_array(setup["checkpoint"], values, device="cpu", precision="fp32")
    assert np.abs(clipped - whole)[:, :5].max() > 1.0
