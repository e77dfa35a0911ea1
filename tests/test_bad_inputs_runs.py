"""Issue 16, runs: workdirs, checkpoints, resumes, fold files, divergence, Ctrl-C and the filesystem.

Every case ends in one clear error (a UserError whose message names the key / path / step and the fix) or
in the right outcome, and nothing a user made is lost: a refused rerun writes nothing, a corrupt checkpoint
is moved aside (never deleted), a diverged run keeps its last good checkpoint. Checkpoints are real ones,
made by a few steps of the smoke config once per module and copied for each test.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from idfer_jax import api, methods
from idfer_jax.data import datasets, protocols
from idfer_jax.data.errors import DataError
from idfer_jax.errors import Interrupted, UserError
from idfer_jax.train import checkpoint as ckpt_lib
from idfer_jax.train import trainer as trainer_lib
from idfer_jax.train import workdir as workdir_lib
from idfer_jax.train import writers
from tests.conftest import REPO

STEPS = 4  # the base run: checkpoints at 2 and 4


def _config(smoke_config, **train):
    config = smoke_config
    config.train.num_steps = STEPS
    config.train.checkpoint_every = 2
    config.train.log_every = 2
    config.train.keep_checkpoints = 2
    config.train.async_checkpoints = False
    config.train.update(train)
    return config


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, smoke_data_dir):
    """A finished 4-step smoke run (checkpoints 2 and 4, metrics at 2 and 4), made once."""
    config = api.load_config(str(REPO / "configs" / "baseline_synthetic.py") + ":smoke")
    config.data.data_dir = smoke_data_dir
    workdir = tmp_path_factory.mktemp("base") / "run"
    api.train(_config(config), str(workdir))
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
    return workdir


@pytest.fixture
def run_copy(base_run, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(base_run, target)
    return target


def _snapshot(workdir) -> dict[str, bytes]:
    """Every file of a workdir with its bytes (the lock file aside)."""
    out = {}
    for root, _, files in os.walk(workdir):
        for name in files:
            path = os.path.join(root, name)
            if name != workdir_lib.LOCK_FILE:
                out[os.path.relpath(path, workdir)] = open(path, "rb").read()
    return out


# --- 1, 2: nothing is written before the config check; the resume rule -------------------------------


def test_rerun_with_another_split_seed_is_refused_before_anything_is_written(smoke_config, run_copy):
    before = _snapshot(run_copy)
    config = _config(smoke_config)
    config.data.split_seed = 1
    with pytest.raises(ckpt_lib.CheckpointMismatchError, match=r"data\.split_seed: checkpoint 0, now 1"):
        api.train(config, str(run_copy))
    assert _snapshot(run_copy) == before  # folds.json, metrics and checkpoints untouched


@pytest.mark.parametrize("key, value, old", [
    ("optimizer.learning_rate", 0.5, "0.002"),
    ("optimizer.name", "sgd", "'adamw'"),
    ("dtype", "bfloat16", "'float32'"),
    ("adversary.identity", 0.3, "0.0"),
    ("data.crop_padding", 0, "2"),
])
def test_resume_refuses_a_change_that_would_alter_training_naming_key_values_and_fix(
        smoke_config, run_copy, key, value, old):
    config = _config(smoke_config, num_steps=8)
    block, name = key.rsplit(".", 1) if "." in key else (None, key)
    (config[block] if block else config)[name] = value
    with pytest.raises(ckpt_lib.CheckpointMismatchError) as e:
        api.train(config, str(run_copy))
    message = str(e.value)
    assert f"{key}: checkpoint {old}, now {value!r}" in message
    assert "new --workdir" in message and f"--config.{key}=" in message
    assert sorted(os.listdir(run_copy / "checkpoints")) == ["2", "4"]


def test_resume_accepts_more_steps_new_intervals_and_eval_settings(smoke_config, run_copy):
    config = _config(smoke_config, num_steps=6, log_every=1, checkpoint_every=3, keep_checkpoints=3)
    config.eval.batch_size = 32
    result = api.train(config, str(run_copy))
    assert result.start_step == 4 and int(result.state.step) == 6
    assert "6" in os.listdir(run_copy / "checkpoints")


def test_resume_rule_unit():
    saved = {"train": {"num_steps": 4, "log_every": 2}, "eval": {"batch_size": 64},
             "optimizer": {"learning_rate": 0.002}, "data": {"data_dir": "/a", "class_names": ["x", "y"]}}
    accepted = {"train": {"num_steps": 9, "log_every": 1}, "eval": {"batch_size": 8},
                "optimizer": {"learning_rate": 0.002}, "data": {"data_dir": "/b", "class_names": ("x", "y")},
                "new_key": 1}
    assert ckpt_lib.config_differences(saved, accepted) == []
    refused = json.loads(json.dumps(accepted))
    refused["optimizer"]["learning_rate"] = 0.1
    assert ckpt_lib.config_differences(saved, refused) == [("optimizer.learning_rate", 0.002, 0.1)]


def test_fewer_steps_than_the_checkpoint_says_the_run_is_past_them(smoke_config, run_copy):
    before = _snapshot(run_copy)
    with pytest.raises(ckpt_lib.CheckpointMismatchError, match="already at step 4, past train.num_steps=2"
                       ) as e:
        api.train(_config(smoke_config, num_steps=2), str(run_copy))
    assert "idfer evaluate" in str(e.value) and "new --workdir" in str(e.value)
    assert _snapshot(run_copy) == before


# --- 3: corrupt checkpoints ---------------------------------------------------------------------------


def _truncate_state(step_dir):
    files = sorted((p for p in (step_dir / "state").rglob("*") if p.is_file()),
                   key=lambda p: p.stat().st_size)
    files[-1].write_bytes(files[-1].read_bytes()[: files[-1].stat().st_size // 2])


def _delete_state_file(step_dir):
    (step_dir / "state" / "manifest.ocdbt").unlink()


def _garbage_config(step_dir):
    (step_dir / "config" / "metadata").write_text('{"method": "baseline", "trunc')


def _delete_config(step_dir):
    (step_dir / "config" / "metadata").unlink()


@pytest.mark.parametrize("damage", [_truncate_state, _delete_state_file, _garbage_config, _delete_config])
def test_corrupt_newest_checkpoint_is_moved_aside_and_the_run_continues(smoke_config, run_copy, damage,
                                                                        capsys):
    damage(run_copy / "checkpoints" / "4")
    config = _config(smoke_config)
    result = api.train(config, str(run_copy))
    assert result.start_step == 2 and int(result.state.step) == 4
    moved = os.listdir(run_copy / ckpt_lib.CORRUPT_DIR)
    assert len(moved) == 1 and moved[0].startswith("4-")  # kept, outside orbax's view
    assert "moved it to" in capsys.readouterr().out
    assert sorted(os.listdir(run_copy / "checkpoints")) == ["2", "4"]  # step 4 saved again
    # The same command again: resumes the new checkpoint 4, no StepAlreadyExistsError.
    assert api.train(config, str(run_copy)).start_step == 4
    steps = [json.loads(line)["step"] for line in open(run_copy / "metrics.jsonl")]
    assert steps == [2, 4]


def test_every_checkpoint_corrupt_refuses_to_start_over_unless_restart(smoke_config, run_copy):
    for step in ("2", "4"):
        _garbage_config(run_copy / "checkpoints" / step)
    before = _snapshot(run_copy)
    with pytest.raises(ckpt_lib.NoUsableCheckpointError, match="--restart") as e:
        api.train(_config(smoke_config), str(run_copy))
    assert "step 4, 2" in str(e.value)
    assert _snapshot(run_copy) == before
    result = api.train(_config(smoke_config), str(run_copy), restart=True)
    assert result.start_step == 0 and int(result.state.step) == 4
    assert sorted(n.split("-")[0] for n in os.listdir(run_copy / ckpt_lib.CORRUPT_DIR)) == ["2", "4"]


# --- 4: the lock --------------------------------------------------------------------------------------


def test_second_run_on_a_locked_workdir_names_the_first_ones_pid(smoke_config, run_copy):
    with workdir_lib.locked(str(run_copy), "idfer crossval"):
        with pytest.raises(workdir_lib.WorkdirBusyError,
                           match=f"in use by process {os.getpid()} .`idfer crossval` on this workdir"):
            api.train(_config(smoke_config), str(run_copy))
    # Released on exit, and a stale pid (a dead process's) does not block.
    (run_copy / workdir_lib.LOCK_FILE).write_text("999999\n")
    assert api.train(_config(smoke_config), str(run_copy)).start_step == 4


@pytest.mark.slow
def test_cli_second_train_on_a_locked_workdir_is_refused(smoke_config, run_copy, compilation_cache):
    from tests.conftest import subprocess_env

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from idfer_jax.train import workdir as w\n"
         "with w.locked(sys.argv[1]):\n print('locked', flush=True); time.sleep(120)", str(run_copy)],
        stdout=subprocess.PIPE, text=True, env=subprocess_env(compilation_cache))
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = subprocess.run(
            [sys.executable, "-m", "idfer_jax.main", "train",
             f"--config={REPO / 'configs' / 'baseline_synthetic.py'}:smoke", f"--workdir={run_copy}",
             f"--config.data.data_dir={smoke_config.data.data_dir}", "--config.train.num_steps=4"],
            capture_output=True, text=True, env=subprocess_env(compilation_cache), timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"in use by process {holder.pid}" in proc.stderr.splitlines()[-1]


# --- 5: the filesystem --------------------------------------------------------------------------------


def test_workdir_that_is_a_file_or_under_a_file(smoke_config, tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    with pytest.raises(ckpt_lib.WorkdirError, match="notes.txt is a file, not a directory"):
        api.train(_config(smoke_config), str(a_file))
    with pytest.raises(ckpt_lib.WorkdirError, match="Not a directory") as e:
        workdir_lib.prepare(str(a_file / "run"))
    assert "notes.txt" in str(e.value)
    assert a_file.read_text() == "mine"


def test_unwritable_workdir_names_the_path():
    # Root may write anywhere chmod forbids; /proc refuses everyone.
    with pytest.raises(ckpt_lib.WorkdirError, match="/proc/idfer_run") as e:
        workdir_lib.prepare("/proc/idfer_run")
    assert isinstance(e.value, UserError) and "--workdir" in str(e.value)


def test_full_disk_during_a_checkpoint_save_keeps_the_last_good_one(smoke_config, run_copy, monkeypatch):
    real_save = ckpt_lib.ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        if step == 6:
            raise OSError(errno.ENOSPC, "No space left on device", str(run_copy / "checkpoints" / "6"))
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ckpt_lib.ocp.CheckpointManager, "save", save)
    with pytest.raises(ckpt_lib.WorkdirError, match="No space left on device") as e:
        api.train(_config(smoke_config, num_steps=6), str(run_copy))
    assert "checkpoints/6" in str(e.value) and "step 4) is kept" in str(e.value)
    monkeypatch.undo()
    assert api.train(_config(smoke_config, num_steps=6), str(run_copy)).start_step == 4


# What tensorstore (orbax's writer) raises on a full disk: a ValueError naming the errno, not an OSError.
TENSORSTORE_ENOSPC = (
    'RESOURCE_EXHAUSTED: Error writing local file "{path}/state.orbax-checkpoint-tmp/_sharding": Failed '
    "writing: ... Failed to write 3722 bytes to file 11: No space left on device [os_error_code='28'] "
    "[tensorstore_spec='{{...}}']"
)


@pytest.mark.parametrize("when", ["save", "background"])
def test_tensorstore_full_disk_is_one_line_and_the_last_checkpoint_restores(smoke_config, run_copy,
                                                                            monkeypatch, when):
    """`save`: the save call raises; `background`: an async save fails in its thread and orbax raises
    that error once, at the next wait_until_finished (here the close at the end of the run)."""
    manager = ckpt_lib.ocp.CheckpointManager
    real_save, real_wait = manager.save, manager.wait_until_finished
    pending: list[Exception] = []

    def save(self, step, *args, **kwargs):
        if step == 6:
            error = ValueError(TENSORSTORE_ENOSPC.format(path=run_copy / "checkpoints" / "6.tmp"))
            if when == "save":
                raise error
            pending.append(error)
            return True
        return real_save(self, step, *args, **kwargs)

    def wait_until_finished(self):
        real_wait(self)
        if pending:
            raise pending.pop()

    monkeypatch.setattr(manager, "save", save)
    monkeypatch.setattr(manager, "wait_until_finished", wait_until_finished)
    with pytest.raises(ckpt_lib.WorkdirError) as e:
        api.train(_config(smoke_config, num_steps=6, async_checkpoints=when == "background"), str(run_copy))
    message = str(e.value)
    assert isinstance(e.value, UserError) and e.value.errno == errno.ENOSPC and "\n" not in message
    assert message.startswith(f"Cannot save a checkpoint in {run_copy / 'checkpoints'}: No space left on "
                              "device; free some space, or pass a --workdir on another disk.")
    assert message.endswith("The last complete checkpoint (step 4) is kept.")
    assert not pending and sorted(os.listdir(run_copy / "checkpoints")) == ["2", "4"]
    monkeypatch.undo()
    trainer = trainer_lib.Trainer(_config(smoke_config, num_steps=6), methods.build)
    step, variables = trainer.restore_variables(str(run_copy))
    assert step == 4 and all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(variables))
    assert api.train(_config(smoke_config, num_steps=6), str(run_copy)).start_step == 4


def _log_record(pathname: str, exc: Exception, name: str = "absl"):
    return logging.LogRecord(name, logging.ERROR, pathname, 387, "save failed", None, (type(exc), exc, None))


def test_only_orbax_reports_of_a_failed_save_are_dropped(caplog):
    ckpt_lib._quiet_save_error_reports()
    enospc = ValueError(TENSORSTORE_ENOSPC.format(path="/w/checkpoints/6"))
    orbax_file = "/site-packages/orbax/checkpoint/_src/futures/future.py"
    kept = [_log_record(orbax_file, ValueError("RESOURCE_EXHAUSTED: out of memory")),  # not a file error
            _log_record("/site-packages/mylib/io.py", enospc)]  # not orbax's
    with caplog.at_level(logging.ERROR):
        for record in [_log_record(orbax_file, enospc), _log_record("/lib/asyncio/base_events.py", enospc,
                                                                    name="asyncio")] + kept:
            logging.getLogger(record.name).handle(record)
    assert [r.pathname for r in caplog.records] == [r.pathname for r in kept]


def test_loop_closed_reports_are_held_until_a_save_is_known_to_have_failed(monkeypatch):
    shown: list = []
    monkeypatch.setattr(ckpt_lib, "_previous_unraisablehook", shown.append)
    monkeypatch.setattr(ckpt_lib, "_save_error_seen", ckpt_lib.threading.Event())
    monkeypatch.setattr(ckpt_lib, "_held_reports", [])
    loop = asyncio.new_event_loop()
    loop.close()
    try:
        loop.call_soon_threadsafe(print)
    except RuntimeError as e:  # as tensorstore's C++ callback meets it: call_soon_threadsafe first
        closed = types.SimpleNamespace(exc_type=RuntimeError, exc_value=e, err_msg=None, object=None,
                                       exc_traceback=e.__traceback__.tb_next)
    other = types.SimpleNamespace(exc_type=KeyError, exc_value=KeyError("x"), exc_traceback=None,
                                  err_msg=None, object=None)
    ckpt_lib._unraisablehook(other)
    ckpt_lib._unraisablehook(closed)
    assert shown == [other]
    ckpt_lib._release_held_reports()  # the save went well: the report was not noise
    assert [r.exc_value for r in shown[1:]] == [closed.exc_value]
    ckpt_lib._unraisablehook(closed)
    ckpt_lib._note_save_error()
    ckpt_lib._unraisablehook(closed)
    ckpt_lib._release_held_reports()
    assert len(shown) == 2


@pytest.mark.parametrize("error", [
    RuntimeError('Failed to finalize writing of split "train": write() failed: No space left on device; '
                 "array_record_writer.cc:512"),
    ValueError("RESOURCE_EXHAUSTED: Failed writing: No space left on device [os_error_code='28']"),
    OSError(errno.ENOSPC, "No space left on device"),
])
def test_full_disk_while_preparing_data_names_the_data_dir(smoke_config, tmp_path, monkeypatch, error):
    def download_and_prepare(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(datasets.tfds.core.DatasetBuilder, "download_and_prepare", download_and_prepare)
    smoke_config.data.data_dir = str(tmp_path / "tfds")
    with pytest.raises(DataError) as e:
        datasets.open_dataset(smoke_config.data)
    assert str(e.value) == (
        f"Cannot prepare synthetic_faces/smoke in data_dir {tmp_path / 'tfds'}: No space left on device; "
        "free some space there, or pass a data_dir on another disk with --config.data.data_dir.")


def test_other_data_preparation_errors_are_not_called_a_full_disk(smoke_config, tmp_path, monkeypatch):
    def download_and_prepare(self, *args, **kwargs):
        raise RuntimeError("a bug in a builder")

    monkeypatch.setattr(datasets.tfds.core.DatasetBuilder, "download_and_prepare", download_and_prepare)
    smoke_config.data.data_dir = str(tmp_path / "tfds")
    with pytest.raises(RuntimeError, match="a bug in a builder") as e:
        datasets.open_dataset(smoke_config.data)
    assert not isinstance(e.value, UserError)


def test_full_disk_while_writing_metrics_names_the_file(tmp_path):
    writer = writers.MetricWriter(str(tmp_path), enabled=True)

    class Full:
        def write(self, _):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            pass

    writer._jsonl = Full()
    with pytest.raises(ckpt_lib.WorkdirError, match="metrics.jsonl: No space left on device"):
        writer.write(1, {"loss": 1.0})
    writer.close()


def test_data_dir_that_cannot_be_written_names_it(smoke_config, tmp_path):
    smoke_config.data.data_dir = "/proc/idfer_tfds"
    with pytest.raises(DataError, match="/proc/idfer_tfds") as e:
        datasets.open_dataset(smoke_config.data)
    assert "data_dir" in str(e.value)


# --- 6: metrics.jsonl sees each step once ---------------------------------------------------------------


class Stop(Exception):
    pass


def test_metrics_keep_each_step_once_after_a_resume(smoke_config, run_copy):
    config = _config(smoke_config, num_steps=8, log_every=1)

    def stop_at_7(step, state, metrics):
        if step == 7:  # logged 5, 6, 7; checkpoint 6
            raise Stop

    with pytest.raises(Stop):
        api.train(config, str(run_copy), hooks=[stop_at_7])
    assert api.train(config, str(run_copy)).start_step == 6
    steps = [json.loads(line)["step"] for line in open(run_copy / "metrics.jsonl")]
    assert steps == [2, 4, 5, 6, 7, 8]


# --- 7: fold files ------------------------------------------------------------------------------------


def test_synthetic_fold_file_names_its_subjects_and_replays_every_fold(smoke_config, tmp_path):
    first = datasets.open_dataset(smoke_config.data)
    names = first.fold_file["test_subject_names"]
    assert all(n for fold in names for n in fold)
    assert names == [[str(s) for s in fold] for fold in first.fold_file["test_subjects"]]
    path = tmp_path / "folds.json"
    datasets.write_fold_file(first, str(path))
    for fold in range(first.num_folds):
        smoke_config.data.fold = fold
        smoke_config.data.fold_file = ""
        direct = datasets.open_dataset(smoke_config.data)
        smoke_config.data.fold_file = str(path)
        smoke_config.data.split_seed = 7  # ignored: the file decides
        replay = datasets.open_dataset(smoke_config.data)
        smoke_config.data.split_seed = 0
        np.testing.assert_array_equal(replay.test_indices, direct.test_indices)
        assert len(np.unique(replay.labels["subject"][replay.test_indices])) > 1


def test_old_fold_file_with_empty_names_replays_by_subject_id(smoke_config, tmp_path):
    first = datasets.open_dataset(smoke_config.data)
    old = dict(first.fold_file, test_subject_names=[[""] * len(f) for f in first.fold_file["test_subjects"]])
    path = tmp_path / "old_folds.json"
    path.write_text(json.dumps(old))
    smoke_config.data.fold_file = str(path)
    np.testing.assert_array_equal(datasets.open_dataset(smoke_config.data).test_indices, first.test_indices)


def test_image_folder_fold_file_round_trips(tmp_path):
    from tests.test_datasets import folder_config, write_folder

    root = write_folder(tmp_path / "raw", subjects=("S01", "S02", "S03", "S04", "S05"))
    config = folder_config(tmp_path, root, num_folds=3, split_seed=5)
    first = datasets.open_dataset(config)
    path = tmp_path / "folds.json"
    datasets.write_fold_file(first, str(path))
    for fold in range(3):
        config.fold, config.fold_file, config.split_seed = fold, "", 5
        direct = datasets.open_dataset(config)
        config.fold_file, config.split_seed = str(path), 0
        np.testing.assert_array_equal(datasets.open_dataset(config).test_indices, direct.test_indices)


@pytest.mark.parametrize("content, expect", [
    (None, "does not exist"),
    ('{"test_subject_names": [["1", "2"], ', "is not valid JSON"),
    ("[[1, 2], [3]]", "holds a JSON list"),
    ('{"protocol": "subject_kfold"}', "holds no folds"),
    ('{"test_subject_names": "1,2,3"}', "is not an object with 'test_subject_names'"),
    ('{"test_subject_names": [["1", "2"]]}', "has 1 fold"),
    ('{"test_subject_names": [["S77"], ["1"]]}', "names subjects this dataset lacks: S77"),
])
def test_bad_fold_file_is_a_data_error_naming_the_file(smoke_config, tmp_path, content, expect):
    path = tmp_path / "folds.json"
    if content is not None:
        path.write_text(content)
    smoke_config.data.fold_file = str(path)
    with pytest.raises(DataError, match=expect) as e:
        datasets.open_dataset(smoke_config.data)
    assert str(path) in str(e.value) and "--config.data.fold_file" in str(e.value)


def test_fold_file_with_a_subject_in_two_folds(smoke_config, tmp_path):
    folds = datasets.open_dataset(smoke_config.data).fold_file["test_subject_names"]
    folds[1].append(folds[0][0])
    path = tmp_path / "folds.json"
    path.write_text(json.dumps({"test_subject_names": folds}))
    smoke_config.data.fold_file = str(path)
    with pytest.raises(DataError, match=f"puts subjects {folds[0][0]} in more than one fold"):
        datasets.open_dataset(smoke_config.data)


@pytest.mark.parametrize("num_folds, expect", [(1, "needs at least 2 folds"), (0, "needs at least 2 folds"),
                                               (999, "has only 24 subjects")])
def test_num_folds_of_one_or_more_than_the_subjects(smoke_config, num_folds, expect):
    smoke_config.data.num_folds = num_folds
    with pytest.raises(DataError, match=expect) as e:
        datasets.open_dataset(smoke_config.data)
    assert f"data.num_folds={num_folds}" in str(e.value) and "--config.data.num_folds" in str(e.value)
    with pytest.raises(DataError):
        protocols.subject_folds(np.arange(24), num_folds, 0)


def test_crossval_rerun_with_another_split_is_refused_before_writing(smoke_config, tmp_path):
    workdir = tmp_path / "cv"
    workdir.mkdir()
    datasets.write_fold_file(datasets.open_dataset(smoke_config.data), str(workdir / "folds.json"))
    before = _snapshot(workdir)
    smoke_config.data.split_seed = 3
    with pytest.raises(ckpt_lib.CheckpointMismatchError, match="another split") as e:
        api.crossval(smoke_config, str(workdir))
    assert "seed: 0 there, 3 now" in str(e.value)
    assert _snapshot(workdir) == before


# --- 8: a loss that becomes NaN/inf -------------------------------------------------------------------


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(smoke_config, run_copy,
                                                                           monkeypatch):
    import jax
    import jax.numpy as jnp

    real = trainer_lib.Trainer.jitted_train_step

    def poisoned(self):
        step_fn = real(self)

        def run(state, batch):
            state, metrics = step_fn(state, batch)
            # From step 5 on the parameters are NaN, so the loss of step 6 is.
            bad = jnp.where(state.step >= 5, jnp.nan, 1.0)
            return state.replace(params=jax.tree.map(lambda p: p * bad, state.params)), metrics

        return run

    monkeypatch.setattr(trainer_lib.Trainer, "jitted_train_step", poisoned)
    with pytest.raises(trainer_lib.NonFiniteLossError) as e:
        api.train(_config(smoke_config, num_steps=8, log_every=1), str(run_copy))
    message = str(e.value)
    assert "diverged at step 6: model/loss = nan" in message
    assert "last good checkpoint, step 4" in message and "learning_rate" in message
    assert isinstance(e.value, UserError)
    assert sorted(os.listdir(run_copy / "checkpoints")) == ["2", "4"]  # nothing NaN was saved
    monkeypatch.undo()
    assert api.train(_config(smoke_config), str(run_copy)).start_step == 4


# --- 9: evaluate without a checkpoint; Ctrl-C ----------------------------------------------------------


def test_evaluate_without_a_checkpoint_says_to_train_first(smoke_config, tmp_path):
    workdir = tmp_path / "never_trained"
    with pytest.raises(trainer_lib.NoCheckpointError, match="Train first with `idfer train") as e:
        api.evaluate(smoke_config, str(workdir))
    assert isinstance(e.value, UserError) and str(workdir) in str(e.value)
    assert not workdir.exists()  # evaluating creates nothing


def test_evaluate_refuses_data_split_otherwise_than_in_training(smoke_config, run_copy):
    # As if images were added to the folder after training: the fold's subjects as opened now differ
    # from the run's folds.json, so the "held-out" subjects could be training subjects.
    folds = json.loads((run_copy / "folds.json").read_text())
    folds["test_subject_names"][0] = folds["test_subject_names"][1]
    (run_copy / "folds.json").write_text(json.dumps(folds))
    with pytest.raises(ckpt_lib.CheckpointMismatchError, match="not split as it was when this model was "
                       "trained .test_subject_names: trained") as e:
        api.evaluate(_config(smoke_config), str(run_copy))
    assert "Put the data back as it was" in str(e.value)
    assert not (run_copy / "report.md").exists()


def test_evaluate_after_the_fold_file_was_edited_says_how_to_put_it_back(tmp_path):
    from idfer_jax.train.evaluate import check_same_split

    trained = {"dataset": "x", "test_subject_names": [["a"], ["b"]], "num_train": 5}
    (tmp_path / "folds.json").write_text(json.dumps(trained))
    check_same_split(dict(trained), str(tmp_path), "/data/ff.json")  # unchanged: accepted
    with pytest.raises(ckpt_lib.CheckpointMismatchError,
                       match=f"cp {tmp_path / 'folds.json'} /data/ff.json"):
        check_same_split({**trained, "test_subject_names": [["b"], ["a"]]}, str(tmp_path), "/data/ff.json")


def test_resuming_on_records_that_changed_is_a_mismatch_not_a_corrupt_checkpoint(smoke_config, run_copy,
                                                                                 monkeypatch):
    # grain's own refusal when the data source under a checkpoint changed (a folder gained images).
    def restore(self, step, args=None):
        raise ValueError("DataSource in checkpoint does not match datasource in dataloader.")

    monkeypatch.setattr(ckpt_lib.ocp.CheckpointManager, "restore", restore)
    with pytest.raises(ckpt_lib.CheckpointMismatchError, match="trained on other data.*intact"):
        api.train(_config(smoke_config, num_steps=8), str(run_copy))
    assert sorted(os.listdir(run_copy / "checkpoints")) == ["2", "4"]  # nothing moved aside
    assert not (run_copy / ckpt_lib.CORRUPT_DIR).exists()


@pytest.mark.parametrize("value,flag", [(["anger", "happiness"], "\"('anger','happiness')\""),
                                        (["anger"], "\"('anger',)\""), ([], '"()"'), (0.002, "0.002"),
                                        ("", "''"), ("a b", "'a b'")])
def test_mismatch_hints_give_flag_values_the_shell_passes_back(value, flag):
    assert ckpt_lib._flag_value(value) == flag


def test_unreadable_checkpoint_reasons_leave_out_storage_internals():
    tensorstore = ValueError("NOT_FOUND: Error opening file: /w/4/state/d/abc [source locations='tensorstore/"
                             "x.cc:1'] See full TensorStore details: <bound method pybind11_detail_...>")
    assert ckpt_lib._reason(tensorstore) == "ValueError: NOT_FOUND: Error opening file: /w/4/state/d/abc"
    structure = ValueError("pytree structure error: different types at key path ['params']")
    assert "does not have the structure of this run's state" in ckpt_lib._reason(structure)


def test_ctrl_c_says_where_the_run_resumes(smoke_config, run_copy):
    def press_ctrl_c(step, state, metrics):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as e:
        api.train(_config(smoke_config, num_steps=8), str(run_copy), hooks=[press_ctrl_c])
    assert e.value.exit_code == 130
    assert str(e.value).startswith("Interrupted at step 5 of 8;") and "resume from step 4" in str(e.value)
    assert "\n" not in str(e.value)
