"""What a prepare run made: per-file counts (:class:`FileReport`: candidates, drops by reason,
patches and blocks per split) and their totals (:class:`PrepareReport`, with its table)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demsr.prepare.options import SPLITS, PrepareOptions


@dataclass
class FileReport:
    """What prepare made of one raster. Counts are patches unless named blocks."""

    path: str
    shape: tuple[int, int]
    crs: str
    cell_size: tuple[float, float]  # (x, y) in CRS units
    nodata_fraction: float
    candidates: int = 0  # windows that fit inside a block
    dropped_nodata: int = 0
    dropped_flat: int = 0
    dropped_land: int = 0  # sea fraction below min_sea_fraction
    dropped_sea: int = 0  # sea fraction above max_sea_fraction
    dropped_limit: int = 0  # usable but beyond max_patches_per_file
    patches: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    blocks: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    empty_blocks: int = 0  # blocks without a usable patch (dealt to no split)

    @property
    def kept(self) -> int:
        return sum(self.patches.values())

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["kept"] = self.kept
        return values


@dataclass
class PrepareReport:
    """Counts of a prepare run, per file and in total; ``outputs`` maps split -> written file."""

    options: PrepareOptions
    files: list[FileReport]
    outputs: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def counts(self) -> dict[str, int]:
        """Patches per split."""
        return {split: sum(f.patches[split] for f in self.files) for split in SPLITS}

    @property
    def block_counts(self) -> dict[str, int]:
        return {split: sum(f.blocks[split] for f in self.files) for split in SPLITS}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def candidates(self) -> int:
        return sum(f.candidates for f in self.files)

    @property
    def dropped_nodata(self) -> int:
        return sum(f.dropped_nodata for f in self.files)

    @property
    def dropped_flat(self) -> int:
        return sum(f.dropped_flat for f in self.files)

    @property
    def dropped_land(self) -> int:
        return sum(f.dropped_land for f in self.files)

    @property
    def dropped_sea(self) -> int:
        return sum(f.dropped_sea for f in self.files)

    @property
    def dropped_limit(self) -> int:
        return sum(f.dropped_limit for f in self.files)

    def summary(self) -> str:
        """A plain-text table: one line per file, then the totals.

        The land/sea columns appear only when the options filter on the sea fraction.
        """
        sea = self.options.filters_sea_fraction

        def row(name: str, counts: FileReport | PrepareReport, kept: dict[str, int]) -> str:
            land_sea = f" {counts.dropped_land:>6} {counts.dropped_sea:>6}" if sea else ""
            return (
                f"{name[:36]:<36} {counts.candidates:>7} {counts.dropped_nodata:>7} "
                f"{counts.dropped_flat:>7}{land_sea} {counts.dropped_limit:>6} "
                f"{kept['train']:>7} {kept['valid']:>6} {kept['test']:>6}"
            )

        land_sea = f" {'land':>6} {'sea':>6}" if sea else ""
        lines = [
            f"{'file':<36} {'cand':>7} {'nodata':>7} {'flat':>7}{land_sea} {'limit':>6} "
            f"{'train':>7} {'valid':>6} {'test':>6}"
        ]
        lines += [row(Path(f.path).name, f, f.patches) for f in self.files]
        lines.append(row(f"total ({len(self.files)} files)", self, self.counts))
        blocks = self.block_counts
        lines.append(
            f"blocks dealt: train {blocks['train']}, valid {blocks['valid']}, "
            f"test {blocks['test']} (split_by={self.options.split_by})"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "options": self.options.to_dict(),
            "counts": self.counts,
            "blocks": self.block_counts,
            "candidates": self.candidates,
            "dropped_nodata": self.dropped_nodata,
            "dropped_flat": self.dropped_flat,
            "dropped_land": self.dropped_land,
            "dropped_sea": self.dropped_sea,
            "dropped_limit": self.dropped_limit,
            "seconds": self.seconds,
            "outputs": {split: str(path) for split, path in self.outputs.items()},
            "files": [f.to_dict() for f in self.files],
        }
