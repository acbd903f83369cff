"""Speed of DEM-SRNet: the naive port against demsr's fast paths, side by side in one process.

For the ``paper`` (42 x 256) and ``lite`` (16 x 64) presets:

* **inference** of the network on a realistic tile (on the CPU: the read window of ``demsr
  predict``'s defaults for lite, 128 + 2 x 57 cells; a smaller one for paper), in output
  megapixels per second, for the naive port (the reference layer order, eager float32, plain
  NCHW tensors: what a direct translation of the reference gives) and each fast path: the
  factored output stage, channels-last, bf16 autocast (residual blocks only) and, with
  ``--compile``, ``torch.compile``. Every variant's output is compared with the naive one on
  real terrain (the bundled SRTM tile, degraded to 15").
* **training steps** (forward, MSE, backward, Adam) at batch 64 of 32 -> 160 patches (and
  smaller batches on the CPU): naive (reference order, float32, NCHW, Adam's default
  implementation: one tensor at a time on the CPU, multi-tensor on CUDA) against the fast path
  (factored stage, channels-last, fused Adam) in float32 and bf16.
* **peak memory** of one inference call and one training step, each in a fresh child process
  (how far resident memory rises above its level before the call, ``harness.peak_rss_above_mb``,
  on the CPU; ``max_memory_allocated`` above the allocated memory before the call on a GPU).
* **the hardware's measured peak**: a large matrix product in float32 and bf16, in the same run,
  and each variant's achieved FLOP/s as a fraction of it (FLOPs counted on the reference layer
  order, ``demsr.model.flops_per_lowres_px``; a training step as 3 forward passes).
* **data loading**: a batch of 64 pairs drawn as the trainer draws them (in memory, shuffled).
* **the shipped model's accuracy** in bf16 against float32 on every real DEM of the test folder.

Variants run in interleaved rounds (``harness.time_side_by_side``) after a warm-up; medians are
reported. lite runs the shipped weights; paper runs untrained weights (seed 0; speed does not
depend on the values)::

    .venv/bin/python benchmarks/speed.py                         # CPU, about 15 minutes
    .venv/bin/python benchmarks/speed.py --device cuda --compile --record benchmarks/speed_cuda.md

``--record FILE`` writes the tables to FILE, keeping its hand-written notes (see
``harness.record``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from harness import machine_description, median, peak_rss_above_mb, record, time_side_by_side
from torch import nn

from demsr.checkpoint import as_checkpoint
from demsr.io import read_raster
from demsr.layers import upsample_bilinear
from demsr.model import (
    DEMSRNet,
    ModelConfig,
    SuperResolver,
    flops_per_lowres_px,
    network_autocast,
    prepare_for_inference,
    preset,
    resolve_device,
    to_channels_last,
)
from demsr.prepare import crop_to_blocks, degrade
from demsr.scaling import gaussian_trend

log = logging.getLogger("speed")

REPO = Path(__file__).resolve().parents[1]
TERRAIN = REPO / "src" / "demsr" / "data" / "srtm3_N37W004.tif"
# The shared data folder next to the repository (as the tests find it), or DEMSR_SHARED_DIR.
SHARED = Path(os.environ.get("DEMSR_SHARED_DIR", REPO.parent / "shared"))
TEST_DEMS = SHARED / "data" / "dem" / "test"


class NaivePort(nn.Module):
    """The reference network translated line by line (MindEarth's ``DEMNet``), as a port
    without any speed work would be: the baseline. Its parameter names are demsr's, so it
    loads the same weights."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        channels, bias = config.channels, config.bias

        def conv(n_in: int, n_out: int) -> nn.Conv2d:
            return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)

        self.conv1 = conv(1, channels)
        self.body = nn.ModuleList(
            NaiveBlock(conv(channels, channels), conv(channels, channels))
            for _ in range(config.blocks)
        )
        self.conv2 = conv(channels, channels)
        self.conv_up = conv(channels, channels)
        self.conv_out = conv(channels, 1)

    @property
    def scale(self) -> int:
        return self.config.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        for block in self.body:
            out = block(out)
        out = self.conv2(out) + x
        out = upsample_bilinear(self.conv_up(out), self.config.scale, self.config.resize)
        return self.conv_out(out)


class NaiveBlock(nn.Module):
    def __init__(self, res_conv1: nn.Conv2d, res_conv2: nn.Conv2d) -> None:
        super().__init__()
        self.res_conv1, self.res_conv2 = res_conv1, res_conv2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.1 * self.res_conv2(F.relu(self.res_conv1(x)))


@dataclass(frozen=True)
class Variant:
    """One way of running the network."""

    name: str
    output_stage: str = "factored"
    channels_last: bool = True
    precision: str = "fp32"
    compile: bool = False
    fused_adam: bool = True


NAIVE = Variant("naive port", output_stage="naive", channels_last=False, fused_adam=False)
INFERENCE = [
    NAIVE,
    Variant("factored output stage", channels_last=False),
    Variant("+ channels-last"),
    Variant("+ bf16 (predict's default)", precision="bf16"),
]
COMPILED = Variant("+ torch.compile", precision="bf16", compile=True)
# bf16 autocast on the reference layer order: for the accuracy comparison only.
PLAIN_BF16 = Variant(
    "naive port under bf16 autocast", output_stage="naive", channels_last=False, precision="bf16"
)
TRAINING = [NAIVE, Variant("fast, fp32"), Variant("fast, bf16", precision="bf16")]


@dataclass(frozen=True)
class Settings:
    inference: dict[str, tuple[int, int]]  # preset -> (batch, low-res side)
    training: dict[str, list[int]]  # preset -> batch sizes


CPU_SETTINGS = Settings(
    inference={"lite": (1, 242), "paper": (1, 96)}, training={"lite": [64, 16], "paper": [4]}
)
GPU_SETTINGS = Settings(
    inference={"lite": (8, 242), "paper": (4, 242)}, training={"lite": [64], "paper": [64]}
)


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def build_network(name: str, variant: Variant, device: torch.device) -> nn.Module:
    """The preset's network (lite: the shipped weights; paper: untrained, seed 0)."""
    if name == "lite":
        shipped = as_checkpoint("lite")
        state, config = shipped.state_dict, shipped.model_config
    else:
        torch.manual_seed(0)
        config = preset(name)
        state = DEMSRNet(config).state_dict()
    if variant.output_stage == "naive":
        net: nn.Module = NaivePort(config)
    else:
        net = DEMSRNet(config, output_stage=variant.output_stage)  # type: ignore[arg-type]
    net.load_state_dict(state)
    net = net.to(device)
    return to_channels_last(net) if variant.channels_last else net


def terrain_inputs(batch: int, side: int, device: torch.device) -> torch.Tensor:
    """Network inputs from real terrain: the bundled SRTM tile at 15", its trend removed and
    scaled as the shipped model does (mirrored where the tile is too small)."""
    scaling = as_checkpoint("lite").scaling
    lowres = degrade(crop_to_blocks(read_raster(TERRAIN).data, 5, TERRAIN), 5)
    need = side + batch
    reps = -(-need // min(lowres.shape))
    lowres = np.pad(lowres, ((0, lowres.shape[0] * reps), (0, lowres.shape[1] * reps)), "symmetric")
    crops = np.stack([lowres[i : i + side, i : i + side] for i in range(batch)])[:, None]
    tensor = torch.from_numpy(np.ascontiguousarray(crops, dtype=np.float32))
    inputs = (tensor - gaussian_trend(tensor, scaling.trend_sigma_px)) / scaling.scale_m
    return inputs.to(device)


def inference_call(
    net: nn.Module, variant: Variant, inputs: torch.Tensor
) -> Callable[[], torch.Tensor]:
    """A call of the network as ``variant`` runs it."""
    device = inputs.device
    model: Any = net
    if variant != NAIVE:
        model = prepare_for_inference(
            net, device, channels_last=variant.channels_last, compile=variant.compile
        )
    grad_mode = torch.no_grad if variant == NAIVE else torch.inference_mode

    def call() -> torch.Tensor:
        with grad_mode(), network_autocast(device, variant.precision):
            return model(inputs)

    return call


def training_step(
    net: nn.Module, variant: Variant, batch: int, device: torch.device
) -> Callable[[], None]:
    """One optimisation step of ``net`` on a fixed random batch of 32 -> 160 patches."""
    generator = torch.Generator().manual_seed(0)
    scale = net.config.scale
    lowres = torch.randn(batch, 1, 32, 32, generator=generator).to(device)
    highres = torch.randn(batch, 1, 32 * scale, 32 * scale, generator=generator).to(device)
    net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4, fused=variant.fused_adam or None)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with network_autocast(device, variant.precision):
            prediction = net(lowres)
        F.mse_loss(prediction.float(), highres).backward()
        optimizer.step()

    return step


def synchronizer(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def measured_peak_tflops(device: torch.device, repeats: int) -> dict[str, float]:
    """TFLOP/s of a large square matrix product in float32 and bf16 on ``device``: the best
    of ``repeats`` calls (a peak is what the hardware can reach, not its typical pace)."""
    size = 8192 if device.type == "cuda" else 4096
    result = {}
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        times = time_side_by_side({"mm": lambda a=a, b=b: a @ b}, repeats, 2, synchronizer(device))
        result[precision] = 2 * size**3 / min(times["mm"]) / 1e12
    return result


# --------------------------------------------------------------------------------------------
# Memory: one call in a fresh child process
# --------------------------------------------------------------------------------------------


def memory_child(spec: dict[str, Any]) -> None:
    """Run one inference call or training step and print its peak memory (MiB) as JSON."""
    device = resolve_device(spec["device"])
    variant = Variant(**spec["variant"])
    net = build_network(spec["preset"], variant, device)
    if spec["kind"] == "inference":
        run: Callable[[], object] = inference_call(
            net, variant, terrain_inputs(spec["batch"], spec["side"], device)
        )
    else:
        run = training_step(net, variant, spec["batch"], device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        peak = peak_rss_above_mb(run)
    print(json.dumps({"peak_mb": peak}))


def peak_memory_mb(spec: dict[str, Any]) -> float:
    command = [sys.executable, __file__, "--memory-child", json.dumps(spec)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"])


# --------------------------------------------------------------------------------------------
# The benchmarks
# --------------------------------------------------------------------------------------------


def bench_inference(
    name: str,
    batch: int,
    side: int,
    variants: list[Variant],
    args: argparse.Namespace,
    peak: dict[str, float],
) -> str:
    device = resolve_device(args.device)
    inputs = terrain_inputs(batch, side, device)
    nets = {v.name: build_network(name, v, device) for v in variants}
    calls = {v.name: inference_call(nets[v.name], v, inputs) for v in variants}
    log.info(
        "inference %s, %d x %d x %d: warm-up (compiling where asked) ...", name, batch, side, side
    )
    times = time_side_by_side(calls, args.repeats, 1, synchronizer(device))
    outputs = {v.name: calls[v.name]().float() for v in variants}
    reference = outputs[NAIVE.name]
    spread = reference.abs().max().item()
    config = nets[NAIVE.name].config
    flops = flops_per_lowres_px(config) * batch * side * side
    out_px = batch * (side * config.scale) ** 2
    naive_s = median(times[NAIVE.name])
    lines = [
        f"**{name}**, batch {batch} of {side} x {side} low-res cells "
        f"({out_px / 1e6:.2f} output Mpx per call, {flops / 1e12:.2f} TFLOP):",
        "",
        "| variant | median s | output Mpx/s | speed-up | TFLOP/s | % of peak | peak memory MiB "
        "| max deviation from naive |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        seconds = median(times[v.name])
        spec = {
            "device": args.device,
            "variant": asdict(v),
            "preset": name,
            "kind": "inference",
            "batch": batch,
            "side": side,
        }
        # Not measured for compiled variants: the child would compile for minutes first.
        memory = "-" if v.compile else f"{peak_memory_mb(spec):.0f}"
        deviation = (outputs[v.name] - reference).abs().max().item() / spread
        achieved = flops / seconds / 1e12
        lines.append(
            f"| {v.name} | {seconds:.3f} | {out_px / seconds / 1e6:.2f} | {naive_s / seconds:.2f}x "
            f"| {achieved:.2f} | {100 * achieved / peak[v.precision]:.0f}% ({v.precision}) "
            f"| {memory} | {deviation:.1e} of max |"
        )
        log.info("%s", lines[-1])
    return "\n".join(lines)


def bench_training(name: str, batch: int, args: argparse.Namespace, peak: dict[str, float]) -> str:
    device = resolve_device(args.device)
    steps = {}
    config = None
    for v in TRAINING:
        net = build_network(name, v, device)
        config = net.config
        steps[v.name] = training_step(net, v, batch, device)
    assert config is not None
    log.info("training %s, batch %d: warm-up ...", name, batch)
    times = time_side_by_side(steps, args.repeats, 1, synchronizer(device))
    flops = 3 * flops_per_lowres_px(config) * batch * 32 * 32
    naive_s = median(times[NAIVE.name])
    lines = [
        f"**{name}**, batch {batch} of 32 -> {32 * config.scale} patches "
        f"(~{flops / 1e12:.2f} TFLOP per step):",
        "",
        "| variant | median ms/step | speed-up | TFLOP/s | % of peak | peak memory MiB |",
        "|---|---|---|---|---|---|",
    ]
    for v in TRAINING:
        seconds = median(times[v.name])
        memory = peak_memory_mb(
            {
                "device": args.device,
                "variant": asdict(v),
                "preset": name,
                "kind": "training",
                "batch": batch,
            }
        )
        achieved = flops / seconds / 1e12
        lines.append(
            f"| {v.name} | {1000 * seconds:.0f} | {naive_s / seconds:.2f}x | {achieved:.2f} "
            f"| {100 * achieved / peak[v.precision]:.0f}% ({v.precision}) | {memory:.0f} |"
        )
        log.info("%s", lines[-1])
    return "\n".join(lines)


def bench_loading(batch: int = 64, pairs: int = 1024) -> str:
    """Seconds per batch drawn the way ``Trainer`` draws them: a pair file held in memory,
    shuffled, with and without flip/rot90 augmentation, in the main process (num_workers 0)."""
    import tempfile

    from torch.utils.data import DataLoader

    from demsr.datasets import PairDataset, PairMetadata, write_pairs

    generator = np.random.default_rng(0)
    lowres = generator.random((pairs, 1, 32, 32), dtype=np.float32)
    highres = generator.random((pairs, 1, 160, 160), dtype=np.float32)
    cells = []
    with tempfile.TemporaryDirectory(prefix="demsr-speed-") as folder:
        path = write_pairs(Path(folder) / "pairs.h5", lowres, highres, PairMetadata(scale=5))
        for augment in (False, True):
            dataset = PairDataset(path, augment=augment)
            loader = DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True)

            def epoch(loader: DataLoader = loader) -> None:
                for _ in loader:
                    pass

            seconds = median(time_side_by_side({"epoch": epoch}, 3)["epoch"])
            cells.append(f"{1000 * seconds / (pairs // batch):.1f} ms")
    return (
        f"Loading a batch of {batch} pairs (32 -> 160, in memory, shuffled, main process): "
        f"{cells[0]} without augmentation, {cells[1]} with flips/rot90."
    )


def bench_accuracy(args: argparse.Namespace) -> str:
    """The shipped model on every real DEM of the test folder (up to 400 x 400 cells, degraded
    to 15"-like low-res cells), through ``predict_array``: each bf16 variant against float32,
    in metres."""
    from demsr.engine import predict_array

    device = resolve_device(args.device)
    scaling = as_checkpoint("lite").scaling
    variants = [INFERENCE[-1], PLAIN_BF16]

    def run(variant: Variant, lowres: np.ndarray) -> np.ndarray:
        resolver = SuperResolver(build_network("lite", variant, device), scaling)
        return predict_array(resolver, lowres, device, tile_px=None, precision=variant.precision)

    lines = [
        "| DEM (low-res cells) | " + " | ".join(f"{v.name}: max / RMS m" for v in variants) + " |",
        "|---|" + "---|" * len(variants),
    ]
    paths = sorted(TEST_DEMS.glob("*.tif"))
    if not paths:
        raise SystemExit(f"{TEST_DEMS}: no DEMs found (set DEMSR_SHARED_DIR)")
    for path in paths:
        data = read_raster(path).data[:400, :400]
        lowres = degrade(crop_to_blocks(data, 5, path), 5)
        reference = run(NAIVE, lowres)
        cells = []
        for v in variants:
            difference = np.abs(run(v, lowres) - reference)
            cells.append(f"{np.nanmax(difference):.3f} / {np.sqrt(np.nanmean(difference**2)):.3f}")
        shape = f"{lowres.shape[0]} x {lowres.shape[1]}"
        lines.append(f"| {path.name} ({shape}) | " + " | ".join(cells) + " |")
        log.info("%s", lines[-1])
    return "\n".join(lines)


def run_all(args: argparse.Namespace) -> str:
    device = resolve_device(args.device)
    settings = GPU_SETTINGS if device.type == "cuda" else CPU_SETTINGS
    peak = measured_peak_tflops(device, 2 * args.repeats)
    log.info("measured peak: %s TFLOP/s", peak)
    sections = [
        f"Machine: {machine_description(args.device)}.",
        f"Measured peak (a {8192 if device.type == 'cuda' else 4096}-square matrix product, "
        f"best of {2 * args.repeats}): "
        f"fp32 {peak['fp32']:.2f} TFLOP/s, bf16 {peak['bf16']:.2f} TFLOP/s. "
        f"Medians of {args.repeats} interleaved rounds after a warm-up.",
        "## Inference (the network alone)",
    ]
    inference = INFERENCE + ([COMPILED] if args.compile else [])
    for name in args.presets:
        batch, side = settings.inference[name]
        sections.append(bench_inference(name, batch, side, inference, args, peak))
    sections.append("## Training step (forward, MSE, backward, Adam)")
    for name in args.presets:
        for batch in settings.training[name]:
            sections.append(bench_training(name, batch, args, peak))
    sections.append(bench_loading())
    if not args.skip_accuracy:
        sections.append("## The shipped model in bf16 against float32, on real DEMs")
        sections.append(bench_accuracy(args))
    command = " ".join(["python benchmarks/speed.py", *sys.argv[1:]])
    sections.append(f"Command: `{command}`")
    return "\n\n".join(sections)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--presets", nargs="+", default=["paper", "lite"], choices=["paper", "lite"]
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--record", type=Path, help="also write the tables to this file")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(json.loads(args.memory_child))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    body = run_all(args)
    sys.stdout.write(body + "\n")
    if args.record is not None:
        record(args.record, "DEM-SRNet speed: naive port vs fast paths", body)


if __name__ == "__main__":
    main()
