"""Elevation scaling and the interpolation kernels: cubic convolution as GDAL's, back-projection
and the block-mean constraint honouring the low-res cells, old scaling headers read as written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from demsr.io import read_raster
from demsr.prepare import crop_to_blocks, degrade
from demsr.scaling import (
    ElevationScaling,
    backproject,
    constrain_block_means,
    upsample_bicubic,
    upsample_cubic,
)


def test_backproject_is_the_identity_on_consistent_surfaces() -> None:
    lowres = torch.rand(1, 1, 6, 7, dtype=torch.float64) * 100
    blocky = lowres.repeat_interleave(5, -2).repeat_interleave(5, -1)  # block means == lowres
    torch.testing.assert_close(backproject(blocky, lowres, 3), blocky)


def test_scaling_headers_old_and_invalid() -> None:
    old = ElevationScaling.from_dict({"offset_m": 0.0, "scale_m": 1000.0, "trend_sigma_px": 4.0})
    assert old.base == "trend" and old.backprojection_iterations == 0
    new = ElevationScaling(scale_m=1000.0, base="bicubic", backprojection_iterations=4)
    assert ElevationScaling.from_dict(new.to_dict()) == new
    with pytest.raises(ValueError, match="base must be one of"):
        ElevationScaling(base="lanczos")
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="backprojection_iterations must be a whole number"):
            ElevationScaling(backprojection_iterations=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="backprojection_iterations must be a whole number"):
        ElevationScaling.from_dict({"backprojection_iterations": "4"})


def _frontrange(dem_test_dir: Path) -> tuple[torch.Tensor, np.ndarray]:
    values = read_raster(dem_test_dir / "landlab_srtmgl3_frontrange.tif").data
    highres = crop_to_blocks(values, 5, "frontrange")
    return torch.from_numpy(degrade(highres, 5)).double()[None, None], highres


def test_cubic_base_is_gdal_cubic_without_the_5_cell_texture(dem_test_dir: Path) -> None:
    from demsr.baselines import upsample_baseline
    from demsr.metrics import texture_index

    lowres, _ = _frontrange(dem_test_dir)
    cubic = upsample_cubic(lowres, 5)[0, 0].numpy()
    gdal = upsample_baseline(lowres[0, 0].numpy(), 5, "bicubic")
    # GDAL's cubic is Keys' a = -0.5: the same values away from the border (float32 rounding).
    inner = (slice(10, -10), slice(10, -10))
    np.testing.assert_allclose(cubic[inner], gdal[inner], atol=2e-3)
    torch_bicubic = upsample_bicubic(lowres, 5)[0, 0].numpy()
    assert texture_index(cubic) < 0.002
    assert texture_index(torch_bicubic) > 10 * texture_index(cubic)
    # a = -0.75 misses a linear ramp by a pattern repeating every 5 cells; a = -0.5 does not.
    rows, cols = torch.meshgrid(
        torch.arange(12.0, dtype=torch.float64),
        torch.arange(12.0, dtype=torch.float64),
        indexing="ij",
    )
    ramp = (3 * rows - 2 * cols)[None, None]
    fine = torch.arange(60, dtype=torch.float64)
    exact = 3 * ((fine + 0.5) / 5 - 0.5)[:, None] - 2 * ((fine + 0.5) / 5 - 0.5)[None, :]
    away = slice(10, -10)
    torch.testing.assert_close(upsample_cubic(ramp, 5)[0, 0, away, away], exact[away, away])
    assert (upsample_bicubic(ramp, 5)[0, 0, away, away] - exact[away, away]).abs().max() > 0.01


def test_upsample_cubic_with_a_075_is_pytorch_bicubic() -> None:
    x = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    torch.testing.assert_close(upsample_cubic(x, 5, a=-0.75), upsample_bicubic(x, 5))


def test_block_mean_constraint_is_exact_and_smooth(dem_test_dir: Path) -> None:
    from demsr.metrics import texture_index

    lowres, truth = _frontrange(dem_test_dir)
    rough = upsample_cubic(lowres, 5) + 3.0 * torch.randn(1, 1, *truth.shape, dtype=torch.float64)
    constrained = constrain_block_means(rough, lowres)
    means = torch.nn.functional.avg_pool2d(constrained, 5)
    assert (means - lowres).abs().max().item() < 1e-8
    # float32 in, float32 out: exact to float32 rounding of the elevations
    constrained32 = constrain_block_means(rough.float(), lowres.float())
    means32 = torch.nn.functional.avg_pool2d(constrained32.double(), 5)
    assert (means32 - lowres).abs().max().item() < 1e-3
    # the correction is smooth: the cubic base made consistent keeps a low texture index, and
    # gets closer to the truth
    base = upsample_cubic(lowres, 5)
    consistent = constrain_block_means(base, lowres)[0, 0].numpy()
    assert texture_index(consistent) < 0.01
    rmse_base = float(np.sqrt(np.mean((base[0, 0].numpy() - truth) ** 2)))
    rmse_consistent = float(np.sqrt(np.mean((consistent - truth) ** 2)))
    assert rmse_consistent < rmse_base
    # an already consistent surface is left as it is
    torch.testing.assert_close(constrain_block_means(constrained, lowres), constrained)
