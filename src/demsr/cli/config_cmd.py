"""``demsr config``: print the full resolved run config."""

from __future__ import annotations

import click

from demsr.cli.options import with_config_options
from demsr.config import load_config


@click.command("config")
@with_config_options
def command(config_path: str | None, overrides: tuple[str, ...]) -> None:
    """Print the full run config as YAML: the defaults, or the --config file's values over them,
    with any --set overrides applied."""
    click.echo(load_config(config_path, overrides).to_yaml(), nl=False)
