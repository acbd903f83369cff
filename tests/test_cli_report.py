"""`demsr report` (demsr.cli.report): checkpoints given as arguments or options."""

from __future__ import annotations

from pathlib import Path

from cli_helpers import run_split
from conftest import write_untrained_checkpoint


def test_report_takes_checkpoints_as_options_too(tiny_pairs: Path, tmp_path: Path) -> None:
    checkpoint = write_untrained_checkpoint(tmp_path / "m.safetensors", channels=4)
    data = tiny_pairs / "test" / "test.h5"
    common = ["--data", data, "--device", "cpu", "--no-progress", "--baseline", "bicubic"]
    tables = []
    for name, form in (("a", [checkpoint]), ("b", ["--checkpoint", checkpoint])):
        code, out, err = run_split("report", *form, *common, "-o", tmp_path / f"{name}.md")
        assert code == 0, err
        tables.append(out.rsplit("\n", 2)[0])  # the table, without the report's path
    assert tables[0] == tables[1] and "m.safetensors" in (tmp_path / "b.md").read_text()
