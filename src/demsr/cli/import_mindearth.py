"""``demsr import-mindearth``: convert a MindSpore DEMNet checkpoint into a demsr checkpoint."""

from __future__ import annotations

from pathlib import Path

import click

from demsr.cli.options import overwrite_option
from demsr.model import RESIZE_MODES
from demsr.scaling import ElevationScaling


@click.command("import-mindearth")
@click.argument("ckpt", type=click.Path(dir_okay=False))
@click.argument("output", type=click.Path(dir_okay=False))
@click.option(
    "--scale",
    type=click.IntRange(min=2),
    default=5,
    show_default=True,
    help="Upsampling factor the weights were trained for.",
)
@click.option(
    "--resize",
    type=click.Choice(RESIZE_MODES),
    default="legacy",
    show_default=True,
    help="Bilinear mapping; the reference uses legacy.",
)
@click.option(
    "--norm-offset-m",
    type=float,
    default=0.0,
    show_default=True,
    help="Elevation scaling the weights expect: metres = value * scale + offset.",
)
@click.option(
    "--norm-scale-m",
    type=float,
    default=1.0,
    show_default=True,
    help="See --norm-offset-m (identity by default: the reference's constants are not published).",
)
@overwrite_option
def command(
    ckpt: str,
    output: str,
    scale: int,
    resize: str,
    norm_offset_m: float,
    norm_scale_m: float,
    overwrite: bool,
) -> None:
    """Convert the MindSpore checkpoint CKPT into the demsr checkpoint OUTPUT.

    The protobuf is read directly (no MindSpore, nothing unpickled); blocks and channels are
    inferred from the tensors.
    """
    from demsr.checkpoint import save_checkpoint
    from demsr.io import refuse_existing
    from demsr.mindearth import model_from_mindearth

    refuse_existing(output, overwrite=overwrite, inputs=[ckpt])
    model = model_from_mindearth(ckpt, scale=scale, resize=resize)  # type: ignore[arg-type]
    scaling = ElevationScaling(offset_m=norm_offset_m, scale_m=norm_scale_m)
    metadata = {"provenance": {"parent": str(Path(ckpt).resolve()), "imported_from": "mindearth"}}
    save_checkpoint(output, model, scaling, metadata)
    config = model.config
    click.echo(
        f"{output}: {config.blocks} blocks x {config.channels} channels, x{config.scale}, "
        f"{config.resize} resize"
    )
