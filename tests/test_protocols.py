import numpy as np
import pytest

from idfer_jax.data import protocols


def test_folds_partition_subjects_and_are_deterministic():
    subjects = np.repeat(np.arange(23), 5)
    folds = protocols.subject_folds(subjects, 5, seed=3)
    joined = np.concatenate(folds)
    assert sorted(joined.tolist()) == list(range(23))  # every subject tested exactly once
    assert max(len(f) for f in folds) - min(len(f) for f in folds) <= 1
    again = protocols.subject_folds(subjects, 5, seed=3)
    assert all((a == b).all() for a, b in zip(folds, again, strict=True))
    other = protocols.subject_folds(subjects, 5, seed=4)
    assert any((a != b).any() or len(a) != len(b) for a, b in zip(folds, other, strict=True))


def test_fold_indices_are_subject_disjoint():
    rng = np.random.default_rng(0)
    subjects = rng.integers(0, 30, size=600)
    for fold in range(6):
        train, test = protocols.fold_indices(subjects, fold, 6, seed=0)
        assert len(train) + len(test) == len(subjects)
        assert not set(subjects[train]) & set(subjects[test])


def test_fold_assignment_is_json_ready():
    import json

    data = protocols.fold_assignment(np.arange(10), 10, seed=0)
    assert json.loads(json.dumps(data))["num_folds"] == 10
    assert sorted(s for fold in data["test_subjects"] for s in fold) == list(range(10))


def test_bad_fold_arguments():
    with pytest.raises(ValueError, match="only 3 subjects"):
        protocols.subject_folds(np.arange(3), 5, seed=0)
    with pytest.raises(ValueError, match="fold must be"):
        protocols.fold_indices(np.arange(10), 5, 5, seed=0)
