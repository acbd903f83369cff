"""How prepare cuts rasters into pairs: :class:`PrepareOptions` (patch and split-block sizes,
filters, split fractions, seed, normalisation), validated, and the split names."""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from demsr.config_keys import check_known_keys
from demsr.datasets import Normalisation

SPLITS: tuple[str, str, str] = ("train", "valid", "test")
SPLIT_BY: tuple[str, ...] = ("block", "file")
SplitBy = Literal["block", "file"]


def is_int(value: Any) -> bool:
    """An integer of any kind (Python or numpy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class PrepareOptions:
    """How :func:`prepare_pairs` cuts rasters into pairs. Sizes are in cells (pixels).

    - ``scale``: high-res cells per low-res cell along each axis (5: 3" -> 15").
    - ``lowres_patch_px``: low-res patch side; the high-res patch is ``lowres_patch_px * scale``
      (32 -> 160, the published layout).
    - ``stride_px``: high-res cells between patch origins; None = the high-res patch side
      (patches touch but do not overlap).
    - ``min_relief_m``: patches whose high-res max - min is below this are dropped as flat.
    - ``min_sea_fraction`` / ``max_sea_fraction``: keep only patches whose fraction of high-res
      cells below 0 m lies in this closed range (0..1 keeps all). A minimum keeps seafloor for
      bathymetry fine-tuning (patches below it are dropped as "land"); a maximum keeps land for
      pretraining (patches above it are dropped as "sea"). Land below sea level counts as sea;
      SRTM's flat 0 m sea counts as land (``min_relief_m`` drops it).
    - ``max_patches_per_file``: keep at most this many patches per raster (a random subset drawn
      from ``seed``, stratified by split); None keeps all.
    - ``split_fractions``: (train, valid, test), non-negative, summing to 1.
    - ``split_by``: ``"block"`` deals split blocks of each raster; ``"file"`` deals whole files.
    - ``split_block_px``: side of a split block in high-res cells; None = 3 high-res patches.
    - ``seed``: seeds the split assignment and the subsets.
    - ``normalisation``: metres -> stored values (``value = (metres - offset_m) / scale_m``).
    - ``band``: raster band to read (1-based).
    """

    scale: int = 5
    lowres_patch_px: int = 32
    stride_px: int | None = None
    min_relief_m: float = 10.0
    min_sea_fraction: float = 0.0
    max_sea_fraction: float = 1.0
    max_patches_per_file: int | None = None
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_by: SplitBy = "block"
    split_block_px: int | None = None
    seed: int = 0
    normalisation: Normalisation = field(default_factory=Normalisation)
    band: int = 1

    def __post_init__(self) -> None:
        if not is_int(self.scale) or self.scale < 2:
            raise ValueError(f"scale must be an integer >= 2, got {self.scale!r}")
        if not is_int(self.lowres_patch_px) or self.lowres_patch_px < 1:
            raise ValueError(
                f"lowres_patch_px must be an integer >= 1, got {self.lowres_patch_px!r}"
            )
        if self.stride_px is not None and (not is_int(self.stride_px) or self.stride_px < 1):
            raise ValueError(f"stride_px must be an integer >= 1 or None, got {self.stride_px!r}")
        relief = self.min_relief_m
        if not _is_real(relief):
            raise ValueError(f"min_relief_m must be a number, got {relief!r}")
        if not np.isfinite(relief) or relief < 0:
            raise ValueError(f"min_relief_m must be finite and >= 0, got {relief!r}")
        for name in ("min_sea_fraction", "max_sea_fraction"):
            value = getattr(self, name)
            if not _is_real(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a number in 0..1, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.min_sea_fraction > self.max_sea_fraction:
            raise ValueError(
                f"min_sea_fraction ({self.min_sea_fraction:g}) is above max_sea_fraction "
                f"({self.max_sea_fraction:g}): no patch could be kept"
            )
        cap = self.max_patches_per_file
        if cap is not None and (not is_int(cap) or cap < 1):
            raise ValueError(f"max_patches_per_file must be an integer >= 1 or None, got {cap!r}")
        fractions = tuple(self.split_fractions)
        if len(fractions) != 3 or not all(_is_real(f) for f in fractions):
            raise ValueError(
                f"split_fractions must be three numbers (train, valid, test), got {fractions!r}"
            )
        if any(not np.isfinite(f) or f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
            raise ValueError(
                f"split_fractions must be >= 0 and sum to 1, got {fractions!r} "
                f"(sum {sum(fractions):g})"
            )
        object.__setattr__(self, "split_fractions", tuple(float(f) for f in fractions))
        if self.split_by not in SPLIT_BY:
            raise ValueError(f"split_by must be one of {SPLIT_BY}, got {self.split_by!r}")
        block = self.split_block_px
        if block is not None and (not is_int(block) or block < self.highres_patch_px):
            raise ValueError(
                f"split_block_px must be an integer >= the high-res patch size "
                f"({self.highres_patch_px}), got {block!r}"
            )
        if not is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.normalisation, Normalisation):
            raise ValueError(
                f"normalisation must be a Normalisation, got {type(self.normalisation).__name__}"
            )
        if not is_int(self.band) or self.band < 1:
            raise ValueError(f"band must be an integer >= 1, got {self.band!r}")

    @property
    def highres_patch_px(self) -> int:
        return self.lowres_patch_px * self.scale

    @property
    def filters_sea_fraction(self) -> bool:
        return self.min_sea_fraction > 0.0 or self.max_sea_fraction < 1.0

    @property
    def effective_stride_px(self) -> int:
        return self.highres_patch_px if self.stride_px is None else self.stride_px

    @property
    def effective_split_block_px(self) -> int:
        return 3 * self.highres_patch_px if self.split_block_px is None else self.split_block_px

    def resolved(self) -> PrepareOptions:
        """A copy with the defaults that depend on other fields (stride, block) written out."""
        return dataclasses.replace(
            self, stride_px=self.effective_stride_px, split_block_px=self.effective_split_block_px
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``normalisation`` as a nested dict); :meth:`from_dict` inverts it."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["split_fractions"] = list(self.split_fractions)
        values["normalisation"] = self.normalisation.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PrepareOptions:
        """Build options from a dict such as a YAML section; unknown keys are refused."""
        check_known_keys(cls, values, "prepare option")
        values = dict(values)
        if isinstance(values.get("normalisation"), dict):
            values["normalisation"] = Normalisation.from_dict(values["normalisation"])
        if "split_fractions" in values and not isinstance(values["split_fractions"], str):
            values["split_fractions"] = tuple(values["split_fractions"])
        return cls(**values)
