"""The machine facts a plan uses (demsr.plan.host): the ranks sharing this machine and its RAM."""

from __future__ import annotations

from pathlib import Path

import pytest

from demsr.plan.host import local_ranks, physical_memory_bytes


def test_local_ranks_are_torchruns_else_the_plans_else_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert (local_ranks(), local_ranks(None), local_ranks(0), local_ranks(4)) == (1, 1, 1, 4)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert local_ranks(8) == 2  # torchrun's count of ranks on this node wins
    for unusable in ("0", "", "two", "-3"):
        monkeypatch.setenv("LOCAL_WORLD_SIZE", unusable)
        assert local_ranks(8) == 8


def test_physical_memory_is_what_the_kernel_reports() -> None:
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        pytest.skip("no /proc/meminfo here")
    (line,) = [line for line in meminfo.read_text().splitlines() if line.startswith("MemTotal:")]
    total = int(line.split()[1]) * 1024
    measured = physical_memory_bytes()
    assert measured is not None and abs(measured - total) < 2 * 4096  # to a page
