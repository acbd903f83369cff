"""``demsr evaluate``: the model against bicubic interpolation on a test split."""

from __future__ import annotations

import json
from pathlib import Path

import click

from demsr.cli.options import device_option


@click.command("evaluate")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.argument("pairs", type=click.Path(dir_okay=False))
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    help="Also write the metrics to this JSON file.",
)
@device_option
@click.option("--progress/--no-progress", default=True, show_default=True)
def command(
    checkpoint: str, pairs: str, batch_size: int, json_path: str | None, device: str, progress: bool
) -> None:
    """RMSE and MAE of CHECKPOINT and of bicubic interpolation on the HDF5 PAIRS file
    (e.g. test/test.h5), in metres."""
    from demsr.evaluate import evaluate_pairs
    from demsr.io import atomic_path

    result = evaluate_pairs(
        checkpoint, pairs, batch_size=batch_size, device=device, progress=progress
    )
    click.echo(result.table())
    if json_path:
        with atomic_path(json_path) as tmp:
            Path(tmp).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
