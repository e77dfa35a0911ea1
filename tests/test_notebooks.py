"""The notebooks under colabs/: each opens the same way, and each executes top to bottom on smoke data."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO, subprocess_env

COLABS = REPO / "colabs"
NOTEBOOKS = sorted(p.name for p in COLABS.glob("*.ipynb"))
BADGE = "https://colab.research.google.com/github/idfer-jax/idfer_jax/blob/main/colabs/{}"
EXPRESSION_CHANCE = 1 / 7


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(COLABS / name, as_version=4)


def _install_cell(notebook: nbformat.NotebookNode) -> str:
    return next(c.source for c in notebook.cells if c.cell_type == "code")


def _execute(name: str, monkeypatch, compilation_cache: str, **env: str) -> nbformat.NotebookNode:
    """Runs the notebook in a fresh kernel (which inherits this process's environment) from the repo root."""
    for k, v in subprocess_env(compilation_cache, **env).items():
        monkeypatch.setenv(k, v)
    notebook = _read(name)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO)}}).execute()
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    return notebook


def _text(notebook: nbformat.NotebookNode) -> str:
    """Everything the notebook printed or displayed as text or Markdown."""
    parts = []
    for cell in notebook.cells:
        for o in cell.get("outputs", []):
            parts.append(o.get("text", ""))
            data = o.get("data", {})
            parts.append(data.get("text/markdown", "") + data.get("text/plain", ""))
    return "\n".join(parts)


def _assert_png(path) -> None:
    assert path.exists(), path
    assert os.path.getsize(path) > 1000, path


def test_every_notebook_opens_with_its_badge_and_the_install_cell():
    assert {"quickstart.ipynb", "compose_your_own_method.ipynb", "reproduce_ckplus.ipynb"} <= set(NOTEBOOKS)
    install = _install_cell(_read("quickstart.ipynb"))
    for name in NOTEBOOKS:
        notebook = _read(name)
        first = notebook.cells[0]
        assert first.cell_type == "markdown" and BADGE.format(name) in first.source, name
        assert "colab-badge.svg" in first.source, name
        assert _install_cell(notebook) == install, f"{name}: its install cell differs from quickstart's"
        assert notebook.cells[1].cell_type == "code", f"{name}: the install cell must follow the badge"


@pytest.mark.parametrize("has_tensorflow", [True, False], ids=["colab", "bare"])
def test_install_cell_keeps_an_installed_tensorflow(has_tensorflow, tmp_path, monkeypatch):
    """The cell on a machine without idfer_jax, with git and pip replaced by a recorder."""
    (tmp_path / "idfer_jax").mkdir()
    shutil.copy(REPO / "setup.cfg", tmp_path / "idfer_jax" / "setup.cfg")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    present = {"tensorflow", "jax_cuda12_plugin"} if has_tensorflow else set()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name in present else None)
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda args, **kwargs: calls.append(list(args)))

    exec(_install_cell(_read("quickstart.ipynb")), {})

    clone, editable, requirements = calls
    assert clone[:2] == ["git", "clone"]
    assert editable[-3:] == ["--no-deps", "-e", "idfer_jax"]
    requirements = requirements[requirements.index("-q") + 1:]
    assert "flax>=0.10" in requirements and "grain>=0.2.12" in requirements
    has_tf_cpu = any(r.startswith("tensorflow-cpu") for r in requirements)
    assert has_tf_cpu is not has_tensorflow
    assert ("jax[cuda12]>=0.10" if has_tensorflow else "jax>=0.10") in requirements
    assert os.getcwd() == str(tmp_path / "idfer_jax")


@pytest.mark.slow
def test_quickstart_notebook_executes(smoke_data_dir, compilation_cache, tmp_path, monkeypatch):
    workdir = tmp_path / "quickstart"
    notebook = _execute("quickstart.ipynb", monkeypatch, compilation_cache,
                        TFDS_DATA_DIR=smoke_data_dir, IDFER_WORKDIR=str(workdir), IDFER_STEPS="300")
    outputs = _text(notebook)
    assert "held-out accuracy" in outputs and "identity probe" in outputs
    assert (workdir / "report.md").exists()
    _assert_png(workdir / "confusion_matrix.png")


@pytest.mark.slow
def test_compose_your_own_method_notebook_executes(smoke_data_dir, compilation_cache, tmp_path, monkeypatch):
    workdir = tmp_path / "compose"
    notebook = _execute("compose_your_own_method.ipynb", monkeypatch, compilation_cache,
                        TFDS_DATA_DIR=smoke_data_dir, IDFER_WORKDIR=str(workdir), IDFER_STEPS="300")
    for method in ("fused_grl", "baseline"):
        assert (workdir / method / "report.md").exists(), method
        _assert_png(workdir / method / "confusion_matrix.png")
    _assert_png(workdir / "identity_leakage.png")
    table = (workdir / "comparison.md").read_text()
    assert "| baseline |" in table and "| fused_grl |" in table
    assert table.strip() in _text(notebook)  # displayed, not only written
    mine = json.loads((workdir / "fused_grl" / "eval_results.json").read_text())
    assert mine["method"] == "fused_grl" and mine["checkpoint_step"] == 300
    # It learned: held-out accuracy above chance by a margin, and its probe numbers are in the table.
    assert mine["accuracy"] > EXPRESSION_CHANCE + 0.04, mine["accuracy"]
    identity = mine["identity_leakage"]
    assert f"{identity['linear_acc']:.3f}" in table and identity["chance"] == pytest.approx(
        1 / mine["num_test_subjects"])


@pytest.mark.slow
def test_reproduce_ckplus_notebook_executes_on_smoke_data(smoke_data_dir, compilation_cache, tmp_path,
                                                          monkeypatch):
    workdir = tmp_path / "crossval"
    notebook = _execute("reproduce_ckplus.ipynb", monkeypatch, compilation_cache,
                        TFDS_DATA_DIR=smoke_data_dir, IDFER_WORKDIR=str(workdir),
                        IDFER_CONFIG="configs/baseline_synthetic.py:smoke", IDFER_FOLDS="2",
                        IDFER_STEPS="150")
    summary = json.loads((workdir / "crossval_results.json").read_text())
    assert summary["num_folds"] == 2 and summary["config"]["data"]["manual_dir"] == ""
    for name in ("crossval_report.md", "crossval_folds.csv", "confusion_matrix_pooled.csv", "folds.json"):
        assert (workdir / name).exists(), name
    for png in ("confusion_matrix_pooled.png", "crossval_folds.png", "fold_0/confusion_matrix.png",
                "fold_1/confusion_matrix.png"):
        _assert_png(workdir / png)
    outputs = _text(notebook)
    assert "each in exactly one test fold" in outputs
    assert f"over 2 folds; pooled over every test image {summary['pooled_accuracy']:.3f}" in outputs
    assert "| mean |" in outputs and "| std |" in outputs  # the mean +- std table was displayed
