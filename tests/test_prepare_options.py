"""prepare.options: PrepareOptions validated, with its defaults and dict form."""

from __future__ import annotations

import pytest

from demsr.datasets import Normalisation
from demsr.prepare import (
    PrepareOptions,
)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"scale": 1}, "scale"),
        ({"lowres_patch_px": 0}, "lowres_patch_px"),
        ({"stride_px": 0}, "stride_px"),
        ({"min_relief_m": -1.0}, "min_relief_m"),
        ({"min_sea_fraction": -0.1}, "min_sea_fraction"),
        ({"max_sea_fraction": 1.5}, "max_sea_fraction"),
        ({"min_sea_fraction": 0.8, "max_sea_fraction": 0.2}, "above max_sea_fraction"),
        ({"max_patches_per_file": 0}, "max_patches_per_file"),
        ({"split_fractions": (0.8, 0.1)}, "split_fractions"),
        ({"split_fractions": (0.8, 0.3, 0.1)}, "sum to 1"),
        ({"split_by": "tile"}, "split_by"),
        ({"split_block_px": 100}, "split_block_px"),
        ({"seed": -1}, "seed"),
        ({"band": 0}, "band"),
    ],
)
def test_bad_options_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PrepareOptions(**overrides)


def test_options_defaults_and_dict_round_trip() -> None:
    options = PrepareOptions()
    assert options.highres_patch_px == 160
    assert options.effective_stride_px == 160
    assert options.effective_split_block_px == 480
    custom = PrepareOptions(lowres_patch_px=8, normalisation=Normalisation(0.0, 100.0), seed=3)
    assert PrepareOptions.from_dict(custom.to_dict()) == custom
    with pytest.raises(ValueError, match="unknown prepare option"):
        PrepareOptions.from_dict({"patch": 3})
