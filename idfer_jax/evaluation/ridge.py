"""Closed-form ridge regression on standardised features, with its penalty chosen by k-fold cross-validation
on the train side (the pose probes of :mod:`idfer_jax.evaluation.probes`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from idfer_jax.evaluation.metrics import r2_score
from idfer_jax.evaluation.splits import _standardize_stats

DEFAULT_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0)


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

