"""demsr: super-resolution of digital elevation models with DEM-SRNet.

The public API: every name in ``__all__`` is importable from ``demsr`` itself (``demsr.Trainer``,
``from demsr import predict_raster``). Names are loaded from their modules on first use, so
``import demsr`` stays fast and does not import torch until a name that needs it is used.
The modules (``demsr.io``, ``demsr.train``, ...) hold the rest; their docstrings describe each
pipeline stage.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Module -> the public names it defines (loaded on first access, PEP 562).
_EXPORTS: dict[str, tuple[str, ...]] = {
    # rasters: read windows with their georeferencing (NaN nodata), write GeoTIFFs
    "demsr.io": (
        "Raster",
        "RasterError",
        "RasterReader",
        "open_raster",
        "read_raster",
        "write_geotiff",
    ),
    # the network
    "demsr.model": (
        "PRESETS",
        "DEMSRNet",
        "ModelConfig",
        "SuperResolver",
        "count_parameters",
        "preset",
        "resolve_device",
    ),
    # how elevations in metres enter and leave the network
    "demsr.scaling": ("ElevationScaling",),
    # checkpoints (safetensors + JSON metadata)
    "demsr.checkpoint": (
        "Checkpoint",
        "CheckpointError",
        "load_checkpoint",
        "save_checkpoint",
    ),
    # the shipped weights, and the reference implementation's (MindSpore checkpoints)
    "demsr.pretrained": ("pretrained_path",),
    "demsr.mindearth": ("model_from_mindearth",),
    # run configuration (the reference's DEM-SRNet.yaml keys load too)
    "demsr.config": (
        "ConfigError",
        "RunConfig",
        "load_config",
    ),
    # training pairs
    "demsr.prepare": (
        "PrepareOptions",
        "PrepareReport",
        "degrade",
        "degrade_raster",
        "prepare_pairs",
    ),
    # pair files (HDF5)
    "demsr.datasets": (
        "PairDataset",
        "read_pair_file",
    ),
    # training and fine-tuning
    "demsr.train": (
        "EpochRecord",
        "TrainResult",
        "Trainer",
    ),
    "demsr.callbacks": ("TrainerCallback",),
    # prediction: arrays in memory (the tile engine), raster files of any size
    "demsr.engine": (
        "predict_array",
        "predict_array_ensemble",
    ),
    "demsr.predict": ("predict_raster",),
    # the options of a prediction (and of its plan), with their defaults
    "demsr.predict_settings": ("PredictSettings",),
    # prediction on xarray DataArrays (coordinates and CRS in rioxarray's conventions)
    "demsr.xr": ("predict_dataarray",),
    # evaluation against interpolation baselines
    "demsr.baselines": (
        "BASELINES",
        "upsample_baseline",
    ),
    "demsr.evaluation_inputs": (
        "EvaluationInputs",
        "inputs_from_arrays",
    ),
    "demsr.scoring": (
        "Evaluation",
        "score",
    ),
    "demsr.evaluate": (
        "evaluate_array",
        "evaluate_pairs",
        "evaluate_raster",
    ),
    # figures (matplotlib Figures, no pyplot)
    "demsr.comparison": (
        "Comparison",
        "comparison_from_checkpoint",
        "read_comparison",
    ),
    "demsr.plot": (
        "plot_comparison",
        "plot_training_curves",
        "save_figure",
    ),
    # the end-to-end demo and its bundled DEM
    "demsr.demo": (
        "bundled_dem",
        "run_demo",
    ),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "__version__",
    "BASELINES",
    "Checkpoint",
    "CheckpointError",
    "Comparison",
    "ConfigError",
    "DEMSRNet",
    "ElevationScaling",
    "EpochRecord",
    "Evaluation",
    "EvaluationInputs",
    "ModelConfig",
    "PRESETS",
    "PairDataset",
    "PredictSettings",
    "PrepareOptions",
    "PrepareReport",
    "Raster",
    "RasterError",
    "RasterReader",
    "RunConfig",
    "SuperResolver",
    "TrainResult",
    "Trainer",
    "TrainerCallback",
    "bundled_dem",
    "comparison_from_checkpoint",
    "count_parameters",
    "degrade",
    "degrade_raster",
    "evaluate_array",
    "evaluate_pairs",
    "evaluate_raster",
    "inputs_from_arrays",
    "load_checkpoint",
    "load_config",
    "model_from_mindearth",
    "open_raster",
    "plot_comparison",
    "plot_training_curves",
    "predict_array",
    "predict_array_ensemble",
    "predict_dataarray",
    "predict_raster",
    "prepare_pairs",
    "preset",
    "pretrained_path",
    "read_comparison",
    "read_pair_file",
    "read_raster",
    "resolve_device",
    "run_demo",
    "save_checkpoint",
    "save_figure",
    "score",
    "upsample_baseline",
    "write_geotiff",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ loads them
    from demsr.baselines import BASELINES, upsample_baseline
    from demsr.callbacks import TrainerCallback
    from demsr.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
    from demsr.comparison import Comparison, comparison_from_checkpoint, read_comparison
    from demsr.config import ConfigError, RunConfig, load_config
    from demsr.datasets import PairDataset, read_pair_file
    from demsr.demo import bundled_dem, run_demo
    from demsr.engine import predict_array, predict_array_ensemble
    from demsr.evaluate import evaluate_array, evaluate_pairs, evaluate_raster
    from demsr.evaluation_inputs import EvaluationInputs, inputs_from_arrays
    from demsr.io import Raster, RasterError, RasterReader, open_raster, read_raster, write_geotiff
    from demsr.mindearth import model_from_mindearth
    from demsr.model import (
        PRESETS,
        DEMSRNet,
        ModelConfig,
        SuperResolver,
        count_parameters,
        preset,
        resolve_device,
    )
    from demsr.plot import plot_comparison, plot_training_curves, save_figure
    from demsr.predict import predict_raster
    from demsr.predict_settings import PredictSettings
    from demsr.prepare import (
        PrepareOptions,
        PrepareReport,
        degrade,
        degrade_raster,
        prepare_pairs,
    )
    from demsr.pretrained import pretrained_path
    from demsr.scaling import ElevationScaling
    from demsr.scoring import Evaluation, score
    from demsr.train import EpochRecord, Trainer, TrainResult
    from demsr.xr import predict_dataarray
