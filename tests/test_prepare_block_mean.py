"""prepare.block_mean: degrade, the block mean."""

from __future__ import annotations

import numpy as np
import pytest

from demsr.prepare import (
    degrade,
)


def test_degrade_is_the_block_mean() -> None:
    highres = np.arange(4 * 6, dtype=np.float32).reshape(4, 6)
    lowres = degrade(highres, 2)
    assert lowres.shape == (2, 3)
    assert lowres.dtype == np.float32
    assert lowres[0, 0] == pytest.approx(np.mean([0, 1, 6, 7]))
    assert lowres[1, 2] == pytest.approx(np.mean([16, 17, 22, 23]))
    # Leading dimensions are kept; integers come back as float32.
    stacked = degrade(np.stack([highres, 2 * highres]).astype(np.int16)[:, None], 2)
    assert stacked.shape == (2, 1, 2, 3)
    assert stacked.dtype == np.float32
    np.testing.assert_allclose(stacked[1, 0], 2 * lowres)


def test_degrade_nodata_spoils_only_its_block() -> None:
    highres = np.ones((10, 10), dtype=np.float32)
    highres[6, 2] = np.nan
    lowres = degrade(highres, 5)
    assert np.isnan(lowres[1, 0])
    assert np.isfinite(lowres).sum() == 3


def test_degrade_refuses_partial_blocks() -> None:
    with pytest.raises(ValueError, match="not a multiple of the scale 5"):
        degrade(np.zeros((12, 10)), 5)
    with pytest.raises(ValueError, match="scale"):
        degrade(np.zeros((10, 10)), 0)
