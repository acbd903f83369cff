"""The classical baselines: GDAL's kernels with cell-centre registration, batches, unknown
names, and the command line's list of them."""

from __future__ import annotations

import numpy as np
import pytest
from rasterio.enums import Resampling

import demsr.baselines as baselines_module
from demsr.baselines import BASELINES, upsample_baseline


def test_bicubic_reproduces_a_plane_with_cell_centre_registration() -> None:
    rows, cols = np.mgrid[0:12, 0:10].astype(np.float32)
    lowres = 3.0 * rows - 2.0 * cols + 100.0  # value at low-res cell centre (i + 0.5, j + 0.5)
    fine_rows, fine_cols = np.mgrid[0:60, 0:50].astype(np.float64)
    # High-res cell centre (r + 0.5) / 5 in low-res cell units; low-res centres at i + 0.5.
    expected = 3.0 * ((fine_rows + 0.5) / 5 - 0.5) - 2.0 * ((fine_cols + 0.5) / 5 - 0.5) + 100.0
    interior = (slice(10, 50), slice(10, 40))  # away from the clamped edges
    for method in ("bilinear", "bicubic"):  # these kernels reproduce a plane exactly
        highres = upsample_baseline(lowres, 5, method)
        assert highres.shape == (60, 50)
        assert np.abs(highres[interior] - expected[interior]).max() < 1e-3, method


def test_baselines_come_from_gdal(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Resampling] = []
    real = baselines_module.reproject

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(kwargs["resampling"])  # type: ignore[arg-type]
        return real(*args, **kwargs)

    monkeypatch.setattr(baselines_module, "reproject", spy)
    lowres = np.random.default_rng(0).random((6, 6)).astype(np.float32) * 100
    outputs = {name: upsample_baseline(lowres, 5, name) for name in BASELINES}
    assert seen == [
        Resampling.bilinear,
        Resampling.cubic,
        Resampling.cubic_spline,
        Resampling.lanczos,
    ]
    # Four different kernels, four different results.
    names = list(outputs)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            assert not np.allclose(outputs[first], outputs[second]), (first, second)


def test_baseline_batches_and_unknown_method() -> None:
    lowres = np.random.default_rng(0).random((3, 1, 4, 4)).astype(np.float32)
    assert upsample_baseline(lowres, 2).shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="unknown baseline"):
        upsample_baseline(lowres, 2, "nearest-ish")


def test_command_line_baselines_are_the_librarys() -> None:
    from demsr.cli.options import BASELINE_NAMES

    assert BASELINE_NAMES == tuple(BASELINES)
