"""Shared test fixtures and helpers: where the real DEM rasters live, a tiny training set, tiny
untrained checkpoints, metrics.csv files and command-line overrides."""

from __future__ import annotations

import csv
import os
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch

from demsr.checkpoint import save_checkpoint
from demsr.model import DEMSRNet, ModelConfig
from demsr.scaling import ElevationScaling
from demsr.train import METRIC_FIELDS, METRICS

REPO = Path(__file__).resolve().parents[1]


def _find_shared() -> Path:
    candidates = []
    if os.environ.get("DEMSR_SHARED_DIR"):
        candidates.append(Path(os.environ["DEMSR_SHARED_DIR"]))
    candidates += [REPO.parent / "shared", Path("/work/shared")]
    for candidate in candidates:
        if (candidate / "data" / "dem").is_dir():
            return candidate
    raise RuntimeError(
        "the shared test data folder was not found; set DEMSR_SHARED_DIR to the folder holding "
        f"data/dem (looked in: {', '.join(map(str, candidates))})"
    )


SHARED = _find_shared()
DEM_TEST = SHARED / "data" / "dem" / "test"
DEM_TRAIN = SHARED / "data" / "dem" / "train"
REFERENCE = SHARED / "data" / "reference"


@pytest.fixture(autouse=True)
def fresh_prediction_models() -> None:
    """Each test loads its checkpoints afresh: a process keeps the last model it predicted
    with (demsr.engine), which would carry one test's setup (hooks on the model, a device's
    faked bf16 support) into the next."""
    import demsr.engine

    demsr.engine._kept.clear()


@pytest.fixture(scope="session")
def dem_test_dir() -> Path:
    return DEM_TEST


@pytest.fixture(scope="session")
def dem_train_dir() -> Path:
    return DEM_TRAIN


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return REFERENCE


# A tiny real training set, shared by the training, evaluation and CLI tests: the Jacksboro
# fault DEM (3", 344 x 403) cut into 8 -> 40 pixel pairs.
TINY_PATCH_PX = 8
TINY_MODEL = ["model.preset=lite", "model.blocks=2", "model.channels=8"]


@pytest.fixture(scope="session")
def tiny_pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from demsr.prepare import PrepareOptions, prepare_pairs

    out = tmp_path_factory.mktemp("tiny_pairs")
    options = PrepareOptions(lowres_patch_px=TINY_PATCH_PX, stride_px=20, split_block_px=80)
    prepare_pairs([DEM_TEST / "mpl_jacksboro_3s.tif"], out, options, progress=False)
    return out


def tiny_overrides(pairs: Path, output_dir: Path, *extra: str) -> list[str]:
    """Overrides for a fast CPU run of a 2-block, 8-channel net on the tiny pairs."""
    return [
        *TINY_MODEL,
        f"data.root_dir={pairs}",
        f"summary.output_dir={output_dir}",
        "data.batch_size=16",
        "optimizer.learning_rate=0.002",
        "optimizer.learning_rate_decay=0.9",
        "train.max_steps_per_epoch=8",
        "train.device=cpu",
        *extra,
    ]


@pytest.fixture(scope="session")
def parent(tiny_pairs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained 2-block, 8-channel model: the fine-tuning tests' parent (their 'land model')."""
    from demsr.config import load_config
    from demsr.train import BEST, Trainer

    run = tmp_path_factory.mktemp("parent")
    config = load_config(None, tiny_overrides(tiny_pairs, run, "train.epochs=2"))
    Trainer(config, progress=False).fit()
    return run / BEST


def set_options(overrides: Iterable[str]) -> list[str]:
    """``section.key=value`` overrides as command-line arguments: ``--set`` before each."""
    return [arg for override in overrides for arg in ("--set", override)]


def read_metrics_rows(run: Path) -> list[dict[str, str]]:
    """The rows of a run folder's metrics.csv, as text."""
    with open(run / METRICS, newline="") as handle:
        return list(csv.DictReader(handle))


def write_metrics_csv(path: Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """A metrics.csv as training writes it (columns ``demsr.train.METRIC_FIELDS``)."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return path


# The elevation scaling of the tests' untrained checkpoints: metres / 1000 after removing a
# Gaussian trend of sigma 4 low-res cells.
SCALING = ElevationScaling(scale_m=1000.0, trend_sigma_px=4.0)


def write_untrained_checkpoint(
    path: Path,
    channels: int = 4,
    bias: bool = False,
    seed: int | None = 0,
    scaling: ElevationScaling = SCALING,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Save an untrained x5 DEM-SRNet of one residual block as a checkpoint at ``path``.

    The weights are drawn after ``torch.manual_seed(seed)`` (``seed`` None: from the generator as
    it stands).
    """
    if seed is not None:
        torch.manual_seed(seed)
    model = DEMSRNet(ModelConfig(blocks=1, channels=channels, scale=5, bias=bias))
    return save_checkpoint(path, model, scaling, metadata)


@pytest.fixture(scope="session")
def plan_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The untrained checkpoint the tests of ``demsr.plan`` plan with (4 channels)."""
    return write_untrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.safetensors")


@pytest.fixture(scope="session")
def sparse_global_grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GEBCO-sized global grid that takes no room (``plan_cases.write_sparse_global_grid``)."""
    from plan_cases import write_sparse_global_grid

    return write_sparse_global_grid(tmp_path_factory.mktemp("global") / "gebco_15s.tif")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests skip, with a reason, where CUDA is not available."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def free_port() -> int:
    """A TCP port free on this machine now (for a torch.distributed rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def jacksboro_3s(dem_test_dir: Path) -> np.ndarray:
    """A 340 x 400 corner of the Jacksboro 3" test DEM (float64 metres)."""
    with rasterio.open(dem_test_dir / "mpl_jacksboro_3s.tif") as src:
        return src.read(1).astype(np.float64)[:340, :400]
