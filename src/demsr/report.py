"""One page on one or several checkpoints: metric tables, figures and provenance.

:func:`build_report` scores the checkpoints and the interpolation baselines on the same inputs
(every method on the same cells, see :mod:`demsr.scoring`), draws the comparison figure and
each run's training curves, and collects each checkpoint's provenance. :func:`write_report`
writes it as one self-contained HTML file (pictures embedded) or as Markdown with its pictures
in a ``<name>_files`` folder next to it.
"""

from __future__ import annotations

import base64
import html
import io as _io
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from demsr import __version__
from demsr.baselines import BASELINES
from demsr.checkpoint import Checkpoint, checkpoint_sha256, load_checkpoint, now_utc
from demsr.evaluate import predict_methods
from demsr.evaluation_inputs import EvaluationInputs, load_inputs
from demsr.io import atomic_directory, atomic_path, refuse_existing
from demsr.plot import plot_comparison, plot_training_curves
from demsr.pretrained import resolve_checkpoint
from demsr.run_folder import METRICS
from demsr.scoring import Evaluation, score

log = logging.getLogger(__name__)

REPORT_FORMATS = (".html", ".md")


@dataclass
class Report:
    """What a report shows: ``evaluation`` (one table, every model and baseline), ``figures``
    (title -> Figure, in order) and ``provenance`` (one dict per checkpoint)."""

    title: str
    evaluation: Evaluation
    figures: dict[str, Figure] = field(default_factory=dict)
    figure_notes: dict[str, str] = field(default_factory=dict)
    provenance: list[dict[str, Any]] = field(default_factory=list)
    created: str = field(default_factory=now_utc)


def model_names(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Short unique labels: ``<folder>/<stem>`` (e.g. ``land-lite/best``), else the paths."""
    names = [f"{Path(p).resolve().parent.name}/{Path(p).stem}" for p in paths]
    if len(set(names)) != len(names):
        names = [os.fspath(p) for p in paths]
    if len(set(names)) != len(names):
        raise ValueError("the same checkpoint is given twice")
    return names


def describe_checkpoint(name: str, checkpoint: Checkpoint) -> dict[str, Any]:
    """What a reader needs to trust a checkpoint: its file, shape, scaling, data and parent."""
    metadata = checkpoint.metadata
    provenance = metadata.get("provenance", {})
    data = provenance.get("data", {})
    parent = provenance.get("parent")
    metrics = metadata.get("metrics", {})
    return {
        "name": name,
        "path": checkpoint.path,
        "sha256": checkpoint_sha256(checkpoint),
        "model": checkpoint.model_config.to_dict(),
        "elevation scaling": checkpoint.scaling.to_dict(),
        "epoch": metadata.get("epoch"),
        "best validation RMSE m": metrics.get("best_valid_rmse_m"),
        "training pairs": data.get("train_pairs"),
        "validation pairs": data.get("valid_pairs"),
        "training sources": data.get("train_sources", []),
        "parent": None
        if not parent
        else {key: parent.get(key) for key in ("path", "sha256", "epoch") if key in parent},
        "frozen": metadata.get("frozen"),
        "created": provenance.get("created"),
        "demsr version": provenance.get("demsr_version"),
    }


def _figure_methods(evaluation: Evaluation, models: Sequence[str]) -> list[str]:
    """Models, bicubic (the usual reference) and the baseline with the lowest RMSE."""
    baselines = [name for name in evaluation.methods if name not in models]
    shown = [name for name in ("bicubic",) if name in baselines]

    def rmse_m(name: str) -> float:
        value = evaluation.methods[name]["rmse"]
        assert value is not None  # score() refuses inputs without a cell to score
        return value

    if baselines:
        best = min(baselines, key=rmse_m)
        if best not in shown:
            shown.append(best)
    return [*models, *shown]


def _example_index(inputs: EvaluationInputs) -> int:
    """The pair with the largest relief in its truth: the terrain where methods differ most."""
    relief = np.nanmax(inputs.highres, axis=(1, 2)) - np.nanmin(inputs.highres, axis=(1, 2))
    return int(np.nanargmax(relief))


def build_report(
    checkpoints: Sequence[str | os.PathLike[str]],
    data: str | os.PathLike[str],
    lowres_path: str | os.PathLike[str] | None = None,
    *,
    baselines: Iterable[str] = tuple(BASELINES),
    ensemble: bool = False,
    band: int = 1,
    cell_size_m: tuple[float, float] | None = None,
    pair_index: int | None = None,
    device: str = "auto",
    progress: bool = True,
    fine_datum: str = "egm96",
    lowres_datum: str = "egm96",
) -> Report:
    """Score ``checkpoints`` and ``baselines`` on ``data`` (see
    :func:`demsr.evaluation_inputs.load_inputs`) and draw the figures. All checkpoints must have
    the same scale."""
    if not checkpoints:
        raise ValueError("give at least one checkpoint")
    paths = [resolve_checkpoint(checkpoint) for checkpoint in checkpoints]  # shipped names too
    names = model_names(paths)
    models = {name: load_checkpoint(path) for name, path in zip(names, paths, strict=True)}
    scales = {model.scale for model in models.values()}
    if len(scales) > 1:
        raise ValueError(f"the checkpoints have different scales: {sorted(scales)}")
    inputs = load_inputs(
        data,
        scales.pop(),
        lowres_path,
        band=band,
        cell_size_m=cell_size_m,
        fine_datum=fine_datum,
        lowres_datum=lowres_datum,
    )
    predictions = predict_methods(
        models, inputs, baselines, ensemble=ensemble, device=device, progress=progress
    )
    evaluation = score(inputs, predictions, self_ensemble=ensemble)
    title = f"demsr report: {', '.join(names)} on {Path(data).name}"
    report = Report(title=title, evaluation=evaluation)
    report.provenance = [describe_checkpoint(name, models[name]) for name in names]

    if inputs.kind == "pairs":
        index = _example_index(inputs) if pair_index is None else pair_index
        if not 0 <= index < len(inputs.highres):
            raise ValueError(f"pair index {index} is outside 0..{len(inputs.highres) - 1}")
        note = f"pair {index} of {len(inputs.highres)}" + (
            " (the one with the largest relief)" if pair_index is None else ""
        )
    else:
        index, note = 0, "the whole raster"
    shown = _figure_methods(evaluation, names)
    figure = plot_comparison(
        inputs.lowres[index],
        inputs.highres[index],
        predictions[shown[0]][index],
        baselines={name: predictions[name][index] for name in shown[1:]},
        transform=inputs.transform,
        crs=inputs.crs,
        prediction_name=shown[0],
    )
    report.figures["Low-res input, truth, predictions and errors"] = figure
    report.figure_notes["Low-res input, truth, predictions and errors"] = (
        f"{note}; methods shown: {', '.join(shown)} (bicubic and the best baseline by RMSE)"
    )
    for name, path in zip(names, paths, strict=True):
        csv_path = Path(path).parent / METRICS  # written by demsr.train next to the checkpoints
        if csv_path.is_file():
            report.figures[f"Training curves: {name}"] = plot_training_curves(csv_path)
            report.figure_notes[f"Training curves: {name}"] = os.fspath(csv_path)
    return report


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 75em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; }
img { max-width: 100%; border: 1px solid #ddd; }
.note { color: #555; font-size: 0.9em; }
"""


def _png_bytes(figure: Figure) -> bytes:
    buffer = _io.BytesIO()
    figure.savefig(buffer, format="png", dpi=figure.dpi)
    return buffer.getvalue()


def _provenance_rows(entry: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for key, value in entry.items():
        if key == "name":
            continue
        if key == "training sources" and isinstance(value, list):
            text = f"{len(value)} files: " + ", ".join(Path(v).name for v in value)
        elif isinstance(value, dict):
            text = ", ".join(f"{k}={v}" for k, v in value.items())
        else:
            text = "-" if value is None else str(value)
        rows.append((key, text))
    return rows


def render_html(report: Report) -> str:
    """The report as one HTML page with its pictures embedded (base64 PNG)."""
    escape = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(report.title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(report.title)}</h1>",
        f'<p class="note">{escape(report.created)}, demsr {escape(__version__)}</p>',
        f"<p>{escape(report.evaluation.caption())}</p>",
    ]
    for title, header, rows in report.evaluation.tables():
        parts.append(f"<h2>{escape(title)}</h2><table><tr>")
        parts.append("".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>")
        for row in rows:
            cells = [f"<td>{escape(row[0])}</td>"]
            cells += [f'<td class="n">{escape(cell)}</td>' for cell in row[1:]]
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table>")
    for title, figure in report.figures.items():
        encoded = base64.b64encode(_png_bytes(figure)).decode("ascii")
        parts.append(f"<h2>{escape(title)}</h2>")
        parts.append(f'<p class="note">{escape(report.figure_notes.get(title, ""))}</p>')
        parts.append(f'<img alt="{escape(title)}" src="data:image/png;base64,{encoded}">')
    parts.append("<h2>Checkpoints</h2>")
    for entry in report.provenance:
        parts.append(f"<h3>{escape(entry['name'])}</h3><table>")
        for key, text in _provenance_rows(entry):
            parts.append(f"<tr><th>{escape(key)}</th><td>{escape(text)}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _slug(title: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in title.lower()).strip("_")


def render_markdown(report: Report, figure_paths: dict[str, str]) -> str:
    """The report as Markdown; ``figure_paths`` maps each figure's title to its relative path."""
    parts = [
        f"# {report.title}",
        "",
        f"{report.created}, demsr {__version__}",
        "",
        report.evaluation.markdown(),
    ]
    for title in report.figures:
        parts += [f"## {title}", "", report.figure_notes.get(title, ""), ""]
        parts += [f"![{title}]({figure_paths[title]})", ""]
    parts += ["## Checkpoints", ""]
    for entry in report.provenance:
        parts += [f"### {entry['name']}", "", "| | |", "|---|---|"]
        parts += [f"| {key} | {text} |" for key, text in _provenance_rows(entry)]
        parts.append("")
    return "\n".join(parts)


def check_report_path(path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Refuse an unknown format, a missing folder or an existing output before any work."""
    output = Path(path)
    if output.suffix.lower() not in REPORT_FORMATS:
        raise ValueError(f"{output}: the report must end in {' or '.join(REPORT_FORMATS)}")
    if not output.parent.is_dir():
        raise FileNotFoundError(f"{output}: the folder {output.parent} does not exist")
    refuse_existing(output, overwrite=overwrite)
    return output


def write_report(report: Report, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write ``report`` as HTML (self-contained) or Markdown (+ ``<stem>_files/*.png``).

    Files appear only once complete; an existing output is refused unless ``overwrite``.
    """
    output = check_report_path(path, overwrite)
    if output.suffix.lower() == ".html":
        with atomic_path(output) as tmp:
            tmp.write_text(render_html(report), encoding="utf-8")
        return output
    folder = output.with_name(f"{output.stem}_files")
    figure_paths: dict[str, str] = {}
    with atomic_directory(folder) as tmp_folder:
        for number, (title, figure) in enumerate(report.figures.items(), start=1):
            name = f"{number:02d}_{_slug(title)}.png"
            (tmp_folder / name).write_bytes(_png_bytes(figure))
            figure_paths[title] = f"{folder.name}/{name}"
    with atomic_path(output) as tmp:
        tmp.write_text(render_markdown(report, figure_paths), encoding="utf-8")
    return output
