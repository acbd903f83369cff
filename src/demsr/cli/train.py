"""``demsr train``: fit DEM-SRNet to prepared pairs."""

from __future__ import annotations

import logging

import click

from demsr.cli.options import with_config_options
from demsr.config import apply_overrides, load_config

log = logging.getLogger(__name__)


@click.command("train")
@with_config_options
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False),
    help="Folder with train/train.h5 and valid/valid.h5 (sets data.root_dir).",
)
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False),
    help="Run folder for checkpoints and logs (sets summary.output_dir).",
)
@click.option(
    "--preset", type=click.Choice(["lite", "paper"]), help="Model preset (sets model.preset)."
)
@click.option("--resume", is_flag=True, help="Continue the run in the output folder.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def command(
    config_path: str | None,
    overrides: tuple[str, ...],
    data_dir: str | None,
    output_dir: str | None,
    preset: str | None,
    resume: bool,
    progress: bool,
) -> None:
    """Train DEM-SRNet on HDF5 pairs made by `demsr prepare`.

    MSE loss, Adam with exponential learning-rate decay, early stopping on the validation loss.
    Writes config.yaml, metrics.csv, last.safetensors (resumable) and best.safetensors.
    """
    from demsr.train import Trainer

    shortcuts = [f"model.preset={preset}"] if preset else []
    shortcuts += [f"data.root_dir={data_dir}"] if data_dir else []
    shortcuts += [f"summary.output_dir={output_dir}"] if output_dir else []
    config = load_config(config_path)
    apply_overrides(config, shortcuts + list(overrides))
    result = Trainer(config, progress=progress).fit(resume=resume)
    click.echo(
        f"best validation RMSE {result.best_valid_rmse_m:.3f} m after {result.epochs_run} "
        f"epochs ({result.global_step} steps); checkpoints in {result.output_dir}"
    )
