"""``demsr train``: fit DEM-SRNet to prepared pairs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import click

from demsr.cli.options import with_run_options
from demsr.model import PRESETS

if TYPE_CHECKING:
    from demsr.config import RunConfig
    from demsr.train import Trainer, TrainResult

log = logging.getLogger(__name__)


def run_config(
    config_path: str | None,
    overrides: tuple[str, ...],
    data_dir: str | None,
    output_dir: str | None,
    shortcuts: list[str],
) -> RunConfig:
    """The config of a training command: the YAML file (or the defaults), then the command's
    own options (``shortcuts``, as ``section.key=value``), then ``--set``, which wins."""
    from demsr.config import load_config

    shortcuts = list(shortcuts)
    shortcuts += [f"data.root_dir={data_dir}"] if data_dir else []
    shortcuts += [f"summary.output_dir={output_dir}"] if output_dir else []
    return load_config(config_path, shortcuts + list(overrides))


def refuse_run_over_inputs(config: RunConfig, parent: str | None = None) -> None:
    """A ValueError when the run folder is the training data's folder, or when one of the files
    it writes would replace an input (the pairs, the parent checkpoint of a fine-tuning)."""
    from demsr.io import refuse_output_over_input
    from demsr.train import BEST, LAST, METRICS

    out = Path(config.summary.output_dir)
    root = Path(config.data.root_dir)
    data = [root, root / "train" / "train.h5", root / "valid" / "valid.h5"]
    refuse_output_over_input([out], data)
    run_files = [out / name for name in (BEST, LAST, METRICS, "config.yaml")]
    refuse_output_over_input(run_files, [*data, parent])


def echo_result(trainer: Trainer, result: TrainResult) -> None:
    """One line on stdout (from rank 0 alone under torchrun): the best validation RMSE, the
    epochs and steps run, the run folder."""
    if not trainer.is_main:
        return
    click.echo(
        f"best validation RMSE {result.best_valid_rmse_m:.3f} m after {result.epochs_run} "
        f"epochs ({result.global_step} steps); checkpoints in {result.output_dir}"
    )


@click.command("train")
@with_run_options
@click.option(
    "--preset", type=click.Choice(sorted(PRESETS)), help="Model preset (sets model.preset)."
)
def command(
    config_path: str | None,
    overrides: tuple[str, ...],
    data_dir: str | None,
    output_dir: str | None,
    resume: bool,
    progress: bool,
    preset: str | None,
) -> None:
    """Train DEM-SRNet on HDF5 pairs made by `demsr prepare`, or on windows drawn from rasters
    at every step (data.source: rasters, see configs/lite-windows.yaml).

    MSE loss, Adam with exponential learning-rate decay, early stopping on the validation loss.
    Writes config.yaml, metrics.csv, last.safetensors (resumable; also every
    train.checkpoint_every_s seconds, mid-epoch) and best.safetensors.
    Under torchrun (torchrun --nproc_per_node N -m demsr train ...) the N processes train
    together with DistributedDataParallel, data.batch_size pairs per process and step, and
    only rank 0 writes the run folder.
    """
    from demsr.train import Trainer

    shortcuts = [f"model.preset={preset}"] if preset else []
    config = run_config(config_path, overrides, data_dir, output_dir, shortcuts)
    refuse_run_over_inputs(config)
    trainer = Trainer(config, progress=progress)
    echo_result(trainer, trainer.fit(resume=resume))
