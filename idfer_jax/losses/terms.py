"""Every loss term the recipes use, by name: array losses (``l1``, ``mse``, ``cosine_distance``, the LSGAN
pair, ``softmax_cross_entropy``) and the one named term a recipe builds from its config,
``cross_entropy(logits_key, label_key)`` -> ``term(outputs, batch)``. A recipe computes its terms into a
``{name: scalar}`` dict and adds them with a combinator (``losses.combinators``); adversaries reverse
gradients with ``losses.gradient_reversal``.

Every loss is computed in float32 whatever the model's computation dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "LossTerm",
    "cosine_distance",
    "cross_entropy",
    "l1",
    "lsgan_discriminator",
    "lsgan_generator",
    "masked_mean",
    "mse",
    "softmax_cross_entropy",
]

LossTerm = Callable[[Mapping[str, jax.Array], Mapping[str, jax.Array]], jax.Array]


# --- plain array losses -------------------------------------------------------------------------


def masked_mean(values: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean of per-example ``values`` over examples whose ``mask`` is 1; 0 (not NaN) if none are.

    Masked-out values are dropped with ``where`` rather than multiplied by 0, so a NaN or inf there
    (e.g. from a placeholder label) cannot leak into the mean or its gradient.
    """
    values = values.astype(jnp.float32)
    if mask is None:
        return jnp.mean(values)
    mask = jnp.broadcast_to(mask.astype(jnp.float32), values.shape)
    total = jnp.sum(jnp.where(mask > 0, values * mask, 0.0))
    return total / jnp.maximum(jnp.sum(mask), 1.0)


def softmax_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    label_smoothing: float = 0.0,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Mean softmax cross entropy of ``logits`` (N, K) against integer ``labels`` (N,).

    Args:
      logits: unnormalised scores, any float dtype.
      labels: integer class indices.
      label_smoothing: optax-style smoothing ``alpha``; the target becomes
        ``(1 - alpha) * one_hot + alpha / K``.
      mask: optional per-example 0/1 weights (e.g. "this example has an identity label"); the mean
        is over unmasked examples and is 0 when every example is masked.

    Returns:
      A float32 scalar.
    """
    logits = logits.astype(jnp.float32)
    if label_smoothing:
        targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
        per_example = optax.softmax_cross_entropy(logits, targets)
    else:
        per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return masked_mean(per_example, mask)


def l1(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean absolute error over all elements, float32."""
    return jnp.mean(jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32)))


def mse(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared error over all elements, float32."""
    return jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)))


def lsgan_discriminator(d_real: jax.Array, d_fake: jax.Array) -> jax.Array:
    """Least-squares GAN discriminator loss ``0.5 * [mean((D(real) - 1)^2) + mean(D(fake)^2)]``.

    ``d_real`` / ``d_fake`` are raw discriminator scores (no sigmoid), e.g. PatchGAN maps. The
    caller decides whether the fake scores carry a stop-gradient into the generator.
    """
    d_real = d_real.astype(jnp.float32)
    d_fake = d_fake.astype(jnp.float32)
    return 0.5 * (jnp.mean(jnp.square(d_real - 1.0)) + jnp.mean(jnp.square(d_fake)))


def lsgan_generator(d_fake: jax.Array) -> jax.Array:
    """Least-squares GAN generator loss ``mean((D(fake) - 1)^2)``."""
    return jnp.mean(jnp.square(d_fake.astype(jnp.float32) - 1.0))


def cosine_distance(a: jax.Array, b: jax.Array) -> jax.Array:
    """Per-example ``1 - cos(a, b)`` of (N, D) embeddings, in [0, 2] (normalised here, so any vectors
    work): the identity-preservation term of the generative recipes."""
    a = a / (jnp.linalg.norm(a, axis=-1, keepdims=True) + 1e-8)
    b = b / (jnp.linalg.norm(b, axis=-1, keepdims=True) + 1e-8)
    return 1.0 - jnp.sum(a * b, axis=-1)


# --- named terms -----------------------------------------------------------------------------


def _get(source: Mapping[str, jax.Array], key: str, where: str, term: str) -> jax.Array:
    """Looks up ``key`` with an error that names the term and the keys that do exist."""
    try:
        return source[key]
    except KeyError:
        raise KeyError(
            f"Loss term {term!r} needs {where}[{key!r}], which is missing; {where} has keys "
            f"{sorted(source)}."
        ) from None


def _named(fn: LossTerm, name: str) -> LossTerm:
    # A readable name in tracebacks and in printed term dicts.
    fn.__name__ = fn.__qualname__ = name
    return fn


def cross_entropy(
    logits_key: str = "logits",
    label_key: str = "expression",
    label_smoothing: float = 0.0,
    mask_key: str | None = None,
) -> LossTerm:
    """Term: softmax cross entropy of ``outputs[logits_key]`` vs integer ``batch[label_key]``.

    With ``mask_key``, ``batch[mask_key]`` is a per-example 0/1 mask and the loss is the mean over
    the unmasked examples (0 when none are), for labels that only part of a batch has.
    """
    name = f"cross_entropy({logits_key}, {label_key})"

    def term(outputs: Mapping[str, jax.Array], batch: Mapping[str, jax.Array]) -> jax.Array:
        logits = _get(outputs, logits_key, "outputs", name)
        labels = _get(batch, label_key, "batch", name)
        mask = _get(batch, mask_key, "batch", name) if mask_key is not None else None
        return softmax_cross_entropy(logits, labels, label_smoothing=label_smoothing, mask=mask)

    return _named(term, name)
