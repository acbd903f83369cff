"""``demsr demo``: the shipped model on a real DEM, end to end, in well under a minute on a CPU.

A high-res DEM (by default the bundled SRTM 3" tile of the Sierra Nevada, which the shipped
model never saw in training) is degraded x5 by block mean, super-resolved back with a
checkpoint (by default the shipped ``lite`` model), and compared with bicubic interpolation of
the same coarse input. The output folder receives:

- ``lowres.tif``: the coarse input (GeoTIFF), as ``demsr degrade`` writes it;
- ``superresolved.tif``: the super-resolved DEM (Cloud-Optimized GeoTIFF), as ``demsr predict``
  writes it;
- ``comparison.png``: input, truth, model and bicubic with hillshade, and their errors;
- ``metrics.md`` / ``metrics.json``: RMSE, MAE, bias, max error, PSNR, SSIM, slope and aspect
  errors of the model and of bicubic against the original DEM, overall and by land/sea and slope
  class.

All files are made in a temporary folder inside the output folder and moved in only when all
are complete (an output folder the demo created is removed again if it fails before that);
other files in the output folder are left alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from demsr.io import refuse_existing

if TYPE_CHECKING:  # demsr.scoring imports torch: only when the demo runs
    from demsr.scoring import Evaluation

log = logging.getLogger(__name__)

INPUT_NAME = "lowres.tif"
OUTPUT_NAME = "superresolved.tif"
FIGURE_NAME = "comparison.png"
TABLE_NAME = "metrics.md"
JSON_NAME = "metrics.json"
# Each output and what it holds, in the order they are listed.
OUTPUTS = {
    INPUT_NAME: "coarse input (block mean)",
    OUTPUT_NAME: "super-resolved DEM (GeoTIFF)",
    FIGURE_NAME: "comparison figure (model vs bicubic)",
    TABLE_NAME: "metric table (Markdown)",
    JSON_NAME: "metrics (JSON)",
}
OUTPUT_NAMES = tuple(OUTPUTS)
BASELINE = "bicubic"
# Low-res tile side: the bundled 240 x 240 input runs as a single tile (the tile margin would
# more than double the work at 128-cell tiles).
TILE_PX = 256
FIGURE_DPI = 80


def bundled_dem() -> Path:
    """The bundled demo DEM: SRTM 3" tile N37W004 (src/demsr/data/README.md)."""
    return Path(str(resources.files("demsr") / "data" / "srtm3_N37W004.tif"))


@contextlib.contextmanager
def _quiet_steps() -> Iterator[None]:
    """Keep the steps' INFO lines (which name the temporary folder) out of the default log;
    ``-v`` shows them."""
    package = logging.getLogger("demsr")
    level = package.level
    if package.getEffectiveLevel() >= logging.INFO:
        package.setLevel(logging.WARNING)
    try:
        yield
    finally:
        package.setLevel(level)


@dataclass
class DemoResult:
    """Where the demo wrote what, the scores, and how long it took."""

    output_dir: Path
    files: dict[str, Path]
    evaluation: Evaluation
    seconds: float


def run_demo(
    output_dir: str | os.PathLike[str] = "demsr-demo",
    *,
    dem: str | os.PathLike[str] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
) -> DemoResult:
    """Degrade ``dem`` (default :func:`bundled_dem`) x the model's scale, super-resolve it with
    ``checkpoint`` (default: the shipped ``lite`` model; a shipped model's name works too) and
    write the outputs listed in the module docstring into ``output_dir``.

    Existing demo outputs there are refused unless ``overwrite``; a failure before the final
    moves writes none of them.
    """
    from demsr.checkpoint import as_checkpoint
    from demsr.comparison import read_comparison
    from demsr.evaluate import MODEL
    from demsr.evaluation_inputs import inputs_from_arrays
    from demsr.plot import save_figure
    from demsr.predict import predict_raster
    from demsr.prepare import degrade_raster
    from demsr.pretrained import DEFAULT_MODEL
    from demsr.scoring import score

    start = time.perf_counter()
    source = Path(dem) if dem is not None else bundled_dem()
    out = Path(output_dir)
    finals = {name: out / name for name in OUTPUT_NAMES}
    refuse_existing(*finals.values(), overwrite=overwrite, inputs=[source, checkpoint])
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: exists and is not a directory")
    model = as_checkpoint(DEFAULT_MODEL if checkpoint is None else checkpoint)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".demsr-demo.", dir=out))
    moved = False
    try:
        with _quiet_steps():
            files = {name: work / name for name in OUTPUT_NAMES}
            degrade_raster(source, files[INPUT_NAME], model.scale)
            predict_raster(
                model,
                files[INPUT_NAME],
                files[OUTPUT_NAME],
                device=device,
                tile_px=TILE_PX,
                progress=progress,
                tags={"vertical_datum": "egm96"},
            )
            comparison = read_comparison(
                files[INPUT_NAME], source, files[OUTPUT_NAME], baselines={BASELINE: None}
            )
            inputs = inputs_from_arrays(  # the arrays just read: no second read
                comparison.truth,
                comparison.lowres,
                scale=model.scale,
                transform=comparison.transform,
                crs=comparison.crs,
                source=f"{source} degraded x{model.scale} by block mean",
            )
            evaluation = score(
                inputs,
                {
                    MODEL: comparison.prediction[None],
                    BASELINE: comparison.baselines[BASELINE][None],
                },
                checkpoint=model.path,
            )
            evaluation.write_markdown(files[TABLE_NAME])
            evaluation.write_json(files[JSON_NAME])
            figure = comparison.plot(
                prediction_name=f"demsr ({Path(model.path).stem})",
                title=f"{source.name}: x{model.scale} from a block-mean input",
                dpi=FIGURE_DPI,
            )
            save_figure(figure, files[FIGURE_NAME])
            moved = True
            for name, path in files.items():
                os.replace(path, finals[name])
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if created and not moved:
            shutil.rmtree(out, ignore_errors=True)
    seconds = time.perf_counter() - start
    return DemoResult(out, finals, evaluation, seconds)
