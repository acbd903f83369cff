"""`demsr config` (demsr.cli.config_cmd): the full settings printed."""

from __future__ import annotations

from cli_helpers import run
from conftest import TINY_MODEL, set_options


def test_config_prints_the_full_defaults() -> None:
    code, out = run("config", *set_options(TINY_MODEL))
    assert code == 0
    assert "blocks: 2" in out and "patience: 6" in out and "learning_rate" in out
