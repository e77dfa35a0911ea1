"""Training labels made from a batch: identity among the fold's training subjects, yaw bins, accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def train_subject_labels(train_subjects: Sequence[int], subjects: jax.Array):
    """Dataset subject ids -> (index among this fold's training subjects, valid mask).

    An identity head classifies the training subjects of the current fold only, so a subject that is
    not among them (a held-out subject, or -1 = unknown) gets mask 0 and never reaches its loss.
    """
    table = jnp.asarray(np.sort(np.asarray(train_subjects, np.int32)))
    if table.size == 0:
        return jnp.zeros_like(subjects), jnp.zeros(subjects.shape, jnp.float32)
    index = jnp.clip(jnp.searchsorted(table, subjects), 0, table.size - 1)
    valid = table[index] == subjects
    return jnp.where(valid, index, 0).astype(jnp.int32), valid.astype(jnp.float32)


def yaw_bin_labels(yaw: jax.Array, magnitude_edges: Sequence[float]) -> jax.Array:
    """Yaw in degrees -> one of `2 * len(magnitude_edges) + 1` bins, mirror-symmetric about 0.

    `|yaw|` is binned at the ascending `magnitude_edges` and the sign picks the side, so the centre bin
    is `|yaw| < edges[0]` and `bin(-yaw) == num_bins - 1 - bin(yaw)` exactly, also for datasets whose
    yaws sit on bin edges (Multi-PIE's 15 and 45 degree cameras): a flipped image, whose yaw the
    pipeline negates, always lands in the mirrored bin.
    """
    edges = jnp.asarray(magnitude_edges, jnp.float32)
    magnitude = jnp.digitize(jnp.abs(yaw), edges)
    return (len(magnitude_edges) + jnp.sign(yaw).astype(jnp.int32) * magnitude).astype(jnp.int32)


def num_yaw_bins(magnitude_edges: Sequence[float]) -> int:
    return 2 * len(magnitude_edges) + 1


def accuracy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    hits = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    if mask is None:
        return jnp.mean(hits)
    return jnp.sum(hits * mask) / jnp.maximum(jnp.sum(mask), 1.0)
