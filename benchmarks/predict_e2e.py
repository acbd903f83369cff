"""``demsr predict`` end to end against the network alone, side by side in one run.

For rasters of about 0.1, 1.4 and 36 output megapixels cut from the bundled SRTM 3" tile
N37W004 (taken as the 15" input: 63 x 63, 240 x 240 and the whole 1201 x 1201), and for COG and
Zarr products, this times:

* **end to end**: :func:`demsr.predict.predict_raster` with the shipped model at its defaults,
  from the checkpoint file to the finished product (loading the weights, the input check, the
  tiles, the product), in a fresh child process whose peak resident memory (``VmHWM``) is
  recorded;
* **network only**: the same prepared network (same device, same precision, channels-last) on
  one block of the same terrain in memory, no tiling, no margin, no reading or writing: the whole
  raster when it is at most ``--block`` cells a side, else a ``--block`` square of it; output
  megapixels per second of that forward pass (the median of 3-7 calls after a warm-up call of
  the same shape; the warm-up's own rate, which pays the kernels' first-call set-up as a
  one-tile run does, is reported beside it).

Both run in child processes in interleaved rounds (network, end to end, network, ...) so that a
busy spell of a shared machine hits both alike, and the ratio of the medians is reported. With
``--baseline-src DIR`` the end-to-end child also runs with another checkout's sources (e.g. the
previous release's ``src``) in the same rounds, so before and after are measured side by side.
``--profile`` adds one profiled end-to-end run per case (cProfile; where the time goes by stage).
Children import demsr from bytecode, compiled once before the rounds, as from an installed
package (``PYTHONDONTWRITEBYTECODE`` is cleared for them): a fresh process should not pay for
compiling the modules it imports lazily. ``--warm-process`` has each end-to-end child predict a
second, equal raster after the first, in the same process, and reports that call too: what a
process predicting many rasters pays per raster once the model is loaded and the kernels are set
up. ``--threads N`` sets torch's threads in every child (default: torch's own, one per core),
e.g. 1 on a machine whose other cores are busy, where threads waiting for each other slow small
tiles down many times over.

    .venv/bin/python benchmarks/predict_e2e.py                            # 0.1 and 1.4 Mpx, CPU
    .venv/bin/python benchmarks/predict_e2e.py --cases 0.1 1.4 36 --formats tif zarr \\
        --baseline-src ../demsr-old/src --profile --record benchmarks/predict_e2e.md
    .venv/bin/python benchmarks/predict_e2e.py --device cuda --cases 0.1 1.4 36 \\
        --record benchmarks/predict_e2e_cuda.md

Extra ``predict_raster`` settings go in ``--tile-size``/``--batch-size``/``--memory`` (default:
predict's own defaults).
"""

from __future__ import annotations

import argparse
import compileall
import cProfile
import io
import json
import logging
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from harness import machine_description, median, peak_rss_mb, record

log = logging.getLogger("predict_e2e")

REPO = Path(__file__).resolve().parents[1]
TERRAIN = REPO / "src" / "demsr" / "data" / "srtm3_N37W004.tif"
CASES = {"0.1": 63, "1.4": 240, "36": 1201}
"""Output megapixels -> side of the low-res square cut from the SRTM tile (x5 output)."""

STAGES = {
    # cProfile function name -> stage (cumulative seconds; nested stages are not subtracted)
    "as_checkpoint": "load checkpoint",
    "build_resolver": "build model",
    "prepare_for_inference": "prepare network",
    "summarise": "input check (reads every cell)",
    "read": "read tiles",
    "fill_nearest": "fill nodata",
    "_run_batch": "network + tile output",
    "write": "write tiles",
    "commit": "commit batches",
    "finalise_output": "write product",
}


def write_case(size: int, path: Path) -> Path:
    """The top-left size x size cells of the SRTM tile as a tiled GeoTIFF."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(TERRAIN) as src:
        window = Window(0, 0, size, size)
        data = src.read(1, window=window)
        profile = src.profile
        profile.update(width=size, height=size, transform=src.window_transform(window))
    if size < 256:
        profile.update(tiled=False)
        profile.pop("blockxsize", None)
        profile.pop("blockysize", None)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return path


# --------------------------------------------------------------------------------------------
# Children
# --------------------------------------------------------------------------------------------


def child_network(args: argparse.Namespace) -> None:
    """One forward pass of the prepared network on a block of the input, timed after a warm-up
    call of the same shape; prints a JSON line."""
    import torch

    from demsr.checkpoint import as_checkpoint
    from demsr.engine import Network
    from demsr.io import read_raster
    from demsr.model import network_autocast, resolve_device

    _set_threads(args)
    device = resolve_device(args.device)
    checkpoint = as_checkpoint(args.checkpoint)
    network = Network.of_checkpoint(checkpoint, device, "auto", False)
    values = read_raster(args.input).data
    rows, cols = (min(n, args.block) for n in values.shape)
    block = torch.from_numpy(np.ascontiguousarray(values[:rows, :cols], dtype=np.float32))
    inputs = block[None, None].to(device)

    def forward() -> None:
        with torch.inference_mode(), network_autocast(device, network.precision):
            network.run(inputs)
        if device.type == "cuda":
            torch.cuda.synchronize()

    started = time.perf_counter()
    forward()
    first_s = time.perf_counter() - started
    calls: list[float] = []  # at least 2 s and 3 calls, at most 7: a small block is quick
    while len(calls) < 7 and (len(calls) < 3 or sum(calls) < 2.0):
        started = time.perf_counter()
        forward()
        calls.append(time.perf_counter() - started)
    seconds = median(calls)
    output_mpx = rows * cols * network.resolver.scale**2 / 1e6
    print(
        json.dumps(
            {
                "block": [rows, cols],
                "seconds": seconds,
                "first_s": first_s,
                "mpx_s": output_mpx / seconds,
                "first_mpx_s": output_mpx / first_s,
                "precision": network.precision,
            }
        )
    )


def child_predict(args: argparse.Namespace) -> None:
    """One ``predict_raster`` run from the checkpoint file to the product; prints a JSON line
    with its wall time and this process's peak resident memory (and, with ``--profile``, the
    cumulative seconds of each stage)."""
    import inspect

    import demsr.predict

    _set_threads(args)
    options: dict[str, Any] = {"device": args.device, "progress": False}
    accepted = inspect.signature(demsr.predict.predict_raster).parameters
    for name in ("tile_px", "batch_size", "memory_mb"):
        value = getattr(args, name)
        if value is not None:
            if name not in accepted:
                raise SystemExit(f"this predict_raster takes no {name}")
            options[name] = value
    before_mb = peak_rss_mb()
    profiler = cProfile.Profile() if args.profile else None
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    demsr.predict.predict_raster(args.checkpoint, args.input, args.output, **options)
    if profiler is not None:
        profiler.disable()
    wall_s = time.perf_counter() - started
    result: dict[str, Any] = {
        "wall_s": wall_s,
        "peak_mb": peak_rss_mb(),
        "imports_mb": before_mb,
        "settings": _recorded_settings(args.output),
    }
    if args.warm_process:  # a second, equal raster in the same process
        again = f"{args.output}.again{Path(args.output).suffix}"
        started = time.perf_counter()
        demsr.predict.predict_raster(args.checkpoint, args.input, again, **options)
        result["again_s"] = time.perf_counter() - started
        result["peak_mb"] = peak_rss_mb()
        _remove(Path(again))
    if profiler is not None:
        result["stages"] = _stages(profiler)
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(12)
        result["top"] = text.getvalue()
    if args.device.startswith("cuda"):
        import torch

        result["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(result))


def _set_threads(args: argparse.Namespace) -> None:
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)


def _recorded_settings(output: str) -> dict[str, Any]:
    """Tile size and batch size as the product's tags record them (COG) where readable."""
    try:
        import rasterio

        with rasterio.open(output) as src:
            tags = src.tags()
        return {key: tags[key] for key in ("tile_px", "margin_px") if key in tags}
    except Exception:  # a Zarr product, or tags not written
        return {}


def _stages(profiler: cProfile.Profile) -> dict[str, float]:
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    stages: dict[str, float] = {}
    for (filename, _, name), (_, _, _, cumulative, _) in stats.items():
        if name in STAGES and ("demsr" in filename or name == "read"):
            if name == "read" and Path(filename).parent.name != "io":  # demsr.io's reads
                continue
            stages[STAGES[name]] = stages.get(STAGES[name], 0.0) + cumulative
    return stages


# --------------------------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------------------------


def _child(args: argparse.Namespace, mode: str, src: Path, extra: list[str]) -> dict[str, Any]:
    command = [sys.executable, __file__, f"--child-{mode}", "--device", args.device, *extra]
    if args.threads is not None:
        command += ["--threads", str(args.threads)]
    env = dict(os.environ, PYTHONPATH=str(src))
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # modules load from bytecode, as once installed
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _settings_args(args: argparse.Namespace) -> list[str]:
    extra = []
    if args.tile_px is not None:
        extra += ["--tile-size", str(args.tile_px)]
    if args.batch_size is not None:
        extra += ["--batch-size", str(args.batch_size)]
    if args.memory_mb is not None:
        extra += ["--memory-mb", str(args.memory_mb)]
    return extra


def run(args: argparse.Namespace) -> str:
    from demsr.pretrained import resolve_checkpoint

    checkpoint = str(resolve_checkpoint(None))
    sources = {"this": REPO / "src"}
    if args.baseline_src is not None:
        sources = {"baseline": args.baseline_src.resolve(), **sources}
    for src in sources.values():  # as an installed package has them (pip compiles on install)
        compileall.compile_dir(src, quiet=1)
    rows: list[str] = []
    profiles: list[str] = []
    with tempfile.TemporaryDirectory(prefix="demsr-e2e-") as tmp_name:
        tmp = Path(tmp_name)
        for case in args.cases:
            size = CASES[case]
            raster = write_case(size, tmp / f"case_{size}.tif")
            base = ["--checkpoint", checkpoint, "--input", str(raster)]
            for fmt in args.formats:
                network: list[dict[str, Any]] = []
                e2e: dict[str, list[dict[str, Any]]] = {name: [] for name in sources}
                for round_ in range(args.rounds):
                    network.append(
                        _child(
                            args, "network", sources["this"], [*base, "--block", str(args.block)]
                        )
                    )
                    for name, src in sources.items():
                        output = tmp / f"out_{size}_{name}.{fmt}"
                        extra = [*base, "--output", str(output)]
                        if name == "this":
                            extra += _settings_args(args)
                        if args.warm_process:
                            extra += ["--warm-process"]
                        e2e[name].append(_child(args, "predict", src, extra))
                        _remove(output)
                    log.info(
                        "%s Mpx %s round %d: network %.2f Mpx/s; %s",
                        case,
                        fmt,
                        round_ + 1,
                        network[-1]["mpx_s"],
                        ", ".join(f"{n} {r[-1]['wall_s']:.1f} s" for n, r in e2e.items()),
                    )
                out_mpx = size * size * 25 / 1e6
                for name, results in e2e.items() if network else ():  # --rounds 0: profile
                    net_rate = median([r["mpx_s"] for r in network])
                    first_rate = median([r.get("first_mpx_s", float("nan")) for r in network])
                    wall = median([r["wall_s"] for r in results])
                    rate = out_mpx / wall
                    peak = max(r["peak_mb"] for r in results)
                    label = {"this": "this tree", "baseline": "baseline"}[name]
                    again = ""
                    if args.warm_process:
                        again_rate = out_mpx / median([r["again_s"] for r in results])
                        again = f" {again_rate:.3f} | {again_rate / net_rate:.0%} |"
                    rows.append(
                        f"| {size} x {size} ({out_mpx:.2f} Mpx) | {fmt} | {label} "
                        f"| {wall:.2f} | {rate:.3f} | {net_rate:.3f} | {rate / net_rate:.0%} "
                        f"| {first_rate:.3f} | {rate / first_rate:.0%} |{again} {peak:.0f} |"
                    )
                if args.profile:
                    for name, src in sources.items():
                        output = tmp / f"prof_{size}_{name}.{fmt}"
                        extra = [*base, "--output", str(output), "--profile"]
                        if name == "this":
                            extra += _settings_args(args)
                        result = _child(args, "predict", src, extra)
                        _remove(output)
                        stages = ", ".join(
                            f"{stage} {seconds:.2f} s"
                            for stage, seconds in sorted(
                                result["stages"].items(), key=lambda item: -item[1]
                            )
                        )
                        profiles.append(
                            f"- {size} x {size} {fmt}, {name} ({result['wall_s']:.2f} s profiled): "
                            f"{stages}"
                        )
                        log.info("profile %s %s %s:\n%s", case, fmt, name, result["top"])
    again = " 2nd raster in the process Mpx/s | ratio |" if args.warm_process else ""
    lines = [
        "| low-res raster (output) | format | code | end to end s | end to end Mpx/s "
        f"| network only Mpx/s | ratio | network first call Mpx/s | ratio to it |{again} "
        "peak RSS MiB |",
        "|---" * (12 if args.warm_process else 10) + "|",
        *rows,
    ]
    if profiles:
        lines += ["", "Where the time goes (cumulative seconds per stage, one profiled run):", ""]
        lines += profiles
    return "\n".join(lines)


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=["0.1", "1.4"])
    parser.add_argument("--formats", nargs="+", choices=("tif", "zarr"), default=["tif"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--block",
        type=int,
        default=512,
        help="largest side of the block the network alone runs on (low-res cells)",
    )
    parser.add_argument("--baseline-src", type=Path, help="another checkout's src to compare")
    parser.add_argument("--tile-size", dest="tile_px", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--memory-mb", type=int)
    parser.add_argument("--profile", action="store_true", help="add one profiled run per case")
    parser.add_argument(
        "--warm-process",
        action="store_true",
        help="also time a second, equal raster predicted in the same process",
    )
    parser.add_argument("--threads", type=int, help="torch threads in every child")
    parser.add_argument("--record", type=Path, help="also write the table to this file")
    parser.add_argument("--child-network", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-predict", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_network:
        child_network(args)
        return
    if args.child_predict:
        child_predict(args)
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _set_threads(args)  # for the machine's description
    started = time.perf_counter()
    table = run(args)
    load = os.getloadavg()
    note = (
        f"Machine: {machine_description(args.device)}; load average during the run "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min). "
        f"Medians of {args.rounds} interleaved rounds; {time.perf_counter() - started:.0f} s."
    )
    sys.stdout.write(f"{table}\n\n{note}\n")
    if args.record is not None:
        record(
            args.record, "demsr predict end to end against the network alone", f"{table}\n\n{note}"
        )


if __name__ == "__main__":
    main()
