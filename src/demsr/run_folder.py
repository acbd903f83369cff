"""A training run's folder: the names of its files, the ``metrics.csv`` schema (what
:mod:`demsr.plot` and :mod:`demsr.report` read) and its reader, the records of an epoch and of a
finished run, and which settings a resumed run may change.

Run folder (``summary.output_dir``)::

    config.yaml        the resolved run config
    metrics.csv        one row per epoch: losses, validation RMSE in metres, learning rate, time
    last.safetensors   weights + optimizer/scheduler/RNG state (what --resume loads)
    best.safetensors   weights at the best validation loss (what predict/evaluate use)
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from demsr.io import atomic_path

LAST = "last.safetensors"
BEST = "best.safetensors"
METRICS = "metrics.csv"
METRIC_FIELDS = [
    "epoch",
    "global_step",
    "train_loss",
    "valid_loss",
    "valid_rmse_m",
    "learning_rate",
    "epoch_seconds",
    "is_best",
]


@dataclass
class TrainResult:
    """How a run ended: the last epoch and step, the best validation loss (normalised MSE) and
    RMSE (metres), and whether early stopping ended it; ``output_dir`` holds its files."""

    output_dir: Path
    epochs_run: int
    global_step: int
    best_valid_loss: float
    best_valid_rmse_m: float
    stopped_early: bool


@dataclass(frozen=True)
class EpochRecord:
    """One finished epoch, as written to ``metrics.csv`` (one row per epoch).

    Losses are mean squared errors of elevations divided by the model's ``elevation_scale_m``;
    ``valid_rmse_m`` is the validation RMSE in metres; ``learning_rate`` is the rate the epoch
    trained at; ``is_best`` says that ``best.safetensors`` was written after it.
    """

    epoch: int
    global_step: int
    train_loss: float
    valid_loss: float
    valid_rmse_m: float
    learning_rate: float
    epoch_seconds: float
    is_best: bool

    def csv_row(self) -> dict[str, Any]:
        """The record as a ``metrics.csv`` row (columns :data:`METRIC_FIELDS`, formatted)."""
        return {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "train_loss": f"{self.train_loss:.6e}",
            "valid_loss": f"{self.valid_loss:.6e}",
            "valid_rmse_m": f"{self.valid_rmse_m:.4f}",
            "learning_rate": f"{self.learning_rate:.6e}",
            "epoch_seconds": f"{self.epoch_seconds:.2f}",
            "is_best": int(self.is_best),
        }


def append_metrics_row(path: Path, record: EpochRecord) -> None:
    """Append ``record`` to the ``metrics.csv`` at ``path`` (with the header if it is new)."""
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRIC_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(record.csv_row())


def truncate_metrics(path: Path, last_epoch: int) -> None:
    """Drop the rows of epochs after ``last_epoch`` from the ``metrics.csv`` at ``path`` (a
    resumed run redoes them); atomic; nothing when there is no file."""
    if not path.exists():
        return
    with open(path, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if int(r["epoch"]) <= last_epoch]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


# Settings that may change when a run is resumed (limits, paths, where it runs); any other change
# would make the resumed run differ from an uninterrupted one.
RESUMABLE_CHANGES = {
    ("train", "epochs"),
    ("train", "max_steps"),
    ("train", "device"),
    ("train", "checkpoint_every_s"),
    ("data", "num_workers"),
    ("data", "root_dir"),
    ("summary", "output_dir"),
    ("summary", "log_every_steps"),
    # The parent checkpoint may move; its identity is checked by its SHA-256 instead.
    ("finetune", "parent"),
}


def changed_settings(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``section.key`` names whose values differ between two run configs (as dicts)."""
    changed = []
    for section, values in current.items():
        for key, value in values.items():
            if (section, key) in RESUMABLE_CHANGES:
                continue
            if stored.get(section, {}).get(key, value) != value:
                changed.append(f"{section}.{key}")
    return changed


# What the training curves read back (demsr.plot.plot_training_curves).
_CURVE_COLUMNS = ("epoch", "train_loss", "valid_loss", "valid_rmse_m", "learning_rate", "is_best")


@dataclass
class TrainingLog:
    """The columns of a run's metrics.csv that the curves use, one entry per epoch."""

    path: Path
    epoch: np.ndarray
    train_loss: np.ndarray
    valid_loss: np.ndarray
    valid_rmse_m: np.ndarray
    learning_rate: np.ndarray
    is_best: np.ndarray  # bool: the validation loss improved on every earlier epoch


def _number(text: str | None, path: Path, line: int, column: str) -> float:
    if text is None or text.strip() == "":
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{path}: line {line}: {column} is not a number: {text!r}") from None


def read_training_log(metrics_csv: str | os.PathLike[str]) -> TrainingLog:
    """Read a run's metrics.csv (or the one in a run folder), sorted by epoch.

    Raises ValueError naming the file when it is missing, empty, lacks a column of
    :data:`demsr.run_folder.METRIC_FIELDS` that the curves need, or holds a value that is not a
    number. Empty cells read as NaN.
    """
    path = Path(metrics_csv)
    if path.is_dir():
        path = path / METRICS
    if not path.is_file():
        raise ValueError(f"{path}: no such file (a run's {METRICS})")
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None:
                raise ValueError(f"{path}: empty file (no header, no epochs)")
            missing = [c for c in _CURVE_COLUMNS if c not in reader.fieldnames]
            if missing:
                raise ValueError(
                    f"{path}: not a training log, missing columns: {', '.join(missing)}"
                )
            rows = [
                [_number(row.get(c), path, reader.line_num, c) for c in _CURVE_COLUMNS]
                for row in reader
            ]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path}: not a readable CSV file ({exc})") from None
    if not rows:
        raise ValueError(f"{path}: holds no epochs yet")
    table = np.asarray(rows, dtype=np.float64)
    table = table[np.argsort(table[:, 0], kind="stable")]
    return TrainingLog(
        path=path,
        epoch=table[:, 0],
        train_loss=table[:, 1],
        valid_loss=table[:, 2],
        valid_rmse_m=table[:, 3],
        learning_rate=table[:, 4],
        is_best=table[:, 5] == 1,
    )
