"""datasets.pair_file: the HDF5 pair layout, ours and the published one, read and checked."""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pytest

from demsr.datasets import (
    IDENTITY,
    PairDataset,
    inspect_pair_file,
    patch_key,
    read_pair_file,
)


def write_published(path: Path, n: int = 3, dtype: str = "float32") -> tuple[np.ndarray, ...]:
    """A file as MindEarth publishes it: only the two datasets, no attributes."""
    rng = np.random.default_rng(1)
    lowres = rng.random((n, 1, 32, 32)).astype(dtype)
    highres = rng.random((n, 1, 160, 160)).astype(dtype)
    with h5py.File(path, "w") as handle:
        handle["32_32"] = lowres
        handle["160_160"] = highres
    return lowres, highres


def test_patch_key() -> None:
    assert patch_key(32) == "32_32"
    assert patch_key(160) == "160_160"
    assert patch_key(8, 12) == "8_12"


def test_published_file_reads_with_scale_5_and_identity(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lowres, highres = write_published(tmp_path / "train.h5", dtype="float64")
    with caplog.at_level(logging.WARNING, logger="demsr.datasets"):
        pf = read_pair_file(tmp_path / "train.h5")
    assert "normalised units" in caplog.text
    assert pf.scale == 5
    assert pf.normalisation == IDENTITY
    assert pf.units == "normalised"
    assert not pf.metadata.has_attributes
    assert pf.source_windows is None
    assert pf.lowres.dtype == np.float32 and pf.lowres.shape == (3, 1, 32, 32)
    assert pf.highres.shape == (3, 1, 160, 160)
    np.testing.assert_allclose(pf.highres, highres, rtol=1e-7)
    dataset = PairDataset(tmp_path / "train.h5")
    assert dataset.scale == 5 and dataset.normalisation == IDENTITY and len(dataset) == 3
    assert dataset.lowres_patch_px == 32 and dataset.units == "normalised"


def _only(key: str, shape: tuple[int, ...]):
    def build(handle: h5py.File) -> None:
        handle[key] = np.zeros(shape, dtype=np.float32)

    return build


def _pair(lowres_shape: tuple[int, ...], highres_shape: tuple[int, ...], **names: str):
    def build(handle: h5py.File) -> None:
        low_key = names.get("low", f"{lowres_shape[-2]}_{lowres_shape[-1]}")
        high_key = names.get("high", f"{highres_shape[-2]}_{highres_shape[-1]}")
        handle[low_key] = np.zeros(lowres_shape, dtype=np.float32)
        handle[high_key] = np.zeros(highres_shape, dtype=np.float32)

    return build


def _with(base, extra):
    def build(handle: h5py.File) -> None:
        base(handle)
        extra(handle)

    return build


def _attr(name: str, value: object):
    def build(handle: h5py.File) -> None:
        handle.attrs[name] = value

    return build


GOOD = _pair((2, 1, 32, 32), (2, 1, 160, 160))


@pytest.mark.parametrize(
    "build, message",
    [
        (_only("32_32", (2, 1, 32, 32)), "exactly two patch datasets"),
        (_pair((2, 1, 32, 32), (2, 1, 160, 160), low="lowres", high="highres"), "found none"),
        (_with(GOOD, _only("64_64", (2, 1, 64, 64))), "exactly two patch datasets"),
        (_pair((2, 1, 32, 32), (3, 1, 160, 160)), "holds 2 patches but '160_160' holds 3"),
        (_pair((2, 1, 32, 32), (2, 1, 100, 100)), "integer scale"),
        (
            _pair((2, 32, 32), (2, 160, 160), low="32_32", high="160_160"),
            r"expected \(N, 1, h, w\)",
        ),
        (_pair((2, 1, 32, 32), (2, 1, 160, 160), high="150_150"), "not"),
        (_with(GOOD, _attr("scale", 4)), "disagrees"),
        (_with(GOOD, _only("source_windows", (2, 4))), "source_windows"),
        (_with(GOOD, _attr("scale", 5)), None),  # valid: attributes without normalisation
    ],
)
def test_bad_pair_files_raise_naming_the_file(tmp_path: Path, build, message: str | None) -> None:
    path = tmp_path / "pairs.h5"
    with h5py.File(path, "w") as handle:
        build(handle)
    if message is None:
        layout = inspect_pair_file(path)
        assert layout.scale == 5 and layout.metadata.units == "normalised"
        return
    with pytest.raises(ValueError, match=message) as caught:
        read_pair_file(path)
    assert str(path) in str(caught.value)


def test_not_hdf5_or_missing_raises(tmp_path: Path) -> None:
    text = tmp_path / "train.h5"
    text.write_text("not hdf5")
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        read_pair_file(text)
    with pytest.raises(ValueError, match="no such pair file"):
        PairDataset(tmp_path / "missing.h5")
