"""Markdown and CSV output for evaluation results.

Everything written here is deterministic (same inputs, same bytes) and UTF-8, so reports can be
diffed between runs and checked into a results folder.
"""

from __future__ import annotations

import csv
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "comparison_table",
    "format_code_leakage",
    "format_leakage",
    "format_validation",
    "markdown_table",
    "write_confusion_csv",
    "write_csv",
    "write_report",
]


def _columns(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None) -> list[str]:
    """The given columns, or the union of the rows' keys in order of first appearance."""
    if columns is not None:
        return list(columns)
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Number | np.number) and not isinstance(value, bool | np.bool_)


def _cell(value: Any, floatfmt: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float | np.floating):
        return format(float(value), floatfmt)
    text = str(value)
    # A pipe would end the cell and a newline the row; keep the table's shape intact.
    return text.replace("|", "\\|").replace("\r\n", " ").replace("\n", " ")


def markdown_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    floatfmt: str = ".4f",
) -> str:
    """Render rows of dicts as a GitHub-flavoured Markdown table.

    Args:
      rows: one mapping per table row; a missing key or ``None`` gives an empty cell.
      columns: column order (and selection); defaults to every key in order of first appearance.
      floatfmt: ``format`` spec for floats (Python and numpy); ints and strings are printed as is.

    Returns:
      The table without a trailing newline. Columns whose values are all numbers are
      right-aligned.

    Raises:
      ValueError: when there are no columns (no rows and no ``columns``).
    """
    cols = _columns(rows, columns)
    if not cols:
        raise ValueError("markdown_table needs at least one column (pass rows or columns).")
    header = "| " + " | ".join(_cell(c, floatfmt) for c in cols) + " |"
    align = []
    for c in cols:
        present = [row[c] for row in rows if row.get(c) is not None]
        numeric = bool(present) and all(_is_number(v) for v in present)
        align.append("---:" if numeric else "---")
    lines = [header, "| " + " | ".join(align) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c), floatfmt) for c in cols) + " |")
    return "\n".join(lines)


def _open_for_writing(path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_csv(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    columns: Sequence[str] | None = None,
) -> Path:
    """Write rows of dicts as CSV with a header row.

    Floats are written at full precision (a CSV is for further analysis, unlike a table meant for
    reading); missing keys and ``None`` become empty fields; keys not in an explicit ``columns``
    are left out.
    """
    cols = _columns(rows, columns)
    path = _open_for_writing(path)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(cols)
        for row in rows:
            writer.writerow([_csv_field(row.get(c)) for c in cols])
    return path


def _csv_field(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, np.generic):
        return value.item()  # plain Python value, so the field never reads "np.float64(...)"
    return value


def write_confusion_csv(matrix, class_names: Sequence[str], path: str | os.PathLike) -> Path:
    """Write a confusion matrix as CSV.

    The header row is ``true\\predicted`` followed by the predicted class names; each next row is a
    true class name followed by its counts.
    """
    matrix = np.asarray(matrix)
    k = len(class_names)
    if matrix.shape != (k, k):
        raise ValueError(f"matrix has shape {matrix.shape} but {k} class names were given.")
    path = _open_for_writing(path)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["true\\predicted", *class_names])
        for name, counts in zip(class_names, matrix, strict=True):
            writer.writerow([name, *(c.item() for c in counts)])
    return path


def write_report(
    path: str | os.PathLike,
    *,
    title: str,
    sections: Sequence[tuple[str, str]],
) -> Path:
    """Write a Markdown report: ``# title`` then ``## heading`` and body for each section.

    Bodies are written as given (trailing whitespace trimmed); the file ends with one newline.
    """
    parts = [f"# {title}"]
    for heading, body in sections:
        parts.append(f"## {heading}")
        body = body.rstrip()
        if body:
            parts.append(body)
    path = _open_for_writing(path)
    path.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    return path


def _fmt(value: Any, floatfmt: str = ".4f") -> str:
    if value is None or (isinstance(value, float | np.floating) and math.isnan(value)):
        return "n/a"
    return format(float(value), floatfmt)


def format_leakage(identity: Mapping[str, Any] | None, pose: Mapping[str, Any] | None, *,
                   verification_auc: float | None = None) -> str:
    """Markdown block summarising identity and pose leakage of expression features.

    Args:
      identity: the dict of :func:`idfer_jax.evaluation.probes.identity_leakage` (empty/None: skipped).
      pose: the dict of :func:`idfer_jax.evaluation.probes.pose_leakage`, keys ``<name>_r2``
        (empty/None: says that no pose labels were available).
      verification_auc: :func:`idfer_jax.evaluation.probes.verification_auc` of the same features
        (None: not shown).
    """
    blocks = []
    if identity and "skipped" in identity:
        blocks.append(f"**Identity leakage**: not measured ({identity['skipped']}).")
    elif identity:
        table = markdown_table(
            [
                {
                    "probe": "linear",
                    "accuracy": _fmt(identity["linear_acc"]),
                    "chance": _fmt(identity["chance"]),
                },
                {
                    "probe": "MLP",
                    "accuracy": _fmt(identity["mlp_acc"]),
                    "chance": _fmt(identity["chance"]),
                },
            ]
        )
        detail = []
        for key, what in (
            ("num_subjects", "subjects"),
            ("num_train", "train images"),
            ("num_test", "test images"),
        ):
            if key in identity:
                detail.append(f"{identity[key]} {what}")
        scope = identity.get("probe_subjects", "held-out subjects")
        unit = identity.get("split_by", "image")
        blocks.append(
            f"**Identity leakage** (fresh probes on frozen expression features of {scope}, split by "
            f"{unit} within subject; lower is better, chance beside it)\n\n"
            + table
            + (f"\n\n{', '.join(detail)}." if detail else "")
        )
    if verification_auc is not None:
        pairs = ("pairs of images of different sequences" if (identity or {}).get("split_by") == "sequence"
                 else "pairs of images")
        blocks.append(
            f"**Identity verification AUC**: {_fmt(verification_auc)} (cosine similarity of the features "
            f"as a same-person detector over {pairs}; 0.5 = no identity, 1 = a face-verification "
            "embedding; lower is better, down to 0.5)"
        )
    if pose:
        rows = [{"pose": key.removesuffix("_r2"), "R^2": _fmt(value)} for key, value in pose.items()]
        blocks.append(
            "**Pose leakage** (ridge R^2 from the features; lower is better; "
            "0 = no linear information, 1 = fully decodable; negative = worse than "
            "predicting the mean)\n\n" + markdown_table(rows)
        )
    else:
        blocks.append("**Pose leakage**: not measured (no pose labels).")
    return "\n\n".join(blocks)


# `results['codes'][name]` keys, and their column in the per-code table.
CODE_COLUMNS = (
    ("identity_linear", "identity, linear"),
    ("identity_mlp", "identity, MLP"),
    ("identity_chance", "identity chance"),
    ("verification_auc", "verification AUC"),
    ("yaw_r2", "yaw R^2"),
    ("pitch_r2", "pitch R^2"),
    ("expression_linear", "expression, linear"),
    ("expression_mlp", "expression, MLP"),
    ("expression_chance", "expression chance"),
)


def format_code_leakage(codes: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table of `results['codes']`: one row per code a method declares, with what was measured.

    Identity probe accuracies beside their chance (1 / subjects), verification AUC (0.5 = no identity,
    1 = a face-verification embedding), ridge R^2 of each pose angle (0 = none, 1 = fully decodable) and
    expression probe accuracies beside the majority-class share of the probe's test side. On the
    expression code (`features`) identity and pose should be low and expression high; on a code meant to
    hold identity or pose, the expression numbers should be near chance.
    """
    present = [(key, name) for key, name in CODE_COLUMNS if any(key in c for c in codes.values())]
    rows = [{"code": f"`{code}`",
             **{name: _fmt(values[key]) if key in values else "–" for key, name in present}}
            for code, values in codes.items()]
    notes = [f"`{code}`: {key.removesuffix('_skipped')} not measured ({why})"
             for code, values in codes.items() for key, why in values.items() if key.endswith("_skipped")]
    return ("Fresh probes on every code the method declares (held-out subjects; each subject's images "
            "split in two, whole sequences to one side where the data has sequences, as in the identity "
            "section). Expression chance here is the majority-class share of the probe's test side, not "
            "1 / classes.\n\n" + markdown_table(rows)
            + ("\n\n" + "; ".join(notes) + "." if notes else ""))


def format_validation(validation: Mapping[str, Any]) -> str:
    """Markdown block of `results['validation']`: the validation subjects' accuracy and leakage of the
    expression features (subjects of the training fold held out of training)."""
    row = {"accuracy": _fmt(validation.get("accuracy")), "images": validation.get("num_images"),
           "subjects": validation.get("num_subjects")}
    for key, name in (("identity_linear", "identity, linear"), ("identity_mlp", "identity, MLP"),
                      ("identity_chance", "identity chance"), ("verification_auc", "verification AUC"),
                      ("yaw_r2", "yaw R^2")):
        if key in validation:
            row[name] = _fmt(validation[key])
    return ("Subjects of the training fold held out of training (for model and weight selection); the "
            "test fold is never used for it.\n\n" + markdown_table([row]))


def _mean_std(summary: Mapping[str, Any], key: str) -> str:
    stats = summary["mean_std"].get(key)
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}" if stats else "–"


def comparison_table(summaries: Sequence[Mapping[str, Any]], *, names: Sequence[str] | None = None) -> str:
    """One Markdown row per cross-validation (`crossval_results.json` contents), mean ± std over folds.

    Columns: expression accuracy, accuracy per |yaw| band (where the data has yaw), the identity probes
    on the expression features beside their chance (lower is better), their identity verification AUC
    (where measured; 0.5 = none, lower is better) and R^2 of yaw from the same features (lower is better).
    """
    bands = list(dict.fromkeys(
        k for s in summaries for k in s["mean_std"] if k.startswith("accuracy |yaw| ")))
    rows = []
    for i, s in enumerate(summaries):
        row = {
            "recipe": names[i] if names else s["method"],
            "folds": s["num_folds"],
            "expression accuracy": _mean_std(s, "accuracy"),
        }
        for band in bands:
            row[f"acc. {band.removeprefix('accuracy ')}°"] = _mean_std(s, band)
        row["identity probe, linear"] = _mean_std(s, "identity probe (linear)")
        row["identity probe, MLP"] = _mean_std(s, "identity probe (MLP)")
        chance = s["mean_std"].get("identity chance")
        row["identity chance"] = f"{chance['mean']:.3f}" if chance else "–"
        if any("identity verification AUC" in t["mean_std"] for t in summaries):
            row["verification AUC"] = _mean_std(s, "identity verification AUC")
        if any("yaw R^2" in t["mean_std"] for t in summaries):
            row["yaw R²"] = _mean_std(s, "yaw R^2")
        rows.append(row)
    return markdown_table(rows)
