"""The pairs a training run trains and validates on, from its config's ``data`` section: the
published HDF5 pair files under ``data.root_dir`` (:class:`~demsr.datasets.PairDataset`) or,
with ``data.source: rasters``, windows drawn from rasters at every step
(:class:`~demsr.datasets.RasterWindowDataset`, ``train.max_steps_per_epoch`` steps an epoch);
the checks they must pass before a run starts, and the record of them that the checkpoints'
provenance keeps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demsr.config import DEFAULT_WINDOW_PATCH_PX, RunConfig
from demsr.datasets import (
    LowresMaker,
    Normalisation,
    PairDataset,
    RasterSelection,
    RasterWindowDataset,
    select_rasters,
)
from demsr.ranks import RankContext

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """A run's training and validation pairs; ``rasters`` is the selection of rasters the
    windows come from (None for pair files)."""

    train_set: PairDataset | RasterWindowDataset
    valid_set: PairDataset | RasterWindowDataset
    rasters: RasterSelection | None = None

    @property
    def storage(self) -> Normalisation:
        """How the pairs' stored values map to metres (the model sees metres through its
        elevation scaling)."""
        return self.train_set.normalisation

    def record(self, config: RunConfig) -> dict[str, Any]:
        """What the run trained on, for the checkpoints' provenance."""
        record: dict[str, Any] = {
            "source": config.data.source,
            "train_sources": self.train_set.source_files,
            "train_pairs": len(self.train_set),
            "valid_pairs": len(self.valid_set),
        }
        if self.rasters is None:
            record["root_dir"] = str(config.data.root_dir)
        else:
            record["valid_sources"] = self.valid_set.source_files
            record["heldout"] = [str(path) for path in self.rasters.heldout]
        return record


def load_training_data(
    config: RunConfig, ranks: RankContext, alternative_lowres: LowresMaker | None = None
) -> TrainingData:
    """The pairs of ``config.data``, checked (:func:`check_training_data`).

    ``data.degradation`` (a fitted :class:`~demsr.degradation.DegradationModel`'s YAML) degrades
    the pair files' low-res members, or makes the low-res inputs of raster windows when
    ``alternative_lowres`` is None; ``alternative_lowres`` makes those inputs with probability
    ``data.degradation_probability``, the others being exact block means."""
    degradation = None
    if config.data.degradation:
        from demsr.degradation import DegradationModel

        degradation = DegradationModel.from_yaml(config.data.degradation)
    if config.data.source == "rasters":
        if alternative_lowres is None and degradation is not None:
            alternative_lowres = degradation.apply  # (highres_m, scale, rng) -> lowres_m
        data = raster_windows(config, ranks, alternative_lowres)
    else:
        root = Path(config.data.root_dir)
        data = TrainingData(
            PairDataset(
                root / "train" / "train.h5",
                augment=config.data.augment,
                seed=config.train.seed,
                degradation=degradation,
            ),
            PairDataset(root / "valid" / "valid.h5"),
        )
    check_training_data(data, config.data.patch_size, ranks.world_size)
    return data


def raster_windows(
    config: RunConfig, ranks: RankContext, alternative_lowres: LowresMaker | None
) -> TrainingData:
    """Training and validation windows drawn from ``data.rasters`` (see
    :class:`~demsr.config.DataSection`): an epoch's worth of training windows for all
    ``ranks``, a fixed set of validation windows."""
    data, train = config.data, config.train
    if data.degradation_probability > 0 and alternative_lowres is None:
        raise ValueError(
            "data.degradation_probability > 0 needs a degradation to make those inputs "
            "with; none was given"
        )
    rasters = select_rasters(data.rasters, data.heldout, data.valid_rasters)
    assert train.max_steps_per_epoch is not None  # validate() checks it
    options: dict[str, Any] = {
        "lowres_patch_px": data.patch_size or DEFAULT_WINDOW_PATCH_PX,
        "scale": config.model.build().scale,
        "seed": train.seed,
        "alternative_lowres": alternative_lowres,
        "alternative_probability": data.degradation_probability,
        "max_sea_fraction": data.max_sea_fraction,
    }
    steps = train.max_steps_per_epoch * data.batch_size * ranks.world_size
    train_set = RasterWindowDataset(rasters.train, length=steps, augment=data.augment, **options)
    # Fixed windows: the validation set's epoch stays 0.
    valid_set = RasterWindowDataset(rasters.valid, length=data.valid_windows, **options)
    log.log(
        logging.INFO if ranks.is_main else logging.DEBUG,  # the other ranks would repeat it
        "windows of %d low-res cells from %d training rasters, %d validation rasters "
        "(%d fixed windows); %d held out",
        options["lowres_patch_px"],
        len(train_set.paths),
        len(valid_set.paths),
        data.valid_windows,
        len(rasters.heldout),
    )
    return TrainingData(train_set, valid_set, rasters)


def check_training_data(data: TrainingData, patch_size: int | None, world_size: int) -> None:
    """Refuse an empty split, fewer training pairs than ranks, train and valid files with
    different normalisations, or pair files whose patches are not ``patch_size`` low-res cells
    (``data.patch_size``, None: any); warn when the pairs do not say their units."""
    train_set, valid_set = data.train_set, data.valid_set
    for name, dataset in (("train", train_set), ("valid", valid_set)):
        if len(dataset) == 0:
            raise ValueError(f"{dataset.path}: the {name} split holds no pairs")
    if len(train_set) < world_size:
        raise ValueError(
            f"{train_set.path}: {len(train_set)} train pairs for "
            f"{world_size} ranks; every rank needs at least one"
        )
    if valid_set.normalisation != data.storage:
        raise ValueError("train and valid files use different normalisations")
    if train_set.units != "m":
        log.warning(
            "%s does not say how its values map to metres; errors are reported in its units",
            train_set.path,
        )
    if isinstance(train_set, RasterWindowDataset):
        return
    if patch_size is not None and train_set.lowres_patch_px != patch_size:
        raise ValueError(
            f"data.patch_size is {patch_size} but {train_set.path} holds "
            f"{train_set.lowres_patch_px}-pixel low-res patches"
        )
