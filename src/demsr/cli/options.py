"""Options shared by several subcommands, defined once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

device_option = click.option(
    "--device",
    default="auto",
    show_default=True,
    help="Where the network runs: auto (CUDA if available), cpu, cuda or cuda:N.",
)
overwrite_option = click.option(
    "--overwrite", is_flag=True, help="Replace existing outputs instead of refusing."
)
band_option = click.option(
    "--band",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Band of the input raster holding the elevations.",
)
config_options = [
    click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        help="YAML run config (e.g. configs/lite.yaml); defaults otherwise.",
    ),
    click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="SECTION.KEY=VALUE",
        help="Override one config value (type-checked; repeatable), e.g. --set train.epochs=5.",
    ),
]


def with_config_options(function: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(config_options):
        function = option(function)
    return function


progress_option = click.option(
    "--progress/--no-progress", default=True, show_default=True, help="Show progress bars."
)
# The options of the commands that train (train, finetune), after --config and --set.
run_options = [
    click.option(
        "--data",
        "data_dir",
        type=click.Path(file_okay=False),
        help="Folder with train/train.h5 and valid/valid.h5 (sets data.root_dir).",
    ),
    click.option(
        "--output-dir",
        type=click.Path(file_okay=False),
        help="Run folder for checkpoints and logs (sets summary.output_dir).",
    ),
    click.option("--resume", is_flag=True, help="Continue the run in the output folder."),
    progress_option,
]


def with_run_options(function: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(run_options):
        function = option(function)
    return with_config_options(function)
