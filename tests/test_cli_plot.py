"""`demsr plot` (demsr.cli.plot): its defaults are the library's."""

from __future__ import annotations

from demsr import plot
from demsr.cli import plot as plot_cli
from demsr.comparison import MAX_READ_CELLS


def test_cli_defaults_are_the_library_defaults() -> None:
    assert plot_cli.DEFAULT_DPI == plot.DEFAULT_DPI
    assert plot_cli.VERTICAL_EXAGGERATION == plot.VERTICAL_EXAGGERATION
    assert f"{MAX_READ_CELLS // 1_000_000} million" in " ".join(
        str(p.help) for p in plot_cli.compare_command.params
    )
