"""Checkpoints: a thin wrapper over orbax's CheckpointManager.

One checkpoint holds everything a run needs to continue exactly: the train state (params, model state,
every player's optimizer state, step, rng), the grain data-iterator state and the config. The state is
restored against an abstract target that carries the *current* shardings, so a checkpoint written on 8
devices restores on 1. A checkpoint that cannot be read is reported and the previous one is used, so a
crash during a save never costs more than one save interval.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

from idfer_jax.errors import UserError

# Config entries that define what the parameters mean; a checkpoint made under other values is not
# this run's. Schedules, log intervals and step counts may change between a run and its resumption.
IDENTITY_KEYS: tuple[str, ...] = (
    "method",
    "model",
    "seed",
    "data.name",
    "data.config",
    "data.protocol",
    "data.class_names",
    "data.class_map",
    "data.fold_file",
    "data.test.name",
    "data.image_size",
    "data.fold",
    "data.num_folds",
    "data.split_seed",
    "train.batch_size",
)


class CheckpointMismatchError(UserError, ValueError):
    """The work directory holds a checkpoint of another config."""


def _lookup(config: dict, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return _as_json(value)


def _as_json(value: Any) -> Any:
    """The saved config went through JSON, which turns tuples into lists, at any depth."""
    if isinstance(value, dict):
        return {k: _as_json(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_as_json(v) for v in value]
    return value


def check_compatible(saved: dict, current: dict, keys: Sequence[str] = IDENTITY_KEYS) -> None:
    """Raises CheckpointMismatchError naming every identity key whose value differs."""
    diffs = [
        f"{k}: checkpoint {_lookup(saved, k)!r} vs now {_lookup(current, k)!r}"
        for k in keys
        if _lookup(saved, k) != _lookup(current, k)
    ]
    if diffs:
        raise CheckpointMismatchError(
            "The work directory holds a checkpoint of a different config ("
            + "; ".join(diffs)
            + "). Use a new --workdir, or rerun with the config that made the checkpoint."
        )


class Checkpointer:
    """Saves and restores (state, data iterator, config) under `directory`."""

    def __init__(self, directory: str, *, save_every: int, keep: int, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=max(1, int(save_every)),
            max_to_keep=max(1, int(keep)),
            create=True,
            enable_async_checkpointing=async_save,
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_names=("state", "data", "config"),
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler(),
                "config": ocp.JsonCheckpointHandler(),
            },
        )

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state, data_iterator, config: dict, *, force: bool = False) -> bool:
        items = {
            "state": ocp.args.StandardSave(state),
            "config": ocp.args.JsonSave(config),
        }
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

    def saved_config(self, step: int) -> dict:
        path = os.path.join(self.directory, str(step), "config", "metadata")
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
        restored = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return restored["config"]

    def restore_latest(self, abstract_state, data_iterator=None, *, config: dict | None = None):
        """Restores the newest readable checkpoint; returns (step, state) or (None, None).

        `abstract_state` is a pytree of jax.ShapeDtypeStruct with the target shardings. The data
        iterator, when given, is restored in place.
        """
        for step in reversed(self.steps()):
            if config is not None:
                check_compatible(self.saved_config(step), config)
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
                logging.warning(
                    "Checkpoint %d in %s could not be restored (%s: %s); trying the previous one.",
                    step, self.directory, type(e).__name__, e,
                )
                print(
                    f"WARNING: checkpoint {step} in {self.directory} is unreadable "
                    f"({type(e).__name__}); falling back to the previous checkpoint.",
                    flush=True,
                )
                continue
            return step, restored["state"]
        return None, None

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
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_like(tree, sharding) -> Any:
    """ShapeDtypeStructs of `tree` placed with `sharding` (restore target)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
