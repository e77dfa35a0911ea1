"""The library's entry points as Python functions (what the CLI and the notebooks call)."""

from __future__ import annotations

from collections.abc import Iterable

from idfer_jax import methods
from idfer_jax.configuration import load_config_file
from idfer_jax.train import crossval as crossval_lib
from idfer_jax.train import evaluate as evaluate_lib
from idfer_jax.train import trainer as trainer_lib
from idfer_jax.train.distributed import initialize as initialize_multihost  # noqa: F401  (pods, clusters)


def load_config(spec: str):
    """`configs/baseline_synthetic.py:smoke` -> a locked ConfigDict."""
    return load_config_file(spec)


def train(config, workdir: str, *, devices=None, hooks: Iterable = (),
          restart: bool = False) -> trainer_lib.TrainResult:
    """Trains `config.method` (or resumes the run in `workdir`) and returns the final state.

    `restart`: when every checkpoint in `workdir` is unreadable, start over (they are moved aside)."""
    return trainer_lib.Trainer(config, methods.build, devices).train(workdir, hooks=hooks, restart=restart)


def evaluate(config, workdir: str, *, devices=None) -> dict:
    """Evaluates the last checkpoint in `workdir` on the held-out fold; writes `report.md`."""
    return evaluate_lib.evaluate(config, workdir, methods.build, devices)


def crossval(config, workdir: str, *, devices=None, restart: bool = False) -> dict:
    """Trains and evaluates every fold of the protocol (resuming finished ones); pooled report."""
    return crossval_lib.crossval(config, workdir, methods.build, devices=devices, restart=restart)
