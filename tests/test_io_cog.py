"""The Cloud-Optimized GeoTIFF product: tiles, compression, overviews, tags, its staging file."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from io_helpers import LIDAR, METADATA, RELIEF, make_partial
from rasterio.crs import CRS

from demsr.io import finalise_output


@pytest.mark.parametrize("source", [RELIEF, LIDAR])
def test_finalise_cog(tmp_path: Path, dem_test_dir: Path, source: str) -> None:
    partial = tmp_path / "prediction.partial.tif"
    data, transform, crs = make_partial(partial, dem_test_dir / source)
    output = finalise_output(partial, tmp_path / "out.tif", metadata=METADATA)
    assert output == tmp_path / "out.tif"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]  # partial and temps gone
    with rasterio.open(output) as cog:
        assert cog.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert cog.tags(ns="IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"
        assert cog.block_shapes == [(512, 512)]
        assert len(cog.overviews(1)) >= 1
        # EGM96 heights: the horizontal CRS + EGM96 height (EPSG:5773)
        assert cog.crs == CRS.from_user_input(f"EPSG:{crs.to_epsg()}+5773")
        assert cog.transform == transform
        assert cog.dtypes == ("float32",) and np.isnan(cog.nodata)
        assert cog.units == ("m",)
        assert {k: cog.tags()[k] for k in METADATA} == METADATA
        np.testing.assert_array_equal(cog.read(1), data)


def test_a_cog_staged_compressed_or_not_is_the_same_to_the_byte(
    tmp_path: Path, dem_test_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The staging file is uncompressed only where twice its size is free; either way the COG
    driver compresses the product anew, so the bytes are the same."""
    import demsr.io.cog as cog

    products_by_mode = {}
    for uncompressed in (True, False):
        monkeypatch.setattr(cog, "_stage_uncompressed", lambda *_, u=uncompressed: u)
        folder = tmp_path / str(uncompressed)
        folder.mkdir()
        make_partial(folder / "prediction.partial.tif", dem_test_dir / RELIEF)
        output = finalise_output(folder / "prediction.partial.tif", folder / "out.tif")
        assert sorted(p.name for p in folder.iterdir()) == ["out.tif"]
        products_by_mode[uncompressed] = output.read_bytes()
    assert products_by_mode[True] == products_by_mode[False]

    monkeypatch.undo()
    free = shutil.disk_usage(tmp_path).free
    side = int((free * 3 / 8 / 4) ** 0.5)  # staging with overviews ~ free / 2
    assert cog._stage_uncompressed((side // 2, side // 2), 1, "float32", tmp_path)
    assert not cog._stage_uncompressed((side * 2, side * 2), 1, "float32", tmp_path)


def test_no_room_for_an_uncompressed_staging_file_falls_back_to_a_compressed_one(
    tmp_path: Path,
    dem_test_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Free space is not a quota: an uncompressed staging file that fails to write is written
    again compressed, and the product is the same."""
    import demsr.io.cog as cog

    make_partial(tmp_path / "reference.partial.tif", dem_test_dir / RELIEF)
    reference = finalise_output(tmp_path / "reference.partial.tif", tmp_path / "reference.tif")

    real_write = cog._write_staging
    tried: list[str] = []

    def quota(src: Any, staging: Path, profile: dict[str, Any], *args: Any) -> None:
        tried.append(profile["compress"])
        if profile["compress"] == "none":
            staging.write_bytes(b"II*\0 a partial file")
            raise OSError(errno.EDQUOT, "Disk quota exceeded", str(staging))
        real_write(src, staging, profile, *args)

    monkeypatch.setattr(cog, "_stage_uncompressed", lambda *_: True)
    monkeypatch.setattr(cog, "_write_staging", quota)
    folder = tmp_path / "quota"
    folder.mkdir()
    make_partial(folder / "prediction.partial.tif", dem_test_dir / RELIEF)
    output = finalise_output(folder / "prediction.partial.tif", folder / "out.tif")
    assert tried == ["none", "deflate"]
    assert "writing it compressed" in caplog.text
    assert sorted(p.name for p in folder.iterdir()) == ["out.tif"]
    assert output.read_bytes() == reference.read_bytes()
