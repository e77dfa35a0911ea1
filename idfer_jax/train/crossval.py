"""Cross-validation: train and evaluate every fold of a run's protocol, then pool the results.

    idfer crossval --config=configs/baseline_ckplus.py --workdir=DIR --config.data.manual_dir=...

Each fold is an ordinary run in `DIR/fold_<i>` (its own checkpoints, `folds.json`, `report.md`), so an
interrupted cross-validation resumes fold by fold: finished folds (an `eval_results.json` at the final
step) are read back, an interrupted fold resumes from its last checkpoint. At the end `DIR` holds:

- `crossval_report.md`: per-fold and mean +- std tables (population std over folds), the pooled
  confusion matrix, identity and pose leakage per fold;
- `crossval_folds.csv`, `crossval_results.json`, `confusion_matrix_pooled.{csv,png}`;
- `folds.json`: the protocol (which subjects each fold holds out), to replay with
  `--config.data.fold_file`.

Every fold is evaluated at its last checkpoint: no model is selected on a test fold.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Sequence

import jax
import numpy as np

from idfer_jax import evaluation as E
from idfer_jax.console import announce
from idfer_jax.data import datasets
from idfer_jax.errors import UserError
from idfer_jax.train import checkpoint as ckpt_lib
from idfer_jax.train import evaluate as evaluate_lib
from idfer_jax.train import workdir as workdir_lib
from idfer_jax.train.trainer import BuildMethod, Trainer


def fold_config(config, fold: int):
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.data.fold = fold
    return config


def _finished(fold_dir: str, num_steps: int, config) -> dict | None:
    """The fold's results when it was trained to `num_steps` and evaluated, by this config."""
    path = os.path.join(fold_dir, "eval_results.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            results = json.load(f)
    except (OSError, ValueError):
        return None  # unreadable: evaluate the fold again
    if not isinstance(results, dict) or results.get("checkpoint_step") != num_steps:
        return None
    step, saved = ckpt_lib.newest_saved_config(os.path.join(fold_dir, "checkpoints"))
    if saved is not None:
        ckpt_lib.check_compatible(saved, config.to_dict(), where=f"The fold folder {fold_dir} "
                                  f"(checkpoint {step})")
    return results


_SPLIT_KEYS = ("protocol", "num_folds", "seed", "test_subjects", "dataset", "class_names")


def _check_split(path: str, fold_file: dict) -> None:
    """A cross-validation workdir holds one split: refuse another before anything is written."""
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return  # none, or unreadable: nothing to protect
    if not isinstance(saved, dict):
        return
    diffs = [f"{k}: {saved.get(k)!r} there, {fold_file.get(k)!r} now" for k in _SPLIT_KEYS
             if k in saved and saved.get(k) != json.loads(json.dumps(fold_file.get(k)))]
    if diffs:
        raise ckpt_lib.CheckpointMismatchError(
            f"{os.path.dirname(path)} holds a cross-validation of another split ({path}: "
            + "; ".join(d[:200] for d in diffs)
            + "). Use a new --workdir, or rerun with the data settings that made it (e.g. the same "
            "data.split_seed and data.num_folds)."
        )


def crossval(config, workdir: str, build_method: BuildMethod, *, devices=None, restart: bool = False) -> dict:
    """Runs (or resumes) every fold of `config.data`'s protocol and writes the pooled report.

    The workdir is locked for the whole cross-validation; a rerun with another split is refused before
    anything is written. `restart`: a fold whose checkpoints are all unreadable starts over."""
    is_main = jax.process_index() == 0
    lock = workdir_lib.locked(workdir, "idfer crossval") if is_main else contextlib.nullcontext()
    with lock:
        return _crossval(config, os.fspath(workdir), build_method, devices=devices, restart=restart)


def _crossval(config, workdir: str, build_method: BuildMethod, *, devices=None, restart: bool) -> dict:
    protocol = datasets.open_dataset(config.data)
    num_folds = protocol.num_folds
    is_main = jax.process_index() == 0
    folds_path = os.path.join(workdir, "folds.json")
    _check_split(folds_path, protocol.fold_file)
    num_steps = int(config.train.num_steps)
    # Every fold that is done must be this config's before anything is written.
    done = {fold: _finished(os.path.join(workdir, f"fold_{fold}"), num_steps, fold_config(config, fold))
            for fold in range(num_folds)}
    if is_main:
        try:
            datasets.write_fold_file(protocol, folds_path)
        except OSError as e:
            raise ckpt_lib.workdir_error(e, folds_path, "write") from e
    per_fold, seconds = [], []
    for fold in range(num_folds):
        fold_dir = os.path.join(workdir, f"fold_{fold}")
        results = done[fold]
        start = time.time()
        if results is None:
            announce(f"== fold {fold + 1}/{num_folds} -> {fold_dir}")
            cfg = fold_config(config, fold)
            Trainer(cfg, build_method, devices).train(fold_dir, restart=restart)
            results = evaluate_lib.evaluate(cfg, fold_dir, build_method, devices)
            seconds.append(time.time() - start)
        else:
            announce(f"== fold {fold + 1}/{num_folds}: done earlier ({fold_dir}/eval_results.json)")
        results["fold_dir"] = os.path.basename(fold_dir)
        per_fold.append(results)
        announce(f"   fold {fold}: accuracy {results['accuracy']:.4f} on "
                 f"{results['num_test_images']} images of {results['num_test_subjects']} subjects")
    summary = summarise(per_fold)
    summary["seconds_this_invocation"] = float(sum(seconds))
    if is_main:
        write_outputs(workdir, config, summary, per_fold)
    return summary


# Per-fold columns of every code other than `features` (`results['codes']`): column suffix <- key.
CODE_COLUMNS = (("identity probe (MLP)", "identity_mlp"), ("expression probe (MLP)", "expression_mlp"),
                ("verification AUC", "verification_auc"), ("yaw R^2", "yaw_r2"))
# Columns of the generators' measures (`results['transfer']`, `results['neutralisation']`) <- key.
GENERATION_COLUMNS = {
    "transfer": (("transfer read as target", "read_as_target"),
                 ("reader on true counterfactuals", "reader_on_true_counterfactuals"),
                 ("reader on real test", "reader_on_real_test"),
                 ("transfer face L1", "face_l1_to_counterfactual"),
                 ("copy-input face L1", "face_l1_copy_input"),
                 ("transfer identity cosine", "identity_cosine_generated_vs_source"),
                 ("identity cosine same subject", "identity_cosine_same_subject")),
    "neutralisation": (("neutral distance ratio", "neutral_distance_ratio"),
                       ("neutral identity cosine", "identity_cosine_generated_vs_source"),
                       ("identity cosine same subject", "identity_cosine_same_subject")),
}
# Columns of the validation subjects (`results['validation']`) <- key.
VALIDATION_COLUMNS = (("validation accuracy", "accuracy"),
                      ("validation identity probe (MLP)", "identity_mlp"),
                      ("validation yaw R^2", "yaw_r2"))


def _number(value) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _fold_row(r: dict) -> dict:
    """One fold's table row. Besides accuracy and the features' identity probes and pose R^2:
    `identity verification AUC` (features; 0.5 = no identity), for every other declared code
    `<code>: identity probe (MLP)`, `<code>: expression probe (MLP)`, `<code>: verification AUC` and
    `<code>: yaw R^2`, the generators' measures of `GENERATION_COLUMNS`, and where the run held out
    validation subjects `validation accuracy`, `validation identity probe (MLP)` and `validation yaw R^2`
    (each where measured)."""
    row = {
        "fold": r["fold"],
        "accuracy": r["accuracy"],
        "mean class accuracy": r["mean_class_accuracy"],
        # Chance among the classes each fold's test set holds.
        "chance": r.get("chance") or E.chance_accuracy(r["confusion_matrix"]),
        "test images": r["num_test_images"],
        "test subjects": r["num_test_subjects"],
    }
    identity = r.get("identity_leakage") or {}
    if "linear_acc" in identity:
        row.update({"identity probe (linear)": identity["linear_acc"],
                    "identity probe (MLP)": identity["mlp_acc"],
                    "identity chance": identity["chance"]})
    if _number(r.get("verification_auc")) is not None:
        row["identity verification AUC"] = _number(r["verification_auc"])
    for k, v in (r.get("pose_leakage") or {}).items():
        row[f"{k.removesuffix('_r2')} R^2"] = v
    for band, v in (r.get("accuracy_by_abs_yaw") or {}).items():
        row[f"accuracy |yaw| {band}"] = v
    for code, values in (r.get("codes") or {}).items():
        if code == "features":
            continue
        for column, key in CODE_COLUMNS:
            if _number(values.get(key)) is not None:
                row[f"{code}: {column}"] = _number(values[key])
    for block, columns in GENERATION_COLUMNS.items():
        for column, key in columns:
            if _number((r.get(block) or {}).get(key)) is not None:
                row[column] = _number(r[block][key])
    validation = r.get("validation") or {}
    for column, key in VALIDATION_COLUMNS:
        if _number(validation.get(key)) is not None:
            row[column] = _number(validation[key])
    return row


def summarise(per_fold: list[dict]) -> dict:
    """Mean and std over folds of every per-fold number, and the pooled confusion matrix."""
    rows = [_fold_row(r) for r in per_fold]
    # A yaw band that one fold's test set happens not to cover is averaged over the folds that have it.
    keys = list(dict.fromkeys(k for row in rows for k in row))
    numeric = [k for k in keys if k != "fold" and all(
        isinstance(row[k], float) for row in rows if k in row)]
    stats = {k: E.mean_and_std([row[k] for row in rows if k in row]) for k in numeric}
    pooled = np.sum([np.asarray(r["confusion_matrix"]) for r in per_fold], axis=0)
    first = per_fold[0]
    return {
        "method": first["method"],
        "dataset": first["dataset"],
        "protocol": first.get("protocol", "subject_kfold"),
        "num_folds": len(per_fold),
        "class_names": first["class_names"],
        "folds": rows,
        "mean_std": {k: {"mean": m, "std": s} for k, (m, s) in stats.items()},
        "pooled_confusion_matrix": pooled.tolist(),
        "pooled_accuracy": float(np.trace(pooled) / max(pooled.sum(), 1)),
        "identity_probe_subjects": (first.get("identity_leakage") or {}).get("probe_subjects"),
    }


def write_outputs(workdir: str, config, summary: dict, per_fold: list[dict]) -> None:
    names = summary["class_names"]
    pooled = np.asarray(summary["pooled_confusion_matrix"])
    E.write_confusion_csv(pooled, names, os.path.join(workdir, "confusion_matrix_pooled.csv"))
    E.plot_confusion_matrix(
        pooled, names, os.path.join(workdir, "confusion_matrix_pooled.png"),
        title=f"{summary['method']} on {summary['dataset']}, {summary['num_folds']} folds pooled",
    )
    rows = summary["folds"]
    E.write_csv(rows, os.path.join(workdir, "crossval_folds.csv"))
    # Written whole or not at all (a killed run must not leave half a file for `idfer compare`).
    path = os.path.join(workdir, "crossval_results.json")
    with open(path + ".tmp", "w") as f:
        json.dump({**summary, "config": config.to_dict()}, f, indent=1, default=str)
    os.replace(path + ".tmp", path)

    mean_rows = [{"": "mean", **{k: v["mean"] for k, v in summary["mean_std"].items()}},
                 {"": "std", **{k: v["std"] for k, v in summary["mean_std"].items()}}]
    acc = summary["mean_std"]["accuracy"]
    headline = (f"Accuracy **{acc['mean']:.4f} +- {acc['std']:.4f}** (mean +- population std over "
                f"{summary['num_folds']} folds; pooled over all test images: "
                f"{summary['pooled_accuracy']:.4f}; chance {summary['mean_std']['chance']['mean']:.4f}, "
                "mean over folds of 1 / the classes each test fold holds).")
    identity = summary["mean_std"].get("identity probe (linear)")
    if identity:
        chance = summary["mean_std"]["identity chance"]["mean"]
        headline += (f" Identity probe (linear) on the expression features: {identity['mean']:.4f} +- "
                     f"{identity['std']:.4f} (mean chance {chance:.4f}; probe on "
                     f"{summary['identity_probe_subjects']}).")
    verification = summary["mean_std"].get("identity verification AUC")
    if verification:
        headline += (f" Identity verification AUC of the expression features: {verification['mean']:.4f} +- "
                     f"{verification['std']:.4f} (0.5 = no identity; lower is better).")
    sections = [
        ("Protocol", evaluate_lib.protocol_sentence({**per_fold[0], "fold": "each"})
         + " Fold files: `folds.json`; each fold's own report is in `fold_<i>/report.md`."),
        ("Summary", headline),
        ("Mean and std over folds", E.markdown_table(mean_rows)),
        ("Per fold", E.markdown_table(rows)),
        ("Pooled confusion matrix", "Rows: true class, columns: predicted; summed over the folds' test "
         "sets (`confusion_matrix_pooled.csv`).\n\n![pooled confusion matrix]"
         "(confusion_matrix_pooled.png)"),
    ]
    E.write_report(
        os.path.join(workdir, "crossval_report.md"),
        title=f"idfer_jax cross-validation: {summary['method']} on {summary['dataset']}",
        sections=sections,
    )




class CompareError(UserError, ValueError):
    """`idfer compare` was given runs that are not there or do not compare."""


def compare(runs: Sequence[str]) -> str:
    """One Markdown table comparing finished cross-validations (`idfer compare DIR [NAME=DIR ...]`).

    Each run is a `crossval` workdir, or `NAME=DIR` to name its row (default: the run's method; an
    argument that is an existing directory is taken whole, so `runs/lr=0.1` works). Reads
    `DIR/crossval_results.json` and `DIR/folds.json`; the rows are `evaluation.comparison_table`'s (mean ±
    std over folds). CompareError when a run is missing, unreadable, or was not split like the first one
    (dataset, protocol, folds, split seed, classes): results on different subjects do not compare.
    """
    if not runs:
        raise CompareError("Give at least one crossval workdir: idfer compare DIR [NAME=DIR ...].")
    summaries, fold_files, names, directories = [], [], [], []
    for run in runs:
        name, directory = ("", run) if os.path.isdir(run) or "=" not in run else run.split("=", 1)
        directories.append(directory)
        summary = _read_finished(os.path.join(directory, "crossval_results.json"), directory)
        fold_files.append(_read_finished(os.path.join(directory, "folds.json"), directory))
        if not isinstance(summary.get("mean_std"), dict):
            raise CompareError(f"{directory}/crossval_results.json has no per-fold mean and std (mean_std): "
                               "it is not the result of `idfer crossval`.")
        summaries.append(summary)
        names.append(name)
    # An unnamed row is its method's, or its directory's where two rows would share one.
    methods = [s.get("method", "?") for s in summaries]
    names = [n or (m if methods.count(m) == 1 else os.path.basename(os.path.normpath(d)))
             for n, m, d in zip(names, methods, directories, strict=True)]
    for run, fold_file in zip(runs[1:], fold_files[1:], strict=True):
        diffs = [k for k in _SPLIT_KEYS if fold_file.get(k) != fold_files[0].get(k)]
        if diffs:
            raise CompareError(
                f"{run} was split otherwise than {runs[0]} ({', '.join(diffs)} differ in their folds.json), "
                "so their numbers do not compare; rerun them on the same data and folds (same dataset, "
                "protocol, num_folds, split seed and classes).")
    return E.comparison_table(summaries, names=names)


def _read_finished(path: str, directory: str) -> dict:
    """A JSON object `idfer crossval` wrote in `directory`, or CompareError saying how to get it."""
    try:
        with open(path) as f:
            content = json.load(f)
    except FileNotFoundError:
        raise CompareError(f"{path} does not exist: `idfer crossval --workdir={directory} ...` writes it "
                           "when every fold has finished.") from None
    except (OSError, ValueError) as e:
        raise CompareError(f"{path} cannot be read ({e}): rerun `idfer crossval --workdir={directory} "
                           "...` with the same config to write it again (finished folds are not "
                           "retrained).") from None
    if not isinstance(content, dict):
        raise CompareError(f"{path} holds a {type(content).__name__}, not what `idfer crossval` writes; "
                           f"rerun it with --workdir={directory}.")
    return content
