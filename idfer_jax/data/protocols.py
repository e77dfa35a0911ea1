"""Subject-independent evaluation protocols.

FER images of one person are far more alike than images of one expression, so a split by image lets a
model recognise the *person* and inflates accuracy. Every split here is by subject: a subject's images are
all on one side. Folds are a pure function of (subject ids, number of folds, seed), so anyone who has the
same dataset and seed gets the same split; `fold_assignment` returns the split as plain data for a fold
file.
"""

from __future__ import annotations

import json

import numpy as np


def subject_folds(subjects: np.ndarray, num_folds: int, seed: int) -> list[np.ndarray]:
    """Partitions the distinct subject ids into `num_folds` groups of near-equal size.

    The subjects are shuffled with `seed` and dealt out in order, so fold sizes differ by at most one.
    """
    unique = np.unique(np.asarray(subjects))
    if num_folds < 2:
        raise ValueError(f"num_folds must be at least 2 for a held-out fold, got {num_folds}.")
    if num_folds > len(unique):
        raise ValueError(
            f"num_folds={num_folds} but the dataset has only {len(unique)} subjects; use at most "
            f"{len(unique)} folds (that is leave-one-subject-out)."
        )
    order = np.random.default_rng(seed).permutation(unique)
    return [np.sort(part) for part in np.array_split(order, num_folds)]


def fold_indices(
    subjects: np.ndarray, fold: int, num_folds: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Record indices of (train, test) for held-out fold `fold`; the two share no subject."""
    if not 0 <= fold < num_folds:
        raise ValueError(f"fold must be in [0, {num_folds}), got {fold}.")
    subjects = np.asarray(subjects)
    test_subjects = subject_folds(subjects, num_folds, seed)[fold]
    is_test = np.isin(subjects, test_subjects)
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def fold_assignment(subjects: np.ndarray, num_folds: int, seed: int) -> dict:
    """The whole protocol as JSON-ready data: which subjects each fold holds out."""
    folds = subject_folds(subjects, num_folds, seed)
    return {
        "protocol": "subject_kfold",
        "num_folds": num_folds,
        "seed": seed,
        "test_subjects": [[int(s) for s in fold] for fold in folds],
    }


def leave_one_subject_out(subjects: np.ndarray) -> list[np.ndarray]:
    """One fold per subject, in sorted subject order: fold i holds out the i-th subject."""
    unique = np.unique(np.asarray(subjects))
    if len(unique) < 2:
        raise ValueError(f"Leave-one-subject-out needs at least 2 subjects, got {len(unique)}.")
    return [np.array([s]) for s in unique]


def folds_from_file(path: str, subject_names: dict[int, str]) -> list[np.ndarray]:
    """The folds of a `folds.json` written by an earlier run, matched to this dataset by subject name.

    Names, not indices, are matched so that a fold file stays valid for a dataset rebuilt at another
    size or with alignment. Every subject must be in exactly one fold.
    """
    with open(path) as f:
        saved = json.load(f)
    folds_by_name = saved.get("test_subject_names") or saved.get("test_subjects")
    if not folds_by_name:
        raise ValueError(f"{path} holds no folds (expected 'test_subject_names' or 'test_subjects').")
    index = {name: s for s, name in subject_names.items()}
    folds, seen = [], set()
    for fold in folds_by_name:
        unknown = [str(n) for n in fold if str(n) not in index]
        if unknown:
            raise ValueError(
                f"Fold file {path} names subjects this dataset lacks: {', '.join(unknown[:10])}. "
                "Is it the fold file of another dataset?"
            )
        folds.append(np.sort(np.array([index[str(n)] for n in fold])))
        seen.update(str(n) for n in fold)
    missing = sorted(set(index) - seen)
    if missing:
        raise ValueError(
            f"Fold file {path} leaves out subjects {', '.join(missing[:10])}: every subject must be "
            "tested exactly once."
        )
    return folds
