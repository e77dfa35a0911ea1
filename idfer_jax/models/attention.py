"""Attention modules: spatial attention pooling of one feature map, and attention over scales (PhaNet)."""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["ScaleAttention", "SpatialAttentionPool"]


class SpatialAttentionPool(nn.Module):
    """``a = sigmoid(conv1x1(relu(conv3x3(F))))``, then the a-weighted mean of F, projected to ``width``.

    Returns ``(feature (N, width) float32, attention map (N, H, W) float32 in (0, 1))``. The weighted
    mean divides by the total attention, so the feature's scale does not depend on how much of the
    map is attended.

    Attributes:
      width: output width (a common width lets features of several scales be mixed).
      hidden: channels of the 3x3 conv; default: the input's channels.
      dtype: computation dtype.
    """

    width: int
    hidden: int | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        chex.assert_rank(features, 4)
        x = features.astype(self.dtype)
        h = nn.relu(nn.Conv(self.hidden or x.shape[-1], (3, 3), dtype=self.dtype, name="conv3x3")(x))
        # Start near 0.5 everywhere (bias 0): attention begins as plain average pooling.
        logit = nn.Conv(1, (1, 1), dtype=self.dtype, name="conv1x1")(h)
        attention = jax.nn.sigmoid(logit.astype(jnp.float32))[..., 0]
        weights = attention / (jnp.sum(attention, axis=(1, 2), keepdims=True) + 1e-6)
        pooled = jnp.einsum("nhw,nhwc->nc", weights, features.astype(jnp.float32))
        projected = nn.Dense(self.width, dtype=self.dtype, name="project")(pooled)
        return nn.relu(projected).astype(jnp.float32), attention


class ScaleAttention(nn.Module):
    """Weights for S scale features: ``softmax(MLP(concat(f_1..f_S)))``; returns ``(fused, weights)``.

    ``fused = sum_s w_s f_s`` with ``weights`` of shape (N, S), per example. The MLP reads the
    layer-normalised concatenation and its score layer starts at zero, so the weights start uniform
    and the scale whose features happen to be largest at initialisation does not win the softmax
    before any scale has learned anything (measured without them: one scale took 0.9998 of the weight
    within 40 steps).
    """

    hidden: int = 64
    normalize: bool = True  # layer-normalise the MLP's input (see above)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, scale_features: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """``scale_features``: (N, S, D) -> ``(fused (N, D), weights (N, S))``, float32."""
        chex.assert_rank(scale_features, 3)
        n, s, d = scale_features.shape
        x = scale_features.reshape(n, s * d).astype(self.dtype)
        if self.normalize:
            x = nn.LayerNorm(dtype=self.dtype, name="norm")(x)
        h = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="hidden")(x))
        scores = nn.Dense(s, dtype=self.dtype, kernel_init=nn.initializers.zeros_init(), name="scores")(h)
        weights = jax.nn.softmax(scores.astype(jnp.float32))
        fused = jnp.einsum("ns,nsd->nd", weights, scale_features.astype(jnp.float32))
        return fused, weights
