"""How the command line reports failures (demsr.cli.errors): one line, non-zero exit."""

from __future__ import annotations

from pathlib import Path

from cli_helpers import run


def test_errors_are_one_line_with_nonzero_exit(tmp_path: Path) -> None:
    cases = [
        ("predict", tmp_path / "missing.safetensors", tmp_path / "in.tif", tmp_path / "o.tif"),
        ("prepare", tmp_path / "nothing.tif", "-o", tmp_path / "pairs"),
        ("train", "--set", "train.epochs=many"),
        ("import-mindearth", tmp_path / "missing.ckpt", tmp_path / "o.safetensors"),
    ]
    for args in cases:
        code, out = run(*map(str, args))
        assert code != 0, args
        lines = out.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(("demsr: error:", "Error:")), out
        assert "Traceback" not in out
    assert not (tmp_path / "o.tif").exists() and not (tmp_path / "pairs").exists()
