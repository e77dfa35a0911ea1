"""How a leakage probe's data is split and scaled: by image within subject (groups kept whole), and
z-scored with the train side's statistics, (near-)constant features set to 0."""

from __future__ import annotations

import numpy as np

# A feature whose train-side std is below this fraction of the largest one is treated as constant.
NEAR_CONSTANT = 1e-3


def _standardize_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and scale of the train side; the scale is inf for (near-)constant features.

    An infinite scale maps the feature to 0 on both sides. Z-scoring a feature that barely varies on
    the train side (a ReLU unit active on one training image) puts an unusual test image hundreds of
    standard deviations out, and that one value then dominates a linear probe: measured on PhaNet's
    features, ridge R^2 of yaw was -0.04 with such features and 0.91 without them.
    """
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    tolerance = max(NEAR_CONSTANT * float(scale.max(initial=0.0)), 1e-12)
    return mean, np.where(scale > tolerance, scale, np.inf)



def split_within_subjects(
    subjects,
    *,
    train_fraction: float = 0.5,
    seed: int = 0,
    groups=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Split images into probe-train / probe-test so that every subject appears on both sides.

    Each subject's *units* (its images, or its groups when ``groups`` is given) are shuffled and
    ``round(train_fraction * n_units)`` of them (at least 1, at most ``n_units - 1``) go to train,
    the rest to test. A subject with a single unit cannot be on both sides; it goes to train only,
    where it still makes the probe's task harder but is never scored.

    Args:
      subjects: ``(N,)`` subject id per image (any hashable numpy dtype).
      train_fraction: fraction of each subject's units used for training, in (0, 1).
      seed: the split is a deterministic function of ``(subjects, groups, train_fraction, seed)``.
      groups: optional ``(N,)`` group id per image (sequence or session). Groups are interpreted
        *within* a subject, i.e. the unit is the pair (subject, group), so per-subject sequence
        numbers such as CK+'s ``001, 002, ...`` work as they are. No unit straddles the two sides.

    Returns:
      ``(train_idx, test_idx)``: sorted int64 index arrays, disjoint, covering all images.

    Raises:
      ValueError: on bad shapes/fraction, or when no subject has 2+ images (2+ groups).
    """
    subjects = np.asarray(subjects)
    if subjects.ndim != 1 or subjects.size == 0:
        raise ValueError(f"subjects must be a non-empty 1-D array, got shape {subjects.shape}.")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must lie in (0, 1), got {train_fraction}.")
    n = subjects.shape[0]
    if groups is None:
        unit_ids = np.arange(n)
    else:
        groups = np.asarray(groups)
        if groups.shape != (n,):
            raise ValueError(f"groups must have shape ({n},) like subjects, got {groups.shape}.")
        _, unit_ids = np.unique(groups, return_inverse=True)
        unit_ids = unit_ids.reshape(-1)

    rng = np.random.default_rng(seed)
    _, subject_ids = np.unique(subjects, return_inverse=True)
    subject_ids = subject_ids.reshape(-1)
    is_train = np.zeros(n, dtype=bool)
    any_split = False
    for s in range(subject_ids.max() + 1):  # sorted subject order keeps the rng stream stable
        images = np.flatnonzero(subject_ids == s)
        units = np.unique(unit_ids[images])
        if units.size < 2:
            is_train[images] = True
            continue
        any_split = True
        n_train = int(np.clip(round(train_fraction * units.size), 1, units.size - 1))
        train_units = rng.permutation(units)[:n_train]
        is_train[images] = np.isin(unit_ids[images], train_units)
    if not any_split:
        what = "groups" if groups is not None else "images"
        raise ValueError(
            f"No subject has 2 or more {what}, so no subject can appear on both sides of a "
            "within-subject split; leakage cannot be measured on these features."
        )
    return np.flatnonzero(is_train).astype(np.int64), np.flatnonzero(~is_train).astype(np.int64)



def standardize(x_train, x_test) -> tuple[np.ndarray, np.ndarray]:
    """Z-score both sides with the *train* side's per-feature mean and std (float32).

    Features (near-)constant on the train side become 0 on both sides; see `_standardize_stats`.
    """
    x_train = np.asarray(x_train, dtype=np.float64)
    x_test = np.asarray(x_test, dtype=np.float64)
    if x_train.ndim != 2 or x_test.ndim != 2 or x_train.shape[1] != x_test.shape[1]:
        raise ValueError(
            "features must be 2-D (N, D) with the same D on both sides, got "
            f"{x_train.shape} and {x_test.shape}."
        )
    mean, std = _standardize_stats(x_train)
    return ((x_train - mean) / std).astype(np.float32), ((x_test - mean) / std).astype(np.float32)
