"""The shipped network on square windows of real terrain, with its replicate padding applied as
padded copies (``ring_padding("never")``, as before) and by the ring convolution
(:func:`demsr.layers.replicate_conv3x3`, ``ring_padding("always")``), side by side in one run.

For each window size (low-res cells a side, cut from the bundled SRTM 3" tile taken as the 15"
input) and precision, the two ways alternate call by call after a warm-up call of each; the
median of ``--calls`` calls is reported, with the largest difference between the two outputs
(metres: float32 rounds them apart by less than a millimetre, bf16 by about what bf16 rounds
away from float32, see ``scripts/record_bf16_error.py``). ``--threads`` sets torch's threads.

    .venv/bin/python benchmarks/ring_padding.py --sizes 63 128 254 400 727 --precisions bf16 fp32
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from harness import machine_description, median, record

from demsr.checkpoint import as_checkpoint
from demsr.engine import Network
from demsr.io import read_raster
from demsr.layers import ring_padding
from demsr.model import network_autocast

TERRAIN = Path(__file__).resolve().parents[1] / "src" / "demsr" / "data" / "srtm3_N37W004.tif"
WAYS = {"padded copies": "never", "ring": "always"}


def run(args: argparse.Namespace) -> str:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    checkpoint = as_checkpoint("lite")
    terrain = read_raster(TERRAIN).data
    rows = [
        "| window (low-res cells) | precision | padded copies s | ring s | speed-up | output Mpx/s "
        "(copies -> ring) | largest difference m |",
        "|---|---|---|---|---|---|---|",
    ]
    started = time.perf_counter()
    for precision in args.precisions:
        network = Network.of_checkpoint(checkpoint, device, precision, False)
        for size in args.sizes:
            block = np.ascontiguousarray(terrain[:size, :size], dtype=np.float32)
            inputs = torch.from_numpy(block)[None, None]
            seconds: dict[str, list[float]] = {way: [] for way in WAYS}
            outputs: dict[str, torch.Tensor] = {}
            for call in range(args.calls + 1):  # call 0 warms each way up
                for way, mode in WAYS.items():
                    with ring_padding(mode), torch.inference_mode():
                        with network_autocast(device, network.precision):
                            tick = time.perf_counter()
                            outputs[way] = network.run(inputs).float()
                            elapsed = time.perf_counter() - tick
                    if call:
                        seconds[way].append(elapsed)
            copies, ring = (median(seconds[way]) for way in WAYS)
            mpx = size * size * network.resolver.scale**2 / 1e6
            difference = (outputs["ring"] - outputs["padded copies"]).abs().max().item()
            rows.append(
                f"| {size} | {network.precision} | {copies:.3f} | {ring:.3f} | "
                f"{copies / ring:.2f}x | {mpx / copies:.2f} -> {mpx / ring:.2f} | "
                f"{difference:.4f} |"
            )
            print(rows[-1], flush=True)
    return "\n".join(
        [
            *rows,
            "",
            f"Machine: {machine_description('cpu')}. Medians of "
            f"{args.calls} calls per way; {time.perf_counter() - started:.0f} s.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[63, 128, 254, 400, 727])
    parser.add_argument("--precisions", nargs="+", default=["bf16", "fp32"])
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--record", type=Path, default=None, help="write the table to this file")
    args = parser.parse_args()
    body = run(args)
    print(body)
    if args.record is not None:
        record(args.record, "The network's replicate padding: padded copies against the ring", body)


if __name__ == "__main__":
    main()
