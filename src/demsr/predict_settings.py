"""The options of a prediction, with their defaults: :class:`PredictSettings`.

One object for what :func:`demsr.predict.predict_raster` runs, what
:func:`demsr.plan.plan_prediction` plans and what ``demsr predict`` / ``demsr plan`` take on the
command line (their defaults come from here). Light to import: the CLI reads the defaults
before it loads torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rasterio.crs import CRS

    from demsr.tiling import TileTransform


@dataclass(frozen=True)
class PredictSettings:
    """How to super-resolve a raster (every field has its default; see
    :func:`demsr.predict.predict_raster` for what each does)."""

    # What to read.
    band: int = 1
    """Band of the input holding the elevations (1-based)."""
    variable: str | None = None
    """Elevation variable of a NetCDF/Zarr input (None: ``elevation``, or the only one)."""
    crs: CRS | str | None = None
    """CRS of an input that declares none (such an input is refused otherwise)."""
    # How the network runs.
    device: str = "auto"
    """``auto`` (CUDA if available), ``cpu``, ``cuda`` or ``cuda:N``."""
    tile_px: int | None = None
    """Tile side in low-res cells, before the margin (None: the largest that fits in memory)."""
    batch_size: int = 1
    """Tiles per network call."""
    memory_bytes: int | None = None
    """Memory for the tile loop, which sets an automatic tile size (None: a share of the
    machine, :func:`demsr.plan.default_memory_bytes`)."""
    precision: str = "auto"
    """Network precision: ``auto``, ``bf16`` or ``fp32`` (:mod:`demsr.precision`)."""
    compile: bool = False
    """``torch.compile`` the network."""
    wrap: bool | None = None
    """Wrap east-west across the antimeridian (None: when the input covers all longitudes)."""
    ensemble: bool = False
    """Write the mean of the model's 8 flips/rotations and its calibrated uncertainty."""
    transform_input: TileTransform | None = None
    """Changes each tile's low-res input before the network (e.g. a vertical datum shift)."""
    transform_output: TileTransform | None = None
    """Changes each tile's high-res output before it is written."""
    # What to write.
    fmt: str | None = None
    """Product format (None: from the output's extension)."""
    output_dtype: str = "float32"
    """Product data type: ``float32`` or ``int16``."""
    tags: Mapping[str, str] | None = None
    """Extra metadata for the product (e.g. ``vertical_datum``)."""
    keep_row_order: bool = False
    """Keep a NetCDF/Zarr input's ascending rows in the product (default: north-up)."""
    overwrite: bool = False
    """Replace an existing output (once the new one is complete)."""
    resume: bool = False
    """Continue an interrupted run from its partial store."""
    # How it reports.
    progress: bool = True
    """Show a progress bar (alone) or progress lines (several ranks)."""
    report_every_s: float = 60.0
    """Seconds between the progress lines of several ranks."""

    @classmethod
    def of(cls, settings: PredictSettings | None = None, **options: Any) -> PredictSettings:
        """``settings`` (None: the defaults) with ``options`` (field names) replaced; an
        unknown name raises TypeError."""
        return dataclasses.replace(settings if settings is not None else cls(), **options)


DEFAULTS = PredictSettings()
"""The default settings (what the command-line options default to)."""

SCORING = PredictSettings(tile_px=128, precision="fp32")
"""How a model runs when it is scored (:mod:`demsr.evaluate`, ``demsr evaluate``): tiles of a
fixed size, so that scores do not depend on the memory free, and float32, so that they do not
depend on the hardware (bf16 moves outputs by centimetres, BENCHMARKS.md)."""
