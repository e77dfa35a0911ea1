"""Trained adversaries with a replay buffer of recent features, several sub-steps and more capacity."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from idfer_jax import configuration, methods
from idfer_jax.data import pipeline
from idfer_jax.methods import adversaries as adv
from idfer_jax.models import weights
from idfer_jax.train.trainer import init_state, make_train_step
from tests.helpers import fake_spec, smoke, tiny_config


def _identity_adversary(**fields):
    return adv.Adversary("identity", "features", 4, labels=lambda b: (b["subject"], None),
                         batch_keys=("subject",), **fields)


def test_the_buffer_keeps_the_last_batches_oldest_out_first():
    a = _identity_adversary()
    buffer = adv.init_replay([a], {"features": jnp.zeros((2, 3))}, batch_size=2, length=3)["identity"]
    assert buffer["features"].shape == (6, 3) and float(buffer["weights"].sum()) == 0
    state = {"identity": buffer}
    for step in range(4):
        outputs = {"features": jnp.full((2, 3), float(step))}
        state = adv.push_replay(state, [a], outputs, {"subject": jnp.array([step, step])}, jnp.asarray(step))
    # Slot 0 held step 0 and now holds step 3; steps 1 and 2 are still there.
    np.testing.assert_array_equal(state["identity"]["features"][:, 0], [3, 3, 1, 1, 2, 2])
    np.testing.assert_array_equal(state["identity"]["labels"], [3, 3, 1, 1, 2, 2])
    assert float(state["identity"]["weights"].sum()) == 6


def test_empty_slots_take_no_part_in_the_adversary_loss():
    a = _identity_adversary()
    features = jnp.asarray(np.random.default_rng(0).normal(size=(8, 5)), jnp.float32)
    batch = {"subject": jnp.asarray([0, 1, 2, 3] * 2)}
    params = {a.group: a.head().init(jax.random.PRNGKey(0), features)["params"]}
    plain, _ = adv.adversary_loss([a], params, {"features": features}, batch)
    empty = adv.init_replay([a], {"features": features}, batch_size=8, length=2)
    replayed, _ = adv.adversary_loss([a], params, {"features": features}, batch, replay=empty)
    np.testing.assert_allclose(float(replayed), float(plain), rtol=1e-5)


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_adversary_capacity_is_its_number_of_hidden_layers(depth):
    head = adv.AdversaryHead(num_classes=4, hidden=16, depth=depth)
    params = head.init(jax.random.PRNGKey(0), jnp.zeros((2, 8)))["params"]
    kernels = [x for x in jax.tree.leaves(params) if x.ndim == 2]
    assert len(kernels) == depth + 1


def test_a_step_fills_the_buffer_that_the_checkpointed_state_carries():
    config = tiny_config(smoke("baseline"))
    config.adversary.update(identity=1.0, replay=3, steps=2)
    config.train.batch_size = 4
    spec = fake_spec()
    method = methods.build(config, spec)
    adversary = method.players[0]
    assert adversary.name == "adversary" and adversary.repeats == 2 and adversary.prepare is not None
    batch = jax.tree.map(jnp.asarray, pipeline.example_batch(spec, config.data, size=4))
    batch = {k: batch[k] for k in method.batch_keys}
    with weights.shapes_only():
        state = jax.eval_shape(lambda: init_state(method, jax.random.PRNGKey(0), batch))
    assert state.model_state[adv.REPLAY_COLLECTION]["identity"]["features"].shape[0] == 12
    new_state, metrics = jax.eval_shape(make_train_step(method), state, batch)
    assert adv.REPLAY_COLLECTION in new_state.model_state and "adversary/identity_ce" in metrics


def test_replay_is_the_adversaries_setting_and_a_gan_recipe_refuses_it():
    config = tiny_config(smoke("baseline"))
    config.adversary.update(replay=2)  # no adversary: the weight-0 baseline of a sweep
    method = methods.build(config, fake_spec())
    assert [p.name for p in method.players] == ["model"]
    config = tiny_config(smoke("fersnet"))
    config.adversary.update(replay=2)
    with pytest.raises(configuration.ConfigError, match="replay"):
        methods.build(config, fake_spec(has_neutral=True))
