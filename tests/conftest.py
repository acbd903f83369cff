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
