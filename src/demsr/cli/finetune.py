"""``demsr finetune``: continue a trained model on new pairs (bathymetry) with frozen layers."""

from __future__ import annotations

import click

from demsr.cli.options import checkpoint_option, with_run_options
from demsr.cli.train import echo_result, refuse_run_over_inputs, run_config
from demsr.model import FREEZE_PRESETS


@click.command("finetune")
@click.argument("parent", metavar="[PARENT_CHECKPOINT]", required=False)
@checkpoint_option(
    "The parent: a checkpoint file, or the name of a shipped model (lite) [default: "
    "finetune.parent of the config]."
)
@with_run_options
@click.option(
    "--freeze",
    type=click.Choice(FREEZE_PRESETS),
    help="Layers kept fixed: 'default' = conv1 and the first --freeze-blocks residual blocks; "
    "'none'; 'all-but-tail' = all but the upsampling stage (conv_up, conv_out) "
    "[default: finetune.freeze, i.e. default].",
)
@click.option(
    "--freeze-blocks",
    type=click.IntRange(min=0),
    metavar="K",
    help="Residual blocks frozen by --freeze default, 0 .. the model's blocks "
    "[default: half of them, rounded down].",
)
@click.option(
    "--freeze-prefix",
    "freeze_prefixes",
    multiple=True,
    metavar="NAME",
    help="Also freeze this module or parameter, on top of --freeze (dotted name: conv1, "
    "body.3, body.3.res_conv1, conv2, conv_up, conv_out; repeatable; with --freeze none only "
    "these). A name that matches no parameter is an error. Replaces the config's "
    "finetune.freeze_prefixes.",
)
@click.option(
    "--learning-rate",
    type=click.FloatRange(min=0, min_open=True),
    help="Adam learning rate (sets optimizer.finetune_learning_rate) [default: the config's, "
    "1e-5].",
)
def command(
    parent: str | None,
    checkpoint: str | None,
    config_path: str | None,
    overrides: tuple[str, ...],
    data_dir: str | None,
    output_dir: str | None,
    resume: bool,
    progress: bool,
    freeze: str | None,
    freeze_blocks: int | None,
    freeze_prefixes: tuple[str, ...],
    learning_rate: float | None,
) -> None:
    """Fine-tune PARENT_CHECKPOINT (or --checkpoint CKPT: e.g. a land model, or lite, the
    shipped one) on HDF5 pairs made by `demsr prepare` (e.g. bathymetry), with some layers
    frozen.

    The model, its elevation scaling and the starting weights come from the parent (the
    config's model section is not used); the other settings (batch, epochs, early stopping,
    decay) from --config/--set as for `demsr train`, at the learning rate
    optimizer.finetune_learning_rate. Frozen parameters keep the parent's values exactly. The
    run folder holds the same files as `demsr train`'s; the checkpoints record the parent
    (path, SHA-256, epoch, metrics, provenance). --resume refuses another parent or other
    freeze settings. Runs under torchrun as `demsr train` does.
    """
    from demsr.train import Trainer

    shortcuts = (
        [f"optimizer.finetune_learning_rate={learning_rate!r}"] if learning_rate is not None else []
    )
    config = run_config(config_path, overrides, data_dir, output_dir, shortcuts)
    if parent is not None and checkpoint is not None:
        raise click.UsageError(
            f"give the parent once: --checkpoint {checkpoint} or {parent}, not both"
        )
    given = parent or checkpoint
    if given is not None:
        from demsr.pretrained import resolve_checkpoint

        parent = str(resolve_checkpoint(given))
    refuse_run_over_inputs(config, parent or config.finetune.parent)
    trainer = Trainer(config, progress=progress)
    result = trainer.finetune(
        parent,
        freeze=freeze,
        freeze_blocks=freeze_blocks,
        freeze_prefixes=freeze_prefixes or None,
        resume=resume,
    )
    echo_result(trainer, result)
