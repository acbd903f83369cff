"""Measuring the throughput of ``demsr predict``'s tile loop on a few real tiles of the input,
on the device at hand (:func:`measure_throughput`, what ``demsr plan --measure`` runs): the rate
a plan's time rests on where no figure is recorded for the hardware."""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from rasterio.windows import Window

from demsr.io import RasterError, RasterReader, open_raster, require_crs
from demsr.plan.geometry import grid_geometry
from demsr.plan.host import peak_rss_bytes
from demsr.plan.memory import automatic_tile_px
from demsr.predict_settings import PredictSettings
from demsr.tiling import global_period

if TYPE_CHECKING:
    from demsr.checkpoint import Checkpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Measurement:
    """What :func:`measure_throughput` found on a few tiles of the input.

    ``window_mpx_s`` as in :class:`~demsr.plan.figures.SpeedFigure`; ``peak_memory`` the peak
    resident memory of this process (CPU) or the peak memory torch reserved on the GPU, bytes.
    """

    window_mpx_s: float
    output_mpx_s: float
    tiles: int
    largest_window: tuple[int, int]
    seconds: float
    peak_memory: int
    memory_kind: str
    device: str
    precision: str


def _busiest_region(reader: RasterReader, height: int, width: int) -> tuple[Window, np.ndarray]:
    """Of five candidate regions of ``height x width`` cells (the centre and the centres of the
    four quarters), the one with the most valid cells, and its values (float32 metres)."""
    rows, cols = reader.shape
    best: tuple[int, Window, np.ndarray] | None = None
    for row_frac, col_frac in ((0.5, 0.5), (0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75)):
        row_off = min(max(0, round(rows * row_frac - height / 2)), rows - height)
        col_off = min(max(0, round(cols * col_frac - width / 2)), cols - width)
        window = Window(col_off, row_off, width, height)
        values = reader.read(window)
        valid = int(np.isfinite(values).sum())
        if best is None or valid > best[0]:
            best = (valid, window, values)
    assert best is not None
    if best[0] == 0:
        raise RasterError(f"{reader.path}: no valid cells where the throughput was to be measured")
    return best[1], best[2]


def measure_throughput(
    input_path: str | os.PathLike[str],
    checkpoint: Checkpoint,
    settings: PredictSettings | None = None,
    **options: Any,
) -> Measurement:
    """Time the tile loop on a few real tiles of the input, on the settings' device, after a
    warm-up.

    The options are ``settings`` (:class:`~demsr.predict_settings.PredictSettings`; None: the
    defaults) with any of its fields given as keywords replacing them. It uses ``band``,
    ``variable``, ``crs``, ``device``, ``tile_px``, ``batch_size`` and ``precision``; where
    ``tile_px`` is None, the tile size ``demsr predict`` would take for the whole input within
    ``memory_bytes`` (:func:`~demsr.plan.memory.automatic_tile_px`).

    Reads one region of ``n x n`` tiles (n = 2, or more to fill a batch; the whole raster if it
    is smaller), where the input holds the most valid cells among five candidates, and runs
    :func:`demsr.engine.predict_array` on it twice with the settings' tile size, batch size and
    precision: the first run warms up (oneDNN/cuDNN pick their kernels per shape), the second is
    timed. Its read windows are clipped to the region, so the rate is per read-window cell
    (:class:`~demsr.plan.figures.SpeedFigure`). File writes are not timed.
    """
    import torch

    from demsr.engine import predict_array
    from demsr.model import resolve_device
    from demsr.precision import choose_precision, recorded_bf16_bound

    settings = PredictSettings.of(settings, **options)
    batch_size = settings.batch_size
    torch_device = resolve_device(settings.device)
    bound = recorded_bf16_bound(checkpoint)
    mode = choose_precision(settings.precision, torch_device, bound).precision
    log.info("measuring the throughput on a few tiles of %s ...", os.fspath(input_path))
    resolver = checkpoint.build_resolver(torch_device)
    scale, margin = resolver.scale, resolver.margin_px
    per_side = max(2, math.ceil(math.sqrt(batch_size)))
    with open_raster(input_path, settings.band, settings.variable, crs=settings.crs) as reader:
        rows, cols = reader.shape
        tile_px = settings.tile_px
        if tile_px is None:
            wraps = global_period(reader.transform, reader.shape, require_crs(reader).is_geographic)
            tile_px, _, _ = automatic_tile_px(
                reader.shape,
                margin,
                resolver.net.config,
                sum(p.numel() for p in resolver.parameters()),
                batch_size,
                torch_device.type,
                settings.memory_bytes,
                wrap=wraps is not None,
            )
        height, width = min(rows, per_side * tile_px), min(cols, per_side * tile_px)
        _, values = _busiest_region(reader, height, width)
    geometry = grid_geometry((height, width), tile_px, margin)

    def run() -> None:
        predict_array(
            resolver,
            values,
            torch_device,
            tile_px=tile_px,
            batch_size=batch_size,
            precision=mode,
        )

    run()
    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch_device)
    started = time.perf_counter()
    run()  # predict_array returns host arrays: the device has finished
    seconds = time.perf_counter() - started
    if torch_device.type == "cuda":
        peak, kind = torch.cuda.max_memory_reserved(torch_device), "GPU memory reserved by torch"
    else:
        peak, kind = peak_rss_bytes(), "peak resident memory of this process"
    return Measurement(
        window_mpx_s=geometry.window_cells * scale**2 / seconds / 1e6,
        output_mpx_s=height * width * scale**2 / seconds / 1e6,
        tiles=geometry.tiles,
        largest_window=geometry.largest_window,
        seconds=seconds,
        peak_memory=int(peak),
        memory_kind=kind,
        device=str(torch_device),
        precision=mode,
    )
