"""The library's entry points as Python functions (what the CLI and the notebooks call).

`train`, `evaluate` and `crossval` take the config as a path (`'configs/baseline_synthetic.py:smoke'`) or
an `ml_collections.ConfigDict` (a FrozenConfigDict too), and the workdir as a str or os.PathLike; anything
else is a TypeError naming the argument. The config's values are validated before anything is prepared
or written (`idfer_jax.configuration.validate`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import ml_collections

from idfer_jax import methods
from idfer_jax.configuration import load_config_file, validate
from idfer_jax.train import crossval as crossval_lib
from idfer_jax.train import evaluate as evaluate_lib
from idfer_jax.train import trainer as trainer_lib
from idfer_jax.train.distributed import initialize as initialize_multihost  # noqa: F401  (pods, clusters)


def load_config(spec: str | os.PathLike) -> ml_collections.ConfigDict:
    """`configs/baseline_synthetic.py:smoke` -> a locked ConfigDict."""
    return load_config_file(spec)


def as_config(config, argument: str = "config") -> ml_collections.ConfigDict:
    """A config path (str / os.PathLike, with an optional `:arg`) or a ConfigDict -> a validated
    ConfigDict; TypeError naming `argument` for anything else."""
    if isinstance(config, (str, os.PathLike)) and not isinstance(config, bytes):
        config = load_config_file(config)
    elif isinstance(config, ml_collections.FrozenConfigDict):
        config = config.as_configdict()
        config.lock()
    elif not isinstance(config, ml_collections.ConfigDict):
        hint = (" Wrap a dict as ml_collections.ConfigDict(d), or better start from a config file "
                "(api.load_config)." if isinstance(config, dict) else "")
        raise TypeError(
            f"`{argument}` must be a config file path such as 'configs/baseline_synthetic.py:smoke' or an "
            f"ml_collections.ConfigDict (from api.load_config); got {type(config).__name__}.{hint}"
        )
    validate(config)
    return config


def as_workdir(workdir, argument: str = "workdir") -> str:
    """str / os.PathLike -> str; TypeError naming `argument` otherwise, ValueError when empty."""
    if not isinstance(workdir, (str, os.PathLike)) or isinstance(workdir, bytes):
        raise TypeError(f"`{argument}` must be a directory path (str or os.PathLike); got "
                        f"{type(workdir).__name__}.")
    path = os.fspath(workdir)
    if not isinstance(path, str):
        raise TypeError(f"`{argument}` must be a str path; got a {type(path).__name__} path.")
    if not path:
        raise ValueError(f"`{argument}` is empty; give the run's directory, e.g. '/tmp/baseline'.")
    return path


def train(config, workdir, *, devices=None, hooks: Iterable = (),
          restart: bool = False) -> trainer_lib.TrainResult:
    """Trains `config.method` (or resumes the run in `workdir`) and returns the final state.

    `restart`: when every checkpoint in `workdir` is unreadable, start over (they are moved aside)."""
    config, workdir = as_config(config), as_workdir(workdir)
    return trainer_lib.Trainer(config, methods.build, devices).train(workdir, hooks=hooks, restart=restart)


def evaluate(config, workdir, *, devices=None) -> dict:
    """Evaluates the last checkpoint in `workdir` on the held-out fold; writes `report.md`."""
    config, workdir = as_config(config), as_workdir(workdir)
    return evaluate_lib.evaluate(config, workdir, methods.build, devices)


def sweep(config, workdir, key: str, values, *, select: str = "", tolerance: float = 0.01, devices=None,
          restart: bool = False) -> dict:
    """A crossval of `config` for each value (text) of the dotted config `key`, with the value to report
    chosen on held-out training subjects (`idfer sweep`; see `idfer_jax.train.sweep`)."""
    from idfer_jax.train import sweep as sweep_lib

    config, workdir = as_config(config), as_workdir(workdir)
    return sweep_lib.sweep(config, workdir, key, [str(v) for v in values], methods.build, select=select,
                           tolerance=tolerance, devices=devices, restart=restart)


def crossval(config, workdir, *, devices=None, restart: bool = False) -> dict:
    """Trains and evaluates every fold of the protocol (resuming finished ones); pooled report.

    `restart`: as in `train`, for each fold whose checkpoints are all unreadable."""
    config, workdir = as_config(config), as_workdir(workdir)
    return crossval_lib.crossval(config, workdir, methods.build, devices=devices, restart=restart)


def load(workdir, step: int | None = None, *, devices=None):
    """The trained model in `workdir` (one run, or one crossval fold's `fold_<i>`), as an
    `idfer_jax.inference.predictor.Predictor`: `predict(images) -> (N, C)` probabilities, `features`,
    `preprocess`, `faces`, `class_names`. Reads only the workdir: no dataset, no TFDS, no Trainer.

    `step`: a checkpoint's step (default the newest). Raises ModelLoadError (an `idfer_jax.errors.UserError`)
    naming what to do for a workdir without a usable checkpoint."""
    from idfer_jax.inference import predictor

    return predictor.load(as_workdir(workdir), step, devices=devices)


def predict(workdir, inputs, *, output: str = "-", format: str = "csv", annotate: str = "",
            batch_size: int = 64, fps: float = 1.0, detect: bool = True, dataset_crop: bool = False,
            step: int | None = None):
    """`idfer predict` as a function: one row per face of `inputs` (image files, folders, videos) written
    to `output` ('-' = stdout); returns the summary (`inference.predict_files.Summary`)."""
    from idfer_jax.inference import predict_files

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    return predict_files.predict_files(load(workdir, step), [os.fspath(i) for i in inputs], output=output,
                                       fmt=format, annotate=annotate, batch_size=batch_size, fps=fps,
                                       detect=detect, dataset_crop=dataset_crop, progress=False)


def export(predictor_or_workdir, directory, format: str = "saved_model", *, check_images=(),
           step: int | None = None) -> dict:
    """`idfer export` as a function: the model (a `Predictor`, or a workdir to `load`) as a TensorFlow
    SavedModel or a TFLite file under `directory`, checked in its own runtime, with a model card
    (`idfer_jax.inference.export.export_predictor`)."""
    from idfer_jax.inference import export as export_lib
    from idfer_jax.inference import predictor as predictor_lib

    predictor = predictor_or_workdir
    if not isinstance(predictor, predictor_lib.Predictor):
        predictor = load(predictor_or_workdir, step)
    return export_lib.export_predictor(predictor, as_workdir(directory, "directory"), format,
                                       check_images=check_images)
