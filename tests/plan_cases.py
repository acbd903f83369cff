"""What the tests of ``demsr.plan`` share: the raster they plan, a GEBCO-sized global grid that
takes no room, a count of the tiles that go through the network, and the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import rasterio
import torch
from click.testing import CliRunner
from rasterio.transform import from_origin

from demsr.checkpoint import Checkpoint
from demsr.cli import main

SOURCE = "landlab_west_bijou_1s.tif"  # 67 x 129 cells, EPSG:4326, no nodata
GEBCO_SHAPE = (43_200, 86_400)  # GEBCO's global 15" grid


def write_sparse_global_grid(path: Path) -> Path:
    """A GEBCO-sized 15" GeoTIFF with no cell written: tiled and sparse, so it takes no room."""
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


def run_cli(*args: Any) -> tuple[int, str, str]:
    """``demsr ARGS...``: its exit code, stdout and stderr."""
    result = CliRunner().invoke(main, [str(arg) for arg in args])
    return result.exit_code, result.stdout, result.stderr
