"""The generative recipes (FERSNet, IPD-FER): same-subject partners, a frozen identity network that
never moves yet passes gradients to the generated faces, a discriminator that is its own player, each
recipe learning in a short run, and 8 devices matching 1."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from idfer_jax import api, methods
from idfer_jax.data import pipeline
from idfer_jax.methods import generative as gen
from idfer_jax.train.trainer import init_state, make_train_step
from tests import helpers
from tests.helpers import CLASSES, changed, generative_batch
from tests.helpers import tiny_config as tiny

FERSNET_SMOKE = helpers.smoke("fersnet")
IPDFER_SMOKE = helpers.smoke("ipdfer")


def fake_spec(has_neutral: bool = True):
    return helpers.fake_spec(has_neutral=has_neutral)


@pytest.fixture(scope="module", params=[FERSNET_SMOKE, IPDFER_SMOKE], ids=["fersnet", "ipdfer"])
def built(request):
    config = tiny(request.param)
    config.model.discriminator_steps = 1  # each sub-update is unrolled in the step: half the compile
    method = methods.build(config, fake_spec())
    batch = generative_batch()
    state = jax.jit(lambda rng: init_state(method, rng, batch))(jax.random.PRNGKey(0))
    return method, state, batch


def test_players_own_disjoint_groups_and_the_identity_network_is_no_players(built):
    method, state, batch = built
    assert [p.name for p in method.players] == [gen.DISCRIMINATOR, "generator"]
    assert method.player(gen.DISCRIMINATOR).owns == (gen.DISCRIMINATOR,)
    assert gen.DISCRIMINATOR not in method.player("generator").owns
    assert set(method.player("generator").owns) | {gen.DISCRIMINATOR} == set(state.params)
    assert gen.IDENTITY_COLLECTION in state.model_state and gen.IDENTITY_COLLECTION not in state.params

    new_state, metrics = jax.jit(make_train_step(method))(state, batch)
    metrics = jax.device_get(metrics)
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    frozen = gen.IDENTITY_COLLECTION
    assert not changed(state.model_state[frozen], new_state.model_state[frozen])
    for group in state.params:
        assert changed(state.params[group], new_state.params[group]), group



@pytest.mark.slow
def test_the_discriminator_step_leaves_the_generator_alone(built):
    # Its sub-updates leave every generator group and the batch statistics alone.
    method, state, batch = built
    only_d = dataclasses.replace(method, players=(method.player(gen.DISCRIMINATOR),))
    after_d, _ = jax.jit(make_train_step(only_d))(state, batch)
    for group in method.player("generator").owns:
        assert not changed(state.params[group], after_d.params[group]), group
    assert not changed(state.model_state, after_d.model_state)


def test_gradients_flow_through_the_frozen_identity_network_to_the_generated_face(built):
    method, state, batch = built
    generator = method.player("generator")
    own = {k: state.params[k] for k in generator.owns}

    def loss_of(own_params, model_state):
        loss, (_, metrics) = generator.loss_fn({**state.params, **own_params}, model_state, batch,
                                               jax.random.PRNGKey(1), state.step)
        return metrics["loss/identity"]

    grads, state_grads = jax.jit(jax.grad(loss_of, argnums=(0, 1)))(own, state.model_state)
    # The identity term reaches the generator (through the frozen network and the generated face)...
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads)), "no gradient"
    # ... and the frozen weights are on its path, but they are model state, which the trainer never
    # differentiates, and no optimizer state holds them.
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(state_grads[gen.IDENTITY_COLLECTION]))
    assert not any(gen.IDENTITY_COLLECTION in str(path) for path, _ in jax.tree_util.tree_leaves_with_path(
        state.opt_states))


@pytest.mark.slow
def test_frozen_weights_are_loaded_after_init_and_shape_checked(smoke_data_dir):
    from idfer_jax.train.trainer import Trainer

    config = tiny(IPDFER_SMOKE)
    config.data.data_dir = smoke_data_dir
    marker = {}

    def build(cfg, spec):
        method = methods.build(cfg, spec)

        def load():
            sample = {"image": jnp.zeros((2, *spec.image_shape))}
            shapes = jax.eval_shape(method.init, jax.random.PRNGKey(0), sample)[gen.IDENTITY_COLLECTION]
            marker["ones"] = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), shapes)
            return {gen.IDENTITY_COLLECTION: marker["ones"]}

        return dataclasses.replace(method, frozen_variables=load)

    state = Trainer(config, build).initial_state()
    assert not changed(jax.device_get(state.model_state[gen.IDENTITY_COLLECTION]), marker["ones"])

    def wrong(cfg, spec):
        return dataclasses.replace(methods.build(cfg, spec), frozen_variables=lambda: {
            gen.IDENTITY_COLLECTION: {"conv": jnp.ones((3,))}})

    with pytest.raises(ValueError, match="do not fit"):
        Trainer(config, wrong).initial_state()


def test_partners_are_the_same_subject_with_another_expression_or_neutral(smoke_data_dir):
    config = api.load_config(FERSNET_SMOKE)
    config.data.data_dir = smoke_data_dir
    dataset = pipeline.open_dataset(config.data)
    labels = dataset.labels
    source = pipeline.Subset(dataset.source, dataset.train_indices, "smoke")
    for mode in ("other_expression", "neutral"):
        partners = pipeline.Partners(dataset.source, labels, dataset.train_indices, mode, neutral_class=0)
        rng = np.random.default_rng(0)
        for i in range(0, len(source), max(1, len(source) // 40)):
            record = source[i]
            partner = partners.random_map(record, rng)["_partner"]
            j, k = record["_record"], partner["record"]
            assert labels["subject"][k] == labels["subject"][j]
            assert k in set(dataset.train_indices)  # never a test image
            if partner["mask"]:
                if mode == "other_expression":
                    assert labels["expression"][k] != labels["expression"][j]
                else:
                    assert labels["expression"][k] == 0
    # The stored counterfactual: the same face (same pose and background) with another expression.
    partners = pipeline.Partners(dataset.source, labels, dataset.train_indices, "counterfactual",
                                 neutral_class=0, has_counterfactual=dataset.spec.has_counterfactual)
    record = source[0]
    partner = partners.random_map(record, np.random.default_rng(0))["_partner"]
    assert partner["mask"] == 1 and partner["expression"] == record["counterfactual_expression"]
    assert partner["expression"] != record["expression"]
    np.testing.assert_array_equal(partner["image"], record["counterfactual_image"])
    with pytest.raises(pipeline.DataError, match="counterfactual"):
        pipeline.Partners(dataset.source, labels, dataset.train_indices, "counterfactual", neutral_class=0,
                          has_counterfactual=False)
    with pytest.raises(pipeline.DataError, match="neutral"):
        pipeline.Partners(dataset.source, labels, dataset.train_indices, "neutral", neutral_class=None)
    with pytest.raises(pipeline.DataError, match="Unknown data.partner"):
        pipeline.Partners(dataset.source, labels, dataset.train_indices, "twin", neutral_class=0)


def test_fersnet_needs_partners_and_unknown_loss_weights_are_errors():
    config = tiny(FERSNET_SMOKE)
    config.data.partner = ""
    with pytest.raises(ValueError, match="partner=other_expression"):
        methods.build(config, fake_spec())
    config = tiny(IPDFER_SMOKE)
    config.model.identity.kind = "arcface"
    with pytest.raises(ValueError, match="identity.kind"):
        methods.build(config, fake_spec())
    for spec_path, key, typo, fix in [(FERSNET_SMOKE, "adain", "residul", "residual"),
                                      (FERSNET_SMOKE, "synthesis", "imge", "image"),
                                      (IPDFER_SMOKE, "neutral_form", "decode", "decoded"),
                                      (IPDFER_SMOKE, "difference", "generate", "generated")]:
        config = tiny(spec_path, **{key: typo})
        with pytest.raises(ValueError, match=f"model.{key}.*Did you mean '{fix}'"):
            methods.build(config, fake_spec())


@pytest.mark.slow
@pytest.mark.parametrize("spec_path", [FERSNET_SMOKE, IPDFER_SMOKE], ids=["fersnet", "ipdfer"])
def test_each_generative_recipe_learns_in_a_short_run(spec_path, smoke_data_dir, tmp_path):
    config = api.load_config(spec_path)
    config.data.data_dir = smoke_data_dir
    config.train.update(num_steps=200, log_every=50, checkpoint_every=200)
    config.eval.reader_steps = 50
    # Narrower networks than `:smoke` (a quarter of the time; measured: held-out
    # accuracy 0.24 at 200 steps), batches of 16 for FERSNet, whose decoder runs 3 times a step.
    config.model.discriminator_widths = (16, 32)
    if config.method == "fersnet":
        config.model.update(stem_width=16, widths=(16, 32))
        config.train.batch_size = 16
    else:
        config.train.batch_size = 32
    trained = api.train(config, str(tmp_path))
    first, last = trained.first_metrics, trained.last_metrics
    print(config.method, {k: (first[k], last[k]) for k in first if k in last})
    if config.method == "fersnet":
        # The decoder draws the change to the input, so the synthesis starts at the copy's L1 (about
        # 0.015 here); a generator that lost its input (the former mean-face blob) sits near 0.3.
        assert last["generator/loss/synthesis"] < 0.05, (first, last)
    else:
        reconstruction = "generator/loss/reconstruction"
        assert last[reconstruction] < 0.8 * first[reconstruction], (first, last)
    assert last["generator/accuracy"] > 1.3 / 7, last  # training batches, 7 classes
    results = api.evaluate(config, str(tmp_path))
    assert results["accuracy"] > 1.3 / len(results["class_names"]), results["accuracy"]
    report = open(tmp_path / "report.md").read()
    if config.method == "fersnet":
        assert results["transfer_figure"] == "expression_transfer.png" and "expression_transfer.png" in report
        transfer = results["transfer"]  # measured against the stored counterfactuals
        assert transfer["num_images"] == results["num_test_images"]
        assert transfer["face_l1_copy_input"] > 0.005 and np.isfinite(transfer["face_l1_to_counterfactual"])
        for key in ("read_as_target", "reader_on_real_test", "reader_on_true_counterfactuals"):
            assert 0 <= transfer[key] <= 1, transfer
        assert -1 <= transfer["identity_cosine_other_subject"] <= 1
        assert "Expression transfer, measured" in report
    else:
        assert results["neutralisation_figure"] == "neutralisation.png" and "neutralisation.png" in report
        neutral = results["neutralisation"]
        assert neutral["neutral_l1"] < 0.8 * first["generator/neutral_l1"], (neutral, first)
        assert 0 < neutral["identity_cosine_input_vs_neutral"] <= 1
        assert neutral["face_l1_input_to_true_neutral"] > 0 and neutral["neutral_distance_ratio"] > 0


def test_balance_plan_fills_every_subjects_missing_and_minority_expressions():
    from idfer_jax.methods.fersnet import balance_plan

    subjects = np.array([0, 0, 0, 0, 1, 1, 2])
    expressions = np.array([0, 0, 0, 1, 2, 2, 1])
    plan = balance_plan(subjects, expressions, 3, np.random.default_rng(0))
    counts = np.zeros((3, 3), int)
    np.add.at(counts, (subjects, expressions), 1)
    for source, target in plan:
        assert expressions[source] != target  # drawn from another expression...
        counts[subjects[source], target] += 1  # ... of the same subject
    # Subject 0 has 3 x class 0: every class reaches 3. Subject 1 reaches 2 of each; subject 2 (one image,
    # class 1) gets one of each other class.
    assert counts.tolist() == [[3, 3, 3], [2, 2, 2], [1, 1, 1]]


@pytest.mark.slow
def test_synthesis_to_balance_draws_the_plan_and_fine_tunes_the_classifier(smoke_data_dir):
    from idfer_jax.train.trainer import Trainer

    config = tiny(FERSNET_SMOKE)
    config.data.data_dir = smoke_data_dir
    config.model.balance_steps = 3
    config.train.batch_size = 8
    trainer = Trainer(config, methods.build)
    # The synthetic faces are balanced: drop the first training subject's `happiness` faces.
    labels = trainer.dataset.labels
    train = trainer.dataset.train_indices
    first = labels["subject"][train[0]]
    happiness = labels["expression"][train] == CLASSES.index("happiness")
    dropped = (labels["subject"][train] == first) & happiness
    trainer.dataset = dataclasses.replace(trainer.dataset, train_indices=train[~dropped])
    state = trainer.initial_state()
    stage = trainer.method.finishing_stage
    finished = stage.run(trainer, state)
    assert int(finished.step) == int(state.step) + 3
    # Cross entropy moves the classification path; the decoder and the discriminator get no gradient.
    for group in ("logits", "classifier_conv", "fer_stage1_block1", "joint_block"):  # one stage in tiny()
        assert changed(state.params[group], finished.params[group]), group
    for group in ("decoder", gen.DISCRIMINATOR):
        assert not changed(state.params[group], finished.params[group]), group


def test_milestone_schedule_and_adam_with_l2_in_the_gradient():
    import optax

    from idfer_jax.methods import fersnet
    from idfer_jax.train.optim import learning_rate_schedule, make_optimizer

    config = fersnet.optimizer_config(learning_rate=1e-3)
    # x0.1 at 30% and 80% of the run, as at epochs 150 and 400 of 500
    schedule = learning_rate_schedule(config, 1000)
    assert [float(schedule(s)) for s in (0, 299, 300, 799, 800, 999)] == pytest.approx(
        [1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5])
    with pytest.raises(ValueError, match="fractions"):
        learning_rate_schedule(fersnet.optimizer_config(milestones=(150, 400)), 1000)
    # L2 is added to the gradient before Adam's normalisation (not AdamW's decoupled decay): with a zero
    # loss gradient, the first step is -lr * sign(w) for every decayed kernel.
    params = {"kernel": jnp.full((2, 2), 3.0), "bias": jnp.full((2,), 3.0)}
    optimizer = make_optimizer(config, 1000)
    updates, _ = optimizer.update(jax.tree.map(jnp.zeros_like, params), optimizer.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["kernel"], 3.0 - 1e-3, rtol=1e-6)
    np.testing.assert_allclose(new["bias"], 3.0)  # biases are never decayed
