"""The 8 flips/rotations of a square patch (:func:`dihedral`) and their inverse: training
augmentation, and the test-time ensemble of :mod:`demsr.ensemble`."""

from __future__ import annotations

import torch


def dihedral(x: torch.Tensor, variant: int) -> torch.Tensor:
    """One of the 8 symmetries of the square applied to the last two dims of ``x``.

    ``variant`` 0..3 rotates by ``variant`` x 90 degrees; 4..7 flips left-right first. Block
    means commute with all eight, so applying the same variant to a low-res patch and its
    high-res patch keeps the pair consistent.
    """
    if not 0 <= variant < 8:
        raise ValueError(f"variant must be in 0..7, got {variant}")
    if variant >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k=variant % 4, dims=(-2, -1))


def undo_dihedral(x: torch.Tensor, variant: int) -> torch.Tensor:
    """The inverse of :func:`dihedral`: ``undo_dihedral(dihedral(x, v), v)`` is ``x``."""
    if not 0 <= variant < 8:
        raise ValueError(f"variant must be in 0..7, got {variant}")
    x = torch.rot90(x, k=-(variant % 4), dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if variant >= 4 else x
