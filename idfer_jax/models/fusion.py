"""Spatial fusion of two feature maps of the same shape (IDEnNet's expression and identity streams)."""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax.numpy as jnp

__all__ = ["FUSION_OPS", "SpatialFusion"]

FUSION_OPS = ("sum", "max", "concat", "conv")


class SpatialFusion(nn.Module):
    """Fuses two NHWC maps position by position.

    Attributes:
      op: 'sum' | 'max' (elementwise), 'concat' (channels, so the output is twice as wide) or 'conv'
        (a 1x1 convolution over the concatenation back to the input width: a learned per-position
        mix of the two streams).
      dtype: computation dtype.
    """

    op: str = "conv"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
        if self.op not in FUSION_OPS:
            raise ValueError(f"Unknown fusion op {self.op!r}; valid ops: {', '.join(FUSION_OPS)}.")
        chex.assert_rank([a, b], 4)
        if a.shape != b.shape:
            raise ValueError(f"Fusion needs two maps of one shape; got {a.shape} and {b.shape}.")
        if self.op == "sum":
            return a + b
        if self.op == "max":
            return jnp.maximum(a, b)
        both = jnp.concatenate([a, b], axis=-1)
        if self.op == "concat":
            return both
        return nn.Conv(a.shape[-1], (1, 1), dtype=self.dtype, name="mix")(both)
