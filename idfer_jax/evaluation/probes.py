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
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from idfer_jax.evaluation.metrics import r2_score

__all__ = [
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

DEFAULT_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0)


# --------------------------------------------------------------------------------------------------
# Split
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Classification probes (JAX + optax)
# --------------------------------------------------------------------------------------------------


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


def _prepare_classification(x_train, y_train, x_test, y_test, num_classes):
    x_train, x_test = standardize(x_train, x_test)
    y_train = np.asarray(y_train)
    y_test = np.asarray(y_test)
    for name, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if y.shape != (x.shape[0],):
            raise ValueError(f"y_{name} must have shape ({x.shape[0]},), got {y.shape}.")
        if y.dtype.kind not in "iu":
            raise ValueError(f"y_{name} must hold integer class indices, got dtype {y.dtype}.")
    if x_train.shape[0] == 0 or x_test.shape[0] == 0:
        raise ValueError("both the probe's train and test sides need at least one example.")
    inferred = int(max(y_train.max(), y_test.max())) + 1
    num_classes = inferred if num_classes is None else int(num_classes)
    if min(y_train.min(), y_test.min()) < 0 or inferred > num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}).")
    return x_train, y_train.astype(np.int32), x_test, y_test.astype(np.int32), num_classes


def _softmax_loss(logits, labels, weights, l2):
    data = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return data + l2 * sum(jnp.sum(w**2) for w in weights)


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def _fit_linear(x, y, x_test, y_test, *, num_classes: int, steps: int, l2: float, key):
    """L-BFGS on the (convex) multinomial logistic loss; returns test accuracy."""
    params = {
        "w": 0.01 * jax.random.normal(key, (x.shape[1], num_classes), x.dtype),
        "b": jnp.zeros((num_classes,), x.dtype),
    }

    def loss_fn(p):
        return _softmax_loss(x @ p["w"] + p["b"], y, [p["w"]], l2)

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss_fn)

    def step(carry):
        p, state, i, _ = carry
        value, grad = value_and_grad(p, state=state)
        updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=loss_fn)
        grad_norm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grad)))
        return optax.apply_updates(p, updates), state, i + 1, grad_norm

    def keep_going(carry):
        # Stop at convergence: more L-BFGS line searches on a flat loss only amplify round-off.
        _, _, i, grad_norm = carry
        return (i < steps) & (grad_norm > 1e-5)

    init = (params, opt.init(params), 0, jnp.asarray(jnp.inf, x.dtype))
    params, _, _, _ = jax.lax.while_loop(keep_going, step, init)
    logits = x_test @ params["w"] + params["b"]
    return jnp.mean(jnp.argmax(logits, axis=-1) == y_test)


def linear_probe_accuracy(
    x_train,
    y_train,
    x_test,
    y_test,
    *,
    num_classes: int | None = None,
    l2: float = 1e-4,
    steps: int = 500,
    seed: int = 0,
) -> float:
    """Test accuracy of a multinomial logistic-regression probe.

    The features are standardised with the train side's statistics; the probe minimises
    ``mean cross-entropy + l2 * ||W||^2`` (bias not penalised) full-batch with optax L-BFGS for at
    most ``steps`` iterations (it stops earlier once the gradient norm is below 1e-5).

    Args:
      x_train, x_test: ``(N, D)`` features.
      y_train, y_test: ``(N,)`` integer labels in ``[0, num_classes)``.
      num_classes: defaults to ``1 + max label`` over both sides.
      l2: weight decay strength.
      steps: maximum number of L-BFGS iterations.
      seed: seeds the (tiny) random initialisation.
    """
    x_train, y_train, x_test, y_test, num_classes = _prepare_classification(
        x_train, y_train, x_test, y_test, num_classes
    )
    acc = _fit_linear(
        x_train,
        y_train,
        x_test,
        y_test,
        num_classes=num_classes,
        steps=int(steps),
        l2=float(l2),
        key=jax.random.key(seed),
    )
    return float(acc)


@functools.partial(jax.jit, static_argnames=("num_classes", "hidden", "steps"))
def _fit_mlp(x, y, x_test, y_test, *, num_classes, hidden, steps, l2, learning_rate, key):
    """Full-batch Adam on a one-hidden-layer ReLU MLP; returns test accuracy."""
    k1, k2 = jax.random.split(key)
    d = x.shape[1]
    params = {
        "w1": jax.random.normal(k1, (d, hidden), x.dtype) * jnp.sqrt(2.0 / d),
        "b1": jnp.zeros((hidden,), x.dtype),
        "w2": jax.random.normal(k2, (hidden, num_classes), x.dtype) * jnp.sqrt(1.0 / hidden),
        "b2": jnp.zeros((num_classes,), x.dtype),
    }

    def apply(p, inputs):
        return jax.nn.relu(inputs @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

    def loss_fn(p):
        return _softmax_loss(apply(p, x), y, [p["w1"], p["w2"]], l2)

    opt = optax.adam(learning_rate)

    def step(carry, _):
        p, state = carry
        grad = jax.grad(loss_fn)(p)
        updates, state = opt.update(grad, state, p)
        return (optax.apply_updates(p, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    return jnp.mean(jnp.argmax(apply(params, x_test), axis=-1) == y_test)


def mlp_probe_accuracy(
    x_train,
    y_train,
    x_test,
    y_test,
    *,
    num_classes: int | None = None,
    hidden: int = 256,
    l2: float = 1e-4,
    steps: int = 500,
    learning_rate: float = 1e-2,
    seed: int = 0,
) -> float:
    """Test accuracy of a one-hidden-layer ReLU MLP probe (catches non-linearly encoded identity).

    Standardised features, He-normal initialisation, ``mean cross-entropy + l2 * sum ||W||^2``
    minimised full-batch with ``steps`` optax Adam steps. The default learning rate is large for
    Adam because 500 full-batch steps must also fit probes with 100+ subjects (1e-3 left such
    probes clearly under-trained). Arguments as in :func:`linear_probe_accuracy`, plus ``hidden``
    units and the Adam ``learning_rate``.
    """
    x_train, y_train, x_test, y_test, num_classes = _prepare_classification(
        x_train, y_train, x_test, y_test, num_classes
    )
    acc = _fit_mlp(
        x_train,
        y_train,
        x_test,
        y_test,
        num_classes=num_classes,
        hidden=int(hidden),
        steps=int(steps),
        l2=float(l2),
        learning_rate=float(learning_rate),
        key=jax.random.key(seed),
    )
    return float(acc)


# --------------------------------------------------------------------------------------------------
# Ridge regression (numpy, closed form)
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RidgeFit:
    """A ridge regression fitted on standardised features.

    ``predict(x) = ((x - x_mean) / x_scale) @ coef + intercept``.
    """

    alpha: float
    coef: np.ndarray
    intercept: np.ndarray | float
    x_mean: np.ndarray
    x_scale: np.ndarray

    def predict(self, x) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float64) - self.x_mean) / self.x_scale
        return z @ self.coef + self.intercept


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


def _ridge_path(x: np.ndarray, y: np.ndarray, alphas: Sequence[float]):
    """Fit ridge for every alpha from one eigendecomposition of the standardised features' Gram.

    Returns ``(x_mean, x_scale, y_mean, coefs)`` with ``coefs`` of shape ``(A, D, T)``. The
    symmetric eigendecomposition is of the smaller of ``Z^T Z`` (D x D) and ``Z Z^T`` (N x N, the
    dual form), and all alphas share it. An SVD of ``Z`` would be as exact but is several times
    slower, and much slower again when the 2 CPU cores are shared with JAX's thread pool.
    """
    mean, scale = _standardize_stats(x)
    z = (x - mean) / scale
    y_mean = y.mean(axis=0)
    yc = y - y_mean
    alphas = np.asarray(alphas, dtype=np.float64)
    n, d = z.shape
    if n >= d:  # primal: w = V diag(1 / (lam + alpha)) V^T Z^T y
        lam, v = np.linalg.eigh(z.T @ z)
        proj = v.T @ (z.T @ yc)  # (D, T)
        coefs = v @ (proj[None] / (lam[None, :, None] + alphas[:, None, None]))
    else:  # dual: w = Z^T V diag(1 / (lam + alpha)) V^T y
        lam, v = np.linalg.eigh(z @ z.T)
        proj = v.T @ yc  # (N, T)
        coefs = (z.T @ v) @ (proj[None] / (lam[None, :, None] + alphas[:, None, None]))
    return mean, scale, y_mean, coefs


def _as_targets(y, n: int, name: str) -> tuple[np.ndarray, bool]:
    y = np.asarray(y, dtype=np.float64)
    if y.ndim not in (1, 2) or y.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) or ({n}, T), got {y.shape}.")
    return (y[:, None], True) if y.ndim == 1 else (y, False)


def select_ridge_alpha(
    x_train,
    y_train,
    *,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    folds: int = 5,
    seed: int = 0,
    groups=None,
) -> float:
    """Pick the ridge penalty by k-fold cross-validation on the training side only.

    The test side is deliberately not an argument: choosing alpha on the data that is scored would
    inflate R^2. Each CV fold re-standardises with its own training part. When ``groups`` is given
    (near-duplicate frames), whole groups are kept within one CV fold. Ties go to the smallest alpha
    in ``alphas`` order.

    Args:
      x_train: ``(N, D)`` features; y_train: ``(N,)`` or ``(N, T)`` targets.
      alphas: candidate penalties > 0 (on standardised features, un-normalised squared loss).
      folds: number of CV folds (reduced to the number of examples/groups when smaller).
      seed: seeds the fold assignment.
      groups: optional ``(N,)`` group ids kept together within a CV fold.
    """
    x = np.asarray(x_train, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"x_train must be 2-D (N, D), got shape {x.shape}.")
    y, _ = _as_targets(y_train, x.shape[0], "y_train")
    alphas = [float(a) for a in alphas]
    if not alphas or min(alphas) <= 0:
        raise ValueError(f"alphas must be a non-empty list of positive numbers, got {alphas}.")
    if len(alphas) == 1:
        return alphas[0]
    if groups is None:
        unit = np.arange(x.shape[0])
    else:
        _, unit = np.unique(np.asarray(groups), return_inverse=True)
        unit = unit.reshape(-1)
    n_units = unit.max() + 1
    folds = min(int(folds), int(n_units))
    if folds < 2:
        raise ValueError("ridge alpha selection needs at least 2 training examples (groups).")
    # Shuffle units, then deal them round-robin into folds so fold sizes differ by at most one unit.
    fold_of_unit = np.empty(n_units, dtype=np.int64)
    fold_of_unit[np.random.default_rng(seed).permutation(n_units)] = np.arange(n_units) % folds
    fold = fold_of_unit[unit]
    sse = np.zeros(len(alphas))
    for k in range(folds):
        fit, val = fold != k, fold == k
        mean, scale, y_mean, coefs = _ridge_path(x[fit], y[fit], alphas)
        residual = ((x[val] - mean) / scale) @ coefs + y_mean - y[val]  # (A, n_val, T)
        sse += np.sum(residual**2, axis=(1, 2))
    return alphas[int(np.argmin(sse))]


def fit_ridge(
    x_train,
    y_train,
    *,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    folds: int = 5,
    seed: int = 0,
    groups=None,
) -> RidgeFit:
    """Fit ridge regression on the training side with alpha from :func:`select_ridge_alpha`."""
    alpha = select_ridge_alpha(x_train, y_train, alphas=alphas, folds=folds, seed=seed, groups=groups)
    x = np.asarray(x_train, dtype=np.float64)
    y, squeeze = _as_targets(y_train, x.shape[0], "y_train")
    mean, scale, y_mean, (coef,) = _ridge_path(x, y, [alpha])
    if squeeze:
        coef, y_mean = coef[:, 0], float(y_mean[0])
    return RidgeFit(alpha=alpha, coef=coef, intercept=y_mean, x_mean=mean, x_scale=scale)


def ridge_r2(
    x_train,
    y_train,
    x_test,
    y_test,
    *,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    folds: int = 5,
    seed: int = 0,
    groups=None,
) -> float:
    """Test-side R^2 of closed-form ridge regression (features standardised on the train side).

    Alpha is chosen by ``folds``-fold CV *inside the training side* (:func:`select_ridge_alpha`;
    ``groups`` are the training side's group ids for that CV). The score is
    ``1 - SSE / SST`` with SST around the *test* mean: 1 = the targets are fully linearly
    decodable, 0 = no better than the test mean, negative = worse than the test mean (e.g. when
    there is no information and the train mean differs from the test mean). NaN when the test
    targets are constant.
    """
    fit = fit_ridge(x_train, y_train, alphas=alphas, folds=folds, seed=seed, groups=groups)
    x_test = np.asarray(x_test, dtype=np.float64)
    if x_test.ndim != 2 or x_test.shape[1] != fit.x_mean.shape[0]:
        raise ValueError(f"x_test must have shape (N, {fit.x_mean.shape[0]}), got {x_test.shape}.")
    y_test = np.asarray(y_test, dtype=np.float64)
    if y_test.shape[0] != x_test.shape[0]:
        raise ValueError(f"y_test has {y_test.shape[0]} rows but x_test has {x_test.shape[0]}.")
    return r2_score(y_test, fit.predict(x_test))


# --------------------------------------------------------------------------------------------------
# Leakage summaries
# --------------------------------------------------------------------------------------------------


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
