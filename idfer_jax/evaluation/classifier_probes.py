"""Classification probes trained with optax on frozen features: a linear softmax and a one-hidden-layer
MLP, scored on held-out images (the identity probes of :mod:`idfer_jax.evaluation.probes`)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from idfer_jax.evaluation.splits import standardize


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

