"""datasets.pair_writer: pair files written whole or in pieces, nothing left on failure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pair_helpers import consistent_pairs

from demsr.datasets import (
    Normalisation,
    PairMetadata,
    PairWriter,
    read_pair_file,
    write_pairs,
)


def test_written_pairs_round_trip(tmp_path: Path) -> None:
    lowres, highres = consistent_pairs(5)
    windows = np.arange(25, dtype=np.int64).reshape(5, 5)
    metadata = PairMetadata(
        scale=5,
        normalisation=Normalisation(offset_m=-500.0, scale_m=3000.0),
        split="valid",
        seed=7,
        source_files=("/data/a.tif", "/data/b.tif"),
        source_crs=("EPSG:4326", "EPSG:32611"),
        prepare_options={"scale": 5, "lowres_patch_px": 4},
    )
    path = write_pairs(tmp_path / "valid.h5", lowres, highres, metadata, windows)
    pf = read_pair_file(path)
    assert pf.layout.lowres_key == "4_4" and pf.layout.highres_key == "20_20"
    np.testing.assert_array_equal(pf.lowres, lowres)
    np.testing.assert_array_equal(pf.highres, highres)
    np.testing.assert_array_equal(pf.source_windows, windows)
    assert pf.metadata.has_attributes
    assert pf.units == "m"
    assert (pf.lowres_patch_px, pf.highres_patch_px) == (4, 20)
    for name in ("scale", "normalisation", "split", "seed", "source_files", "source_crs"):
        assert getattr(pf.metadata, name) == getattr(metadata, name), name
    assert pf.metadata.prepare_options == metadata.prepare_options
    assert pf.metadata.demsr_version == metadata.demsr_version != ""
    with pytest.raises(FileExistsError):
        write_pairs(path, lowres, highres, metadata)
    write_pairs(path, lowres[:2], highres[:2], metadata, overwrite=True)
    assert len(read_pair_file(path)) == 2


def test_writer_leaves_nothing_on_error_and_refuses_nan(tmp_path: Path) -> None:
    lowres, highres = consistent_pairs(2)
    path = tmp_path / "split" / "train.h5"
    with pytest.raises(RuntimeError, match="interrupted"):
        with PairWriter(path, 4, PairMetadata(scale=5)) as writer:
            writer.append(lowres, highres)
            raise RuntimeError("interrupted")
    assert not path.exists() and not list(path.parent.iterdir())
    highres[0, 0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        with PairWriter(path, 4, PairMetadata(scale=5)) as writer:
            writer.append(lowres, highres)
    with pytest.raises(ValueError, match="expected lowres"):
        with PairWriter(path, 4, PairMetadata(scale=5)) as writer:
            writer.append(lowres, highres[:, :, :10])
    assert not path.exists()


def test_writer_appends_in_pieces(tmp_path: Path) -> None:
    lowres, highres = consistent_pairs(30)
    path = tmp_path / "train.h5"
    with PairWriter(path, 4, PairMetadata(scale=5)) as writer:
        for begin in range(0, 30, 7):
            writer.append(lowres[begin : begin + 7], highres[begin : begin + 7])
    pf = read_pair_file(path)
    np.testing.assert_array_equal(pf.highres, highres)
    assert (pf.source_windows == -1).all()
