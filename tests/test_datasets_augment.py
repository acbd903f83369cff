"""datasets.augment: the 8 flips/rotations of a patch."""

from __future__ import annotations

import pytest
import torch

from demsr.datasets import (
    dihedral,
)


def test_dihedral_gives_eight_distinct_variants() -> None:
    patch = torch.arange(9.0).reshape(1, 3, 3)
    variants = {tuple(dihedral(patch, k).flatten().tolist()) for k in range(8)}
    assert len(variants) == 8
    with pytest.raises(ValueError):
        dihedral(patch, 8)
