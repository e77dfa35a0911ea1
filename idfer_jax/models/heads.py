"""Classification heads that map a feature vector to logits."""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax.numpy as jnp

__all__ = ["ClassifierHead"]


class ClassifierHead(nn.Module):
    """Linear classifier, optionally with one hidden ReLU layer; dropout before each Dense layer.

    Attributes:
      num_classes: number of output logits.
      hidden: width of the optional hidden layer; None for a single linear layer.
      dropout_rate: dropout rate before each Dense layer; it draws from the 'dropout' rng, which
        ``apply`` needs only when ``train=True`` and the rate is positive.
      dtype: computation dtype; parameters stay float32 and the logits are float32.
    """

    num_classes: int
    hidden: int | None = None
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        """Returns float32 logits of shape (N, num_classes) for features of shape (N, D)."""
        chex.assert_rank(features, 2)
        x = features.astype(self.dtype)
        # Dropout is skipped entirely (not merely made deterministic) when it cannot act, so that
        # evaluation and rate-0 training never require a 'dropout' rng.
        use_dropout = train and self.dropout_rate > 0.0
        if self.hidden is not None:
            if use_dropout:
                x = nn.Dropout(self.dropout_rate, deterministic=False)(x)
            x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="hidden")(x))
        if use_dropout:
            x = nn.Dropout(self.dropout_rate, deterministic=False)(x)
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="logits")(x)
        return logits.astype(jnp.float32)
