"""Pretrained weights shipped inside the package, and how a checkpoint argument names them.

``lite`` is the default model of ``demsr predict`` and ``demsr demo``: the ``lite`` preset
trained on SRTM 3" land tiles and fine-tuned on bathymetry grids (MODEL_CARD.md says which,
how, and how well it does on tiles it never saw). The file is an ordinary demsr checkpoint; its
header adds a ``release`` record (name, recipe, data, hardware, wall time, steps, metrics).

This module does not import torch: resolving a name is cheap.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

# name -> file under src/demsr/weights/
PRETRAINED = {"lite": "lite.safetensors"}
DEFAULT_MODEL = "lite"


def pretrained_path(name: str = DEFAULT_MODEL) -> Path:
    """The shipped checkpoint file of the model ``name`` (one of :data:`PRETRAINED`)."""
    if name not in PRETRAINED:
        raise ValueError(
            f"unknown pretrained model {name!r}; shipped: {', '.join(sorted(PRETRAINED))}"
        )
    path = Path(str(resources.files("demsr") / "weights" / PRETRAINED[name]))
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the shipped {name!r} weights are missing (broken install?)"
        )
    return path


def is_shipped_name(spec: str | os.PathLike[str]) -> bool:
    """Whether ``spec`` names a shipped model (and no file of that name exists)."""
    text = os.fspath(spec)
    return text in PRETRAINED and not Path(text).exists()


def resolve_checkpoint(spec: str | os.PathLike[str] | None) -> Path:
    """The checkpoint file meant by ``spec``: the default shipped model for None, a shipped
    model for its name (``lite``) unless a file of that name exists, else ``spec`` as a path."""
    if spec is None:
        return pretrained_path(DEFAULT_MODEL)
    if is_shipped_name(spec):
        return pretrained_path(os.fspath(spec))
    return Path(os.fspath(spec))


def write_release(
    checkpoint: str | os.PathLike[str],
    output: str | os.PathLike[str],
    release: Mapping[str, Any],
) -> Path:
    """Copy a trained checkpoint's weights and metadata (no optimizer state) to ``output``,
    adding ``release`` (how the model was made and how well it does) to its header."""
    from demsr.checkpoint import copy_with_metadata

    return copy_with_metadata(checkpoint, output, {"release": dict(release)})
