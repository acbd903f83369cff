"""Figures: low-res / truth / prediction / error panels with hillshade, and training curves.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot, so nothing
depends on a display or on pyplot's global state: the same code runs headless, in scripts and in
notebooks (a notebook shows a returned Figure as it is). :func:`save_figure` writes one to disk
atomically.

Comparison figures (:func:`plot_comparison`) follow these rules:

- Elevation panels (low-res input, truth, prediction, baselines) share one colour scale, from the
  1st to the 99th percentile of the truth's valid cells (:data:`ELEVATION_PERCENTILES`), so a
  few spikes or pits cannot wash out the rest; colourbars extend at both ends for the clipped
  cells. Each is blended with a hillshade (:class:`matplotlib.colors.LightSource`, sun in the
  north-west at 45 degrees) computed on true cell sizes in metres, with a vertical exaggeration
  of :data:`VERTICAL_EXAGGERATION` by default. Matplotlib stretches each panel's shading to its
  full range, so the exaggeration sets the contrast between gentle and steep slopes rather than
  the overall darkness.
- Error panels (prediction - truth, one per prediction) use a diverging map with symmetric limits
  shared by all of them: the 99th percentile of the displayed absolute errors
  (:data:`ERROR_PERCENTILE`). Each is titled with its RMSE in metres, computed on all valid cells
  at full resolution.
- Nodata (NaN) is drawn in a neutral grey (:data:`NODATA_COLOR`), never as an elevation; a
  hillshade is computed on the grid with nodata filled by the nearest valid cell, then nodata is
  painted over.
- Large grids are averaged for display: a panel shows at most ``max_pixels`` cells along its
  longer side (block means over k x k cells, ignoring nodata; a block is nodata only if all its
  cells are). By default that is about the panel's size in pixels, so that averaging, not
  dropped cells, does the anti-aliasing and cells are drawn crisp (nearest neighbour). Error
  panels shown this way say so in their titles, since averaging shrinks errors. Metrics never
  use the averaged arrays.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Colormap, LightSource, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from demsr.grid import Grid
from demsr.io import (
    atomic_path,
    fill_nearest,
    refuse_existing,
)
from demsr.metrics import cell_sizes_m, rmse
from demsr.run_folder import read_training_log

log = logging.getLogger(__name__)

DEFAULT_DPI = 150
ELEVATION_CMAP = "viridis"
ERROR_CMAP = "RdBu_r"
NODATA_COLOR = (0.62, 0.62, 0.62, 1.0)
"""RGBA of nodata cells: a mid grey, absent from both colour maps."""
ELEVATION_PERCENTILES = (1.0, 99.0)
"""Percentiles of the truth's valid cells that bound the shared elevation colour scale."""
ERROR_PERCENTILE = 99.0
"""Percentile of the absolute errors that sets the symmetric limits of the error panels."""
VERTICAL_EXAGGERATION = 2.0
"""Default vertical exaggeration of the hillshade (elevations and cell sizes both in metres)."""
SUN_AZIMUTH_DEG = 315.0
SUN_ALTITUDE_DEG = 45.0

_PANEL_WIDTH_IN = 4.2
_COLOURBAR_WIDTH_IN = 1.4
_TITLE_HEIGHT_IN = 0.9
_COLOURBAR_SHRINK = 0.85


# --------------------------------------------------------------------------------------------
# Comparison figure
# --------------------------------------------------------------------------------------------


def _plot_grid(shape: tuple[int, int], transform: Affine | None, crs: Any) -> Grid | None:
    """How panels place a (rows, cols) array: its grid, or None for pixel axes (no transform)."""
    if transform is None:
        return None
    if transform.b != 0 or transform.d != 0:
        raise ValueError("plots need a north-up grid (the transform is rotated)")
    return Grid(shape, transform, crs)


def _block_nanmean(values: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor`` x ``factor`` blocks, ignoring NaN; padded with NaN at the bottom and
    right edges. Unlike :func:`demsr.prepare.degrade` (where a partial block is not a valid
    coarse cell), a block here is NaN only when all its cells are: for display, nodata must not
    grow."""
    if factor == 1:
        return np.asarray(values, np.float64)
    rows, cols = values.shape
    out_rows, out_cols = math.ceil(rows / factor), math.ceil(cols / factor)
    padded = np.full((out_rows * factor, out_cols * factor), np.nan, np.float32)
    padded[:rows, :cols] = values
    blocks = padded.reshape(out_rows, factor, out_cols, factor)
    valid = np.isfinite(blocks)
    counts = valid.sum(axis=(1, 3))
    sums = np.where(valid, blocks, np.float32(0)).sum(axis=(1, 3), dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


@dataclass
class _Panel:
    """One displayed array with its grid in display cells."""

    values: np.ndarray  # (rows, cols), NaN nodata, possibly block-averaged
    factor: int  # cells per displayed cell along each axis (1: not averaged)
    transform: Affine | None  # of the displayed cells; None: pixel axes
    extent: tuple[float, float, float, float]  # (left, right, bottom, top) of the displayed cells
    limits: tuple[float, float, float, float]  # (left, right, bottom, top) of the data


def _display(values: np.ndarray, grid: Grid | None, cell_px: float, max_pixels: int) -> _Panel:
    """Block-average ``values`` to at most ``max_pixels`` cells per side.

    ``cell_px`` is the side of one of its cells in high-res pixels (used only without a grid,
    where axes count high-res pixels).
    """
    rows, cols = values.shape
    factor = max(1, math.ceil(max(rows, cols) / max_pixels))
    shown = _block_nanmean(values, factor)
    shown_rows, shown_cols = shown.shape
    if grid is None:
        step = cell_px * factor
        extent = (0.0, shown_cols * step, shown_rows * step, 0.0)
        limits = (0.0, cols * cell_px, rows * cell_px, 0.0)
        return _Panel(shown, factor, None, extent, limits)
    transform = grid.transform @ Affine.scale(factor)
    left, top = transform.c, transform.f
    right, bottom = transform @ (shown_cols, shown_rows)
    data_right, data_bottom = grid.transform @ (cols, rows)
    return _Panel(
        shown, factor, transform, (left, right, bottom, top), (left, data_right, data_bottom, top)
    )


def _middle_cell_size_m(transform: Affine, crs: Any, rows: int) -> tuple[float, float]:
    """East-west and north-south size in metres of a cell in the middle row of a grid."""
    dx, dy = cell_sizes_m(transform, crs, 1, row_off=rows // 2)
    return float(dx[0]), float(dy[0])


def _cell_size_m(panel: _Panel, grid: Grid | None) -> tuple[float, float]:
    """East-west and north-south size in metres of a displayed cell in the middle row (1 x 1
    without a grid: the relief is then per pixel)."""
    if panel.transform is None or grid is None:
        return 1.0, 1.0
    return _middle_cell_size_m(panel.transform, grid.crs, panel.values.shape[0])


def _shade(
    panel: _Panel, grid: Grid | None, cmap: Colormap, norm: Normalize, vertical_exaggeration: float
) -> np.ndarray:
    """(rows, cols, 4) RGBA: colour-mapped elevations blended with their hillshade, nodata grey."""
    values = panel.values
    valid = np.isfinite(values)
    rgba = np.empty(values.shape + (4,), np.float64)
    rgba[:] = NODATA_COLOR
    if not valid.any():
        return rgba
    if min(values.shape) < 2:  # too small for a gradient: colour only
        rgba[valid] = cmap(norm(values[valid]))
        return rgba
    dx, dy = _cell_size_m(panel, grid)
    light = LightSource(azdeg=SUN_AZIMUTH_DEG, altdeg=SUN_ALTITUDE_DEG)
    shaded = light.shade(
        fill_nearest(values),
        cmap=cmap,
        norm=norm,
        blend_mode="soft",
        vert_exag=vertical_exaggeration,
        dx=dx,
        dy=dy,
    )
    rgba[valid] = shaded[valid]
    return rgba


def _cell_label(grid: Grid | None) -> str:
    """A cell size for a title: 15", 3" for geographic grids, 1 m for projected ones."""
    if grid is None:
        return ""
    size = abs(grid.transform.a)
    if grid.geographic:
        seconds = size * 3600
        return f'{seconds:.3g}"' if seconds < 60 else f"{size:.3g} deg"
    return f"{size:.3g} {grid.coordinate_units}"


def _axis_labels(grid: Grid | None) -> tuple[str, str]:
    if grid is None:
        return "column (high-res cells)", "row (high-res cells)"
    if grid.geographic:
        return "longitude (degrees)", "latitude (degrees)"
    units = grid.coordinate_units
    return f"easting ({units})", f"northing ({units})"


def _setup_axes(ax: Axes, panel: _Panel, geographic: bool, title: str) -> None:
    ax.set_title(title, fontsize=10)
    left, right, bottom, top = panel.limits
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    if geographic:
        # degrees of longitude shrink with latitude: keep the panel's shape true on the ground
        ax.set_aspect(1.0 / max(math.cos(math.radians((bottom + top) / 2)), 1e-6))
    else:
        ax.set_aspect("equal")
    ax.xaxis.set_major_locator(MaxNLocator(4))
    ax.yaxis.set_major_locator(MaxNLocator(4))
    ax.ticklabel_format(useOffset=False, style="plain")
    ax.tick_params(labelsize=8)
    ax.set_facecolor(NODATA_COLOR)


def _check_shapes(
    lowres: np.ndarray, truth: np.ndarray, predictions: Mapping[str, np.ndarray]
) -> int:
    """The scale, after checking that every array is 2-D and on the same high-res grid."""
    for name, values in (("low-res", lowres), ("truth", truth), *predictions.items()):
        if np.ndim(values) != 2:
            raise ValueError(f"{name}: expected a (rows, cols) array, got shape {np.shape(values)}")
    for name, values in predictions.items():
        if values.shape != truth.shape:
            raise ValueError(f"{name}: shape {values.shape} differs from the truth's {truth.shape}")
    rows, cols = truth.shape
    low_rows, low_cols = lowres.shape
    scale = rows // low_rows if low_rows else 0
    if scale < 1 or (low_rows * scale, low_cols * scale) != (rows, cols):
        raise ValueError(
            f"the truth ({rows} x {cols}) is not the low-res grid ({low_rows} x {low_cols}) "
            "refined by one integer scale"
        )
    return scale


def _panel_height_in(grid: Grid | None, shape: tuple[int, int]) -> float:
    """Height of a panel box for the grid's shape on the ground (clipped: very wide or tall
    grids leave space in the box)."""
    rows, cols = shape
    if grid is None:
        height_over_width = rows / cols
    else:
        dx, dy = _middle_cell_size_m(grid.transform, grid.crs, rows)
        height_over_width = (rows * dy) / (cols * dx)
    return _PANEL_WIDTH_IN * min(max(height_over_width, 0.35), 1.6)


def plot_comparison(
    lowres: np.ndarray,
    truth: np.ndarray,
    prediction: np.ndarray,
    *,
    baselines: Mapping[str, np.ndarray] | None = None,
    transform: Affine | None = None,
    crs: Any = None,
    prediction_name: str = "DEM-SRNet",
    title: str | None = None,
    max_pixels: int | None = None,
    vertical_exaggeration: float = VERTICAL_EXAGGERATION,
    dpi: float = DEFAULT_DPI,
) -> Figure:
    """Low-res input, truth, prediction (and baselines) with hillshade, and their errors.

    ``lowres`` is (h, w) and ``truth``, ``prediction`` and each array of ``baselines`` (e.g.
    ``{"bicubic": array}``) are (h * s, w * s) for one integer scale s, elevations in metres with
    NaN for nodata. ``transform`` is the affine transform of the high-res grid (the low-res one is
    the same with cells s times larger: same bounds) and ``crs`` its CRS (anything pyproj takes;
    None with a transform: coordinates in metres). Without a transform the axes count high-res
    pixels and the hillshade takes a cell as 1 m wide.

    The figure has one row per method, each with its elevations and its error (method - truth),
    below a first row with the low-res input and the truth: (2 + len(baselines)) x 2 panels,
    each with its colourbar in metres. Axes are longitude/latitude in degrees on geographic CRSs,
    easting/northing otherwise. See the module's docstring for colour scales, hillshade, nodata
    and the block averaging of grids larger than ``max_pixels`` cells per side (default: about
    a panel's longer side in pixels at ``dpi``).
    """
    if max_pixels is not None and max_pixels < 2:
        raise ValueError(f"max_pixels must be at least 2, got {max_pixels}")
    # Arrays stay in their own dtype (float32 from rasters): a full-size float64 copy of each
    # would dominate the memory of large plots.
    lowres, truth = np.asarray(lowres), np.asarray(truth)
    methods: dict[str, np.ndarray] = {prediction_name: np.asarray(prediction)}
    for name, values in (baselines or {}).items():
        if name in methods:
            raise ValueError(f"baseline name {name!r} is used twice")
        methods[name] = np.asarray(values)
    scale = _check_shapes(lowres, truth, methods)
    if not np.isfinite(truth).any():
        raise ValueError("the truth holds no valid cells")
    rows, cols = truth.shape
    grid = _plot_grid((rows, cols), transform, crs)
    lowres_grid = None if grid is None else grid.coarsen(scale)
    geographic = grid is not None and grid.geographic

    panel_height_in = _panel_height_in(grid, (rows, cols))
    if max_pixels is None:
        max_pixels = max(2, round(max(_PANEL_WIDTH_IN, panel_height_in) * dpi))

    rmses = {name: rmse(values, truth) for name, values in methods.items()}
    for name, value in rmses.items():
        log.info("RMSE of %s: %.3f m", name, value)
    truth_panel = _display(truth, grid, 1.0, max_pixels)
    lowres_panel = _display(lowres, lowres_grid, float(scale), max_pixels)
    method_panels = {
        name: _display(values, grid, 1.0, max_pixels) for name, values in methods.items()
    }
    error_panels = {
        name: _display(values - truth, grid, 1.0, max_pixels) for name, values in methods.items()
    }

    low, high = np.nanpercentile(truth_panel.values, ELEVATION_PERCENTILES)
    if high - low < 1e-6:  # flat truth: any small range shows it as one colour
        low, high = low - 1.0, high + 1.0
    elevation_norm = Normalize(vmin=float(low), vmax=float(high))
    elevation_cmap = colormaps[ELEVATION_CMAP]
    all_errors = np.concatenate(
        [np.abs(p.values[np.isfinite(p.values)]) for p in error_panels.values()]
    )
    error_limit = float(np.percentile(all_errors, ERROR_PERCENTILE)) if all_errors.size else 0.0
    if error_limit <= 0:  # a perfect prediction: any range will do
        error_limit = 1.0
    error_norm = Normalize(vmin=-error_limit, vmax=error_limit)
    error_cmap = colormaps[ERROR_CMAP].with_extremes(bad=NODATA_COLOR)

    n_rows = 1 + len(methods)
    width_in = 2 * (_PANEL_WIDTH_IN + _COLOURBAR_WIDTH_IN)
    height_in = n_rows * (panel_height_in + _TITLE_HEIGHT_IN) + (0.4 if title else 0.0)
    figure = Figure(figsize=(width_in, height_in), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(n_rows, 2, squeeze=False)
    x_label, y_label = _axis_labels(grid)

    def elevation(ax: Axes, panel: _Panel, panel_grid: Grid | None, panel_title: str) -> None:
        rgba = _shade(panel, panel_grid, elevation_cmap, elevation_norm, vertical_exaggeration)
        ax.imshow(rgba, extent=panel.extent, interpolation="nearest", origin="upper")
        _setup_axes(ax, panel, geographic, panel_title)
        ax.set_label(f"elevation: {panel_title}")
        figure.colorbar(
            ScalarMappable(norm=elevation_norm, cmap=elevation_cmap),
            ax=ax,
            extend="both",
            label="elevation (m)",
            shrink=_COLOURBAR_SHRINK,
        )

    resolution = _cell_label(lowres_grid)
    elevation(axes[0, 0], lowres_panel, lowres_grid, f"low-res input {resolution}".strip())
    resolution = _cell_label(grid)
    elevation(axes[0, 1], truth_panel, grid, f"truth {resolution}".strip())
    for row, name in enumerate(methods, start=1):
        elevation(axes[row, 0], method_panels[name], grid, name)
        panel = error_panels[name]
        ax = axes[row, 1]
        image = ax.imshow(
            np.ma.masked_invalid(panel.values),
            extent=panel.extent,
            cmap=error_cmap,
            norm=error_norm,
            interpolation="nearest",
            origin="upper",
        )
        error_title = f"{name} - truth: RMSE {rmses[name]:.2f} m"
        if panel.factor > 1:  # averaging shrinks errors: say so next to the colours
            error_title += f"\n(shown as means of {panel.factor} x {panel.factor} cells)"
        _setup_axes(ax, panel, geographic, error_title)
        ax.set_label(f"error: {name}")
        figure.colorbar(image, ax=ax, extend="both", label="error (m)", shrink=_COLOURBAR_SHRINK)
    for ax in axes[-1, :]:
        ax.set_xlabel(x_label)
    for ax in axes[:, 0]:
        ax.set_ylabel(y_label)
    if title is not None:
        figure.suptitle(title)
    return figure


# --------------------------------------------------------------------------------------------
# Training curves
# --------------------------------------------------------------------------------------------


def plot_training_curves(metrics_csv: str | os.PathLike[str]) -> Figure:
    """Loss, validation RMSE and learning rate against epoch, from a run's metrics.csv.

    ``metrics_csv`` is the CSV a training run writes (columns
    :data:`demsr.run_folder.METRIC_FIELDS`) or the run folder holding it. Three panels sharing
    the epoch axis: training and validation loss (log scale; the loss is on normalised
    elevations), validation RMSE in metres with the best epoch (the last one flagged
    ``is_best``) marked, and the learning rate (log scale). Raises ValueError naming the file
    for a missing, empty or malformed CSV.
    """
    training = read_training_log(metrics_csv)
    figure = Figure(figsize=(7.0, 7.5), dpi=DEFAULT_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    loss_ax, rmse_ax, rate_ax = figure.subplots(3, 1, sharex=True)
    marker = "o" if training.epoch.size <= 40 else None

    loss_ax.plot(training.epoch, training.train_loss, marker=marker, ms=3, label="train")
    loss_ax.plot(training.epoch, training.valid_loss, marker=marker, ms=3, label="valid")
    loss_ax.set_yscale("log")
    loss_ax.set_ylabel("loss (MSE, normalised)")
    loss_ax.legend()

    rmse_ax.plot(training.epoch, training.valid_rmse_m, marker=marker, ms=3, color="C1")
    rmse_ax.set_ylabel("validation RMSE (m)")
    best = np.flatnonzero(training.is_best)
    if best.size:
        epoch, value = training.epoch[best[-1]], training.valid_rmse_m[best[-1]]
        rmse_ax.plot(
            [epoch], [value], "*", color="C3", ms=14, label=f"best: epoch {epoch:g}, {value:.2f} m"
        )
        rmse_ax.axvline(epoch, color="C3", lw=0.8, ls="--")
        rmse_ax.legend()

    rate_ax.plot(training.epoch, training.learning_rate, marker=marker, ms=3, color="C2")
    rate_ax.set_yscale("log")
    rate_ax.set_ylabel("learning rate")
    rate_ax.set_xlabel("epoch")
    rate_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (loss_ax, rmse_ax, rate_ax):
        ax.grid(True, which="major", alpha=0.3)
    figure.suptitle(f"training: {training.path.parent.name or training.path.name}")
    return figure


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def check_output_path(path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """The path :func:`save_figure` writes for ``path`` (``.png`` added when it has no suffix),
    after checking that its format is known, that its folder exists (FileNotFoundError) and that
    it does not exist unless ``overwrite`` (FileExistsError). Commands call it before any long
    work."""
    output = Path(path)
    if output.suffix == "":
        output = output.with_suffix(".png")
    fmt = output.suffix[1:].lower()
    supported = FigureCanvasAgg(Figure()).get_supported_filetypes()
    if fmt not in supported:
        raise ValueError(
            f"{output}: unknown picture format {fmt!r} (use one of {', '.join(sorted(supported))})"
        )
    refuse_existing(output, overwrite=overwrite)
    if not output.parent.is_dir():
        raise FileNotFoundError(f"{output}: the folder {output.parent} does not exist")
    return output


def save_figure(
    figure: Figure,
    path: str | os.PathLike[str],
    *,
    dpi: float | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``figure`` to ``path`` and return the path written.

    The format comes from the suffix (``.png``, ``.pdf``, ``.svg``, or anything else the Agg
    canvas writes); a path without a suffix gets ``.png``. ``dpi`` defaults to the figure's own;
    the picture is its size in inches times ``dpi`` pixels (the layout is not trimmed). The file
    appears only once complete. An existing file is a FileExistsError unless ``overwrite``.
    """
    output = check_output_path(path, overwrite=overwrite)
    with atomic_path(output) as tmp:
        figure.savefig(
            tmp, format=output.suffix[1:].lower(), dpi=dpi if dpi is not None else figure.dpi
        )
    log.info("wrote %s", output)
    return output
