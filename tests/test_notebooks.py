"""The notebooks under colabs/ execute top to bottom on the smoke config."""

from __future__ import annotations

import os

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO, subprocess_env


@pytest.mark.slow
def test_quickstart_notebook_executes(smoke_data_dir, compilation_cache, tmp_path, monkeypatch):
    workdir = tmp_path / "quickstart"
    env = subprocess_env(compilation_cache, TFDS_DATA_DIR=smoke_data_dir,
                         IDFER_WORKDIR=str(workdir))
    for k, v in env.items():  # the kernel inherits this process's environment
        monkeypatch.setenv(k, v)
    notebook = nbformat.read(REPO / "colabs" / "quickstart.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO)}}).execute()
    outputs = "".join(
        o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
        for o in cell.get("outputs", [])
    )
    assert "held-out accuracy" in outputs and "identity probe" in outputs
    assert (workdir / "report.md").exists() and (workdir / "confusion_matrix.png").exists()
    assert not any(o.get("output_type") == "error" for c in notebook.cells
                   for o in c.get("outputs", []))
    assert os.path.getsize(workdir / "confusion_matrix.png") > 1000
