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

Verification-style identity leakage (``verification_auc``) needs no probe training: the cosine
similarity of every pair of images' codes, scored as a same-subject detector. It is the ROC-AUC of
"same subject" vs "different subjects" pairs, in [0, 1]: 0.5 means that the code's geometry says
nothing about who the person is (lower is better, down to 0.5; below 0.5, same-subject pairs are
*less* alike than others, which is identity information too). 1.0 means every same-subject pair is
more similar than every different-subject pair: the code is a face-verification embedding. Pairs of
the same group (sequence/session: CK+'s 3 near-identical frames of a sequence) are left out, or
near-duplicates alone would push the AUC towards 1. It complements the probes: a probe *learns* to
read identity (and can find it where a plain similarity cannot), the AUC asks whether identity is the
code's own notion of similarity.

``expression_leakage`` is the same protocol with the expression label as target: on a code meant to
hold *no* expression (Halawa et al.'s z_n, IPD-FER's pose and identity codes) higher is worse; its
chance level is the majority-class share of the probe's test side.

``code_leakage`` runs all of them on one code and returns flat numbers (what ``idfer evaluate``
writes per code under ``results['codes']``).

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
    "code_leakage",
    "expression_leakage",
    "fit_ridge",
    "identity_leakage",
    "linear_probe_accuracy",
    "mlp_probe_accuracy",
    "pose_leakage",
    "ridge_r2",
    "select_ridge_alpha",
    "split_within_subjects",
    "standardize",
    "verification_auc",
]

# Above this many images, `verification_auc` scores the pairs of a deterministic random subset of them
# (4000 images are 8 million pairs; all pairs of 20000 would be 200 million).
MAX_VERIFICATION_IMAGES = 4000
CODE_PARTS = ("identity", "verification", "pose", "expression")  # what `code_leakage` measures


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



def roc_auc(scores, positive) -> float:
    """Area under the ROC curve of ``scores`` as a detector of ``positive`` (ties count one half).

    The Mann-Whitney form: the probability that a random positive scores above a random negative,
    from average ranks, so it equals ``sklearn.metrics.roc_auc_score``. NaN when either class is empty.
    """
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    positive = np.asarray(positive, dtype=bool).reshape(-1)
    num_pos = int(positive.sum())
    num_neg = positive.size - num_pos
    if num_pos == 0 or num_neg == 0:
        return float("nan")
    ranks = rankdata(scores, method="average")
    return float((ranks[positive].sum() - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg))


def verification_auc(
    features,
    subjects,
    *,
    groups=None,
    seed: int = 0,
    max_images: int = MAX_VERIFICATION_IMAGES,
) -> float:
    """Identity leakage without a probe: ROC-AUC of cosine similarity for same- vs different-subject pairs.

    Every unordered pair of images is scored by the cosine similarity of their codes, after the codes
    are centred on their mean over the images scored (no label involved; pooled ReLU features share a
    large positive offset that would otherwise make every pair look alike). Same-subject pairs are the
    positives, different-subject pairs the negatives; pairs of the same ``groups`` value *within* a
    subject (a sequence's near-identical frames) are left out.

    Args:
      features: ``(N, D)`` codes of the held-out subjects' images.
      subjects: ``(N,)`` subject ids.
      groups: optional ``(N,)`` sequence/session ids, read within subject as in
        :func:`split_within_subjects`.
      seed: picks the images when there are more than ``max_images``.
      max_images: above this many images, the pairs of ``max_images`` of them picked at random
        (deterministically, by ``seed``) are scored.

    Returns:
      The AUC in [0, 1]: 0.5 = no identity in the code's similarity (best), 1.0 = a perfect
      same-person detector (worst); NaN when there is no same-subject pair left (every subject has
      one image or one group) or no second subject.
    """
    features, subjects = _check_features(features, subjects)
    n = features.shape[0]
    keys = np.arange(n) if groups is None else _unit_keys(subjects, groups)
    if n > max_images:
        picked = np.sort(np.random.default_rng(seed).choice(n, size=max_images, replace=False))
        features, subjects, keys = features[picked], subjects[picked], keys[picked]
        n = max_images
    x = features.astype(np.float64)
    x = x - x.mean(axis=0)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    similarity = (x @ x.T).astype(np.float32)
    # Each unordered pair once, never the same (subject, group): no near-duplicates.
    keep = np.triu(keys[:, None] != keys[None, :], k=1)
    same = subjects[:, None] == subjects[None, :]
    return roc_auc(similarity[keep], same[keep])


def expression_leakage(
    features,
    subjects,
    expressions,
    *,
    seed: int = 0,
    groups=None,
    train_fraction: float = 0.5,
) -> dict[str, float | int]:
    """How well fresh probes recognise the *expression* from a code (same split as the identity probes).

    On the expression code this is its quality; on a code meant to hold none (a nuisance, pose or
    identity code) it is leakage, higher is worse.

    Args:
      features: ``(N, D)`` codes.
      subjects: ``(N,)`` subject ids (the split is by image, or by group, within subject).
      expressions: ``(N,)`` integer expression labels.
      seed, groups, train_fraction: as in :func:`identity_leakage`.

    Returns:
      ``{'linear_acc', 'mlp_acc', 'chance', 'num_classes', 'num_train', 'num_test'}``: accuracies in
      [0, 1] on the probe's test side, and ``chance`` = the share of its most frequent class there
      (what always answering that class would score).
    """
    features, subjects = _check_features(features, subjects)
    expressions = np.asarray(expressions).astype(np.int32)
    if expressions.shape != subjects.shape:
        raise ValueError(f"expressions must have shape {subjects.shape}, got {expressions.shape}.")
    train, test = split_within_subjects(subjects, train_fraction=train_fraction, seed=seed, groups=groups)
    num_classes = int(expressions.max()) + 1
    args = (features[train], expressions[train], features[test], expressions[test])
    counts = np.bincount(expressions[test], minlength=num_classes)
    return {
        "linear_acc": linear_probe_accuracy(*args, num_classes=num_classes, seed=seed),
        "mlp_acc": mlp_probe_accuracy(*args, num_classes=num_classes, seed=seed),
        "chance": float(counts.max() / max(counts.sum(), 1)),
        "num_classes": num_classes,
        "num_train": int(train.size),
        "num_test": int(test.size),
    }


def code_leakage(
    features,
    subjects,
    *,
    expressions=None,
    poses: Mapping[str, np.ndarray] | None = None,
    groups=None,
    seed: int = 0,
    parts: tuple[str, ...] = CODE_PARTS,
) -> dict[str, float | int | str]:
    """Every leakage number of one code, flat (``idfer evaluate``'s ``results['codes'][name]``).

    ``parts`` picks among ``CODE_PARTS`` = identity, verification, pose (needs ``poses``) and expression
    (needs ``expressions``). Returns any of (a part that cannot be measured is left out, with
    ``<part>_skipped`` saying why):
      ``identity_linear``, ``identity_mlp``: identity probe accuracies, [0, 1], beside
      ``identity_chance`` = 1 / subjects (lower is better for a code that should hold no identity);
      ``verification_auc``: :func:`verification_auc`, [0, 1], 0.5 = none;
      ``<angle>_r2`` for each of ``poses`` (``yaw_r2``, ``pitch_r2``): ridge R^2, <= 1, 0 = none
      (computed without ``groups``, as ``idfer evaluate``'s pose leakage);
      ``expression_linear``, ``expression_mlp``: expression probe accuracies, [0, 1], beside
      ``expression_chance`` = majority-class share of the probe's test side (higher is better on an
      expression code, worse on any other).
    """
    unknown = [p for p in parts if p not in CODE_PARTS]
    if unknown:
        raise ValueError(f"Unknown parts {unknown}; use any of {CODE_PARTS}.")
    out: dict[str, float | int | str] = {}
    if "identity" in parts:
        try:
            identity = identity_leakage(features, subjects, seed=seed, groups=groups)
            out.update(identity_linear=identity["linear_acc"], identity_mlp=identity["mlp_acc"],
                       identity_chance=identity["chance"])
        except ValueError as e:
            out["identity_skipped"] = str(e)
    if "verification" in parts:
        if len(np.unique(np.asarray(subjects))) >= 2:
            out["verification_auc"] = verification_auc(features, subjects, groups=groups, seed=seed)
        else:
            out["verification_skipped"] = "a single subject: no different-subject pair"
    if "pose" in parts and poses:
        try:
            out.update(pose_leakage(features, subjects, poses, seed=seed))
        except ValueError as e:
            out["pose_skipped"] = str(e)
    if "expression" in parts and expressions is not None:
        try:
            expression = expression_leakage(features, subjects, expressions, seed=seed, groups=groups)
            out.update(expression_linear=expression["linear_acc"], expression_mlp=expression["mlp_acc"],
                       expression_chance=expression["chance"])
        except ValueError as e:
            out["expression_skipped"] = str(e)
    return out
