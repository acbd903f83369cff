"""The tutorial notebook (examples/tutorial.ipynb): committed without outputs, and it runs top to
bottom in a kernel of this environment (slow: a few minutes of CPU training)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from conftest import REPO

TUTORIAL = REPO / "examples" / "tutorial.ipynb"
DATA = REPO / "examples" / "data"
# The whole notebook takes a few minutes on 2 CPU cores; this leaves room
# for a slower or busier machine while still failing a cell that hangs.
TIMEOUT_S = 900


def test_tutorial_is_committed_without_outputs() -> None:
    notebook = nbformat.read(TUTORIAL, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, "the tutorial has no code"
    for number, cell in enumerate(code, start=1):
        assert cell.outputs == [], f"code cell {number} has outputs (strip them)"
        assert cell.execution_count is None, f"code cell {number} has an execution count"
    assert notebook.metadata.kernelspec.name == "python3"


def test_tutorial_data_are_small_and_documented() -> None:
    rasters = sorted(DATA.glob("*.tif"))
    assert rasters and sum(path.stat().st_size for path in rasters) < 2_000_000
    readme = (DATA / "README.md").read_text()
    for path in rasters:
        assert path.name in readme, f"{path.name} is not described in examples/data/README.md"
    source = TUTORIAL.read_text()
    for path in rasters:
        assert path.name in source, f"{path.name} is not used by the tutorial"


@pytest.mark.slow
def test_tutorial_runs_top_to_bottom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nbclient import NotebookClient

    notebook = nbformat.read(TUTORIAL, as_version=4)
    examples_before = sorted(TUTORIAL.parent.rglob("*"))
    # What the notebook writes goes to pytest's folder. The kernel is this interpreter: the
    # python3 kernelspec of this environment says "python", which jupyter_client runs as
    # sys.executable; a kernelspec in the user's own Jupyter folder must not take its place.
    monkeypatch.setenv("DEMSR_TUTORIAL_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter"))
    monkeypatch.delenv("JUPYTER_PATH", raising=False)
    # Figures are shown inline even where the tests run with a non-interactive backend.
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = NotebookClient(
        notebook,
        timeout=TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(TUTORIAL.parent)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, on any error

    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) >= 3, "the training curves, comparison and map figures are shown"
    assert (tmp_path / "work" / "frontrange_3s.tif").is_file()
    assert sorted(TUTORIAL.parent.rglob("*")) == examples_before, "it wrote into examples/"
