"""The code's layout: tests mirror the package, and a long module says why it is one.

Tests of ``demsr/x.py`` live in ``tests/test_x.py``, of ``demsr/pkg/y.py`` in
``tests/test_pkg_y.py`` (flat: a ``tests/io`` folder would shadow the standard library's
``io``). The other test files check behaviour across modules, each named in :data:`BEHAVIOUR`;
a module without a test file of its own says in :data:`TESTED_ELSEWHERE` where it is tested.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "demsr"
TESTS = REPO / "tests"

LONG_MODULE_LINES = 500
"""A module longer than this holds one line starting ``Kept whole:`` in its docstring."""

BEHAVIOUR = {
    "test_api": "the public names of `import demsr`, as docs/python-api.md uses them",
    "test_end_to_end": "prepare, train, evaluate and predict chained on real rasters",
    "test_reliability": "bad input, full disks, interrupted runs: errors and what is left",
    "test_faults": "a process killed at each stop point, then resumed",
    "test_properties": "property tests across tiling, prediction and degradation",
    "test_pretrained": "the shipped model: metadata, accuracy, flat in -> flat out",
    "test_distributed_predict": "prediction under torchrun",
    "test_distributed_train": "training under torchrun",
    "test_docs": "the documentation site builds and its links resolve",
    "test_notebook": "the example notebook runs",
    "test_gpu": "CUDA paths (skipped without a GPU)",
    "test_outputs": "every product as GIS software and xarray read it",
    "test_fast": "the fast inference paths give the reference network's values",
    "test_vertical_units": "DEMs in feet, from reading to the product",
    "test_layout": "this file",
}

TESTED_ELSEWHERE = {
    "callbacks": "test_train (a Trainer's callbacks)",
    "distributed": "test_distributed_predict, test_distributed_train",
    "ranks": "test_distributed_predict, test_distributed_train",
    "stops": "test_faults (every stop point)",
    # io and comparison
    "io_geotiff": "test_io_cog, test_io_blocks (partials written and read back; COG profile, int16 "
    "nodata)",
    "io_grids": "test_comparison, test_evaluate (grids that do not match: CRS, scale, offset)",
    # cli, training and planning
    "cli_demo": "test_demo (`demsr demo`: files written, another DEM, failures leave nothing)",
    "cli_train": "test_end_to_end (`demsr train` in the chain), test_cli_errors (a bad --set), "
    "test_faults (train killed and resumed), test_distributed_train (under torchrun)",
    "plan_figures": "test_plan_timing (no speed figure invented for hardware without one), "
    "test_plan_memory (the tile chosen by the calibrated memory estimate)",
    "prepare_report": "test_prepare_plan, test_prepare_write (pairs and blocks counted per "
    "split, skipped files and patches)",
    "run_folder": "test_train (metrics.csv rows, refused setting changes), test_plot (training "
    "curves read from metrics.csv, bad CSVs refused)",
    "run_state": "test_train (exact resume, timed checkpoints), test_faults (resume after a kill)",
    "training_data": "test_train (training on raster windows, bad raster settings refused)",
}


def _modules() -> dict[str, Path]:
    """``pkg_module`` -> path, for every module of the package but ``__init__``/``__main__``."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        found["_".join(path.relative_to(PACKAGE).with_suffix("").parts)] = path
    return found


def _docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text())) or ""


def test_every_test_file_mirrors_a_module_or_checks_named_behaviour() -> None:
    modules = _modules()
    strays = [
        path.name
        for path in sorted(TESTS.glob("test_*.py"))
        if path.stem.removeprefix("test_") not in modules and path.stem not in BEHAVIOUR
    ]
    assert strays == [], "name each test file after its module, or add it to BEHAVIOUR"


def test_every_module_has_its_test_file_or_says_where_it_is_tested() -> None:
    untested = [
        name
        for name in _modules()
        if not (TESTS / f"test_{name}.py").exists() and name not in TESTED_ELSEWHERE
    ]
    assert untested == [], "add tests/test_<module>.py, or say in TESTED_ELSEWHERE where"
    assert set(TESTED_ELSEWHERE) <= set(_modules())
    assert set(BEHAVIOUR) <= {path.stem for path in TESTS.glob("test_*.py")}


def test_a_long_module_says_why_it_is_kept_whole() -> None:
    unexplained = [
        f"{path.relative_to(PACKAGE)} ({lines} lines)"
        for path in _modules().values()
        if (lines := len(path.read_text().splitlines())) > LONG_MODULE_LINES
        and not any(line.startswith("Kept whole:") for line in _docstring(path).splitlines())
    ]
    assert unexplained == [], "split it by job, or give a 'Kept whole:' line in its docstring"
