"""`idfer crossval`: every fold trained and evaluated, pooled tables, fold-by-fold resume."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from idfer_jax import api
from tests.conftest import REPO, subprocess_env
from tests.test_datasets import PATTERN, write_folder


@pytest.mark.slow
def test_crossval_learns_on_every_fold_and_pools_the_results(smoke_config, tmp_path):
    config = smoke_config
    config.data.num_folds = 2
    config.train.num_steps = 400
    config.train.checkpoint_every = 200
    workdir = str(tmp_path / "cv")
    summary = api.crossval(config, workdir)

    accuracies = [row["accuracy"] for row in summary["folds"]]
    assert len(accuracies) == 2
    assert min(accuracies) > 0.25, accuracies  # chance is 1/7
    assert np.isclose(summary["mean_std"]["accuracy"]["mean"], np.mean(accuracies))
    assert np.isclose(summary["mean_std"]["accuracy"]["std"], np.std(accuracies))
    pooled = np.asarray(summary["pooled_confusion_matrix"])
    per_fold = [json.load(open(os.path.join(workdir, f"fold_{i}", "eval_results.json")))
                for i in range(2)]
    assert pooled.sum() == sum(r["num_test_images"] for r in per_fold) == 24 * 7 * 8
    for name in ("crossval_report.md", "crossval_folds.csv", "confusion_matrix_pooled.png",
                 "confusion_matrix_pooled.csv", "crossval_results.json", "folds.json"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    with open(os.path.join(workdir, "crossval_folds.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [float(r["accuracy"]) for r in rows] == accuracies
    assert all(float(r["identity probe (linear)"]) > float(r["identity chance"]) for r in rows)
    report = open(os.path.join(workdir, "crossval_report.md")).read()
    assert "Mean and std over folds" in report and "yaw R^2" in report
    folds = json.load(open(os.path.join(workdir, "folds.json")))["test_subjects"]
    assert sorted(s for f in folds for s in f) == list(range(24))


@pytest.mark.slow
def test_crossval_cli_loso_resumes_fold_by_fold(tmp_path, compilation_cache):
    root = write_folder(tmp_path / "raw", subjects=("S01", "S02", "S03"))
    workdir = tmp_path / "cv"
    command = [
        sys.executable, "-m", "idfer_jax.main", "crossval",
        f"--config={REPO / 'configs' / 'baseline_synthetic.py'}:smoke", f"--workdir={workdir}",
        "--config.data.name=image_folder", "--config.data.config=32px", "--config.data.image_size=32",
        f"--config.data.manual_dir={root}", f"--config.data.pattern={PATTERN}",
        "--config.data.class_names=('anger','happiness','sadness')", "--config.data.protocol=loso",
        f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.train.num_steps=4",
        "--config.train.batch_size=8", "--config.train.checkpoint_every=2", "--config.eval.batch_size=8",
    ]
    env = subprocess_env(compilation_cache)
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "over 3 folds" in first.stdout
    results = json.load(open(workdir / "fold_1" / "eval_results.json"))
    assert results["protocol"] == "leave_one_subject_out" and results["num_test_subjects"] == 1
    # One subject per fold: the identity probe says it read all subjects through the fold's model.
    assert results["identity_leakage"]["probe_subjects"].startswith("all subjects")
    assert results["identity_leakage"]["split_by"] == "sequence"
    report = (workdir / "crossval_report.md").read_text()
    assert "leave-one-subject-out" in report

    # A finished fold is read back, not retrained; a removed result is recomputed from its checkpoint.
    os.remove(workdir / "fold_2" / "eval_results.json")
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done earlier") == 2
    assert (workdir / "fold_2" / "eval_results.json").exists()

    bad = subprocess.run([*command, "--folds=5"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode != 0 and "drop --folds" in bad.stderr


def test_cli_reports_a_missing_manual_download_without_a_traceback(tmp_path, compilation_cache):
    (tmp_path / "tfds").mkdir()
    command = [sys.executable, "-m", "idfer_jax.main", "crossval",
               f"--config={REPO / 'configs' / 'baseline_ckplus.py'}", f"--workdir={tmp_path / 'cv'}",
               f"--config.data.data_dir={tmp_path / 'tfds'}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env=subprocess_env(compilation_cache))
    assert result.returncode == 1
    assert "idfer: error: The manual download of ck_plus48 is missing" in result.stderr
    assert "CK+48.zip" in result.stderr and "--config.data.manual_dir" in result.stderr
    assert "Traceback" not in result.stderr


def _fold_result(fold, accuracy, bands, yaw_r2):
    return {"method": "m", "dataset": "d", "protocol": "subject_kfold", "class_names": ["a", "b"],
            "fold": fold, "accuracy": accuracy, "mean_class_accuracy": accuracy,
            "num_test_images": 10, "num_test_subjects": 2, "confusion_matrix": [[5, 0], [0, 5]],
            "identity_leakage": {"linear_acc": 0.5, "mlp_acc": 0.6, "chance": 0.5},
            "pose_leakage": {"yaw_r2": yaw_r2}, "accuracy_by_abs_yaw": bands}


def test_summary_averages_yaw_bands_over_the_folds_that_cover_them_and_tables_compare():
    from idfer_jax import evaluation as E
    from idfer_jax.train import crossval as crossval_lib

    summary = crossval_lib.summarise([
        _fold_result(0, 0.5, {"0-20": 0.6, "20-40": 0.4}, 0.2),
        _fold_result(1, 0.7, {"0-20": 0.8, "20-40": 0.6, "40-60": 0.3}, 0.4),
    ])
    stats = summary["mean_std"]
    assert stats["accuracy |yaw| 0-20"]["mean"] == pytest.approx(0.7)
    assert stats["accuracy |yaw| 40-60"] == {"mean": pytest.approx(0.3), "std": 0.0}  # fold 1 only
    table = E.comparison_table([summary, summary], names=["baseline", "other"])
    lines = table.strip().splitlines()
    assert len(lines) == 4 and "other" in lines[-1]
    assert "0.600 ± 0.100" in lines[-1]  # accuracy: mean ± population std over the 2 folds
    assert "|yaw\\| 40-60°" in lines[0] and "yaw R²" in lines[0]


def test_idfer_compare_tables_runs_on_the_same_folds_and_refuses_others(tmp_path, capsys):
    from idfer_jax import main
    from idfer_jax.train.crossval import CompareError, compare

    def finished_run(name: str, folds, accuracy: float) -> str:
        directory = tmp_path / name
        directory.mkdir()
        accuracy = {"mean": accuracy, "std": 0.01}
        summary = {"method": "baseline", "num_folds": 2, "mean_std": {"accuracy": accuracy}}
        (directory / "crossval_results.json").write_text(json.dumps(summary))
        (directory / "folds.json").write_text(json.dumps({"test_subjects": folds}))
        return str(directory)

    with pytest.raises(main.UsageError, match="at least one crossval workdir"):  # exit code 2
        main._main(["idfer", "compare"])
    a = finished_run("a", [[0, 1], [2, 3]], 0.5)
    b = finished_run("b", [[0, 1], [2, 3]], 0.75)
    main._main(["idfer", "compare", a, f"with adversary={b}"])
    table = capsys.readouterr().out
    # Two unnamed rows of one method would look alike: the unnamed one takes its directory's name.
    assert "| a " in table and "| with adversary " in table
    assert "0.500 ± 0.010" in table and "0.750 ± 0.010" in table
    other = finished_run("c", [[0, 2], [1, 3]], 0.9)
    with pytest.raises(CompareError, match="test_subjects differ"):
        compare([a, other])
    with pytest.raises(CompareError, match="idfer crossval"):
        compare([str(tmp_path / "missing")])
    # A sweep directory with '=' in its name, named or not.
    swept = finished_run("lr=0.1", [[0, 1], [2, 3]], 0.6)
    assert "0.600 ± 0.010" in compare([a, swept]) and "| sweep " in compare([a, f"sweep={swept}"])
    # Another dataset on the same subject ids does not compare either.
    d = tmp_path / "d"
    d.mkdir()
    (d / "crossval_results.json").write_text((tmp_path / "a" / "crossval_results.json").read_text())
    (d / "folds.json").write_text(json.dumps({"test_subjects": [[0, 1], [2, 3]], "dataset": "jaffe"}))
    with pytest.raises(CompareError, match="dataset differ"):
        compare([a, str(d)])
    # A cut, empty or foreign results file is an error that says how to write it again.
    for content, message in [('{"mean_std": {', "cannot be read"), ("", "cannot be read"),
                             ("[]", "holds a list"), ("{}", "not the result of `idfer crossval`")]:
        (d / "crossval_results.json").write_text(content)
        with pytest.raises(CompareError, match=message):
            compare([str(d)])
