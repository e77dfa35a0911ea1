"""`idfer sweep`: the grid, the honest choice (validation subjects only) and what it writes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from idfer_jax import api, configuration
from idfer_jax.data import datasets
from idfer_jax.train import sweep
from tests.helpers import smoke


def _run(value, *, val_acc, val_leak, test_acc, test_leak, yaw=None):
    stat = lambda m: {"mean": m, "std": 0.01}  # noqa: E731
    return {
        "value": value, "workdir": f"adversary.identity={value}", "num_folds": 3,
        "test": {"accuracy": stat(test_acc), "identity_probe": stat(test_leak), "identity_chance": stat(0.05),
                 "verification_auc": stat(0.7), "yaw_r2": stat(yaw) if yaw is not None else None},
        "validation": {"accuracy": stat(val_acc), "identity_probe": stat(val_leak),
                       "identity_chance": stat(0.1), "yaw_r2": stat(yaw) if yaw is not None else None},
    }


def test_the_choice_reads_validation_numbers_only():
    runs = [
        _run(0.0, val_acc=0.50, val_leak=0.60, test_acc=0.50, test_leak=0.60),
        _run(1.0, val_acc=0.495, val_leak=0.30, test_acc=0.40, test_leak=0.50),
        # The best test numbers, but it loses validation accuracy beyond the tolerance: not chosen.
        _run(3.0, val_acc=0.45, val_leak=0.10, test_acc=0.55, test_leak=0.05),
    ]
    chosen, rule = sweep.choose(runs, "identity", tolerance=0.01)
    assert chosen == 1 and "validation" in rule and "never the test fold" in rule
    assert sweep.choose(runs, "identity", tolerance=0.1)[0] == 2
    with pytest.raises(configuration.ConfigError, match="yaw_r2"):
        sweep.choose(runs, "pose", tolerance=0.01)


def test_the_grid_is_parsed_cast_to_the_key_type_and_checked():
    config = api.load_config(smoke("baseline"))
    key, values = sweep.parse_grid("config.adversary.identity=0,1,3")
    assert key == "adversary.identity" and values == ["0", "1", "3"]
    changed, value = sweep.with_value(config, key, "3")
    assert value == 3.0 and changed.adversary.identity == 3.0 and config.adversary.identity == 0.0
    _, steps = sweep.with_value(config, "train.num_steps", "20")
    assert steps == 20 and isinstance(steps, int)
    for spec in ("adversary.identity=1", "adversary.identity", "=1,2", "adversary.identity=1,1"):
        with pytest.raises(configuration.ConfigError, match="--sweep"):
            sweep.parse_grid(spec)
    with pytest.raises(configuration.ConfigError, match="does not exist.*Did you mean 'identity'"):
        sweep.with_value(config, "adversary.identiti", "1")
    with pytest.raises(configuration.ConfigError, match="no 'adversry' block.*Did you mean 'adversary'"):
        sweep.with_value(config, "adversry.identity", "1")
    for tolerance in (-1.0, float("nan")):
        with pytest.raises(configuration.ConfigError, match="--tolerance"):
            sweep.check_arguments(key, values, "", tolerance)
    with pytest.raises(configuration.ConfigError, match="--select"):
        sweep.check_arguments(key, values, "identiy", 0.01)
    with pytest.raises(configuration.ConfigError, match="validation_fraction"):
        sweep.check_arguments("data.validation_fraction", ["0", "0.3"], "", 0.01)
    with pytest.raises(configuration.ConfigError, match="is a number"):
        sweep.with_value(config, "adversary.identity", "high")
    with pytest.raises(configuration.ConfigError, match="integer"):
        sweep.with_value(config, "train.num_steps", "2.5")
    assert sweep.default_selection("adversary.pose") == "pose"
    assert sweep.default_selection("adversary.identity") == "identity"


def test_the_table_and_the_plot_are_written(tmp_path):
    runs = [_run(0.0, val_acc=0.5, val_leak=0.6, test_acc=0.5, test_leak=0.6, yaw=0.2),
            _run(1.0, val_acc=0.5, val_leak=0.2, test_acc=0.49, test_leak=0.25, yaw=0.1)]
    chosen, rule = sweep.choose(runs, "identity", 0.01)
    result = {"key": "adversary.identity", "values": [0.0, 1.0], "select": "identity", "tolerance": 0.01,
              "chosen": chosen, "chosen_value": 1.0, "rule": rule, "validation_fraction": 0.25,
              "method": "baseline", "runs": runs}
    sweep.write_outputs(str(tmp_path), result)
    report = (tmp_path / "sweep.md").read_text()
    assert "1.0 (chosen)" in report and "0.0 (baseline)" in report and "![sweep](sweep.png)" in report
    assert (tmp_path / "sweep.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "sweep_results.json").read_text())["chosen_value"] == 1.0


def test_validation_subjects_come_from_the_training_subjects_only():
    config = api.load_config(smoke("baseline"))
    subjects = np.repeat(np.arange(10), 3)
    train = np.flatnonzero(subjects < 8)  # subjects 8, 9 are the test fold
    config.data.validation_fraction = 0.25
    kept, validation = datasets.hold_out_validation_subjects(config.data, train, subjects)
    held = set(subjects[validation])
    assert len(held) == 2 and held <= set(range(8)) and not held & set(subjects[kept])
    assert sorted(np.concatenate([kept, validation])) == sorted(train)
    config.data.fold = 1  # another fold draws its own validation subjects, reproducibly
    again = datasets.hold_out_validation_subjects(config.data, train, subjects)[1]
    assert np.array_equal(again, datasets.hold_out_validation_subjects(config.data, train, subjects)[1])
    config.data.validation_fraction = 0.89  # 7 of 8 held out would leave 1 to train on
    with pytest.raises(datasets.DataError, match="validation_fraction"):
        datasets.hold_out_validation_subjects(config.data, train, subjects)


@pytest.mark.slow
def test_a_sweep_runs_end_to_end_on_the_smoke_data(smoke_data_dir, tmp_path):
    config = api.load_config(smoke("baseline"))
    config.data.data_dir = smoke_data_dir
    config.data.num_folds = 2
    config.train.num_steps = 6
    config.train.checkpoint_every = 6
    config.adversary.formulation = "ridge"
    result = api.sweep(config, str(tmp_path), "adversary.identity", ["0", "1"])
    assert [r["value"] for r in result["runs"]] == [0.0, 1.0]
    for r in result["runs"]:
        assert r["validation"]["accuracy"] is not None and r["test"]["accuracy"] is not None
        assert os.path.exists(tmp_path / r["workdir"] / "crossval_results.json")
    assert (tmp_path / "sweep.png").exists() and (tmp_path / "sweep.md").exists()
