"""PredictSettings: one object for a prediction's options, taken by predict, plan and the CLI;
and the tiles each rank predicts, as predict deals them and as plan counts them."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from conftest import write_untrained_checkpoint

import demsr
import demsr.predict
from demsr.cli.plan import command as plan_command
from demsr.cli.predict import command as predict_command
from demsr.io import write_geotiff
from demsr.plan import plan_prediction, shard_tiles
from demsr.predict import predict_raster, rank_batches
from demsr.predict_settings import DEFAULTS, PredictSettings
from demsr.ranks import RankContext
from demsr.tiling import Tile, deal_batches, tile_grid


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_untrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


def write_dem(path: Path, rows: int, cols: int) -> Path:
    """A smooth rows x cols DEM of 90 m cells in UTM zone 33N."""
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    data = 500 + 40 * np.sin(x / 7) + 30 * np.cos(y / 5)
    write_geotiff(path, data, Affine(90.0, 0, 400000.0, 0, -90.0, 5000000.0), "EPSG:32633", None)
    return path


class Dealt(Exception):
    """Stops a prediction once its rank's batches are known."""


def batches_predict_deals(
    monkeypatch: pytest.MonkeyPatch,
    checkpoint: Path,
    source: Path,
    output: Path,
    settings: PredictSettings,
    ranks: int,
) -> list[list[list[Tile]]]:
    """The batches each of ``ranks`` ranks hands to the network in a real ``predict_raster``
    run (rank 0 first, so that the others find its store): the tile loop is replaced by one
    that records them and stops, and the ranks run one after another in this process."""
    seen: list[list[list[Tile]]] = []

    def record(network: Any, batches: list[list[Tile]], *args: Any) -> None:
        seen.append(batches)
        raise Dealt

    @contextlib.contextmanager
    def no_group(*args: Any, **kwargs: Any) -> Iterator[None]:
        yield  # the ranks take turns here: nothing to join

    monkeypatch.setattr(demsr.predict, "_run_tiles", record)
    monkeypatch.setattr(demsr.predict.distributed, "process_group", no_group)
    for rank in range(ranks):
        with pytest.raises(Dealt):
            predict_raster(
                checkpoint, source, output, settings, ranks=RankContext(rank, ranks, rank)
            )
    return seen


@pytest.mark.parametrize(
    ("rows", "cols", "tile_px", "batch_size", "ranks"),
    [(40, 52, 16, 1, 3), (40, 52, 16, 2, 2), (33, 70, 12, 3, 4), (25, 25, 8, 4, 5)],
)
def test_plan_counts_the_tiles_predict_deals_to_each_rank(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    checkpoint: Path,
    rows: int,
    cols: int,
    tile_px: int,
    batch_size: int,
    ranks: int,
) -> None:
    """What each rank of a real prediction is given equals what the plan of the same settings
    says it gets, and what the shared dealing function gives; every tile is dealt once."""
    source = write_dem(tmp_path / "dem.tif", rows, cols)
    settings = PredictSettings(
        tile_px=tile_px, batch_size=batch_size, device="cpu", precision="fp32", progress=False
    )
    plan = plan_prediction(source, checkpoint, settings, ranks=ranks)
    dealt = batches_predict_deals(
        monkeypatch, checkpoint, source, tmp_path / "out.tif", settings, ranks
    )
    counts = tuple(sum(len(batch) for batch in batches) for batches in dealt)
    assert counts == plan.tiles_per_rank
    assert (
        plan.tiles_per_rank
        == shard_tiles((rows, cols), tile_px, plan.margin_px, batch_size, ranks).tiles_per_rank
    )
    tiles = tile_grid(rows, cols, tile_px, plan.margin_px)
    for rank, batches in enumerate(dealt):
        assert batches == rank_batches(tiles, batch_size, (), rank, ranks)
        assert all(len(batch) <= batch_size for batch in batches)
    indices = sorted(tile.index for batches in dealt for batch in batches for tile in batch)
    assert indices == list(range(len(tiles))) == list(range(plan.tiles))


def test_deal_batches_goes_round_robin_and_refuses_a_rank_outside_the_run() -> None:
    assert list(deal_batches(["a", "b", "c", "d", "e"], 1, 3)) == ["b", "e"]
    assert deal_batches(range(10), 2, 4) == range(2, 10, 4)
    with pytest.raises(ValueError, match="rank must be in 0..ranks-1"):
        deal_batches([1, 2], 3, 3)


def test_a_resumed_run_deals_only_the_unfinished_tiles_once() -> None:
    """Batches stay those of the whole grid; the finished ones are not dealt again, and the
    others are dealt to exactly one rank each, on any number of ranks."""
    tiles = tile_grid(40, 40, 10, 3)  # 16 tiles of 4 read shapes
    finished = {tile.index for tile in rank_batches(tiles, 2, (), 0, 2)[0]}
    for ranks in (1, 2, 3):
        dealt = [rank_batches(tiles, 2, finished, rank, ranks) for rank in range(ranks)]
        indices = sorted(tile.index for batches in dealt for batch in batches for tile in batch)
        assert indices == sorted(set(range(16)) - finished)


def test_settings_and_keywords_give_the_same_product(tmp_path: Path, checkpoint: Path) -> None:
    """A PredictSettings, its fields as keywords, and keywords over a settings object (they
    win) predict the same; an unknown option is refused before anything is written."""
    source = write_dem(tmp_path / "dem.tif", 30, 30)
    settings = PredictSettings(tile_px=12, device="cpu", progress=False)
    by_object = predict_raster(checkpoint, source, tmp_path / "a.tif", settings)
    by_keywords = predict_raster(
        checkpoint, source, tmp_path / "b.tif", tile_px=12, device="cpu", progress=False
    )
    overridden = predict_raster(
        checkpoint,
        source,
        tmp_path / "c.tif",
        dataclasses.replace(settings, tile_px=99),
        tile_px=12,
    )
    with rasterio.open(by_object) as a, rasterio.open(by_keywords) as b:
        assert a.tags()["tile_px"] == "12"
        assert np.array_equal(a.read(1), b.read(1))
    with rasterio.open(overridden) as c:
        assert c.tags()["tile_px"] == "12"
    with pytest.raises(TypeError, match="tile_size"):
        predict_raster(checkpoint, source, tmp_path / "d.tif", settings, tile_size=12)
    assert not (tmp_path / "d.tif").exists()
    assert demsr.PredictSettings is PredictSettings


@pytest.mark.parametrize(
    ("command", "args"),
    [(predict_command, ["in.tif", "out.tif"]), (plan_command, ["in.tif"])],
)
def test_the_command_line_defaults_are_the_settings_defaults(command: Any, args: list[str]) -> None:
    """Every option of demsr predict / demsr plan that is a PredictSettings field reaches the
    command as the field's default when not given (plan's --format names the COG it plans
    without an output; --progress follows the terminal)."""
    fields = {field.name for field in dataclasses.fields(PredictSettings)}
    names = {"dtype": "output_dtype", "compile_model": "compile"}
    given = command.make_context(command.name, args, resilient_parsing=True).params
    checked = set()
    for param, value in given.items():
        name = names.get(param, param)
        if name not in fields or name == "progress" or (command is plan_command and name == "fmt"):
            continue
        assert value == getattr(DEFAULTS, name), param
        checked.add(name)
    assert {
        "tile_px",
        "batch_size",
        "memory_bytes",
        "precision",
        "device",
        "band",
        "crs",
    } <= checked
