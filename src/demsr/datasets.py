"""Training pairs on disk (the published HDF5 layout) and as normalised tensors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Normalisation:
    """Linear map between metres and the network's units: ``metres = value * scale_m + offset_m``.

    The default maps -11000..9000 m (deepest trench to highest peak) onto 0..1, one fixed range
    for land and sea so that a land model and its ocean fine-tuning share the same units.
    """

    offset_m: float = -11000.0
    scale_m: float = 20000.0

    def __post_init__(self) -> None:
        if not np.isfinite(self.offset_m) or not np.isfinite(self.scale_m) or self.scale_m == 0:
            raise ValueError(f"invalid normalisation offset={self.offset_m} scale={self.scale_m}")

    def normalise(self, metres: Any) -> Any:
        return (metres - self.offset_m) / self.scale_m

    def denormalise(self, values: Any) -> Any:
        return values * self.scale_m + self.offset_m

    def to_dict(self) -> dict[str, float]:
        return {"offset_m": float(self.offset_m), "scale_m": float(self.scale_m)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Normalisation:
        return cls(offset_m=float(values["offset_m"]), scale_m=float(values["scale_m"]))


IDENTITY = Normalisation(offset_m=0.0, scale_m=1.0)
