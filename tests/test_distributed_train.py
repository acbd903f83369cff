"""Training under torchrun on 2 CPU ranks (gloo): N ranks with batches of b train exactly as one
process with batches of N*b, rank 0 alone writes the run folder, resume continues exactly, and
``torchrun -m demsr train`` works.

The ranks are processes started here with torchrun's environment variables (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT); test_torchrun_command_line starts the real torchrun.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import free_port, read_metrics_rows, set_options, tiny_overrides
from safetensors.torch import load_file, save_file

from demsr import distributed
from demsr.checkpoint import load_checkpoint, load_training_state
from demsr.config import load_config
from demsr.ranks import exit_rank_process
from demsr.train import (
    BEST,
    LAST,
    METRICS,
    EpochRecord,
    Trainer,
    TrainerCallback,
    TrainResult,
)

WORLD = 2
# Per rank: 5 pairs a step; the 144 tiny train pairs make 72 per rank, so 15 steps an epoch, the
# last of 2 pairs per rank (an uneven last batch on purpose).
RANK_BATCH = 5
RUN_SETTINGS = (
    "data.augment=true",
    "train.epochs=2",
    "train.max_steps_per_epoch=null",
)


def torchrun_environment(rank: int, world_size: int, port: int) -> dict[str, str]:
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_RANK": str(rank),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


class DumpWeights(TrainerCallback):
    """Each rank writes its final weights to ``rank{r}.safetensors`` in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_end(self, trainer: Trainer, result: TrainResult) -> None:
        weights = {k: v.detach().contiguous() for k, v in trainer.model.state_dict().items()}
        save_file(weights, self.folder / f"rank{trainer.rank}.safetensors")


def _as_rank(
    rank: int, world_size: int, port: int, folder: Path, job: Callable[[int, Path], None]
) -> None:
    """A rank's process: torchrun's environment, one thread (2 ranks share 2 cores), a log file
    ``log{rank}.txt`` of demsr's INFO messages; ``job`` runs and any exception it raises goes to
    ``error{rank}.txt`` (as ``Type: message``) for the test to read."""
    os.environ.update(torchrun_environment(rank, world_size, port))
    torch.set_num_threads(1)
    handler = logging.FileHandler(folder / f"log{rank}.txt")
    logging.getLogger("demsr").addHandler(handler)
    logging.getLogger("demsr").setLevel(logging.INFO)
    try:
        job(rank, folder)
    except Exception as exc:  # noqa: BLE001 - reported to the test through the file
        (folder / f"error{rank}.txt").write_text(f"{type(exc).__name__}: {exc}")
        (folder / f"traceback{rank}.txt").write_text(traceback.format_exc())
    # as `demsr` itself ends a rank's process (the interpreter's teardown can abort in gloo)
    exit_rank_process(0)


class _Fit:
    """A picklable job: fit (or resume) with ``overrides``, dumping each rank's weights."""

    def __init__(self, overrides: list[str], resume: bool = False) -> None:
        self.overrides, self.resume = overrides, resume

    def __call__(self, rank: int, folder: Path) -> None:
        config = load_config(None, self.overrides)
        Trainer(config, progress=False, callbacks=[DumpWeights(folder)]).fit(resume=self.resume)


class _Finetune(_Fit):
    """A picklable job: fine-tune ``parent`` with the default freeze, dumping the weights."""

    def __init__(self, overrides: list[str], parent: Path) -> None:
        super().__init__(overrides)
        self.parent = parent

    def __call__(self, rank: int, folder: Path) -> None:
        config = load_config(None, self.overrides)
        trainer = Trainer(config, progress=False, callbacks=[DumpWeights(folder)])
        trainer.finetune(self.parent)


class _Drift(TrainerCallback):
    """Nudges rank 1's weights after epoch 1, as a bug or a hardware fault might."""

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        if trainer.rank == 1 and record.epoch == 1:
            with torch.no_grad():
                trainer.model.conv_out.weight.add_(1e-6)


class _FitDrifting(_Fit):
    def __call__(self, rank: int, folder: Path) -> None:
        config = load_config(None, self.overrides)
        Trainer(config, progress=False, callbacks=[_Drift()]).fit()


def run_ranks(job: Callable[[int, Path], None], folder: Path, world_size: int = WORLD) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    mp.spawn(_as_rank, args=(world_size, free_port(), folder, job), nprocs=world_size)


def errors(folder: Path) -> list[str]:
    return [path.read_text() for path in sorted(folder.glob("error*.txt"))]


def assert_close_weights(
    actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> None:
    """Equal within 1e-3 of each tensor's scale: float32 rounding, which Adam's normalised steps
    amplify. On these runs the same single process differs by up to 1.5e-4 of scale between 1
    and 2 threads, and by about 1e-1 of scale when trained on other batches (no augmentation)."""
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        scale = max(float(tensor.abs().max()), 1e-2)
        torch.testing.assert_close(actual[name], tensor, rtol=0, atol=1e-3 * scale, msg=name)


@pytest.fixture(scope="module")
def runs(tiny_pairs: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same training on 2 ranks with batches of 5, and in one process with batches of 10."""
    root = tmp_path_factory.mktemp("distributed")
    ranks = root / "ranks"
    overrides = tiny_overrides(
        tiny_pairs, ranks / "run", f"data.batch_size={RANK_BATCH}", *RUN_SETTINGS
    )
    run_ranks(_Fit(overrides), ranks)
    assert not errors(ranks), (ranks / "traceback0.txt").read_text()
    single = root / "single" / "run"
    config = load_config(
        None,
        tiny_overrides(tiny_pairs, single, f"data.batch_size={WORLD * RANK_BATCH}", *RUN_SETTINGS),
    )
    Trainer(config, progress=False).fit()
    return {"ranks": ranks, "single": single}


def test_ranks_train_as_one_process_with_their_global_batch(runs: dict[str, Path]) -> None:
    dumps = runs["ranks"]
    rank0, rank1 = (load_file(dumps / f"rank{r}.safetensors") for r in range(WORLD))
    for name, tensor in rank0.items():
        assert torch.equal(tensor, rank1[name]), name  # DDP keeps the replicas identical
    single = load_checkpoint(runs["single"] / LAST).state_dict
    assert_close_weights(load_checkpoint(dumps / "run" / LAST).state_dict, single)
    assert_close_weights(rank0, single)
    # The same steps, losses, validation and learning-rate schedule, epoch by epoch.
    distributed_rows, single_rows = (
        read_metrics_rows(dumps / "run"),
        read_metrics_rows(runs["single"]),
    )
    assert [r["global_step"] for r in distributed_rows] == ["15", "30"]
    assert [r["global_step"] for r in single_rows] == ["15", "30"]
    for ours, theirs in zip(distributed_rows, single_rows, strict=True):
        for column in ("train_loss", "valid_loss", "valid_rmse_m", "learning_rate"):
            assert float(ours[column]) == pytest.approx(float(theirs[column]), rel=1e-4), column
        assert ours["is_best"] == theirs["is_best"]


def test_rank_0_alone_writes_the_run_and_logs_the_global_batch(runs: dict[str, Path]) -> None:
    run = runs["ranks"] / "run"
    assert sorted(path.name for path in run.iterdir()) == sorted(
        [BEST, LAST, METRICS, "config.yaml"]
    )
    assert [r["epoch"] for r in read_metrics_rows(run)] == ["1", "2"]
    metadata = load_checkpoint(run / LAST).metadata
    assert metadata["distributed"] == {
        "world_size": 2,
        "global_batch_size": 10,
        "effective_learning_rate": pytest.approx(0.002),
    }
    assert load_checkpoint(runs["single"] / LAST).metadata["distributed"]["world_size"] == 1
    main_log, other_log = ((runs["ranks"] / f"log{r}.txt").read_text() for r in range(WORLD))
    assert "batch 5 per rank x 2 ranks = global batch 10, learning rate 2.00e-03" in main_log
    assert "epoch 2:" in main_log
    assert other_log == ""  # the other rank logs progress at DEBUG only


def test_resuming_on_another_number_of_ranks_warns(
    tiny_pairs: Path, runs: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # One process continues the 2-rank run: allowed (learning_rate_scaling none) with a warning
    # that the global batch changes.
    run = tmp_path / "run"
    shutil.copytree(runs["ranks"] / "run", run)
    overrides = tiny_overrides(
        tiny_pairs,
        run,
        f"data.batch_size={RANK_BATCH}",
        *RUN_SETTINGS,
        "train.epochs=3",
    )
    with caplog.at_level(logging.WARNING, logger="demsr.train"):
        result = Trainer(load_config(None, overrides), progress=False).fit(resume=True)
    assert result.epochs_run == 3
    assert "trained on 2 rank(s) and resumes on 1: its global batch changes from 10 to 5" in (
        caplog.text
    )
    assert load_checkpoint(run / LAST).metadata["distributed"]["world_size"] == 1


def _collectives(rank: int, folder: Path) -> None:
    """Exercise demsr.distributed's collectives in a 2-rank group; write what each rank saw."""
    ctx = distributed.context()
    seen: list[str] = []
    with distributed.process_group(ctx, torch.device("cpu")):
        seen.append(f"sum {distributed.sum_over_ranks([rank + 1.0, 10.0])}")
        try:
            with distributed.agreed():
                if rank == 1:
                    raise FileNotFoundError("last.safetensors: nothing to resume from")
        except Exception as exc:  # noqa: BLE001
            seen.append(f"agreed {type(exc).__name__}: {exc}")
        module = torch.nn.Linear(3, 2)
        torch.nn.init.constant_(module.weight, 1.0)
        torch.nn.init.constant_(module.bias, 0.5)
        distributed.check_replicas_agree(module, "same")
        seen.append("same ok")
        with torch.no_grad():
            module.bias.fill_(float(rank))
        try:
            distributed.check_replicas_agree(module, "after epoch 1")
        except RuntimeError as exc:
            seen.append(f"diverged {exc}")
    (folder / f"seen{rank}.txt").write_text("\n".join(seen))


def test_collectives_agree_across_ranks(tmp_path: Path) -> None:
    run_ranks(_collectives, tmp_path)
    assert not errors(tmp_path)
    seen = [(tmp_path / f"seen{r}.txt").read_text().splitlines() for r in range(WORLD)]
    diverged = (
        "diverged after epoch 1: the ranks' parameters diverged (bias differs between rank 0 "
        "and rank 1)"
    )
    assert seen[0] == [
        "sum [3.0, 20.0]",
        "agreed RuntimeError: rank 1 failed: last.safetensors: nothing to resume from",
        "same ok",
        diverged,
    ]
    assert seen[1] == [
        "sum [3.0, 20.0]",
        "agreed FileNotFoundError: last.safetensors: nothing to resume from",
        "same ok",
        diverged,
    ]


@pytest.mark.slow
def test_resume_on_ranks_continues_exactly(tiny_pairs: Path, tmp_path: Path) -> None:
    def overrides(folder: Path, epochs: int, *extra: str) -> list[str]:
        return tiny_overrides(
            tiny_pairs,
            folder / "run",
            f"data.batch_size={RANK_BATCH}",
            *RUN_SETTINGS,
            f"train.epochs={epochs}",
            *extra,
        )

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_ranks(_Fit(overrides(straight, 3)), straight)
    run_ranks(_Fit(overrides(resumed, 2)), resumed)
    run_ranks(_Fit(overrides(resumed, 3), resume=True), resumed)
    assert not errors(straight) and not errors(resumed)
    assert [r["epoch"] for r in read_metrics_rows(resumed / "run")] == ["1", "2", "3"]
    a, b = load_checkpoint(straight / "run" / LAST), load_checkpoint(resumed / "run" / LAST)
    for name, tensor in a.state_dict.items():
        assert torch.equal(tensor, b.state_dict[name]), name
    state_a = load_training_state(straight / "run" / LAST)
    state_b = load_training_state(resumed / "run" / LAST)
    for index, values in state_a.optimizer["state"].items():
        for name, tensor in values.items():
            assert torch.equal(tensor, state_b.optimizer["state"][index][name])
    for rank in range(WORLD):
        rank_weights = load_file(resumed / f"rank{rank}.safetensors")
        for name, tensor in a.state_dict.items():
            assert torch.equal(rank_weights[name], tensor), name


@pytest.mark.slow
def test_a_scaled_learning_rate_refuses_another_number_of_ranks(
    tiny_pairs: Path, tmp_path: Path
) -> None:
    settings = tiny_overrides(
        tiny_pairs, tmp_path / "run", "train.epochs=1", "optimizer.learning_rate_scaling=linear"
    )
    Trainer(load_config(None, settings), progress=False).fit()
    again = [*settings, "train.epochs=2"]  # the last value of a key wins
    run_ranks(_Fit(again, resume=True), tmp_path)
    expected = (
        f"ValueError: {tmp_path / 'run' / LAST}: this run trained on 1 rank(s); resume it on as "
        "many, not 2 (optimizer.learning_rate_scaling=linear ties its learning rate to their "
        "number)"
    )
    assert errors(tmp_path) == [expected, expected]  # every rank stops with the same message
    assert [r["epoch"] for r in read_metrics_rows(tmp_path / "run")] == ["1"]


def _torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={WORLD}",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        "-m",
        "demsr",
        *args,
    ]
    # PYTHONPATH and the rest of the environment pass to torchrun and on to the ranks.
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)


@pytest.mark.slow
def test_torchrun_command_line(tiny_pairs: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [
        "train",
        "--data",
        str(tiny_pairs),
        "--output-dir",
        str(run),
        "--no-progress",
        *set_options(
            tiny_overrides(
                tiny_pairs,
                run,
                "train.epochs=1",
                "train.max_steps_per_epoch=3",
                "optimizer.learning_rate_scaling=linear",
            )
        ),
    ]
    done = _torchrun(*args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("best validation RMSE") == 1  # rank 0's result line alone
    assert "batch 16 per rank x 2 ranks = global batch 32, learning rate 4.00e-03" in done.stderr
    assert "[rank 1/2]" not in done.stderr  # nothing to warn about
    metadata = load_checkpoint(run / LAST).metadata
    assert metadata["distributed"]["effective_learning_rate"] == pytest.approx(0.004)
    assert [r["global_step"] for r in read_metrics_rows(run)] == ["3"]
    # Both ranks find the run and refuse to overwrite it, each in one line.
    again = _torchrun(*args)
    assert again.returncode != 0
    assert "\ndemsr: error: " in "\n" + again.stderr
    assert "[rank 1/2] demsr: error: " in again.stderr
    assert again.stderr.count("already holds a training run; use --resume") == 2
    assert [r["epoch"] for r in read_metrics_rows(run)] == ["1"]


@pytest.mark.slow
def test_finetuning_on_ranks_keeps_frozen_layers_and_matches_one_process(
    tiny_pairs: Path, tmp_path: Path
) -> None:
    parent_run = tmp_path / "parent"
    Trainer(
        load_config(None, tiny_overrides(tiny_pairs, parent_run, "train.epochs=1")),
        progress=False,
    ).fit()
    parent = parent_run / BEST
    settings = (*RUN_SETTINGS, "optimizer.finetune_learning_rate=0.002")
    ranks = tmp_path / "ranks"
    run_ranks(
        _Finetune(
            tiny_overrides(tiny_pairs, ranks / "run", f"data.batch_size={RANK_BATCH}", *settings),
            parent,
        ),
        ranks,
    )
    assert not errors(ranks), (ranks / "traceback0.txt").read_text()
    single = tmp_path / "single"
    config = load_config(
        None, tiny_overrides(tiny_pairs, single, f"data.batch_size={WORLD * RANK_BATCH}", *settings)
    )
    Trainer(config, progress=False).finetune(parent)
    before = load_checkpoint(parent).state_dict
    after = load_checkpoint(ranks / "run" / LAST)
    assert after.metadata["frozen"]["prefixes"] == ["conv1", "body.0"]
    for rank in range(WORLD):
        weights = load_file(ranks / f"rank{rank}.safetensors")
        for name, tensor in before.items():
            if name.startswith(("conv1.", "body.0.")):
                assert torch.equal(weights[name], tensor), name
            else:
                assert not torch.equal(weights[name], tensor), name
    assert_close_weights(after.state_dict, load_checkpoint(single / LAST).state_dict)


@pytest.mark.slow
def test_ranks_whose_weights_differ_stop_the_run(tiny_pairs: Path, tmp_path: Path) -> None:
    overrides = tiny_overrides(tiny_pairs, tmp_path / "run", "train.epochs=3")
    run_ranks(_FitDrifting(overrides), tmp_path)
    expected = (
        "RuntimeError: epoch 2: the ranks' parameters diverged (conv_out.weight differs "
        "between rank 0 and rank 1)"
    )
    assert errors(tmp_path) == [expected, expected]
    assert [r["epoch"] for r in read_metrics_rows(tmp_path / "run")] == ["1"]


def test_a_rank_process_ends_with_its_exit_status_and_flushed_output(tmp_path: Path) -> None:
    # What `demsr` does at the end of a torchrun rank's process (exit_rank_process): the
    # status is the command's, and nothing written before is lost.
    script = (
        "import logging, sys\n"
        "from demsr.ranks import exit_rank_process\n"
        "logging.basicConfig(filename=sys.argv[1], level=logging.INFO)\n"
        "logging.getLogger('demsr').info('logged last')\n"
        "sys.stdout.write('printed last')\n"
        "exit_rank_process(3)\n"
    )
    log = tmp_path / "rank.log"
    done = subprocess.run(
        [sys.executable, "-c", script, str(log)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout == "printed last"
    assert "logged last" in log.read_text()
