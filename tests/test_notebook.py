"""notebooks/results.ipynb runs top to bottom on demo outputs and draws the report's plots."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mmrec.train import train
from conftest import REPO_ROOT

NOTEBOOK = REPO_ROOT / "notebooks" / "results.ipynb"
KERNEL = "mmrec-test-python"


@pytest.fixture
def demo_runs(make_cfg, tmp_path) -> Path:
    """Two finished demo runs (two models, CSV logs) under one folder."""
    root = tmp_path / "demo_runs"
    for model in ("lightgcn", "vbpr"):
        train(make_cfg([f"model={model}", f"paths.output_dir={root / model}"]))
    return root


@pytest.fixture
def kernel_of_this_python(tmp_path, monkeypatch) -> str:
    """A kernelspec that starts *this* interpreter (the venv's), found before any user-level
    ``python3`` spec that may point elsewhere."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "mmrec test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter_runtime"))
    return KERNEL


def test_results_notebook_executes_on_demo_outputs(demo_runs, kernel_of_this_python, monkeypatch, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        "commit the notebook without outputs"
    monkeypatch.setenv("MMREC_RESULTS", str(demo_runs))
    client = NotebookClient(nb, kernel_name=kernel_of_this_python, timeout=180,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs) + "".join(
        str(o.get("data", {}).get("text/markdown", "")) for o in outputs)
    assert "2 runs, 2 configurations" in text and "lightgcn" in text and "vbpr" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 4, "curves, Recall@K, warm/cold and accuracy-vs-coverage plots"
