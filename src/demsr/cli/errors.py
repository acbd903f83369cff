"""How the command line reports failures: one line, naming the file and the problem.

Expected failures (:data:`EXPECTED_ERRORS`: bad input, a missing or existing file, a full disk)
end in ``demsr: error: <path>: <problem>`` and exit status 1; Ctrl-C in ``demsr: interrupted``
and exit status 130. A command may add a hint to that line (e.g. how to resume what it left
behind) by leaving a function under ``click.Context.meta[ERROR_HINT]``.
"""

from __future__ import annotations

import click
from rasterio.errors import RasterioError

from demsr.io import CPLE_BaseError

ERROR_HINT = "demsr.error_hint"
"""Key of ``click.Context.meta`` for a function returning a hint (or None) for the error line."""

EXPECTED_ERRORS = (ValueError, OSError, RuntimeError, KeyError, RasterioError, CPLE_BaseError)
"""Failures a user can act on: one line and exit status 1. Anything else is a bug: traceback."""


def error_message(exc: BaseException) -> str:
    """The first line of ``exc``'s message; for an OS error on a file, ``path: reason``."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def with_hint(ctx: click.Context, line: str) -> str:
    """``line`` with the hint the command left in ``ctx.meta``, if any."""
    hint = ctx.meta.get(ERROR_HINT)
    extra = hint() if hint is not None else None
    return f"{line}; {extra}" if extra else line
