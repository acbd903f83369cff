"""How much of a training step waits for data, with windows drawn at random from rasters.

Builds the trainer of a run config (default ``configs/lite-windows.yaml``: ``data.source:
rasters``, batches of 16 windows of 32 low-res cells, bf16 residual blocks, half the inputs made
by the fitted degradation) exactly as ``demsr train`` does, and times, for each DataLoader
worker count asked:

* **loader alone**: seconds per batch drawn from the training DataLoader, nothing else running;
* **step alone**: seconds per training step (forward, loss, backward, Adam) on batches already
  in memory;
* **training loop**: the trainer's own loop shape (``next(batches)`` then the step), with the
  seconds spent waiting in ``next`` summed apart: the **data wait** share of the loop's time is
  the figure the project keeps under 10%.

Runs in the current directory's view of ``../shared`` (the config's raster paths); nothing is
written. ``--threads`` sets torch's threads (default: torch's own).

    .venv/bin/python benchmarks/train_loading.py --steps 30 --workers 0 1 --threads 1
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from harness import machine_description

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "lite-windows.yaml")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--record", type=Path, help="also append the table to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    from demsr.config import load_config
    from demsr.epochs import pair_batches
    from demsr.train import Trainer

    config = load_config(args.config)
    config.summary.output_dir = "/nonexistent-never-written"
    started = time.perf_counter()
    trainer = Trainer(config, progress=False)
    trainer._use_model(None)  # builds the network as fit() does
    built_s = time.perf_counter() - started
    model = trainer.model
    model.train()
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.optimizer.learning_rate,
        fused=True,
    )
    dataset = trainer.train_set
    dataset.set_epoch(1)
    needed = (args.warmup + args.steps) * config.data.batch_size

    def step(lowres: torch.Tensor, highres: torch.Tensor) -> None:
        loss = trainer.loss(lowres, highres, trainer.resolver)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()

    rows = []
    for workers in args.workers:
        config.data.num_workers = workers
        # Loader alone.
        batches = iter(pair_batches(dataset, range(needed), config.data, trainer.device))
        for _ in range(args.warmup):
            next(batches)
        t0 = time.perf_counter()
        kept = [next(batches) for _ in range(args.steps)]
        loader_s = (time.perf_counter() - t0) / args.steps
        del batches
        # Step alone, on batches in memory.
        for lowres, highres in kept[: args.warmup]:
            step(lowres, highres)
        t0 = time.perf_counter()
        for lowres, highres in kept:
            step(lowres, highres)
        step_s = (time.perf_counter() - t0) / args.steps
        # The loop: wait for the next batch, then step.
        batches = iter(pair_batches(dataset, range(needed), config.data, trainer.device))
        for _ in range(args.warmup):
            step(*next(batches))
        waits, totals = [], []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            lowres, highres = next(batches)
            t1 = time.perf_counter()
            step(lowres, highres)
            waits.append(t1 - t0)
            totals.append(time.perf_counter() - t0)
        del batches
        share = sum(waits) / sum(totals)
        rows.append(
            f"| {workers} | {loader_s:.3f} | {step_s:.3f} | {sum(totals) / args.steps:.3f} "
            f"| {statistics.median(waits):.4f} | {share:.1%} |"
        )
        print(rows[-1], file=sys.stderr)
    load = os.getloadavg()
    table = "\n".join(
        [
            f"Config {args.config.name}: batches of {config.data.batch_size} windows of "
            f"{config.data.patch_size} low-res cells, precision {trainer.precision}, "
            f"{len(dataset.paths)} training rasters (read in {built_s:.0f} s); "
            f"{args.steps} timed steps after {args.warmup}.",
            "",
            "| DataLoader workers | loader alone s/batch | step alone s | loop s/step "
            "| median wait s | data wait share of the loop |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            f"Machine: {machine_description('cpu')}; load average at the end "
            f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min).",
        ]
    )
    print(table)
    if args.record is not None:
        with args.record.open("a") as handle:
            handle.write(f"\n{table}\n")


if __name__ == "__main__":
    main()
