"""IDEnNet and PhaNet: every switch builds and trains a step, identity labels stay inside the training
fold, flips mirror the pose label, learned loss weights escape weight decay, 8 devices match 1, and a
short run learns."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from idfer_jax import api, methods
from idfer_jax.data import pipeline
from idfer_jax.losses import WEIGHTING_PARAM_KEY
from idfer_jax.methods import common
from idfer_jax.train import checkpoint as ckpt_lib
from idfer_jax.train.interface import owned
from idfer_jax.train.trainer import init_state, make_train_step
from tests.conftest import REPO, subprocess_env
from tests.helpers import (
    TRAIN_SUBJECTS,
    changed,
    fake_batch,
    fake_spec,
    smoke,
    tiny_config,
    train_on_eight_devices_and_one,
)

IDENNET_SMOKE = smoke("idennet")
PHANET_SMOKE = smoke("phanet")


def one_step(config, spec=None):
    method = methods.build(config, spec or fake_spec())
    batch = fake_batch()
    state = init_state(method, jax.random.PRNGKey(0), batch)
    new_state, metrics = jax.jit(make_train_step(method))(state, batch)
    return method, state, new_state, jax.device_get(metrics)


# One variant in the fast tier (`-m "not slow"`), the others in the full run.
@pytest.mark.parametrize("fusion, weighting, stage", [
    ("sum", "constant", -1), *(pytest.param(*p, marks=pytest.mark.slow) for p in [
        ("max", "constant", -1), ("concat", "constant", -1), ("conv", "constant", -1),
        ("conv", "loss_ratio", -1), ("conv", "uncertainty", -1), ("concat", "uncertainty", 0)]),
])
def test_idennet_every_fusion_op_and_weighting_trains_a_step(fusion, weighting, stage):
    config = tiny_config(IDENNET_SMOKE, fusion=fusion, weighting=weighting, fusion_stage=stage)
    _, state, new_state, metrics = one_step(config)
    assert np.isfinite(metrics["model/loss"])
    assert metrics["model/loss/identity"] > 0 and metrics["model/loss/expression"] > 0
    for group in ("expression_stream", "identity_stream", "expression_head", "identity_head"):
        assert changed(state.params[group], new_state.params[group]), group
    if weighting == "uncertainty":
        assert changed(state.params[WEIGHTING_PARAM_KEY], new_state.params[WEIGHTING_PARAM_KEY])
    if weighting == "loss_ratio":
        expression, identity = metrics["model/loss/expression"], metrics["model/loss/identity"]
        ratio = expression / (expression + identity)
        assert metrics["model/weight/identity"] == pytest.approx(ratio, rel=1e-5)
    # Fusing before the last stage leaves stages for the expression stream's top on the fused map.
    assert ("expression_stream_top" in state.params) == (stage != -1)


@pytest.mark.parametrize("weighting, pose, norm", [
    ("constrained", "none", False), *(pytest.param(*p, marks=pytest.mark.slow) for p in [
        ("uncertainty", "bins", True), ("constrained", "bins", True), ("uncertainty", "regression", True)]),
])
def test_phanet_every_weighting_and_pose_head_trains_a_step(weighting, pose, norm):
    config = tiny_config(PHANET_SMOKE, weighting=weighting, pose=pose, scale_attention_norm=norm)
    method, state, new_state, metrics = one_step(config)
    assert np.isfinite(metrics["model/loss"])
    assert ("model/loss/pose" in metrics) == (pose != "none")
    for s in (1, 2, 3):
        assert metrics[f"model/loss/attention{s}"] > 0
    assert changed(state.params, new_state.params)
    assert changed(state.params[WEIGHTING_PARAM_KEY], new_state.params[WEIGHTING_PARAM_KEY])
    if weighting == "constrained":
        assert min(v for k, v in metrics.items() if k.startswith("model/weight/")) >= 0.1 - 1e-6
    out = method.apply(new_state.variables(), fake_batch()["image"])
    assert len(out["attention"]) == 3 and out["scale_weights"].shape == (8, 3)
    np.testing.assert_allclose(np.asarray(out["scale_weights"]).sum(-1), 1.0, rtol=1e-5)
    for att in out["attention"]:
        assert att.shape[0] == 8 and att.ndim == 3 and float(att.min()) >= 0 and float(att.max()) <= 1


@pytest.mark.slow
def test_phanet_without_yaw_labels_turns_the_pose_term_off(capsys):
    config = tiny_config(PHANET_SMOKE)
    _, state, _, metrics = one_step(config, fake_spec(pose_keys=()))
    assert "model/loss/pose" not in metrics and "pose" not in state.params[WEIGHTING_PARAM_KEY]
    assert "no yaw labels, so the pose term is off" in capsys.readouterr().out


def test_unknown_recipe_switches_are_errors_that_name_the_choices():
    with pytest.raises(ValueError, match="sum, max, concat, conv"):
        methods.build(tiny_config(IDENNET_SMOKE, fusion="add"), fake_spec())
    with pytest.raises(ValueError, match="constant, loss_ratio, uncertainty"):
        methods.build(tiny_config(IDENNET_SMOKE, weighting="gradnorm"), fake_spec())
    with pytest.raises(ValueError, match="fusion_stage=5"):
        methods.build(tiny_config(IDENNET_SMOKE, fusion_stage=5), fake_spec())
    no_subjects = dataclasses.replace(fake_spec(), train_subjects=())  # e.g. RAF-DB's official split
    with pytest.raises(ValueError, match="needs subject ids"):
        methods.build(tiny_config(IDENNET_SMOKE), no_subjects)
    with pytest.raises(ValueError, match="uncertainty, constrained"):
        methods.build(tiny_config(PHANET_SMOKE, weighting="constant"), fake_spec())
    with pytest.raises(ValueError, match="ascending positive"):
        methods.build(tiny_config(PHANET_SMOKE, yaw_bin_edges=(40.0, 20.0)), fake_spec())


def test_identity_labels_index_the_training_subjects_of_the_fold_only():
    index, mask = common.train_subject_labels(TRAIN_SUBJECTS, jnp.asarray([9, 3, 4, 5, -1, 100, 8]))
    np.testing.assert_array_equal(mask, [1, 1, 0, 1, 0, 0, 1])
    np.testing.assert_array_equal(np.asarray(index)[np.asarray(mask) > 0], [3, 0, 1, 2])


@pytest.mark.slow
def test_idennet_identity_head_never_sees_a_test_fold_subject(smoke_config):
    config = smoke_config
    config.method = "idennet"
    config.model = api.load_config(IDENNET_SMOKE).model
    dataset = pipeline.open_dataset(config.data)
    train_subjects = set(dataset.spec.train_subjects)
    test_subjects = set(np.unique(dataset.labels["subject"][dataset.test_indices]).tolist())
    assert test_subjects and not train_subjects & test_subjects
    assert train_subjects == set(np.unique(dataset.labels["subject"][dataset.train_indices]).tolist())

    method = methods.build(config, dataset.spec)
    h, w, c = dataset.spec.image_shape
    batch = {"image": jnp.zeros((4, h, w, c)), "expression": jnp.zeros(4, jnp.int32),
             "subject": jnp.asarray(sorted(test_subjects)[:4], jnp.int32)}
    variables = method.init(jax.random.PRNGKey(0), batch)
    out = method.apply(variables, batch["image"])
    assert out["identity_logits"].shape == (4, len(train_subjects))  # no class for a test subject

    # A batch of held-out subjects only: the identity loss is 0 and teaches the identity head nothing.
    params = variables.pop("params")
    player = method.players[0]

    def loss(p):
        return player.loss_fn(p, variables, batch, jax.random.PRNGKey(1), 0)

    grads, (_, metrics) = jax.grad(loss, has_aux=True)(params)
    assert float(metrics["loss/identity"]) == 0.0
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads["identity_head"]))


def test_a_flipped_image_gets_a_negated_yaw_and_the_mirrored_bin():
    edges = (20.0, 40.0)
    yaws = jnp.asarray([-60, -40, -30, -20, -5, 0, 5, 20, 30, 40, 60], jnp.float32)
    bins = np.asarray(common.yaw_bin_labels(yaws, edges))
    np.testing.assert_array_equal(bins, [0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4])
    mirrored = np.asarray(common.yaw_bin_labels(-yaws, edges))
    np.testing.assert_array_equal(mirrored, common.num_yaw_bins(edges) - 1 - bins)

    image = np.random.default_rng(0).uniform(-1, 1, (8, 8, 3)).astype(np.float32)
    augment = pipeline.Augment(crop_padding=0, flip=True)
    seen = set()
    for seed in range(20):
        out = augment.random_map({"image": image, "yaw": np.float32(30.0)}, np.random.default_rng(seed))
        flipped = np.array_equal(out["image"], image[:, ::-1])
        assert out["yaw"] == (-30.0 if flipped else 30.0)
        assert int(common.yaw_bin_labels(jnp.asarray(out["yaw"]), edges)) == (1 if flipped else 3)
        seen.add(flipped)
    assert seen == {True, False}


@pytest.mark.slow
@pytest.mark.parametrize("spec_path, weighting", [(IDENNET_SMOKE, "uncertainty"),
                                                  (PHANET_SMOKE, "uncertainty"),
                                                  (PHANET_SMOKE, "constrained")])
def test_learned_loss_weights_get_no_weight_decay(spec_path, weighting):
    config = tiny_config(spec_path, weighting=weighting)
    config.optimizer.weight_decay = 0.5
    method = methods.build(config, fake_spec())
    state = init_state(method, jax.random.PRNGKey(0), fake_batch())
    player = method.players[0]
    params = owned(state.params, player)
    # Move the log-variances off 0 (decay of 0 is 0 either way) and apply zero gradients: only
    # weight decay can change anything.
    params[WEIGHTING_PARAM_KEY] = {k: jnp.asarray(0.7) for k in params[WEIGHTING_PARAM_KEY]}
    zeros = jax.tree.map(jnp.zeros_like, params)
    opt_state = player.optimizer.init(params)
    for _ in range(3):
        updates, opt_state = player.optimizer.update(zeros, opt_state, params)
        new = jax.tree.map(lambda p, u: p + u, params, updates)
    for k, v in new[WEIGHTING_PARAM_KEY].items():
        assert float(v) == pytest.approx(0.7), k
    kernels = [x for x in jax.tree.leaves({k: v for k, v in params.items() if k != WEIGHTING_PARAM_KEY})
               if x.ndim > 1]
    new_kernels = [x for x in jax.tree.leaves({k: v for k, v in new.items() if k != WEIGHTING_PARAM_KEY})
                   if x.ndim > 1]
    assert any(not np.allclose(a, b) for a, b in zip(kernels, new_kernels, strict=True))


def test_resume_accepts_a_config_with_tuples_inside_the_model_block():
    saved = json.loads(json.dumps({"model": {"yaw_bin_edges": (20.0, 40.0)}, "method": "phanet"}))
    ckpt_lib.check_compatible(saved, {"model": {"yaw_bin_edges": (20.0, 40.0)}, "method": "phanet"})
    with pytest.raises(ckpt_lib.CheckpointMismatchError, match="yaw_bin_edges"):
        ckpt_lib.check_compatible(saved, {"model": {"yaw_bin_edges": (15.0, 40.0)}, "method": "phanet"})


# The one 8-vs-1 harness (tests/helpers.py). SGD: Adam would blow the 1e-7 noise of a reordered
# cross-device sum up to a whole step. The GAN recipes take one step at their tiniest widths: over more
# steps their own dynamics amplify that noise, and instance norm over 2x2 maps amplifies it ~100x (a
# channel's spread there can be ~0), hence FERSNet's one exchange stage of 16 channels.
SGD = {"optimizer.name": "sgd", "optimizer.learning_rate": 0.05, "optimizer.warmup_steps": 0}
GAN_SGD = {"optimizer.name": "sgd", "optimizer.learning_rate": 0.02, "optimizer.schedule": "constant",
           "model.discriminator_steps": 2}
TINY_GAN = {"model.discriminator_widths": [8, 16]}
# IDEnNet and PhaNet are one-player recipes built like the baseline, whose 8-device and two-host runs
# test_training checks; these are the recipes with more players and cross-batch terms.
EIGHT_VS_ONE = {
    # Both adversaries beside Halawa et al.'s own, by gradient reversal: three adversary heads.
    "halawa": {"spec": smoke("halawa"), "overrides": {**SGD, "adversary.identity": 1.0, "adversary.pose": 1.0,
                                                      "adversary.formulation": "grl"}},
    "fersnet": {"spec": smoke("fersnet"), "steps": 1,
                "overrides": {**GAN_SGD, **TINY_GAN, "model.stem_width": 8, "model.widths": [16]}},
    "ipdfer": {"spec": smoke("ipdfer"), "steps": 1,
               "overrides": {**GAN_SGD, **TINY_GAN, "model.decoder_widths": [16, 8], "model.code_dim": 32}},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EIGHT_VS_ONE))
def test_recipe_steps_on_eight_devices_as_on_one(name, smoke_data_dir, compilation_cache, tmp_path):
    result = train_on_eight_devices_and_one([EIGHT_VS_ONE[name]], smoke_data_dir, compilation_cache, tmp_path)
    r = result[name]
    # FERSNet: 1.4e-4 measured; its instance norms (FES branch, decoder, AdaIN) divide by per-example
    # spatial spreads that are small for some channels, which amplifies float reassociation.
    tolerance = 1e-3 if name == "fersnet" else 1e-5
    assert r["params"] < tolerance and r["model_state"] < tolerance, (name, r)
    # Each player's momentum is a trace of gradients, which carry the reordered sums' noise unscaled by
    # a learning rate: 1e-4 of them, where gradients are O(1); FERSNet's, like its parameters', are
    # amplified by its instance norms (its parameter bound / its learning rate 0.02).
    assert r["opt_states"] < (5e-2 if name == "fersnet" else 1e-3), (name, r)
    players = {k.split("/")[0] for k in r["metrics1"] if "/" in k}
    expected = {"adversary", "model"} if name == "halawa" else {"discriminator", "generator"}
    assert players == expected, players
    for key, value in r["metrics1"].items():
        if key.endswith("/loss") or key in ("adversary/identity_ce", "model/pose_adversary"):
            assert r["metrics8"][key] == pytest.approx(value, rel=1e-4, abs=1e-5), (name, key)


@pytest.mark.slow
def test_idennet_learns_in_a_short_run(smoke_data_dir, tmp_path):
    config = api.load_config(IDENNET_SMOKE)
    config.data.data_dir = smoke_data_dir
    config.train.update(num_steps=400, log_every=50, checkpoint_every=400)
    trained = api.train(config, str(tmp_path))
    first, last = trained.first_metrics, trained.last_metrics
    assert last["model/loss/expression"] < 0.8 * first["model/loss/expression"]
    # The identity head learns the fold's training subjects (18 of the smoke set's 24).
    assert trained.last_metrics["model/identity_accuracy"] > 3 / 18, trained.last_metrics
    results = api.evaluate(config, str(tmp_path))
    assert results["accuracy"] > 1.6 / len(results["class_names"]), results["accuracy"]


@pytest.mark.slow
def test_cli_trains_and_evaluates_phanet_as_it_does_the_baseline(smoke_data_dir, compilation_cache,
                                                                  tmp_path):
    from tests.test_training import idfer

    env = subprocess_env(compilation_cache)
    common_args = [f"--config={PHANET_SMOKE}", f"--workdir={tmp_path}",
                   f"--config.data.data_dir={smoke_data_dir}", "--config.train.num_steps=400",
                   "--config.train.checkpoint_every=400"]
    train = idfer("train", *common_args, env=env)
    assert train.returncode == 0, train.stderr[-3000:]
    logs = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert logs[-1]["model/loss/expression"] < 0.9 * logs[0]["model/loss/expression"], logs
    assert "model/weight/pose" in logs[-1] and "model/scale_weight/1" in logs[-1]
    evaluate = idfer("evaluate", *common_args, env=env)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    results = json.load(open(tmp_path / "eval_results.json"))
    assert results["accuracy"] > 1.6 / len(results["class_names"]), results["accuracy"]
    assert results["attention_figure"] == "attention_maps.png"
    assert open(tmp_path / "attention_maps.png", "rb").read(4) == b"\x89PNG"
    assert "attention_maps.png" in open(tmp_path / "report.md").read()


@pytest.mark.parametrize("path", sorted(p.name for p in (REPO / "configs").glob("*.py")))
def test_every_config_file_loads_and_builds_its_recipe(path):
    config = api.load_config(str(REPO / "configs" / path))
    spec = fake_spec(pose_keys=("yaw",) if config.data.name == "synthetic_faces" else ())
    spec = dataclasses.replace(spec, image_shape=(config.data.image_size, config.data.image_size, 3))
    method = methods.build(config, spec)
    assert method.name == config.method
    if config.method != "ipdfer":  # IPD-FER's Adam (METHODS.md section 5) has no weight decay
        assert config.optimizer.weight_decay > 0  # so the no-decay rule for loss weights matters
