"""The arrays of a comparison figure (:func:`demsr.plot.plot_comparison`): read from rasters
on disk after checking that their grids agree (:func:`read_comparison`), or made here by running
a model on a low-res raster (:func:`comparison_from_checkpoint`)."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from affine import Affine
from rasterio.windows import Window

from demsr.grid import Grid
from demsr.io import (
    GRID_TOLERANCE,
    RasterReader,
    integer_scale,
    locate_grid,
    open_raster,
    same_crs,
)
from demsr.tiling import scale_window

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MAX_READ_CELLS = 50_000_000
"""Most high-res cells :func:`read_comparison` reads (about 200 MB per float32 array)."""


@dataclass
class Comparison:
    """The arrays of a comparison figure on one high-res grid (see :func:`plot_comparison`).

    ``lowres`` is (h, w); ``truth``, ``prediction`` and each of ``baselines`` are
    (h * scale, w * scale), float32 metres with NaN nodata. ``transform`` and ``crs`` are those
    of the high-res grid.
    """

    lowres: np.ndarray
    truth: np.ndarray
    prediction: np.ndarray
    baselines: dict[str, np.ndarray]
    transform: Affine
    crs: Any
    scale: int

    def plot(self, **options: Any) -> Figure:
        """:func:`demsr.plot.plot_comparison` of these arrays on their grid; ``options`` are its
        keyword options (``prediction_name``, ``title``, ``dpi``, ...)."""
        from demsr.plot import plot_comparison

        return plot_comparison(
            self.lowres,
            self.truth,
            self.prediction,
            baselines=self.baselines,
            transform=self.transform,
            crs=self.crs,
            **options,
        )


def _bounds_window(reader: RasterReader, bounds: Sequence[float]) -> Window:
    """The cells of ``reader`` that ``bounds`` (left, bottom, right, top) touch, clipped."""
    left, bottom, right, top = (float(value) for value in bounds)
    if not (left < right and bottom < top):
        raise ValueError(
            f"bounds must be LEFT BOTTOM RIGHT TOP with left < right and "
            f"bottom < top, got {left:g} {bottom:g} {right:g} {top:g}"
        )
    transform = reader.transform
    rows, cols = reader.shape
    col_start = max(0, math.floor((left - transform.c) / transform.a + GRID_TOLERANCE))
    col_stop = min(cols, math.ceil((right - transform.c) / transform.a - GRID_TOLERANCE))
    row_start = max(0, math.floor((top - transform.f) / transform.e + GRID_TOLERANCE))
    row_stop = min(rows, math.ceil((bottom - transform.f) / transform.e - GRID_TOLERANCE))
    if col_stop <= col_start or row_stop <= row_start:
        box = " ".join(f"{value:g}" for value in reader.bounds)
        raise ValueError(
            f"bounds {left:g} {bottom:g} {right:g} {top:g} do not overlap {reader.path} "
            f"(bounds {box})"
        )
    return Window(col_start, row_start, col_stop - col_start, row_stop - row_start)


def read_comparison(
    lowres_path: str | os.PathLike[str],
    truth_path: str | os.PathLike[str],
    prediction_path: str | os.PathLike[str],
    *,
    baselines: Mapping[str, str | os.PathLike[str] | None] | None = None,
    bounds: Sequence[float] | None = None,
    max_cells: int = MAX_READ_CELLS,
) -> Comparison:
    """Read the rasters of a comparison figure, after checking that their grids agree.

    ``prediction_path`` must hold the low-res grid refined by an integer scale over the same
    bounds (as ``demsr predict`` writes it), in the same CRS; so must each baseline raster.
    A baseline given as ``None`` is computed from the low-res input by its name (one of
    :data:`demsr.baselines.BASELINES`, e.g. ``bicubic``). The truth must have the prediction's
    CRS and cell size with aligned cells and cover it; a larger truth (e.g. the raster that
    ``demsr degrade`` cropped to whole blocks) is read over the prediction's cells only.

    ``bounds`` (left, bottom, right, top, in the CRS's units) restricts everything to the
    low-res cells it touches. The high-res area read may hold at most ``max_cells`` cells:
    metrics need the full resolution, so a larger one is a ValueError asking for ``bounds``.
    Mismatched grids are ValueErrors naming the file; nodata becomes NaN.
    """
    baseline_paths = dict(baselines or {})
    computed = [name for name, path in baseline_paths.items() if path is None]
    if computed:
        # demsr.baselines imports torch: only when a baseline is to be computed
        from demsr.baselines import BASELINES, upsample_baseline

        unknown = [name for name in computed if name not in BASELINES]
        if unknown:
            raise ValueError(
                f"unknown baseline {unknown[0]!r}: give NAME=PATH, or one of "
                f"{', '.join(sorted(BASELINES))} to compute it from the low-res input"
            )
    with contextlib.ExitStack() as stack:
        lowres = stack.enter_context(open_raster(lowres_path))
        prediction = stack.enter_context(open_raster(prediction_path))
        truth = stack.enter_context(open_raster(truth_path))
        files = {
            name: stack.enter_context(open_raster(path))
            for name, path in baseline_paths.items()
            if path is not None
        }
        for reader in (prediction, truth, *files.values()):
            if not same_crs(reader.crs, lowres.crs):
                raise ValueError(
                    f"{reader.path}: CRS {reader.crs} differs from {lowres.path}'s ({lowres.crs})"
                )
        scale = integer_scale(lowres, prediction)
        # The high-res grid: the low-res one refined by the scale over the same bounds.
        highres_grid = Grid.of(lowres).refine(scale)
        highres_transform, highres_shape = highres_grid.transform, highres_grid.shape
        reference = f"{lowres.path} refined x{scale}"
        for reader in (prediction, *files.values()):
            if reader.shape != highres_shape:
                raise ValueError(
                    f"{reader.path}: {reader.shape[0]} x {reader.shape[1]} cells, not the "
                    f"{highres_shape[0]} x {highres_shape[1]} of {reference}"
                )
            locate_grid(reader, highres_transform, highres_shape, reference)
        truth_row, truth_col = locate_grid(truth, highres_transform, highres_shape, reference)

        lowres_window = (
            Window(0, 0, lowres.shape[1], lowres.shape[0])
            if bounds is None
            else _bounds_window(lowres, bounds)
        )
        highres_window = scale_window(lowres_window, scale)
        cells = int(highres_window.width) * int(highres_window.height)
        if cells > max_cells:
            raise ValueError(
                f"{prediction.path}: {int(highres_window.height)} x {int(highres_window.width)} "
                f"cells is more than the {max_cells} a comparison plot reads; choose an area "
                "with --bounds"
            )
        truth_window = Window(
            highres_window.col_off + truth_col,
            highres_window.row_off + truth_row,
            highres_window.width,
            highres_window.height,
        )
        lowres_values = lowres.read(lowres_window)
        comparison_baselines: dict[str, np.ndarray] = {}
        for name, path in baseline_paths.items():
            if path is None:
                comparison_baselines[name] = upsample_baseline(lowres_values, scale, name)
            else:
                comparison_baselines[name] = files[name].read(highres_window)
        return Comparison(
            lowres=lowres_values,
            truth=truth.read(truth_window),
            prediction=prediction.read(highres_window),
            baselines=comparison_baselines,
            transform=prediction.window_transform(highres_window),
            crs=prediction.crs,
            scale=scale,
        )


def comparison_from_checkpoint(
    checkpoint: str | os.PathLike[str],
    truth_path: str | os.PathLike[str],
    lowres_path: str | os.PathLike[str] | None = None,
    *,
    baselines: Iterable[str] = (),
    device: str = "auto",
) -> Comparison:
    """The arrays of a comparison figure with the prediction made here: ``checkpoint`` run on
    the low-res raster ``lowres_path``, or on the truth degraded by block mean when it is None
    (see :func:`demsr.evaluation_inputs.load_inputs`); each of ``baselines`` (names in
    :data:`demsr.baselines.BASELINES`) is computed from the same low-res input. The model and
    the baselines run as :func:`demsr.evaluate.predict_methods` runs them for scores. The truth
    must be a raster, not a pair file (ValueError).
    """
    # These import torch: only when a model is run.
    from demsr.checkpoint import as_checkpoint
    from demsr.evaluate import MODEL, predict_methods
    from demsr.evaluation_inputs import load_inputs

    model = as_checkpoint(checkpoint)
    inputs = load_inputs(truth_path, model.scale, lowres_path)
    if inputs.kind != "raster":
        raise ValueError(f"{truth_path}: a raster is needed here (use demsr report for pairs)")
    names = list(baselines)
    predictions = predict_methods({MODEL: model}, inputs, names, device=device, progress=False)
    assert inputs.transform is not None
    return Comparison(
        lowres=inputs.lowres[0],
        truth=inputs.highres[0],
        prediction=predictions[MODEL][0],
        baselines={name: predictions[name][0] for name in names},
        transform=inputs.transform,
        crs=inputs.crs,
        scale=model.scale,
    )
