"""Subject-independent evaluation protocols.

FER images of one person are far more alike than images of one expression, so a split by image lets a
model recognise the *person* and inflates accuracy. Every split here is by subject: a subject's images are
all on one side. Folds are a pure function of (subject ids, number of folds, seed), so anyone who has the
same dataset and seed gets the same split; `fold_assignment` returns the split as plain data for a fold
file.
"""

from __future__ import annotations

import json
import os

import numpy as np

from idfer_jax.data.errors import DataError


def subject_folds(subjects: np.ndarray, num_folds: int, seed: int) -> list[np.ndarray]:
    """Partitions the distinct subject ids into `num_folds` groups of near-equal size.

    The subjects are shuffled with `seed` and dealt out in order, so fold sizes differ by at most one.
    """
    unique = np.unique(np.asarray(subjects))
    if num_folds < 2:
        raise DataError(
            f"data.num_folds={num_folds}, but a subject-independent split needs at least 2 folds (one "
            f"held out, the rest for training). Set --config.data.num_folds between 2 and {len(unique)} "
            "(the number of subjects), or use --config.data.protocol=official where the dataset has a "
            "test split."
        )
    if num_folds > len(unique):
        raise DataError(
            f"data.num_folds={num_folds} but the dataset has only {len(unique)} subjects; set "
            f"--config.data.num_folds to at most {len(unique)} (that is leave-one-subject-out, also "
            "--config.data.protocol=loso)."
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
    size or with alignment; a fold file whose names are empty (written before every dataset had subject
    names) is matched by subject id. Every subject must be in exactly one fold. Any problem with the file
    is a DataError naming it.
    """
    fix = ("Point --config.data.fold_file at the folds.json of an earlier run of this dataset, or leave "
           "it empty")
    if not os.path.exists(path):
        raise DataError(f"Fold file {path} (data.fold_file) does not exist. {fix}.")
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"Fold file {path} (data.fold_file) is not valid JSON ({e}). {fix}.") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"Fold file {path} (data.fold_file) cannot be read ({e}). {fix}.") from e
    shape = ("an object with 'test_subject_names' (or 'test_subjects'): one list of subject names per "
             "fold, as written by idfer")
    if not isinstance(saved, dict):
        raise DataError(f"Fold file {path} holds a JSON {type(saved).__name__}, not {shape}. {fix}.")
    names = saved.get("test_subject_names")
    if isinstance(names, list) and any(isinstance(f, list) and any(n == "" for n in f) for f in names):
        names = None  # names were not recorded: match the ids
    folds_by_name = names or saved.get("test_subjects")
    by_id = not names
    if not folds_by_name:
        raise DataError(f"Fold file {path} holds no folds: expected {shape}. {fix}.")
    if not isinstance(folds_by_name, list) or not all(
        isinstance(fold, list) and all(isinstance(n, (str, int)) and not isinstance(n, bool) for n in fold)
        for fold in folds_by_name
    ):
        raise DataError(f"Fold file {path} is not {shape}. {fix}.")
    if len(folds_by_name) < 2:
        raise DataError(f"Fold file {path} has {len(folds_by_name)} fold; a held-out split needs at "
                        f"least 2. {fix}.")
    index = {str(s) if by_id else name: s for s, name in subject_names.items()}
    folds, seen = [], set()
    for i, fold in enumerate(folds_by_name):
        unknown = [str(n) for n in fold if str(n) not in index]
        if unknown:
            raise DataError(
                f"Fold file {path} names subjects this dataset lacks: {', '.join(unknown[:10])}"
                f"{' ...' if len(unknown) > 10 else ''} (its subjects: "
                f"{', '.join(sorted(index)[:10])}{' ...' if len(index) > 10 else ''}). Is it the fold file "
                f"of another dataset? {fix}."
            )
        if not fold:
            raise DataError(f"Fold file {path}: fold {i} holds no subject. {fix}.")
        twice = sorted(seen & {str(n) for n in fold}) + sorted(
            {str(n) for n in fold if [str(m) for m in fold].count(str(n)) > 1})
        if twice:
            raise DataError(f"Fold file {path} puts subjects {', '.join(twice[:10])} in more than one "
                            f"fold: every subject must be tested exactly once. {fix}.")
        folds.append(np.sort(np.array([index[str(n)] for n in fold])))
        seen.update(str(n) for n in fold)
    missing = sorted(set(index) - seen)
    if missing:
        raise DataError(
            f"Fold file {path} leaves out subjects {', '.join(missing[:10])}: every subject must be "
            f"tested exactly once. {fix}."
        )
    return folds
