"""Shared test fixtures: where the real DEM rasters live, and tiny synthetic rasters."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
        "optimizer.lr_decay=0.9",
        "train.max_steps_per_epoch=8",
        "train.device=cpu",
        *extra,
    ]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests skip, with a reason, where CUDA is not available."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
