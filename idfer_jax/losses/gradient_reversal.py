"""Gradient reversal layer (Ganin & Lempitsky 2015) and the DANN lambda schedule.

``gradient_reversal(x, lam)`` is the identity in the forward pass; in the backward pass it
multiplies the cotangent by ``-lam``. Put it between a feature extractor and an adversary: the
adversary learns to predict the nuisance factor while the features learn to remove it, with one
joint loss.

``lam`` is an ordinary traced argument rather than a ``nondiff_argnums`` static, so a jitted train
step can pass ``dann_lambda(step / num_steps)`` every step without recompiling.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["dann_lambda", "gradient_reversal"]


@jax.custom_vjp
def _reverse(x: Any, lam: jax.Array) -> Any:
    return x


def _reverse_fwd(x: Any, lam: jax.Array) -> tuple[Any, jax.Array]:
    return x, lam


def _reverse_bwd(lam: jax.Array, g: Any) -> tuple[Any, jax.Array]:
    # Cast the factor to each cotangent's dtype: a float32 lam must not promote bf16 cotangents, and
    # custom_vjp requires cotangents in the primal dtype.
    reversed_g = jax.tree_util.tree_map(lambda t: (-lam).astype(t.dtype) * t, g)
    # lam is a schedule, not something to learn: its cotangent is zero.
    return reversed_g, jnp.zeros_like(lam)


_reverse.defvjp(_reverse_fwd, _reverse_bwd)


def gradient_reversal(x: Any, lam: jax.typing.ArrayLike) -> Any:
    """Identity forward; multiplies the incoming gradient by ``-lam`` backward.

    Args:
      x: a floating-point array, or any pytree of floating-point arrays (each leaf is reversed).
      lam: scalar reversal strength; may be a traced value (e.g. ``dann_lambda``) under ``jit``.
        Its gradient is defined as zero.

    Returns:
      ``x`` unchanged.
    """
    lam = jnp.asarray(lam)
    if not jnp.issubdtype(lam.dtype, jnp.floating):
        # An integer lam would need a float0 cotangent; a float one keeps the backward rule simple.
        lam = lam.astype(jnp.float32)
    return _reverse(x, lam)


def dann_lambda(progress: jax.typing.ArrayLike) -> jax.Array:
    """DANN schedule ``2 / (1 + exp(-10 p)) - 1`` for training progress ``p`` clipped to [0, 1].

    Rises from 0 at the start to ~0.9999 at the end, so the adversary's gradient is damped while it
    is still random. Jit-able; ``progress`` is usually ``step / total_steps``.
    """
    p = jnp.clip(jnp.asarray(progress, dtype=jnp.float32), 0.0, 1.0)
    return 2.0 / (1.0 + jnp.exp(-10.0 * p)) - 1.0
