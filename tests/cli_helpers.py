"""Running ``demsr`` commands in the test process, as the command-line test files do."""

from __future__ import annotations

from click.testing import CliRunner

from demsr.cli import main


def run(*args: object) -> tuple[int, str]:
    """Exit status and output (stdout and stderr together) of ``demsr ARGS``."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def run_split(*args: object) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``demsr ARGS``."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr
