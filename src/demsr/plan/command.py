"""The ``demsr predict`` command line that runs a plan: the options of its settings (those that
differ from :data:`demsr.predict_settings.DEFAULTS`), and the whole line, under ``torchrun`` for
several ranks."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence

from demsr.io import RasterError, output_format
from demsr.predict_settings import DEFAULTS, PredictSettings


def predict_options(
    settings: PredictSettings, output_path: str | os.PathLike[str] | None = None
) -> list[str]:
    """``demsr predict``'s options for the fields of ``settings`` that a plan depends on
    (:func:`~demsr.plan.prediction.plan_prediction`): those given (not None) and those that
    differ from :data:`~demsr.predict_settings.DEFAULTS`. ``--memory`` only where it sets the
    tile size (without ``tile_px``); ``--format`` only where the output's extension does not
    say it (a plan without an output names one with the format's extension)."""
    words: list[str] = []
    if settings.band != DEFAULTS.band:
        words += ["--band", str(settings.band)]
    if settings.variable is not None:
        words += ["--variable", settings.variable]
    if settings.crs is not None:
        words += ["--crs", str(settings.crs)]
    if settings.fmt is not None and output_path is not None:
        try:
            implied = output_format(output_path)
        except RasterError:
            implied = None
        if implied != output_format(output_path, settings.fmt):
            words += ["--format", settings.fmt]
    if settings.output_dtype != DEFAULTS.output_dtype:
        words += ["--dtype", settings.output_dtype]
    if settings.tile_px is not None:
        words += ["--tile-px", str(settings.tile_px)]
    elif settings.memory_bytes is not None:
        words += ["--memory", f"{settings.memory_bytes / 2**20:g}MiB"]
    if settings.batch_size != DEFAULTS.batch_size:
        words += ["--batch-size", str(settings.batch_size)]
    if settings.precision != DEFAULTS.precision:
        words += ["--precision", settings.precision]
    if settings.device != DEFAULTS.device:
        words += ["--device", settings.device]
    return words


def placeholder_output(fmt: str) -> str:
    """The output a command line names when none is given: ``OUTPUT`` with ``fmt``'s
    extension."""
    return {"cog": "OUTPUT.tif", "netcdf": "OUTPUT.nc", "zarr": "OUTPUT.zarr"}.get(fmt, "OUTPUT")


def predict_command(
    input_path: str,
    output: str,
    options: Sequence[str],
    *,
    ranks: int = 1,
    checkpoint: str | None = None,
    extra: Sequence[str] = (),
) -> str:
    """The command line that predicts ``input_path`` into ``output`` with ``options``:
    ``torchrun --nproc_per_node N -m demsr predict ...`` for several ranks (one node; add
    ``--nnodes`` and a rendezvous for more), else ``demsr predict ...``; ``checkpoint`` (None:
    the shipped model) comes first, ``extra`` options last."""
    words = ["demsr", "predict"]
    if ranks > 1:
        words = ["torchrun", "--nproc_per_node", str(ranks), "-m", "demsr", "predict"]
    if checkpoint is not None:
        words.append(checkpoint)
    words += [input_path, output, *options, *extra]
    return shlex.join(words)
