"""Leakage of identity and head pose from frozen expression features.

A method that claims to separate expression from identity and pose is judged by how much a *fresh*
probe can still recover identity/pose from its frozen expression features. A training adversary's
own accuracy is never a leakage measure: adversarial removal often leaves information that a new
probe finds again.

Protocol (``identity_leakage`` / ``pose_leakage``):

1. Take the expression features of the images of the *held-out* (test-fold) subjects, i.e. subjects
   the feature extractor never trained on.
2. Split them *by image within subject* (:func:`split_within_subjects`): every subject with 2+
   images appears on both sides, so the probe's task (recognise who this is / regress the pose) is
   well posed. When near-duplicate images exist (CK+ keeps 3 frames of each sequence), pass their
   sequence/session ids as ``groups`` so that a whole group lands on one side; otherwise the probe
   would be scored on near-copies of its training images.
3. Standardise the features with the train side's mean/std, train the probe on the train side
   and score it on the test side: accuracy for identity (linear softmax and one-hidden-layer MLP),
   R^2 of closed-form ridge regression for each pose angle.

Lower is better for every number here; identity accuracy should be read beside its chance level.

The split and scaling are :mod:`idfer_jax.evaluation.splits`, the classifiers
:mod:`idfer_jax.evaluation.classifier_probes`, the ridge regression :mod:`idfer_jax.evaluation.ridge`;
this module puts them together (and re-exports them).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from idfer_jax.evaluation.classifier_probes import linear_probe_accuracy, mlp_probe_accuracy
from idfer_jax.evaluation.ridge import DEFAULT_ALPHAS, RidgeFit, fit_ridge, ridge_r2, select_ridge_alpha
from idfer_jax.evaluation.splits import split_within_subjects, standardize

__all__ = [
    "DEFAULT_ALPHAS",
    "RidgeFit",
    "fit_ridge",
    "identity_leakage",
    "linear_probe_accuracy",
    "mlp_probe_accuracy",
    "pose_leakage",
    "ridge_r2",
    "select_ridge_alpha",
    "split_within_subjects",
    "standardize",
]


def _check_features(features, subjects) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features)
    subjects = np.asarray(subjects)
    if features.ndim != 2:
        raise ValueError(f"features must be 2-D (N, D), got shape {features.shape}.")
    if subjects.shape != (features.shape[0],):
        raise ValueError(
            f"subjects must have shape ({features.shape[0]},) like features, got {subjects.shape}."
        )
    if not np.all(np.isfinite(features)):
        raise ValueError("features contain NaN or inf; check the feature extractor.")
    return features, subjects


def _unit_keys(subjects: np.ndarray, groups) -> np.ndarray:
    """Integer id of each (subject, group) pair, matching how the split treats groups."""
    _, s = np.unique(subjects, return_inverse=True)
    _, g = np.unique(np.asarray(groups), return_inverse=True)
    s, g = s.reshape(-1), g.reshape(-1)
    return s.astype(np.int64) * (g.max() + 1) + g


def identity_leakage(
    features,
    subjects,
    *,
    seed: int = 0,
    groups=None,
    train_fraction: float = 0.5,
) -> dict[str, float | int]:
    """How well fresh probes recognise *who* a held-out subject is from expression features.

    Args:
      features: ``(N, D)`` frozen expression features of the held-out subjects' images.
      subjects: ``(N,)`` subject ids (any values; re-indexed to ``0..S-1``).
      seed: seeds the within-subject split and the probes.
      groups: optional ``(N,)`` sequence/session ids; see :func:`split_within_subjects`.
      train_fraction: fraction of each subject's images (groups) the probes train on.

    Returns:
      ``{'linear_acc', 'mlp_acc', 'chance', 'num_subjects', 'num_train', 'num_test'}``:
      probe accuracies on the test side (lower is better), ``chance = 1 / num_subjects`` where
      ``num_subjects`` counts the distinct subjects in ``features``, and the split sizes.
    """
    features, subjects = _check_features(features, subjects)
    _, labels = np.unique(subjects, return_inverse=True)
    labels = labels.reshape(-1).astype(np.int32)
    num_subjects = int(labels.max()) + 1
    train, test = split_within_subjects(subjects, train_fraction=train_fraction, seed=seed, groups=groups)
    args = (features[train], labels[train], features[test], labels[test])
    return {
        "linear_acc": linear_probe_accuracy(*args, num_classes=num_subjects, seed=seed),
        "mlp_acc": mlp_probe_accuracy(*args, num_classes=num_subjects, seed=seed),
        "chance": 1.0 / num_subjects,
        "num_subjects": num_subjects,
        "num_train": int(train.size),
        "num_test": int(test.size),
    }


def pose_leakage(
    features,
    subjects,
    poses: Mapping[str, np.ndarray],
    *,
    seed: int = 0,
    groups=None,
    train_fraction: float = 0.5,
) -> dict[str, float]:
    """Ridge R^2 of each head-pose angle from expression features (lower is better).

    Uses the same within-subject split as :func:`identity_leakage` for the same ``seed``/``groups``.
    Images whose pose value is NaN (unknown) are left out of that angle's regression only.

    Args:
      features: ``(N, D)`` frozen expression features of the held-out subjects' images.
      subjects: ``(N,)`` subject ids.
      poses: ``{name: (N,) values}``, e.g. ``{'yaw': yaw, 'pitch': pitch}``.
      seed, groups, train_fraction: as in :func:`identity_leakage`.

    Returns:
      ``{f'{name}_r2': R^2 on the test side}`` for every name in ``poses`` (see :func:`ridge_r2`;
      NaN when the angle is constant on the test side, e.g. an all-frontal dataset).
    """
    features, subjects = _check_features(features, subjects)
    train, test = split_within_subjects(subjects, train_fraction=train_fraction, seed=seed, groups=groups)
    results = {}
    for name, values in poses.items():
        values = np.asarray(values, dtype=np.float64)
        if values.shape != subjects.shape:
            raise ValueError(f"pose {name!r} must have shape {subjects.shape}, got {values.shape}.")
        known = np.isfinite(values)
        tr, te = train[known[train]], test[known[test]]
        if tr.size < 2 or te.size == 0:
            results[f"{name}_r2"] = float("nan")
            continue
        results[f"{name}_r2"] = ridge_r2(
            features[tr],
            values[tr],
            features[te],
            values[te],
            seed=seed,
            groups=None if groups is None else _unit_keys(subjects, groups)[tr],
        )
    return results

