"""Bad-input cases of kind 'runs' (workdirs, checkpoints, resumes, fold files, divergence, Ctrl-C) for
scripts/check_bad_inputs.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from scripts.bad_inputs import Case


def _wd(ctx) -> str:
    return str(ctx.tmp / "run")


def _trained(ctx) -> list[list[str]]:
    """One finished 4-step smoke run in ctx.tmp/run (checkpoints at 2 and 4)."""
    return [["train", *ctx.smoke(_wd(ctx))]]


def _train(ctx, *extra: str) -> list[str]:
    return ["train", *ctx.smoke(_wd(ctx), *extra)]


def _folds_seed_is_still_0(ctx, proc) -> str | None:
    seed = json.loads((ctx.tmp / "run" / "folds.json").read_text()).get("seed")
    return None if seed == 0 else f"folds.json was rewritten (seed {seed})"


def _corrupt(ctx, *, every: bool) -> None:
    checkpoints = ctx.tmp / "run" / "checkpoints"
    steps = sorted((int(n) for n in os.listdir(checkpoints) if n.isdigit()), reverse=True)
    for step in steps if every else steps[:1]:
        (checkpoints / str(step) / "config" / "metadata").write_text('{"method": "baseli')


def _corrupt_newest(ctx) -> list[str]:
    _corrupt(ctx, every=False)
    return _train(ctx)


def _corrupt_all(ctx) -> list[str]:
    _corrupt(ctx, every=True)
    return _train(ctx)


def _corrupt_all_restart(ctx) -> list[str]:
    _corrupt(ctx, every=True)
    return _train(ctx, "--restart")


def _started_over(ctx, proc) -> str | None:
    run = ctx.tmp / "run"
    moved = os.listdir(run / "corrupt_checkpoints") if (run / "corrupt_checkpoints").is_dir() else []
    if not any(m.startswith("4-") for m in moved) or not any(m.startswith("2-") for m in moved):
        return f"the unreadable checkpoints were not all moved aside (corrupt_checkpoints: {moved})"
    if not (run / "checkpoints" / "4").is_dir():
        return "the restarted run saved no step 4"
    return None


def _moved_aside_and_saved_again(ctx, proc) -> str | None:
    run = ctx.tmp / "run"
    moved = os.listdir(run / "corrupt_checkpoints") if (run / "corrupt_checkpoints").is_dir() else []
    if not any(m.startswith("4-") for m in moved):
        return f"checkpoint 4 was not moved aside (corrupt_checkpoints: {moved})"
    if not (run / "checkpoints" / "4").is_dir():
        return "checkpoint 4 was not saved again"
    if "moved it to" not in proc.stdout:
        return "no warning about the corrupt checkpoint"
    return None


def _nothing_moved(ctx, proc) -> str | None:
    return "checkpoints were moved" if (ctx.tmp / "run" / "corrupt_checkpoints").exists() else None


def _hold_the_lock(ctx) -> list[str]:
    """Starts a real long `idfer train` on the workdir (killed by `check`, or by `timeout` at worst) and
    returns the second one's arguments once the first holds the lock."""
    args = _train(ctx, "--config.train.num_steps=100000", "--config.train.checkpoint_every=100000")
    holder = subprocess.Popen(["timeout", "300", sys.executable, "-m", "idfer_jax.main", *args],
                              cwd=ctx.tmp, env=ctx.env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    (ctx.tmp / "holder.pgid").write_text(str(holder.pid))
    lock = ctx.tmp / "run" / ".lock"
    deadline = time.time() + 240
    while time.time() < deadline and not (lock.exists() and lock.read_text().strip()):
        time.sleep(0.2)
    return args


def _names_the_holder(ctx, proc) -> str | None:
    pgid = int((ctx.tmp / "holder.pgid").read_text())
    pid = (ctx.tmp / "run" / ".lock").read_text().split()[0]  # "<pid> <command>"
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return None if f"process {pid}" in proc.stderr else f"the message does not name the holder's pid {pid}"


def _a_file(ctx) -> list[str]:
    (ctx.tmp / "notes.txt").write_text("mine")
    return ["train", *ctx.smoke(str(ctx.tmp / "notes.txt"))]


def _file_kept(ctx, proc) -> str | None:
    return None if (ctx.tmp / "notes.txt").read_text() == "mine" else "the file was changed"


def _under_a_file(ctx) -> list[str]:
    (ctx.tmp / "notes.txt").write_text("mine")
    return ["train", *ctx.smoke(str(ctx.tmp / "notes.txt" / "run"))]


def _halves(first: range, second: range) -> str:
    return json.dumps({"test_subject_names": [[str(s) for s in first], [str(s) for s in second]]})


def _trained_on_a_fold_file(ctx) -> list[list[str]]:
    (ctx.tmp / "ff.json").write_text(_halves(range(12), range(12, 24)))
    return [_train(ctx, f"--config.data.fold_file={ctx.tmp / 'ff.json'}")]


def _evaluate_on_the_edited_fold_file(ctx) -> list[str]:
    (ctx.tmp / "ff.json").write_text(_halves(range(12, 24), range(12)))  # fold 0 now tests training subjects
    return ["evaluate", *ctx.smoke(_wd(ctx), f"--config.data.fold_file={ctx.tmp / 'ff.json'}")]


def _fold_file(content: str | None):
    def argv(ctx) -> list[str]:
        path = ctx.tmp / "folds.json"
        if content is not None:
            path.write_text(content)
        return _train(ctx, f"--config.data.fold_file={path}")

    return argv


CASES: list[Case] = [
    Case("rerun with another data.split_seed (folds.json kept)",
         lambda ctx: _train(ctx, "--config.data.split_seed=1"), expect="data.split_seed: checkpoint 0, now 1",
         before=_trained, check=_folds_seed_is_still_0),
    Case("resume with another learning rate",
         lambda ctx: _train(ctx, "--config.optimizer.learning_rate=0.5", "--config.train.num_steps=8"),
         expect="optimizer.learning_rate: checkpoint 0.002, now 0.5", before=_trained),
    Case("resume with fewer num_steps than the checkpoint",
         lambda ctx: _train(ctx, "--config.train.num_steps=2"), expect="already at step 4",
         before=_trained),
    Case("newest checkpoint corrupt: moved aside, run continues", _corrupt_newest, exit_code=0,
         before=_trained, check=_moved_aside_and_saved_again),
    Case("every checkpoint corrupt: refuses without --restart", _corrupt_all, expect="--restart",
         before=_trained, check=_nothing_moved),
    Case("every checkpoint corrupt, --restart: starts over, keeps them aside", _corrupt_all_restart,
         exit_code=0, before=_trained, check=_started_over),
    Case("second train on a workdir in use", _hold_the_lock, expect="is in use by process",
         check=_names_the_holder),
    Case("workdir is a file", _a_file, expect="is a file, not a directory", check=_file_kept),
    Case("workdir under a file", _under_a_file, expect="Not a directory"),
    Case("workdir cannot be written (/proc)",
         lambda ctx: ["train", *ctx.smoke("/proc/idfer_run")], expect="/proc/idfer_run"),
    Case("data_dir cannot be written (/proc)",
         lambda ctx: _train(ctx, "--config.data.data_dir=/proc/idfer_tfds"),
         expect="Cannot prepare synthetic_faces/smoke in data_dir /proc/idfer_tfds"),
    Case("evaluate after the fold file was edited (tests on training subjects)",
         _evaluate_on_the_edited_fold_file, expect="not split as it was when this model was trained",
         before=_trained_on_a_fold_file),
    Case("fold file missing", _fold_file(None), expect="does not exist"),
    Case("fold file malformed JSON", _fold_file('{"test_subject_names": [["1"'), expect="is not valid JSON"),
    Case("fold file of the wrong shape", _fold_file("[[1, 2], [3, 4]]"), expect="holds a JSON list"),
    Case("fold file naming unknown subjects", _fold_file('{"test_subject_names": [["S77"], ["1"]]}'),
         expect="names subjects this dataset lacks: S77"),
    Case("data.num_folds=1", lambda ctx: _train(ctx, "--config.data.num_folds=1"),
         expect="needs at least 2 folds"),
    Case("data.num_folds above the subjects", lambda ctx: _train(ctx, "--config.data.num_folds=999"),
         expect="has only 24 subjects"),
    Case("evaluate with no checkpoint", lambda ctx: ["evaluate", *ctx.smoke(_wd(ctx))],
         expect="Train first"),
    Case("loss becomes inf/NaN (learning rate 1e38)",
         lambda ctx: _train(ctx, "--config.optimizer.learning_rate=1e38", "--config.optimizer.warmup_steps=0",
                            "--config.train.log_every=1"),
         expect="Training diverged at step"),
    Case("Ctrl-C during training", lambda ctx: _train(ctx, "--config.train.num_steps=100000"),
         expect="run the same command to resume from step", exit_code=130, before=_trained,
         signal_after=40),
]
