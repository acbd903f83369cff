"""How far tiled prediction moves from whole-raster prediction in bf16, on real DEMs.

In float32 a tiled raster equals the whole raster to rounding; in bf16 the network's rounding
depends on each tile's shape, so the two differ by up to about the model's own bf16 error. For
the bundled SRTM tile and each DEM of the test folder (their top-left 1200 cells, block-averaged
x5 as a coarse input), this predicts the whole raster and tiles of 32, 64 and 128 low-res cells
(those smaller than the raster) in bf16 with the shipped model, and prints the largest and the
mean absolute difference in metres::

    .venv/bin/python benchmarks/bf16_tiles.py ../shared/data/dem/test/*.tif
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from demsr.checkpoint import as_checkpoint
from demsr.engine import predict_array
from demsr.io import read_raster
from demsr.prepare import crop_to_blocks, degrade

TERRAIN = Path(__file__).resolve().parents[1] / "src" / "demsr" / "data" / "srtm3_N37W004.tif"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dems", type=Path, nargs="*", help="more DEMs (the bundled tile first)")
    parser.add_argument("--tiles", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("demsr").setLevel(logging.ERROR)  # no bound: predict_array warns each call
    checkpoint = as_checkpoint("lite")
    resolver = checkpoint.build_resolver()
    print("| DEM | low-res cells | tile | largest difference m | mean difference m |")
    print("|---|---|---|---|---|")
    for path in [TERRAIN, *args.dems]:
        data = read_raster(path).data[:1200, :1200]
        lowres = degrade(crop_to_blocks(data, checkpoint.scale, str(path)), checkpoint.scale)
        whole = predict_array(resolver, lowres, "cpu", precision="bf16")
        for tile_px in args.tiles:
            if tile_px >= max(lowres.shape):
                continue
            tiled = predict_array(resolver, lowres, "cpu", precision="bf16", tile_px=tile_px)
            difference = np.abs(tiled - whole)
            print(
                f"| {path.name} | {lowres.shape[0]} x {lowres.shape[1]} | {tile_px} | "
                f"{np.nanmax(difference):.4f} | {np.nanmean(difference):.5f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
