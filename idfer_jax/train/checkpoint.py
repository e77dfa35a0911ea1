"""Checkpoints: a thin wrapper over orbax's CheckpointManager, and the rule for resuming a run.

One checkpoint holds everything a run needs to continue exactly: the train state (params, model state,
every player's optimizer state, step, rng), the grain data-iterator state and the config; and what using
the model needs without its data (`inference`: classes, input, framing, the run; see
`idfer_jax.train.inference_record`). The state is
restored against an abstract target that carries the *current* shardings, so a checkpoint written on 8
devices restores on 1.

**What a resume accepts.** Running `idfer train` again on a workdir that holds checkpoints resumes the
newest one, and only if the config is the one that made it, except for these keys (`RESUMABLE_KEYS`):

- `train.num_steps`, to extend a run (never below the checkpoint's step: that run is already past it;
  evaluate it, or train in a new workdir). The learning-rate schedule and any ramp tied to the step budget
  (cosine decay, milestones, adversary warm-ups) are then laid over the new total from the resumed step on,
  so an extended run is not bit-identical to one started with the larger budget;
- `train.log_every`, `train.checkpoint_every`, `train.keep_checkpoints`, `train.async_checkpoints`;
- everything under `eval.` (evaluation never changes the trained state);
- where the data lives: `data.data_dir`, `data.manual_dir`, `data.test.manual_dir`;
- `data.test.align`, which only decides `data.config` / `data.test.config` (those are compared).

Every other change (learning rate, optimizer, schedule, model, method, seed, dtype, adversary, the data,
its split or its pipeline: batch size, augmentation, worker count...) would continue a run under settings
that did not make it, so it is refused with a `CheckpointMismatchError` that names each key with its old
and new value: rerun with the original values, or use a new `--workdir`. A key the checkpoint does not
record (added to the library after it was written) is not compared.

**Corrupt checkpoints.** A checkpoint that cannot be read (a truncated or deleted file, unreadable config
metadata) is moved aside to `<workdir>/corrupt_checkpoints/<step>-<time>` (never deleted), with a warning,
and the previous one is used; training then redoes and saves that step again. If every checkpoint is
unreadable, training refuses to start over (`NoUsableCheckpointError`) unless asked to (`restart=True`,
`idfer train --restart`); the unreadable ones are then moved aside the same way.
"""

from __future__ import annotations

import atexit
import datetime
import errno
import json
import logging as py_logging
import os
import shlex
import shutil
import sys
import threading
import warnings
from collections.abc import Iterable
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from idfer_jax.errors import UserError, os_error_in

# Config keys (a key, or a whole block ending in '.') that may differ between a run and its resumption.
RESUMABLE_KEYS: tuple[str, ...] = (
    "train.num_steps",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.async_checkpoints",
    "eval.",
    "data.data_dir",
    "data.manual_dir",
    "data.test.manual_dir",
    # 'auto' is resolved into data.config / data.test.config before a run saves its config; those are
    # compared, so the switch itself may read 'auto' in a run saved before it was resolved.
    "data.test.align",
)
CORRUPT_DIR = "corrupt_checkpoints"  # beside checkpoints/, outside orbax's view


class CheckpointMismatchError(UserError, ValueError):
    """The work directory holds a checkpoint of another config."""


class NoUsableCheckpointError(UserError):
    """Every checkpoint in the work directory is unreadable, and starting over was not asked for."""


class WorkdirError(UserError, OSError):
    """The work directory cannot be created, written or locked; the message names the path."""


def workdir_error(e: OSError, path: str, doing: str) -> WorkdirError:
    """One line for an OSError met while `doing` something with `path`."""
    reason = os.strerror(e.errno) if e.errno else (str(e) or type(e).__name__)
    hints = {
        errno.ENOSPC: "free some space, or pass a --workdir on another disk",
        errno.EDQUOT: "free some space, or pass a --workdir on another disk",
        errno.EROFS: "pass a --workdir on a writable file system",
        errno.EACCES: "pass a --workdir you may write to",
        errno.EPERM: "pass a --workdir you may write to",
        errno.ENOTDIR: "a part of the path is a file; pass a --workdir that is (or can become) a directory",
        errno.EEXIST: "a file of that name is in the way; pass another --workdir",
    }
    hint = hints.get(e.errno, "check the path, or pass another --workdir")
    where = getattr(e, "filename", None) or path
    err = WorkdirError(f"Cannot {doing} {where}: {reason}; {hint}.")
    err.errno = e.errno
    return err


# --- A write error while saving: one line, not orbax's and asyncio's reports of it -------------------
#
# When a save fails (a full disk), every orbax writer thread logs the tensorstore error with its
# traceback, the save's asyncio loop logs each of its failed tasks ("Task exception was never
# retrieved"), and tensorstore prints "Event loop is closed" for each write that completes after that
# loop is gone: hundreds of lines. The error itself reaches the main thread at the next save / wait /
# close, where `Checkpointer._reraise` turns it into one WorkdirError. These reports, and only these
# (orbax's or asyncio's log records about an errno that becomes that WorkdirError; tensorstore's
# loop-closed reports once such a save failed), are dropped.
_SAVE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
_quiet_lock = threading.Lock()
_quiet_installed = False
_save_error_seen = threading.Event()


def _is_save_error_report(record: py_logging.LogRecord) -> bool:
    if record.name != "asyncio" and f"{os.sep}orbax{os.sep}" not in (record.pathname or ""):
        return False
    exc = record.exc_info[1] if record.exc_info else None
    if exc is None:  # asyncio's "Future exception was never retrieved" carries it in the message
        try:
            exc = Exception(record.getMessage())
        except Exception:  # noqa: BLE001 - a malformed record is not ours to judge
            return False
    found = os_error_in(exc)
    return found is not None and found.errno in _SAVE_ERRNOS


class _DropSaveErrorReports(py_logging.Filter):
    def filter(self, record: py_logging.LogRecord) -> bool:
        if _is_save_error_report(record):
            _note_save_error()
            return False
        return True


def _note_save_error() -> None:
    """A save failed with an error the Checkpointer reports as one line: what is left of it is noise."""
    if _save_error_seen.is_set():
        return
    _save_error_seen.set()
    with _quiet_lock:
        _held_reports.clear()
    # The failed save's unfinished writes are garbage-collected at exit, each with a RuntimeWarning.
    warnings.filterwarnings("ignore", message=r"coroutine '.*' was never awaited", category=RuntimeWarning)


def _loop_closed_report(report) -> bool:
    """tensorstore's report (sys.unraisablehook) of a write that completed after a failed save's loop
    was closed."""
    tb = report.exc_traceback
    return (report.exc_type is RuntimeError and str(report.exc_value) == "Event loop is closed"
            and tb is not None and tb.tb_frame.f_code.co_name == "call_soon_threadsafe")


# tensorstore reports these at once, before orbax reports the error behind them: they are held until
# the save is known to have failed (then dropped) or not (then shown).
_held_reports: list[Any] = []
_previous_unraisablehook = sys.unraisablehook


def _release_held_reports() -> None:
    with _quiet_lock:
        held = [] if _save_error_seen.is_set() else list(_held_reports)
        _held_reports.clear()
    for report in held:
        _previous_unraisablehook(report)


def _quiet_save_error_reports() -> None:
    """Installs, once per process, the filters that drop the duplicate reports of a failed save."""
    global _quiet_installed, _previous_unraisablehook
    with _quiet_lock:
        if _quiet_installed:
            return
        _quiet_installed = True
        drop = _DropSaveErrorReports()
        for name in ("absl", "asyncio"):
            py_logging.getLogger(name).addFilter(drop)
        _previous_unraisablehook = sys.unraisablehook
        sys.unraisablehook = _unraisablehook
        atexit.register(_release_held_reports)


def _unraisablehook(report) -> None:
    if not _loop_closed_report(report):
        _previous_unraisablehook(report)
    elif not _save_error_seen.is_set():
        with _quiet_lock:
            _held_reports.append(_HeldReport(report))


class _HeldReport:
    """A copy of an UnraisableHookArgs (which is only valid during the hook call)."""

    def __init__(self, report):
        self.exc_type, self.exc_value, self.exc_traceback = (
            report.exc_type, report.exc_value, report.exc_traceback)
        self.err_msg, self.object = report.err_msg, report.object


def _flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}, with tuples turned to lists as JSON does."""
    if isinstance(config, dict):
        out: dict[str, Any] = {}
        for k, v in config.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        if not config and prefix:
            out[prefix[:-1]] = {}
        return out
    return {prefix[:-1]: _as_json(config)}


def _as_json(value: Any) -> Any:
    """The saved config went through JSON, which turns tuples into lists, at any depth."""
    if isinstance(value, dict):
        return {k: _as_json(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_as_json(v) for v in value]
    return value


def _resumable(key: str, allowed: Iterable[str]) -> bool:
    return any(key == a or (a.endswith(".") and key.startswith(a)) for a in allowed)


def config_differences(saved: dict, current: dict,
                       allowed: Iterable[str] = RESUMABLE_KEYS) -> list[tuple[str, Any, Any]]:
    """(key, checkpoint value, current value) of every key a resume may not change."""
    allowed = tuple(allowed)
    old, new = _flatten(saved), _flatten(current)
    return [(k, old[k], new[k]) for k in sorted(old.keys() & new.keys())
            if old[k] != new[k] and not _resumable(k, allowed)]


def check_compatible(saved: dict, current: dict, allowed: Iterable[str] = RESUMABLE_KEYS, *,
                     where: str = "The work directory") -> None:
    """Raises CheckpointMismatchError naming every key a resume may not change that did change."""
    diffs = config_differences(saved, current, allowed)
    if diffs:
        shown = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, a, b in diffs[:8])
        more = f" (and {len(diffs) - 8} more)" if len(diffs) > 8 else ""
        originals = " ".join(f"--config.{k}={_flag_value(a)}" for k, a, _ in diffs[:3])
        raise CheckpointMismatchError(
            f"{where} holds a checkpoint of a different config: {shown}{more}. A resume may change only "
            "the step budget, log/checkpoint intervals, eval.* and data locations. Use a new --workdir "
            f"for the new settings, or rerun with the original values ({originals}"
            f"{' ...' if len(diffs) > 3 else ''})."
        )


def _flag_value(value: Any) -> str:
    """`value` as the shell text of a `--config.KEY=` override that gives it back (tuples as Python
    tuples, which is how ml_collections parses a tuple-valued key)."""
    if isinstance(value, list):
        items = ",".join(repr(v) for v in value) + ("," if len(value) == 1 else "")
        return f'"({items})"'
    text = str(value)
    return shlex.quote(text) if text else "''"


def read_saved_config(step_dir: str) -> dict:
    """The config recorded in one checkpoint step folder (raises OSError / ValueError if unreadable)."""
    with open(os.path.join(step_dir, "config", "metadata")) as f:
        saved = json.load(f)
    if not isinstance(saved, dict):
        raise ValueError(f"config metadata is a {type(saved).__name__}, not an object")
    return saved


def newest_saved_config(directory: str) -> tuple[int, dict] | tuple[None, None]:
    """(step, config) of the newest checkpoint under `directory` whose config reads, without orbax."""
    if not os.path.isdir(directory):
        return None, None
    steps = sorted((int(n) for n in os.listdir(directory) if n.isdigit()), reverse=True)
    for step in steps:
        try:
            return step, read_saved_config(os.path.join(directory, str(step)))
        except (OSError, ValueError):
            continue
    return None, None


class Checkpointer:
    """Saves and restores (state, data iterator, config) under `directory`."""

    def __init__(self, directory: str, *, save_every: int, keep: int, async_save: bool = True,
                 create: bool = True):
        self.directory = os.path.abspath(directory)
        _quiet_save_error_reports()
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=max(1, int(save_every)),
            max_to_keep=max(1, int(keep)),
            create=create,
            enable_async_checkpointing=async_save,
        )
        try:
            self._manager = ocp.CheckpointManager(
                self.directory,
                options=options,
                item_names=("state", "data", "config", "inference"),
                item_handlers={
                    "state": ocp.StandardCheckpointHandler(),
                    "data": grain.checkpoint.CheckpointHandler(),
                    "config": ocp.JsonCheckpointHandler(),
                    "inference": ocp.JsonCheckpointHandler(),
                },
            )
        except OSError as e:
            raise workdir_error(e, self.directory, "create the checkpoint folder") from e

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def should_save(self, step: int) -> bool:
        return self._manager.should_save(step)

    def save(self, step: int, state, data_iterator, config: dict, *, inference: dict | None = None,
             force: bool = False) -> bool:
        items = {
            "state": ocp.args.StandardSave(state),
            "config": ocp.args.JsonSave(config),
        }
        if inference is not None:
            items["inference"] = ocp.args.JsonSave(inference)
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        try:
            return self._manager.save(step, args=ocp.args.Composite(**items), force=force)
        except Exception as e:
            self._reraise(e, step)
            raise

    def _reraise(self, e: Exception, step: int | None) -> None:
        """A full disk or lost permission while saving is the user's to fix: one line naming the path.
        Raises that WorkdirError when `e` comes from an OSError (or is tensorstore's ValueError naming
        one, "... No space left on device [os_error_code='28']"); returns otherwise."""
        if isinstance(e, UserError):
            return
        cause = os_error_in(e)
        if cause is None or cause.errno is None:
            return
        _note_save_error()
        latest = [s for s in self.steps() if s != step]
        kept = (f" The last complete checkpoint (step {latest[-1]}) is kept." if latest else "")
        # The failed save may be an earlier, background one (its error surfaces at the next call).
        err = workdir_error(cause, self.directory, "save a checkpoint in")
        one_line = WorkdirError(f"{err}{kept}")
        one_line.errno = cause.errno
        raise one_line from e

    def saved_config(self, step: int) -> dict:
        path = os.path.join(self.directory, str(step))
        if os.path.exists(os.path.join(path, "config", "metadata")):
            return read_saved_config(path)
        restored = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return restored["config"]

    def restore_state(self, step: int, abstract_state):
        """The train state of checkpoint `step` alone (no data iterator, no config check): for inference."""
        restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(
            abstract_state)))
        return restored["state"]

    def restore_latest(self, abstract_state, data_iterator=None, *, config: dict | None = None,
                       move_corrupt: bool = True, restart: bool = False):
        """Restores the newest readable checkpoint; returns (step, state) or (None, None).

        `abstract_state` is a pytree of jax.ShapeDtypeStruct with the target shardings. The data
        iterator, when given, is restored in place. `config`, when given, must be one a resume accepts
        (see the module docstring). Unreadable checkpoints newer than the restored one are moved aside
        (`move_corrupt`) once a readable one of this config is found, so nothing changes in the
        workdir before the config check passes. If checkpoints exist and none is readable,
        NoUsableCheckpointError, unless `restart` (they are then moved aside and (None, None) returned).
        """
        corrupt: list[tuple[int, str]] = []
        for step in reversed(self.steps()):
            try:
                saved = self.saved_config(step)
            except Exception as e:  # noqa: BLE001 - unreadable config metadata: a corrupt checkpoint
                corrupt.append((step, f"its config metadata is unreadable ({type(e).__name__}: {e})"))
                continue
            if config is not None:
                check_compatible(saved, config, where=f"The work directory {os.path.dirname(self.directory)} "
                                 f"(checkpoint {step})")
            if data_iterator is not None:
                self._check_data_layout(step)
            items = {"state": ocp.args.StandardRestore(abstract_state)}
            if data_iterator is not None:
                items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(**items))
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint falls back
                if isinstance(e, ValueError) and "does not match dataloader" in str(e):
                    # grain refuses an iterator state of another loader (worker count, sampler): that
                    # is this workdir's run with other settings, and starting afresh would bury it.
                    raise CheckpointMismatchError(
                        f"Checkpoint {step} in {self.directory} holds the input pipeline's position for "
                        f"other loader settings: {str(e).splitlines()[0]} Rerun with the "
                        "data.worker_count and batch size that made it, or use a new --workdir."
                    ) from e
                if isinstance(e, ValueError) and "does not match datasource" in str(e):
                    # grain compares the data source's identity: the records changed under the run.
                    raise CheckpointMismatchError(
                        f"Checkpoint {step} in {self.directory} was trained on other data: the dataset's "
                        "records changed since it was saved (images added to or removed from the folder, "
                        "or the data prepared anew). The checkpoints are intact: put the data back as it "
                        "was to resume, or train the data as it is now in a new --workdir."
                    ) from e
                corrupt.append((step, _reason(e)))
                continue
            if move_corrupt:
                self._move_aside(corrupt, fallback=step)
            else:
                for bad, reason in corrupt:
                    print(f"WARNING: checkpoint {bad} in {self.directory} is unreadable ({reason[:200]}); "
                          f"using checkpoint {step} (the next `idfer train` moves it aside).", flush=True)
            return step, restored["state"]
        if corrupt:
            listed = ", ".join(str(s) for s, _ in corrupt)
            if not restart:
                raise NoUsableCheckpointError(
                    f"No checkpoint in {self.directory} can be read (step {listed}: "
                    f"{corrupt[0][1][:200]}), so this run cannot resume. To start over from step 0 "
                    "in this workdir, rerun `idfer train` with --restart (the unreadable checkpoints are "
                    "moved to "
                    f"{os.path.join(os.path.dirname(self.directory), CORRUPT_DIR)}, not deleted); or "
                    "use a new --workdir."
                )
            if move_corrupt:
                self._move_aside(corrupt, fallback=None)
        return None, None

    def _move_aside(self, corrupt: list[tuple[int, str]], fallback: int | None) -> None:
        """Moves unreadable step folders out of orbax's view, so those steps can be saved again."""
        if not corrupt:
            return
        if jax.process_index() == 0:
            target_root = os.path.join(os.path.dirname(self.directory), CORRUPT_DIR)
            stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
            for step, reason in corrupt:
                source = os.path.join(self.directory, str(step))
                target = os.path.join(target_root, f"{step}-{stamp}")
                n = 1
                while os.path.exists(target):
                    n += 1
                    target = os.path.join(target_root, f"{step}-{stamp}-{n}")
                try:
                    os.makedirs(target_root, exist_ok=True)
                    shutil.move(source, target)
                except OSError as e:
                    raise workdir_error(e, source, "move the unreadable checkpoint") from e
                then = (f"resuming from checkpoint {fallback}" if fallback is not None
                        else "starting over from step 0 (--restart)")
                print(f"WARNING: checkpoint {step} in {self.directory} is unreadable ({reason[:200]}); "
                      f"moved it to {target} and {then}.", flush=True)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("idfer_jax: corrupt checkpoints moved aside")
        self._manager.reload()

    def _check_data_layout(self, step: int) -> None:
        """Each process checkpoints its own input position; another number of processes cannot resume
        them (a missing file would otherwise look like a corrupt checkpoint and be skipped)."""
        data_dir = os.path.join(self.directory, str(step), "data")
        if not os.path.isdir(data_dir):
            return
        saved = sorted(f for f in os.listdir(data_dir) if f.startswith("process_"))
        mine = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        if saved and mine not in saved:
            counts = sorted({f.rsplit("-of-", 1)[-1].removesuffix(".json") for f in saved})
            raise CheckpointMismatchError(
                f"Checkpoint {step} in {self.directory} was written by {'/'.join(counts)} process(es) "
                f"and this run has {jax.process_count()}: every host checkpoints its own position in "
                "the input stream. Resume with the same number of processes (hosts), or use a new "
                "--workdir."
            )

    def wait(self) -> None:
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            self._reraise(e, None)
            raise
        _release_held_reports()

    def close(self) -> None:
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            self._reraise(e, None)
            raise
        finally:
            self._manager.close()
        _release_held_reports()


def _reason(e: Exception) -> str:
    """Why a checkpoint could not be read, in a line a user can act on (no storage-library internals)."""
    text = str(e).splitlines()[0] if str(e) else ""
    text = text.split(" See full TensorStore details")[0].split(" [source locations=")[0]
    if "pytree structure" in text or "different types at key path" in text:
        text = "its saved state does not have the structure of this run's state (a file is missing)"
    return f"{type(e).__name__}: {text}"


def abstract_like(tree, sharding) -> Any:
    """ShapeDtypeStructs of `tree` placed with `sharding` (restore target)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
