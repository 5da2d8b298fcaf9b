"""The notebooks in ``examples/`` run top to bottom (nbclient, a fresh kernel each) within their time budget, and are
stored without outputs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook runner is not installed (pip install 'botnet[test]')")
nbclient = pytest.importorskip("nbclient", reason="the notebook runner is not installed (pip install 'botnet[test]')")

EXAMPLES = Path(__file__).parents[1] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
BUDGET_S = 120  # per notebook, on a quiet 2-core machine they take well under a minute
NEEDS = {"02_fastai": "fastai"}  # notebook -> the optional package it cannot run without


def test_there_are_notebooks() -> None:
    assert [path.stem for path in NOTEBOOKS] == ["01_tour", "02_fastai", "03_detection"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_stored_without_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if path.stem in NEEDS:
        pytest.importorskip(NEEDS[path.stem], reason=f"{path.name} needs {NEEDS[path.stem]}")
    # The kernel inherits the environment: figures drawn off-screen, one CPU thread (two OpenMP threads spin
    # against each other on a loaded 2-core machine), and a working directory that is not the repository.
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=BUDGET_S, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    assert elapsed < BUDGET_S, f"{path.name} took {elapsed:.0f} s"
    print(f"{path.name}: {elapsed:.1f} s")
