"""Pass two of prepare: :func:`prepare_pairs` writes the planned pairs as the three split files
(``out_dir/{train,valid,test}/{split}.h5``), which appear only when all are complete."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from demsr.datasets import PairMetadata, PairWriter
from demsr.io import Raster, refuse_output_over_input
from demsr.prepare.options import SPLITS, PrepareOptions
from demsr.prepare.plan import plan_pairs
from demsr.prepare.report import PrepareReport
from demsr.prepare.sources import BlockMeanSource, PairSource

_log = logging.getLogger("demsr.prepare")  # the package's one logger, as before the split

_WRITE_BATCH = 256  # patches gathered per HDF5 append; bounds memory for dense strides


def output_paths(out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Where :func:`prepare_pairs` writes each split: ``out_dir/{split}/{split}.h5``."""
    root = Path(out_dir)
    return {split: root / split / f"{split}.h5" for split in SPLITS}


def _pairs_from(
    raster: Raster, origins: np.ndarray, options: PrepareOptions, source: PairSource
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised float32 lowres (n,1,h,w) and highres (n,1,H,W) for patch ``origins``."""
    patch_px = options.highres_patch_px
    highres_m = np.stack(
        [raster.data[r : r + patch_px, c : c + patch_px] for r, c in origins]
    ).astype(np.float64)[:, None]
    lowres_m = np.asarray(source.lowres_m(raster, highres_m, origins, options.scale), np.float64)
    norm = options.normalisation
    return (
        norm.normalise(lowres_m).astype(np.float32),
        norm.normalise(highres_m).astype(np.float32),
    )


def _first_of(items: Sequence[str | os.PathLike[str]]) -> str:
    """``a.tif``, or ``a.tif (and 2 more)``: files named in a one-line error."""
    more = f" (and {len(items) - 1} more)" if len(items) > 1 else ""
    return f"{os.fspath(items[0])}{more}"


def prepare_pairs(
    rasters: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    options: PrepareOptions | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    source: PairSource | None = None,
) -> PrepareReport:
    """Cut ``rasters`` into (low-res, high-res) training pairs and write the three split files.

    ``source`` says where the pairs come from (default :class:`BlockMeanSource`: each raster
    and its block mean; :class:`demsr.products.ProductSource`: a real coarse product).

    Writes ``out_dir/train/train.h5``, ``out_dir/valid/valid.h5`` and ``out_dir/test/test.h5``
    in the layout of :mod:`demsr.datasets` (values normalised with ``options.normalisation``;
    provenance in ``source_windows`` and the attributes). Patches with nodata, with relief
    below ``options.min_relief_m`` or with a sea fraction outside the options' range are dropped
    and counted. The files appear only when all three are complete; existing ones are refused
    (FileExistsError) unless ``overwrite``. An empty split is written as an empty file, with a
    warning; no usable patch at all is a ValueError.
    """
    start = time.perf_counter()
    options = options or PrepareOptions()
    outputs = output_paths(out_dir)
    refuse_output_over_input(outputs.values(), rasters)
    existing = [str(p) for p in outputs.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{_first_of(existing)}: already exists; use --overwrite (overwrite=True) to replace"
        )

    source = source or BlockMeanSource()
    plan = plan_pairs(rasters, options, progress=progress, source=source)
    report = plan.report
    if report.candidates == 0:
        raise ValueError(
            f"{_first_of(rasters)}: no patches: smaller than one {options.highres_patch_px} px "
            "patch (or split block); lower --patch-px"
        )
    if report.total == 0:
        raise ValueError(
            f"{_first_of(rasters)}: no usable patches: every candidate window has nodata, is flat "
            f"or is outside the sea-fraction range (candidates {report.candidates}, nodata "
            f"{report.dropped_nodata}, flat {report.dropped_flat}, land {report.dropped_land}, "
            f"sea {report.dropped_sea}); lower min_relief_m or the patch size, or widen the "
            "sea-fraction range\n" + report.summary()
        )
    metadata_common: dict[str, Any] = dict(
        scale=options.scale,
        normalisation=options.normalisation,
        seed=options.seed,
        source_files=tuple(f.path for f in report.files),
        source_crs=tuple(f.crs for f in report.files),
        prepare_options=options.resolved().to_dict(),
        provenance=source.provenance(),
    )
    patch_px = options.highres_patch_px
    with contextlib.ExitStack() as stack:
        writers = {
            split: stack.enter_context(
                PairWriter(
                    path,
                    options.lowres_patch_px,
                    PairMetadata(split=split, **metadata_common),
                    overwrite=overwrite,
                )
            )
            for split, path in outputs.items()
        }
        bar = stack.enter_context(
            tqdm(total=report.total, desc="writing", unit="patch", disable=not progress)
        )
        for file_index, (path, by_split) in enumerate(zip(plan.paths, plan.windows, strict=True)):
            if not any(len(w) for w in by_split.values()):
                continue
            bar.set_postfix_str(path.name)
            raster = source.highres(path, options.band)
            for split, origins in by_split.items():
                for begin in range(0, len(origins), _WRITE_BATCH):
                    batch = origins[begin : begin + _WRITE_BATCH]
                    lowres, highres = _pairs_from(raster, batch, options, source)
                    provenance = np.column_stack(
                        [
                            np.full(len(batch), file_index),
                            batch,
                            np.full((len(batch), 2), patch_px),
                        ]
                    ).astype(np.int64)
                    writers[split].append(lowres, highres, provenance)
                    bar.update(len(batch))
            del raster
    report.outputs = outputs
    report.seconds = time.perf_counter() - start
    _log.info(
        "wrote %s pairs (train/valid/test) to %s in %.1f s; dropped %d with nodata, %d flat, "
        "%d with too little sea, %d with too much sea, %d over the per-file limit",
        "/".join(str(n) for n in report.counts.values()),
        Path(out_dir),
        report.seconds,
        report.dropped_nodata,
        report.dropped_flat,
        report.dropped_land,
        report.dropped_sea,
        report.dropped_limit,
    )
    return report
