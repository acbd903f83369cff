"""Progress of a raster prediction: a bar in one process, log lines under torchrun.

Alone, a process shows a tqdm bar of its tiles. With several ranks each rank logs its own
throughput and ETA every few seconds, and rank 0 those of the whole run, read from every rank's
log of finished tiles in the partial store (:mod:`demsr.tilestore`). Everything here is logged
through the ``demsr.progress`` logger, which every rank logs at INFO where other messages are
left to rank 0 (:data:`demsr.cli.PROGRESS_LOGGER`).
"""

from __future__ import annotations

import logging
import time

from tqdm import tqdm

from demsr.distributed import RankContext
from demsr.tilestore import TileStore
from demsr.tiling import Tile

log = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    """``1 h 02 min``, ``3 min 05 s`` or ``12 s``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


class Progress:
    """Progress of one rank's tiles: a bar when alone; with several ranks, a log line every
    ``every_s`` seconds with this rank's throughput and ETA, and on rank 0 the whole run's
    (read from every rank's log in the store)."""

    def __init__(
        self,
        ctx: RankContext,
        store: TileStore,
        total: int,
        done_before: int,
        bar: bool,
        every_s: float,
    ) -> None:
        self.ctx, self.store, self.total, self.done_before = ctx, store, total, done_before
        self.every_s = every_s
        self.started = self.last_report = time.perf_counter()
        self.tiles = 0
        self.pixels = 0
        self.assigned = 0
        self.bar = tqdm(
            total=total,
            initial=done_before,
            unit="tile",
            desc="predict",
            disable=not bar or ctx.distributed,
            dynamic_ncols=True,
        )

    def update(self, tiles: int, pixels: int) -> None:
        self.tiles += tiles
        self.pixels += pixels
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        self.bar.update(tiles)
        self.bar.set_postfix_str(f"{self.pixels / elapsed / 1e6:.2f} Mpx/s out")
        now = time.perf_counter()
        if self.ctx.distributed and now - self.last_report >= self.every_s:
            self.last_report = now
            self.report()

    def report(self) -> None:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = self.tiles / elapsed
        left = self.assigned - self.tiles
        log.info(
            "[%s] %d of %d tiles, %.2f Mpx/s out, ETA %s",
            self.ctx.describe(),
            self.tiles,
            self.assigned,
            self.pixels / elapsed / 1e6,
            format_duration(left / rate) if rate > 0 else "unknown",
        )
        if self.ctx.is_main:
            done = len(self.store.finished()[0])
            overall = (done - self.done_before) / elapsed
            log.info(
                "all %d ranks: %d of %d tiles (%.0f%%), %.2f tiles/s, ETA %s",
                self.ctx.world_size,
                done,
                self.total,
                100.0 * done / max(self.total, 1),
                overall,
                format_duration((self.total - done) / overall) if overall > 0 else "unknown",
            )

    def summarise(self, detail: str) -> None:
        """Log what this rank predicted, and how fast, once its tiles are done; ``detail`` ends
        the line (the precision the network ran in)."""
        elapsed = time.perf_counter() - self.started
        log.info(
            "%spredicted %d tiles (%.1f output Mpx) in %.1f s, %.2f Mpx/s; %s",
            f"[{self.ctx.describe()}] " if self.ctx.distributed else "",
            self.assigned,
            self.pixels / 1e6,
            elapsed,
            self.pixels / 1e6 / max(elapsed, 1e-9),
            detail,
        )

    def close(self) -> None:
        self.bar.close()


def log_all_ranks(
    ctx: RankContext,
    tiles: list[Tile],
    done_before: set[int],
    done: int,
    started: float,
    scale: int,
) -> None:
    """Rank 0, once every rank finished: the whole run's tiles and throughput."""
    new_px = sum(int(t.core.width * t.core.height) for t in tiles if t.index not in done_before)
    seconds = time.perf_counter() - started
    log.info(
        "all %d ranks: %d of %d tiles done, %d in this run: %.1f output Mpx in %s (%.2f Mpx/s)",
        ctx.world_size,
        done,
        len(tiles),
        done - len(done_before),
        new_px * scale * scale / 1e6,
        format_duration(seconds),
        new_px * scale * scale / 1e6 / max(seconds, 1e-9),
    )
