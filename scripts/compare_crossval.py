"""One table comparing finished cross-validations (e.g. recipes on the same folds and budget).

    python scripts/compare_crossval.py workdirs/baseline_cv workdirs/idennet_cv workdirs/phanet_cv
    python scripts/compare_crossval.py baseline=workdirs/b "baseline + identity adversary"=workdirs/b_id

A row is named after the run's method, or `NAME=DIR` names it.

Reads each `DIR/crossval_results.json` (written by `idfer crossval`) and prints a Markdown table:
expression accuracy and accuracy per |yaw| band, identity probes with chance, yaw R^2, each as mean ±
population std over folds. Runs compare only if they share the dataset, protocol and folds: the script
refuses runs whose `folds.json` differ.
"""

from __future__ import annotations

import json
import os
import sys

from idfer_jax import evaluation as E


def main(workdirs: list[str]) -> str:
    if not workdirs:
        raise SystemExit(__doc__)
    summaries, folds, names = [], [], []
    for arg in workdirs:
        name, _, d = arg.rpartition("=")
        names.append(name or None)
        path = os.path.join(d, "crossval_results.json")
        if not os.path.exists(path):
            raise SystemExit(f"{path} does not exist: run `idfer crossval ... --workdir={d}` first.")
        with open(path) as f:
            summaries.append(json.load(f))
        with open(os.path.join(d, "folds.json")) as f:
            folds.append(json.load(f).get("test_subjects"))
    if any(f != folds[0] for f in folds):
        raise SystemExit("These runs used different folds (their folds.json differ); they do not compare.")
    return E.comparison_table(
        summaries, names=[n or s.get("method", "?") for n, s in zip(names, summaries, strict=True)])


if __name__ == "__main__":
    print(main(sys.argv[1:]))
