"""`demsr finetune` (demsr.cli.finetune): freeze options, the learning rate, a resume with other
freeze settings refused, its parent checkpoint as argument or option."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_helpers import run_split
from click.testing import CliRunner
from conftest import (
    TINY_MODEL,
    read_metrics_rows,
    set_options,
    tiny_overrides,
    write_untrained_checkpoint,
)

from demsr.checkpoint import load_checkpoint
from demsr.cli import main
from demsr.train import BEST


def test_finetune_command(tiny_pairs: Path, parent: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    sets = set_options(tiny_overrides(tiny_pairs, run, "train.epochs=1"))
    recipe = Path(__file__).resolve().parents[1] / "configs" / "finetune-ocean.yaml"
    args = ["finetune", str(parent), "--config", str(recipe), *sets, "--no-progress"]
    result = CliRunner().invoke(
        main, [*args, "--freeze", "none", "--freeze-prefix", "conv2", "--learning-rate", "3e-4"]
    )
    assert result.exit_code == 0, result.output
    assert "best validation RMSE" in result.output
    child = load_checkpoint(run / BEST)
    assert child.metadata["frozen"]["prefixes"] == ["conv2"]
    assert child.metadata["provenance"]["parent"]["path"] == str(parent.resolve())
    assert float(read_metrics_rows(run)[0]["learning_rate"]) == pytest.approx(3e-4)
    assert torch.equal(
        child.state_dict["conv2.weight"], load_checkpoint(parent).state_dict["conv2.weight"]
    )

    result = CliRunner().invoke(main, [*args, "--resume", "--freeze-blocks", "0"])
    assert result.exit_code == 1
    assert "finetune.freeze" in result.output  # other freeze settings than the run's
    result = CliRunner().invoke(
        main,
        [
            *args[:2],
            "--data",
            str(tiny_pairs),
            "--output-dir",
            str(tmp_path / "x"),
            *set_options(TINY_MODEL),
            "--freeze-prefix",
            "body.7",
        ],
    )
    assert result.exit_code == 1
    assert result.output.startswith("demsr: error: freeze prefix 'body.7' matches no parameter")


def test_finetune_takes_its_parent_as_checkpoint_option(tiny_pairs: Path, tmp_path: Path) -> None:
    parent = write_untrained_checkpoint(tmp_path / "parent.safetensors", channels=8)
    run_dir = tmp_path / "run"
    sets = set_options(tiny_overrides(tiny_pairs, run_dir, "train.epochs=1"))
    code, _, err = run_split("finetune", parent, "--checkpoint", parent, *sets, "--no-progress")
    assert code == 2 and "give the parent once" in err
    assert not run_dir.exists()
    code, out, err = run_split("finetune", "--checkpoint", parent, *sets, "--no-progress")
    assert code == 0, err
    assert "best validation RMSE" in out
    recorded = load_checkpoint(run_dir / "best.safetensors").metadata["provenance"]["parent"]
    assert recorded["path"] == str(parent.resolve())
