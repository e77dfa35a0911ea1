"""Adversaries (Halawa et al.'s expression adversary, and the identity and pose adversaries any recipe can
switch on): players never touch each other's parameters, GRL is exactly -lambda times the plain
gradient, the encoder terms mean what they say, bad switches are clear errors, every formulation learns
in a short run, and 8 devices match 1."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from idfer_jax import api, losses, methods
from idfer_jax.methods import adversaries as adv
from idfer_jax.methods import baseline, common
from idfer_jax.train.trainer import init_state, make_train_step
from tests.conftest import REPO
from tests.helpers import TRAIN_SUBJECTS, changed, fake_batch, fake_spec, smoke, tiny_config

HALAWA_SMOKE = str(REPO / "configs" / "halawa_synthetic.py") + ":smoke"
BASELINE_SMOKE = str(REPO / "configs" / "baseline_synthetic.py") + ":smoke"
ADVERSARY_GROUPS = ("adversary_expression", "adversary_identity", "adversary_pose")


def halawa_with_every_adversary(formulation: str = "uniform"):
    config = tiny_config(HALAWA_SMOKE)
    config.adversary.update(identity=1.0, pose=1.0, formulation=formulation)
    return config


def step_of(method, players: tuple[str, ...], state, batch):
    only = dataclasses.replace(method, players=tuple(method.player(p) for p in players))
    return jax.jit(make_train_step(only))(state, batch)


@pytest.mark.slow
def test_updating_one_player_never_changes_the_other_players_parameters():
    # grl: the formulation whose encoder term has a path into the adversary's head.
    method = methods.build(halawa_with_every_adversary("grl"), fake_spec())
    assert [p.name for p in method.players] == ["adversary", "model"]
    batch = fake_batch()
    state = init_state(method, jax.random.PRNGKey(0), batch)
    assert set(ADVERSARY_GROUPS) <= set(state.params)
    model_groups = [g for g in state.params if g not in ADVERSARY_GROUPS]
    assert {"trunk", "expression_branch", "nuisance_branch", "expression_head", "decoder"} <= set(
        model_groups)

    after_adversary, _ = step_of(method, ("adversary",), state, batch)
    for g in model_groups:
        assert not changed(state.params[g], after_adversary.params[g]), g
    # Its forward pass runs in training mode, but its batch statistics are dropped.
    assert not changed(state.model_state, after_adversary.model_state)
    for g in ADVERSARY_GROUPS:
        assert changed(state.params[g], after_adversary.params[g]), g
    assert not changed(state.opt_states["model"], after_adversary.opt_states["model"])

    after_model, _ = step_of(method, ("model",), state, batch)
    for g in ADVERSARY_GROUPS:
        assert not changed(state.params[g], after_model.params[g]), g
    for g in model_groups:
        assert changed(state.params[g], after_model.params[g]), g
    assert not changed(state.opt_states["adversary"], after_model.opt_states["adversary"])


@pytest.mark.slow  # (test_losses checks gradient_reversal itself in the fast tier)
def test_grl_gives_the_encoder_exactly_minus_lambda_times_the_plain_gradient():
    config = tiny_config(BASELINE_SMOKE)
    config.adversary.update(identity=1.0, formulation="grl")
    spec = fake_spec()
    model = baseline.build_model(config, spec)
    (identity,) = adv.from_config(config, spec)
    batch = fake_batch()
    variables = model.init(jax.random.PRNGKey(0), batch["image"], train=False)
    outputs = model.apply(variables, batch["image"], train=False)
    heads = adv.init_heads([identity], jax.random.PRNGKey(1), outputs)
    progress = jnp.asarray(0.3)
    lam = float(losses.dann_lambda(progress))
    assert 0.9 < lam < 0.96

    def features(params):
        return model.apply({**variables, "params": params}, batch["image"], train=False)

    def reversed_term(params):
        terms, _ = adv.encoder_terms([identity], heads, features(params), batch, progress)
        return terms["identity_adversary"]

    def plain_cross_entropy(params):
        labels, mask = identity.labels(batch)
        logits = identity.logits(heads, features(params)["features"])
        return losses.softmax_cross_entropy(logits, labels, mask=mask)

    params = variables["params"]
    assert float(reversed_term(params)) == pytest.approx(float(plain_cross_entropy(params)), rel=1e-6)

    # At the features, where the reversal sits, the gradient is exactly -lambda times the plain one ...
    z = features(params)["features"]

    def reversed_at_features(z):
        terms, _ = adv.encoder_terms([identity], heads, {"features": z}, batch, progress)
        return terms["identity_adversary"]

    def plain_at_features(z):
        labels, mask = identity.labels(batch)
        return losses.softmax_cross_entropy(identity.logits(heads, z), labels, mask=mask)

    plain_z = jax.grad(plain_at_features)(z)
    np.testing.assert_array_equal(jax.grad(reversed_at_features)(z),
                                  (-losses.dann_lambda(progress)).astype(z.dtype) * plain_z)
    assert float(jnp.abs(plain_z).max()) > 0
    # ... and so in every encoder parameter, up to float reassociation in the backward pass.
    reversed_grads = jax.grad(reversed_term)(params)
    plain_grads = jax.grad(plain_cross_entropy)(params)
    for r, p in zip(jax.tree.leaves(reversed_grads), jax.tree.leaves(plain_grads), strict=True):
        np.testing.assert_allclose(r, -lam * p, rtol=1e-4, atol=1e-4 * float(jnp.abs(p).max()) + 1e-12)


def test_encoder_losses_are_zero_at_chance_and_the_negated_ce_is_clipped():
    k = 5
    labels = jnp.asarray([0, 1, 2, 3])
    uniform_logits = jnp.zeros((4, k))
    assert float(adv.encoder_loss("uniform", uniform_logits, labels)) == pytest.approx(0.0, abs=1e-6)
    confident = jnp.eye(k)[:4] * 8.0
    assert float(adv.encoder_loss("uniform", confident, labels)) > 1.0
    # negated_ce: -CE, but no gradient for an example already past chance (CE > log K).
    assert float(adv.encoder_loss("negated_ce", confident, labels)) < -0.0
    wrong = jnp.roll(jnp.eye(k)[:4] * 8.0, 1, axis=1)
    assert float(adv.encoder_loss("negated_ce", wrong, labels)) == pytest.approx(-math.log(k))
    grad = jax.grad(lambda x: adv.encoder_loss("negated_ce", x, labels))(wrong)
    assert float(jnp.abs(grad).max()) == 0.0
    # A masked-out example (a held-out subject) contributes nothing.
    mask = jnp.asarray([1.0, 1.0, 0.0, 0.0])
    mixed = jnp.concatenate([uniform_logits[:2], confident[2:]])
    assert float(adv.encoder_loss("uniform", mixed, labels, mask)) == pytest.approx(0.0, abs=1e-6)


def test_an_adversary_cannot_be_fooled_by_shifting_or_rescaling_the_features():
    head = adv.AdversaryHead(num_classes=5, hidden=16)
    z = jax.random.normal(jax.random.PRNGKey(0), (32, 8))
    params = head.init(jax.random.PRNGKey(1), z)
    # Without standardization an encoder can move the features into the region where the adversary's
    # hidden ReLUs are off, silencing it (and its gradient) with nothing removed; standardized, a shift
    # or a rescaling of the features is invisible to it.
    moved = z * 7.0 - 40.0
    np.testing.assert_allclose(head.apply(params, moved), head.apply(params, z), rtol=1e-4, atol=1e-4)
    raw = adv.AdversaryHead(num_classes=5, hidden=16, standardize=False)
    assert not np.allclose(raw.apply(params, moved), raw.apply(params, z), atol=1e-2)


def test_identity_adversary_classifies_training_subjects_and_ignores_held_out_ones():
    config = tiny_config(BASELINE_SMOKE)
    config.adversary.identity = 1.0
    method = methods.build(config, fake_spec())
    held_out = fake_batch(subjects=[1, 2, 4, 7])
    state = init_state(method, jax.random.PRNGKey(0), held_out)
    head = state.params["adversary_identity"]
    assert jax.tree.leaves(head)[-1].shape[-1] == len(TRAIN_SUBJECTS)  # bias of the logits layer
    player = method.player("adversary")
    grads, (_, metrics) = jax.grad(
        lambda p: player.loss_fn({**state.params, **p}, state.model_state, held_out,
                                 jax.random.PRNGKey(1), 0), has_aux=True,
    )({"adversary_identity": head})
    assert float(metrics["identity_ce"]) == 0.0
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("spec_path", [smoke("baseline"), *(pytest.param(smoke(m), marks=pytest.mark.slow)
                                                         for m in ("idennet", "phanet"))])
def test_identity_and_pose_adversaries_attach_to_every_recipe(spec_path):
    config = tiny_config(spec_path)
    config.adversary.update(identity=0.5, pose=2.0)
    method = methods.build(config, fake_spec())
    batch = fake_batch()
    state = init_state(method, jax.random.PRNGKey(0), batch)
    new_state, metrics = jax.jit(make_train_step(method))(state, jax.device_get(batch))
    metrics = jax.device_get(metrics)
    assert {"adversary/identity_ce", "adversary/pose_ce", "model/identity_adversary",
            "model/pose_adversary"} <= set(metrics)
    for g in ("adversary_identity", "adversary_pose"):
        assert changed(state.params[g], new_state.params[g])
    # Inference is the recipe's own: the adversaries play no part in it.
    out = method.apply(new_state.variables(), batch["image"])
    plain = methods.build(tiny_config(spec_path), fake_spec())
    plain_variables = jax.eval_shape(plain.init, jax.random.PRNGKey(0), batch)
    assert set(out) == set(jax.eval_shape(plain.apply, plain_variables, batch["image"]))


def test_bad_adversary_switches_are_clear_errors():
    config = tiny_config(HALAWA_SMOKE)
    config.adversary.formulation = "minimax"
    with pytest.raises(ValueError, match="uniform.*grl.*negated_ce"):
        methods.build(config, fake_spec())
    config = tiny_config(BASELINE_SMOKE)
    config.adversary.pose = 1.0
    with pytest.raises(ValueError, match="needs yaw labels"):
        methods.build(config, fake_spec(pose_keys=()))
    config = tiny_config(BASELINE_SMOKE)
    config.adversary.identity = 1.0
    with pytest.raises(ValueError, match="needs subject ids"):
        methods.build(config, dataclasses.replace(fake_spec(), train_subjects=()))
    with pytest.raises(ValueError, match="branch_stage=0"):
        methods.build(tiny_config(HALAWA_SMOKE, branch_stage=0), fake_spec())
    with pytest.raises(ValueError, match="reconstruction_downsample=3"):
        methods.build(tiny_config(HALAWA_SMOKE, reconstruction_downsample=3), fake_spec())
    with pytest.raises(ValueError, match="divisible by 8"):
        methods.build(tiny_config(HALAWA_SMOKE, reconstruction_downsample=1, decoder_widths=(8, 8, 8)),
                      dataclasses.replace(fake_spec(), image_shape=(36, 36, 3)))


def test_reconstruction_weight_zero_removes_the_decoder_and_adversary_weight_zero_the_adversary():
    config = tiny_config(HALAWA_SMOKE, reconstruction_weight=0.0, adversary_weight=0.0)
    method = methods.build(config, fake_spec())
    assert [p.name for p in method.players] == ["model"]
    _, metrics = jax.jit(make_train_step(method))(init_state(method, jax.random.PRNGKey(0), fake_batch()),
                                                 fake_batch())
    assert "model/reconstruction_l1" not in metrics and "model/expression_adversary" not in metrics
    assert "model/loss" in metrics
    variables = method.init(jax.random.PRNGKey(0), fake_batch())
    assert "decoder" not in variables["params"]
    assert "reconstruction" not in method.apply(variables, fake_batch()["image"])
    assert common.model_params(variables["params"]) == variables["params"]


@pytest.mark.slow
@pytest.mark.parametrize("formulation", adv.FORMULATIONS)
def test_every_formulation_learns_in_a_short_run(formulation, smoke_data_dir, tmp_path):
    config = api.load_config(HALAWA_SMOKE)
    config.data.data_dir = smoke_data_dir
    config.adversary.formulation = formulation
    config.train.update(num_steps=300, log_every=50, checkpoint_every=300)
    trained = api.train(config, str(tmp_path))
    first, last = trained.first_metrics, trained.last_metrics
    # Measured at 300 steps: expression CE -6.5%, training accuracy 0.27-0.30 (chance 0.14), L1 halved.
    assert last["model/expression_ce"] < 0.96 * first["model/expression_ce"], (first, last)
    assert last["model/accuracy"] > 1.6 / 7, last  # on the training batches; 7 classes
    assert last["model/reconstruction_l1"] < 0.85 * first["model/reconstruction_l1"], (first, last)
    # A closed-form adversary has no player: its fit is a metric of the model's loss.
    adversary = "model/expression_ridge_r2" if formulation in adv.CLOSED_FORM else "adversary/expression_ce"
    assert np.isfinite(last[adversary]) and np.isfinite(last["model/loss"])
    if formulation == "uniform":  # the default: evaluated on held-out subjects, with its figure
        results = api.evaluate(config, str(tmp_path))
        assert results["accuracy"] > 1.3 / len(results["class_names"]), results["accuracy"]
        assert results["reconstruction_figure"] == "reconstructions.png"
        assert open(tmp_path / "reconstructions.png", "rb").read(4) == b"\x89PNG"
        assert "reconstructions.png" in open(tmp_path / "report.md").read()
