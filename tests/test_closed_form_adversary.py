"""The closed-form (`ridge`) adversary: exact on a separable toy, blind on noise, correct gradients,
and wired into a recipe without a player of its own."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from idfer_jax import configuration, methods
from idfer_jax.methods.adversaries import ridge_leave_one_out
from tests.helpers import fake_spec, smoke, tiny_config

P, K, D = 8, 4, 32


def _toy(separation: float, seed: int = 0):
    """P subjects x K images: subject centres `separation` apart in units of the within-subject noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(P), K)
    centres = rng.normal(size=(P, D)) * separation
    return jnp.asarray(centres[labels] + rng.normal(size=(P * K, D)), jnp.float32), jnp.asarray(labels)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_fit_is_exact_on_a_separable_toy_and_blind_on_noise(kernel):
    x, labels = _toy(separation=4.0)
    r2, predictions = ridge_leave_one_out(x, labels, P, kernel=kernel, alphas=(0.1, 1.0))
    # Every image's subject is read from the *other* images of the batch (leave-one-out).
    assert float(jnp.mean(jnp.argmax(predictions, -1) == labels)) == 1.0
    assert float(r2) > 0.6, float(r2)
    noise = jnp.asarray(np.random.default_rng(1).normal(size=(P * K, D)), jnp.float32)
    r2_noise, predictions = ridge_leave_one_out(noise, labels, P, kernel=kernel)
    assert float(r2_noise) < 0.05, float(r2_noise)
    assert float(jnp.mean(jnp.argmax(predictions, -1) == labels)) < 0.35


def test_fit_ignores_shift_scale_and_masked_rows():
    x, labels = _toy(separation=1.0)
    r2, _ = ridge_leave_one_out(x, labels, P)
    shifted, _ = ridge_leave_one_out(3.0 * x + 7.0, labels, P)
    np.testing.assert_allclose(float(shifted), float(r2), atol=1e-4)
    # Rows with mask 0 (e.g. a subject outside the fold's training subjects) take no part.
    garbage = jnp.asarray(np.random.default_rng(2).normal(size=(5, D)) * 50, jnp.float32)
    padded = jnp.concatenate([x, garbage])
    padded_labels = jnp.concatenate([labels, jnp.zeros(5, labels.dtype)])
    mask = jnp.concatenate([jnp.ones(P * K), jnp.zeros(5)])
    masked, _ = ridge_leave_one_out(padded, padded_labels, P, mask)
    np.testing.assert_allclose(float(masked), float(r2), atol=1e-4)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_gradient_matches_finite_differences(kernel):
    x, labels = _toy(separation=1.0)
    with jax.enable_x64(True):
        x64 = jnp.asarray(np.asarray(x)[:, :6], jnp.float64)  # few dims: the check costs 2 D N evaluations

        def r2(features):
            return ridge_leave_one_out(features, labels, P, alphas=(0.5,), kernel=kernel)[0]

        check_grads(r2, (x64,), order=1, modes=["rev"], atol=1e-6, rtol=1e-5)


def test_the_encoder_lowering_the_fit_removes_identity():
    """Gradient descent on the features themselves against the closed-form adversary: the fit falls
    to ~0 in a few hundred steps, and a fresh leave-one-out fit agrees (it cannot lag)."""
    x, labels = _toy(separation=2.0)
    loss = jax.jit(jax.value_and_grad(lambda f: jnp.maximum(ridge_leave_one_out(f, labels, P)[0], 0.0)))
    optimizer = optax.adam(0.05)
    opt_state = optimizer.init(x)
    start, _ = loss(x)
    for _ in range(300):
        value, grad = loss(x)
        updates, opt_state = optimizer.update(grad, opt_state)
        x = optax.apply_updates(x, updates)
    assert float(start) > 0.3 and float(value) < 0.02, (float(start), float(value))


def test_a_recipe_with_a_ridge_adversary_has_no_adversary_player_and_an_unknown_kernel_is_refused():
    config = tiny_config(smoke("baseline"))
    config.adversary.update(identity=1.0, formulation="ridge")
    method = methods.build(config, fake_spec())
    assert [p.name for p in method.players] == ["model"]
    assert "subject" in method.batch_keys
    config.adversary.ridge_kernel = "cubic"
    with pytest.raises(configuration.ConfigError, match="ridge_kernel"):
        configuration.validate(config)
    config.adversary.ridge_kernel = "linear"
    config.adversary.ridge_alphas = (0.0,)
    with pytest.raises(configuration.ConfigError, match="ridge_alphas"):
        configuration.validate(config)
