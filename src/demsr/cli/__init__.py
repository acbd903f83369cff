"""The ``demsr`` command line: one click group, one module per subcommand.

Every subcommand is a thin layer over a library function. Errors a user can act on (bad input,
a missing file, an existing output) end in a one-line message and exit status 1; ``--debug``
shows the traceback instead (:mod:`demsr.cli.errors`).

Under torchrun (``torchrun --nproc_per_node N -m demsr ...``) rank 0 logs as usual; the other
ranks log warnings and errors only, and start their lines (error lines too) with ``[rank r/N]``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from demsr import __version__, ranks
from demsr.cli.errors import EXPECTED_ERRORS, error_message, with_hint

log = logging.getLogger("demsr")


class _TqdmFriendlyHandler(logging.Handler):
    """Log lines that do not tear through progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def _rank_prefix() -> str:
    """``[rank r/N] `` on the ranks other than rank 0 of a torchrun run; nothing otherwise."""
    try:
        return ranks.context().log_prefix
    except ValueError:  # a broken torchrun environment: the command reports it
        return ""


class _RankFormatter(logging.Formatter):
    """Puts ``prefix`` (the rank) before each line, unless the message names its rank."""

    def __init__(self, fmt: str, prefix: str) -> None:
        super().__init__(fmt)
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.getMessage().startswith("[rank ") else self.prefix + text


PROGRESS_LOGGER = "demsr.progress"
"""Progress reports every rank logs at INFO (each rank's throughput and ETA under torchrun)."""


def configure_logging(verbose: int, quiet: int) -> None:
    """demsr's own messages from INFO (``-v``: DEBUG); other libraries' from WARNING (``-v``:
    INFO, which shows the GDAL errors that rasterio logs before demsr reports them in one line).
    Ranks other than rank 0 of a torchrun run log from WARNING (but their progress reports,
    :data:`PROGRESS_LOGGER`, from INFO), their lines marked with the rank."""
    shift = 10 * (quiet - verbose)
    prefix = _rank_prefix()
    handler = _TqdmFriendlyHandler()
    handler.setFormatter(
        _RankFormatter(
            "%(message)s" if verbose == 0 else "%(asctime)s %(name)s %(levelname)s: %(message)s",
            prefix,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    own_level = max(logging.INFO + shift, logging.DEBUG)
    logging.getLogger(PROGRESS_LOGGER).setLevel(own_level)
    if prefix:
        own_level = max(own_level, logging.WARNING)
    root.setLevel(max(logging.WARNING + shift, logging.DEBUG))
    logging.getLogger("demsr").setLevel(own_level)


class DemsrGroup(click.Group):
    """Turns expected failures into one-line errors with a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo(with_hint(ctx, "demsr: interrupted"), err=True)
            sys.exit(130)
        except EXPECTED_ERRORS as exc:
            if ctx.params.get("debug"):
                raise
            line = f"{_rank_prefix()}demsr: error: {error_message(exc)}"
            click.echo(with_hint(ctx, line), err=True)
            sys.exit(1)


@click.group(cls=DemsrGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="demsr")
@click.option("-v", "--verbose", count=True, help="More log output (repeatable).")
@click.option("-q", "--quiet", count=True, help="Less log output (repeatable).")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def main(verbose: int, quiet: int, debug: bool) -> None:
    """Super-resolve digital elevation models with DEM-SRNet (x5: 15\" -> 3\" by default)."""
    configure_logging(verbose, quiet)


def _register() -> None:
    from demsr.cli import (
        calibrate,
        config_cmd,
        demo,
        evaluate,
        finetune,
        import_mindearth,
        plan,
        plot,
        predict,
        prepare,
        report,
        train,
    )

    for module in (
        prepare,
        calibrate,
        train,
        finetune,
        config_cmd,
        evaluate,
        predict,
        plan,
        import_mindearth,
        plot,
        report,
        demo,
    ):
        main.add_command(module.command)
    main.add_command(prepare.degrade_command)


_register()


def run() -> None:
    """The ``demsr`` command. In a process of a torchrun run (``WORLD_SIZE`` > 1) it ends with
    :func:`demsr.ranks.exit_rank_process`, with the command's exit status."""
    from demsr.ranks import context, exit_rank_process

    try:
        main()
    except SystemExit as done:
        try:
            in_a_run_of_ranks = context().distributed
        except ValueError:  # an inconsistent environment: main has said so already
            in_a_run_of_ranks = False
        if not in_a_run_of_ranks:
            raise
        code = done.code
        if code is not None and not isinstance(code, int):
            click.echo(code, err=True)
            code = 1
        exit_rank_process(code or 0)
