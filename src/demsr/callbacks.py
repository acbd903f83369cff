"""The hooks a :class:`demsr.train.Trainer` calls as it runs (:class:`TrainerCallback`), so that a
script or notebook can follow a run (log, plot, collect the epochs' :class:`EpochRecord`) without
touching the loop."""

from __future__ import annotations

from typing import TYPE_CHECKING

from demsr.run_folder import EpochRecord, TrainResult

if TYPE_CHECKING:
    from demsr.train import Trainer


class TrainerCallback:
    """Hooks a :class:`Trainer` calls as it runs; subclass it and override the ones you need
    (each does nothing here).

    The trainer passes itself: ``trainer.model`` (the network being trained), ``trainer.config``,
    ``trainer.output_dir``, ``trainer.train_set`` / ``trainer.valid_set`` are there to read.
    A callback that raises stops the run (the checkpoints already written stay valid, and
    ``resume=True`` continues from the last one).

    Under torchrun the hooks run on every rank, at the same points: ``trainer.rank``,
    ``trainer.world_size`` and ``trainer.is_main`` say where. Write files or print on rank 0
    only (``if trainer.is_main``), and raise on all ranks or none: a rank that stops alone
    leaves the others waiting until torchrun ends them.
    """

    def on_train_start(self, trainer: Trainer) -> None:
        """The network is built (and its layers frozen when fine-tuning); no step has run."""

    def on_step_end(self, trainer: Trainer, global_step: int, loss: float) -> None:
        """After each optimizer step: the step's number (from 1, counting over the whole run)
        and its training loss (normalised MSE of that batch; under torchrun, of this rank's
        share of it)."""

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        """After each epoch's validation and checkpoints, with what ``metrics.csv`` records."""

    def on_train_end(self, trainer: Trainer, result: TrainResult) -> None:
        """When the run ends normally (epochs or steps done, or early stopping)."""
