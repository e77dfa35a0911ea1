"""Classification metrics computed on the host with numpy.

Evaluation batches are padded to a fixed size so that jitted steps never recompile and the last
partial batch is never dropped (FER test folds are small). Every function here therefore takes an
optional 0/1 ``mask`` per example, and padded examples (mask 0) are ignored entirely, including in
input validation: their labels may be anything (e.g. -1).

Inputs may be numpy or JAX arrays; they are converted with ``np.asarray``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "ConfusionAccumulator",
    "chance_accuracy",
    "confusion_matrix",
    "masked_accuracy",
    "mean_and_std",
    "r2_score",
]


def _as_int_vector(values, name: str) -> np.ndarray:
    """Return ``values`` as a 1-D int64 array; floats are accepted only if they are integral."""
    array = np.asarray(values)
    if array.ndim != 1:
        hint = " If these are logits, take argmax over the class axis first." if array.ndim == 2 else ""
        raise ValueError(f"{name} must be a 1-D array of class indices, got shape {array.shape}.{hint}")
    if array.dtype.kind in "iub":
        return array.astype(np.int64)
    if array.dtype.kind == "f" and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
        return array.astype(np.int64)
    raise ValueError(
        f"{name} must hold integer class indices, got dtype {array.dtype}. "
        "If these are logits, take argmax over the class axis first."
    )


def _as_mask(mask, length: int) -> np.ndarray:
    """Return a boolean keep-mask of ``length`` entries (all True when ``mask`` is None)."""
    if mask is None:
        return np.ones(length, dtype=bool)
    array = np.asarray(mask)
    if array.shape != (length,):
        raise ValueError(f"mask must have shape ({length},), got {array.shape}.")
    # Reject weights such as 0.5: silently treating them as 1 would miscount examples.
    if not np.all((array == 0) | (array == 1)):
        raise ValueError("mask must contain only 0/1 (or False/True) values, one per example.")
    return array.astype(bool)


def confusion_matrix(labels, predictions, num_classes: int, mask=None) -> np.ndarray:
    """Count (true class, predicted class) pairs.

    Args:
      labels: ``(N,)`` true class indices.
      predictions: ``(N,)`` predicted class indices (argmax of the logits).
      num_classes: number of classes ``K``.
      mask: optional ``(N,)`` 0/1 array; examples with mask 0 (padding) are not counted and their
        labels/predictions are not validated.

    Returns:
      int64 array ``(K, K)``; ``matrix[t, p]`` counts examples of true class ``t`` predicted as
      ``p`` (rows = true class, columns = predicted class).

    Raises:
      ValueError: on mismatched shapes, non-integer inputs, or a kept label/prediction outside
        ``[0, num_classes)``.
    """
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
    num_classes = int(num_classes)
    labels = _as_int_vector(labels, "labels")
    predictions = _as_int_vector(predictions, "predictions")
    if labels.shape != predictions.shape:
        raise ValueError(
            f"labels and predictions must have the same length, got {labels.shape[0]} and "
            f"{predictions.shape[0]}."
        )
    keep = _as_mask(mask, labels.shape[0])
    labels, predictions = labels[keep], predictions[keep]
    for name, values in (("labels", labels), ("predictions", predictions)):
        bad = (values < 0) | (values >= num_classes)
        if np.any(bad):
            raise ValueError(
                f"{name} must lie in [0, {num_classes}); found {values[bad][:5].tolist()} "
                "among unmasked examples."
            )
    flat = labels * num_classes + predictions
    counts = np.bincount(flat, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


class ConfusionAccumulator:
    """Streaming confusion matrix over (padded) evaluation batches.

    Example::

        acc = ConfusionAccumulator(num_classes=7)
        for batch in eval_batches:
            acc.update(batch["label"], logits.argmax(-1), mask=batch["mask"])
        print(acc.accuracy, acc.mean_class_accuracy)
    """

    def __init__(self, num_classes: int):
        if int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
        self.num_classes = int(num_classes)
        self._matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, labels, predictions, mask=None) -> None:
        """Add one batch; see :func:`confusion_matrix` for the arguments."""
        self._matrix += confusion_matrix(labels, predictions, self.num_classes, mask)

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._matrix[...] = 0

    @property
    def matrix(self) -> np.ndarray:
        """A copy of the ``(K, K)`` int64 confusion matrix (rows true, columns predicted)."""
        return self._matrix.copy()

    @property
    def count(self) -> int:
        """Number of (unmasked) examples seen."""
        return int(self._matrix.sum())

    def _require_examples(self) -> None:
        if self.count == 0:
            raise ValueError(
                "ConfusionAccumulator is empty (no unmasked examples were added); "
                "call update() with at least one example before reading accuracies."
            )

    @property
    def accuracy(self) -> float:
        """Overall accuracy: correct / all examples. Raises ValueError when empty."""
        self._require_examples()
        return float(np.trace(self._matrix) / self._matrix.sum())

    @property
    def per_class_recall(self) -> np.ndarray:
        """``(K,)`` recall of each true class; NaN for classes with no examples."""
        support = self._matrix.sum(axis=1)
        recall = np.full(self.num_classes, np.nan)
        present = support > 0
        recall[present] = np.diag(self._matrix)[present] / support[present]
        return recall

    @property
    def mean_class_accuracy(self) -> float:
        """Balanced accuracy: mean recall over the classes that have examples.

        Classes absent from the evaluated data are left out of the mean rather than counted as 0,
        because small FER folds often miss a rare class entirely. Raises ValueError when empty.
        """
        self._require_examples()
        return float(np.nanmean(self.per_class_recall))


def chance_accuracy(matrix) -> float:
    """Accuracy of guessing uniformly among the classes the evaluated data really holds.

    ``1 / k`` where ``k`` is the number of rows (true classes) of the ``(K, K)`` confusion ``matrix``
    with at least one example: a test fold holding 2 of 4 classes has chance 1/2, not 1/4 (guessing
    among the 2 classes a fold holds is what a model that ignores the image can reach on it).

    Raises:
      ValueError: when ``matrix`` is not square or holds no example.
    """
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"chance_accuracy needs a square (K, K) confusion matrix, got {matrix.shape}.")
    present = int((matrix.sum(axis=1) > 0).sum())
    if present == 0:
        raise ValueError("chance_accuracy: the confusion matrix holds no example.")
    return 1.0 / present


def masked_accuracy(logits, labels, mask=None) -> float:
    """Accuracy of ``argmax(logits, -1)`` against ``labels`` over examples with mask 1.

    Args:
      logits: ``(N, K)`` scores.
      labels: ``(N,)`` integer class indices.
      mask: ``(N,)`` 0/1 array (None = all examples count).

    Raises:
      ValueError: on shape mismatch or when no example is unmasked.
    """
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (N, num_classes), got {logits.shape}.")
    labels = _as_int_vector(labels, "labels")
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(f"logits has {logits.shape[0]} examples but labels has {labels.shape[0]}.")
    keep = _as_mask(mask, labels.shape[0])
    if not keep.any():
        raise ValueError("masked_accuracy: every example is masked out; accuracy is undefined.")
    correct = np.argmax(logits, axis=-1) == labels
    return float(correct[keep].mean())


def mean_and_std(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and *population* standard deviation (``ddof=0``) of per-fold results.

    ddof=0 describes the spread of the folds actually run (the convention of most FER papers
    reporting "mean +- std over k folds"); it is also defined for a single fold, whose std is 0.

    Raises:
      ValueError: when ``values`` is empty or not 1-D.
    """
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"mean_and_std needs a non-empty 1-D sequence, got shape {array.shape}.")
    return float(array.mean()), float(array.std(ddof=0))


def r2_score(y_true, y_pred) -> float:
    """Coefficient of determination ``1 - SSE / SST`` with SST around the mean of ``y_true``.

    For 2-D targets ``(N, T)`` the R^2 of each column is averaged. The value can be negative when
    the predictions are worse than predicting the mean of ``y_true``. Returns NaN when ``y_true`` is
    constant (SST = 0), because R^2 is then undefined.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must match.")
    if y_true.ndim == 1:
        y_true, y_pred = y_true[:, None], y_pred[:, None]
    sse = ((y_true - y_pred) ** 2).sum(axis=0)
    sst = ((y_true - y_true.mean(axis=0)) ** 2).sum(axis=0)
    if np.any(sst == 0):
        return float("nan")
    return float(np.mean(1.0 - sse / sst))
