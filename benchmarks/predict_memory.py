"""Peak memory and speed of tiled prediction on rasters of different sizes.

Writes synthetic DEMs of real terrain (the bundled SRTM 3" tile N37W004, mirrored where the
raster is larger than the tile) as GeoTIFFs, then runs ``demsr.predict.predict_raster`` on each
in a fresh child process with an untrained ``lite`` model, and records the child's peak resident
memory (``resource.getrusage``) and wall time, for the tile loop alone and with the finalisation
(``demsr.io.finalise_output``) that turns the partial GeoTIFF into the product. Tiled prediction
holds one batch of tiles at a time, so its peak is set by the largest batch (``batch_size`` x the
largest read window, whose high-res feature maps dominate) and should not grow with the raster's
size once every raster fills such a batch: with ``batch_size`` 1, any raster of three or more
tiles per side (an interior tile has the full margin on every side)::

    .venv/bin/python benchmarks/predict_memory.py                  # 320^2 and 640^2, CPU
    .venv/bin/python benchmarks/predict_memory.py --sizes 400 1600 --device cuda

Prints a markdown table; ``--record FILE`` also writes it to FILE with the settings, keeping
whatever FILE holds below its notes marker (``NOTES_MARKER``: the hand-written reading of the
numbers, to be checked against the new table; see ``harness.record``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from harness import peak_rss_mb, record

log = logging.getLogger("predict_memory")

REPO = Path(__file__).resolve().parents[1]
TERRAIN = REPO / "src" / "demsr" / "data" / "srtm3_N37W004.tif"
TREND_SIGMA_PX = 4.0  # the training default


def write_terrain(source: Path, size: int, path: Path) -> Path:
    """A size x size int16 GeoTIFF of the source's terrain, mirrored where size exceeds it."""
    import rasterio

    with rasterio.open(source) as src:
        data = src.read(1)
        profile = src.profile
    reps = -(-size // min(data.shape))  # enough mirrored copies along each axis
    data = np.pad(data, ((0, data.shape[0] * reps), (0, data.shape[1] * reps)), mode="symmetric")
    profile.update(
        width=size, height=size, tiled=True, blockxsize=256, blockysize=256, compress="deflate"
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data[:size, :size], 1)
    return path


def write_checkpoint(path: Path) -> Path:
    """An untrained lite model with the default training scaling."""
    import torch

    from demsr.checkpoint import save_checkpoint
    from demsr.model import DEMSRNet, preset
    from demsr.scaling import ElevationScaling

    torch.manual_seed(0)
    scaling = ElevationScaling(scale_m=1000.0, trend_sigma_px=TREND_SIGMA_PX)
    return save_checkpoint(path, DEMSRNet(preset("lite")), scaling)


def child(args: argparse.Namespace) -> None:
    """Run one prediction and print a JSON line with memory and time."""
    import demsr.partial
    import demsr.predict
    from demsr.checkpoint import load_checkpoint
    from demsr.model import resolve_device
    from demsr.tiling import tile_count

    checkpoint = load_checkpoint(args.checkpoint)
    resolver = checkpoint.build_resolver(resolve_device(args.device))  # imports and weights
    baseline_mb = peak_rss_mb()
    tiles_peak: dict[str, float] = {}
    finalise_output = demsr.partial.finalise_output

    def finalise_after_peak(*f_args: Any, **f_kwargs: Any) -> Any:
        # Peak of the tile loop alone, before the partial is turned into the product.
        tiles_peak["mb"] = peak_rss_mb()
        return finalise_output(*f_args, **f_kwargs)

    demsr.partial.finalise_output = finalise_after_peak  # type: ignore[assignment]
    started = time.perf_counter()
    demsr.predict.predict_raster(
        checkpoint,
        args.input,
        args.output,
        device=args.device,
        tile_px=args.tile_px,
        batch_size=args.batch_size,
        progress=False,
    )
    wall_s = time.perf_counter() - started
    import rasterio

    with rasterio.open(args.input) as src:
        rows, cols = src.shape
    result = {
        "rows": rows,
        "cols": cols,
        "tiles": tile_count(rows, cols, args.tile_px),
        "scale": checkpoint.scale,
        "margin_px": resolver.margin_px,
        "wall_s": wall_s,
        "baseline_mb": baseline_mb,
        "tiles_peak_mb": tiles_peak["mb"],
        "peak_mb": peak_rss_mb(),
    }
    if args.device.startswith("cuda"):
        import torch

        result["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(result))


def run(args: argparse.Namespace) -> tuple[str, int]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="demsr-bench-") as tmp_name:
        tmp = Path(tmp_name)
        checkpoint = write_checkpoint(tmp / "lite.safetensors")
        for size in args.sizes:
            raster = write_terrain(TERRAIN, size, tmp / f"terrain_{size}.tif")
            output = tmp / f"out_{size}.tif"
            command = [
                sys.executable,
                __file__,
                "--child",
                "--checkpoint",
                str(checkpoint),
                "--input",
                str(raster),
                "--output",
                str(output),
                "--device",
                args.device,
                "--tile-px",
                str(args.tile_px),
                "--batch-size",
                str(args.batch_size),
            ]
            log.info("predicting %d x %d ...", size, size)
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            log.info("%s", result)
            rows.append(result)
            output.unlink()
    lines = [
        "| low-res raster | output Mpx | tiles | wall s | output Mpx/s | baseline RSS MiB "
        "| peak RSS, tiles MiB | peak RSS, with finalise MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out_mpx = r["rows"] * r["cols"] * r["scale"] ** 2 / 1e6
        lines.append(
            f"| {r['rows']} x {r['cols']} | {out_mpx:.1f} | {r['tiles']} | {r['wall_s']:.1f} "
            f"| {out_mpx / r['wall_s']:.3f} | {r['baseline_mb']:.0f} "
            f"| {r['tiles_peak_mb']:.0f} | {r['peak_mb']:.0f} |"
        )
    return "\n".join(lines), rows[0]["margin_px"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 640])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tile-px", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument(
        "--record",
        type=Path,
        help="also write the table to this file (notes below its marker are kept)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    table, margin_px = run(args)
    settings = (
        f"lite preset (untrained, trend sigma {TREND_SIGMA_PX:g} px, margin {margin_px} px), "
        f"tile_px={args.tile_px}, batch_size={args.batch_size}, device={args.device}, "
        f"{os.cpu_count()} CPUs, "
        f"{platform.platform()}"
    )
    sys.stdout.write(f"{table}\n\n{settings}\n")
    if args.record is not None:
        record(
            args.record, "Tiled prediction: peak memory vs raster size", f"{table}\n\n{settings}"
        )


if __name__ == "__main__":
    main()
