"""File safety: syncing files to disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from demsr.io.safety import fsync_files


def test_fsync_files_syncs_every_file_and_names_the_one_that_fails(tmp_path: Path) -> None:
    paths = [tmp_path / f"chunk-{i}" for i in range(12)]
    for i, path in enumerate(paths):
        path.write_bytes(bytes([i]) * 1000)
    fsync_files(paths)
    fsync_files(iter(paths[:1]))  # one file, from an iterator
    fsync_files([])
    assert [p.read_bytes()[0] for p in paths] == list(range(12))

    missing = tmp_path / "gone"
    with pytest.raises(FileNotFoundError, match="gone"):
        fsync_files([*paths, missing])
