"""The options the commands share (demsr.cli.options): one spelling per idea, old spellings
warned, the checkpoint as option or argument, the precision choices."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import run_split
from conftest import write_untrained_checkpoint


def test_precision_choices_are_the_models() -> None:
    from demsr.cli.options import precision_option
    from demsr.model import PRECISIONS

    @precision_option
    def command(precision: str) -> None: ...

    (param,) = command.__click_params__  # type: ignore[attr-defined]
    assert tuple(param.type.choices) == ("auto", *PRECISIONS)


# One spelling per idea across the commands; the old spellings stay for a release, hidden.
RENAMED = {"--tile-size": "--tile-px", "--output": "--output-dir"}  # in predict/plan, prepare
MODEL_COMMANDS = (
    ["predict"],
    ["evaluate"],
    ["report"],
    ["finetune"],
    ["plan"],
    ["demo"],
    ["plot", "compare"],
)


@pytest.mark.parametrize("command", [*MODEL_COMMANDS, ["prepare"]], ids=" ".join)
def test_help_shows_the_new_spellings_only(command: list[str]) -> None:
    code, out, _ = run_split(*command, "--help")
    assert code == 0
    assert "--tile-size" not in out
    if command == ["prepare"]:
        assert "--output-dir" in out and "--output " not in out
    else:
        assert "--checkpoint CKPT" in out  # every command that runs a model takes it so
    if command in (["predict"], ["plan"]):
        assert "--tile-px" in out


def test_old_tile_size_spelling_works_and_warns(dem_test_dir: Path, tmp_path: Path) -> None:
    checkpoint = write_untrained_checkpoint(tmp_path / "m.safetensors", channels=4)
    source = dem_test_dir / "landlab_west_bijou_1s.tif"
    for command in (
        ["plan", source, "--checkpoint", checkpoint],
        ["predict", checkpoint, source, tmp_path / "out.tif", "--dry-run"],
    ):
        code, new, err = run_split(*command, "--tile-px", "32", "--device", "cpu")
        assert code == 0, err
        assert "deprecated" not in err
        code, old, err = run_split(*command, "--tile-size", "32", "--device", "cpu")
        assert code == 0, err
        assert old == new and "15 of 32 x 32 cells" in old
        [line] = err.splitlines()
        assert "--tile-size is deprecated, use --tile-px" in line
        code, _, err = run_split(*command, "--tile-size", "32", "--tile-px", "32")
        assert code == 2 and "give --tile-px or --tile-size (its old spelling), not both" in err
        code, _, err = run_split(*command, "--tile-size", "0")
        assert code == 2 and "Invalid value" in err  # checked like the new spelling
    assert list(tmp_path.iterdir()) == [checkpoint]


def test_checkpoint_option_and_positional_checkpoint_agree(
    tiny_pairs: Path, dem_test_dir: Path, tmp_path: Path
) -> None:
    """--checkpoint CKPT does what the positional CHECKPOINT does; giving both is refused."""
    checkpoint = write_untrained_checkpoint(tmp_path / "m.safetensors", channels=4)
    data = tiny_pairs / "test" / "test.h5"
    common = ["--device", "cpu", "--no-progress", "--baseline", "bicubic"]
    tables = []
    for form in ([checkpoint, data], ["--checkpoint", checkpoint, data]):
        code, out, err = run_split("evaluate", *form, *common)
        assert code == 0, err
        tables.append(out)
    assert tables[0] == tables[1] and "model" in tables[0]
    code, _, err = run_split("evaluate", "--checkpoint", checkpoint, checkpoint, data)
    assert code == 2 and "give the checkpoint once" in err
    code, _, err = run_split("evaluate", checkpoint)
    assert code == 2 and "is a checkpoint" in err

    source = dem_test_dir / "landlab_west_bijou_1s.tif"
    outputs = []
    for form in ([checkpoint, source], ["--checkpoint", checkpoint, source]):
        code, out, err = run_split("predict", *form, tmp_path / "o.tif", "--dry-run")
        assert code == 0, err
        outputs.append(out)
    assert outputs[0] == outputs[1] and f"demsr predict {checkpoint} {source}" in outputs[0]
    code, _, err = run_split("predict", "--checkpoint", checkpoint, checkpoint, source, "o.tif")
    assert code == 2 and "give the checkpoint once" in err
    assert not (tmp_path / "o.tif").exists()
