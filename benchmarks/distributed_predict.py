"""Tiled prediction by one process and by N torchrun ranks, side by side, and what that means
for the 3" global product (216,000 x 432,000 cells from GEBCO's 15" grid).

Each variant is the real command line: ``demsr predict`` alone (torch's default threads) and
``torchrun --nproc_per_node N -m demsr predict`` (torchrun gives each rank one thread unless
OMP_NUM_THREADS says otherwise), with the shipped model and predict's defaults, on a real
SRTM 3" tile treated as the low-res input. Rounds alternate the variants so that a noisy spell
hits both. The products are compared: they must be identical.

    python benchmarks/distributed_predict.py --ranks 2 --repeats 2 --record \
        benchmarks/distributed_predict.md
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import machine_description, median, record  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "dem" / "train"
GLOBE_OUTPUT_PX = 216_000 * 432_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def crop(source: Path, size: int, path: Path) -> Path:
    with rasterio.open(source) as src:
        window = rasterio.windows.Window(0, 0, min(size, src.width), min(size, src.height))
        profile = src.profile | {
            "width": int(window.width),
            "height": int(window.height),
            "transform": src.window_transform(window),
        }
        values = src.read(1, window=window)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values, 1)
    return path


def command(ranks: int, source: Path, output: Path, extra: list[str]) -> list[str]:
    predict = ["predict", str(source), str(output), "--no-progress", "--overwrite", *extra]
    if ranks == 1:
        return [sys.executable, "-m", "demsr", *predict]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks)]
    launcher += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    return [*launcher, "-m", "demsr", *predict]


def timed(argv: list[str]) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{result.stderr[-3000:]}")
    return seconds, result.stderr


def tile_rate(log: str) -> list[float]:
    """The Mpx/s of each rank's tile loop (``predicted N tiles ... , X Mpx/s``)."""
    return [float(x) for x in re.findall(r"predicted \d+ tiles .*?, ([\d.]+) Mpx/s", log)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SHARED / "srtm3_N37W004.tif")
    parser.add_argument("--size", type=int, default=1201, help="crop edge, low-res cells")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tile-size", type=int, default=128)
    parser.add_argument("--record", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        source = crop(args.source, args.size, tmp / "input.tif")
        with rasterio.open(source) as src:
            rows, cols = src.shape
        output_px = rows * cols * 25
        extra = ["--tile-px", str(args.tile_size)]
        variants = {1: tmp / "one.tif", args.ranks: tmp / "many.tif"}
        seconds: dict[int, list[float]] = {n: [] for n in variants}
        rates: dict[int, list[float]] = {n: [] for n in variants}
        for _ in range(args.repeats):
            for ranks, output in variants.items():
                wall, log = timed(command(ranks, source, output, extra))
                seconds[ranks].append(wall)
                rates[ranks].extend(tile_rate(log) if ranks > 1 else [])
                print(f"{ranks} rank(s): {wall:.1f} s", flush=True)
        with rasterio.open(variants[1]) as one, rasterio.open(variants[args.ranks]) as many:
            identical = np.array_equal(one.read(1), many.read(1), equal_nan=True)

    lines = [
        "| run | wall s (median) | output Mpx/s | per rank Mpx/s (tiles) | globe at this rate |",
        "|---|---|---|---|---|",
    ]
    for ranks in variants:
        wall = median(seconds[ranks])
        rate = output_px / wall / 1e6
        per_rank = f"{median(rates[ranks]):.2f}" if rates[ranks] else "-"
        globe_h = GLOBE_OUTPUT_PX / (rate * 1e6) / 3600
        name = "demsr predict" if ranks == 1 else f"torchrun, {ranks} ranks"
        lines.append(f"| {name} | {wall:.1f} | {rate:.2f} | {per_rank} | {globe_h:,.0f} h |")
    body = "\n".join(
        [
            *lines,
            "",
            f"Input: {args.source.name} ({rows} x {cols} cells) as the low-res grid, output "
            f"{output_px / 1e6:.1f} Mpx; tile {args.tile_size}, shipped model, predict's "
            f"defaults; {args.repeats} interleaved rounds; wall time includes start-up, the "
            f"input check and the COG. Products identical: {identical}.",
            f"Globe: {GLOBE_OUTPUT_PX / 1e9:.1f} Gpx of output at the whole run's rate.",
            "",
            machine_description("cpu"),
        ]
    )
    print(body)
    if args.record:
        record(args.record, "Tiled prediction: one process vs torchrun ranks", body)


if __name__ == "__main__":
    main()
