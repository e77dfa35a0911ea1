"""Tests for FERSNet's modules: ConvFLU, FERSNet (FER + expression synthesis) and the PatchDiscriminator.

Shapes are checked with ``jax.eval_shape`` (no compute); the behaviour tests share one tiny model
(widths (8, 16, 16, 32), stem 8, 48 px RGB, batch 2) initialised once, to keep the file fast on 2 CPU cores.
"""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from idfer_jax.models import ConvFLU, FERSNet, PatchDiscriminator
from idfer_jax.models.fersnet import ExpressionAdaIN

RNG = jax.random.key(0)
NUM_CLASSES = 7
TINY = dict(widths=(8, 16, 16, 32), stem_width=8)


def _images(n, size, channels, seed=1):
    return jax.random.uniform(jax.random.key(seed), (n, size, size, channels), minval=-1, maxval=1)


def _onehot(labels):
    return jax.nn.one_hot(jnp.asarray(labels), NUM_CLASSES)


def _subtrees(tree, prefix):
    return [v for k, v in tree.items() if k.startswith(prefix)]


def _any_nonzero(trees):
    return any(bool(jnp.any(leaf != 0)) for leaf in jax.tree_util.tree_leaves(trees))


def _random_variables(abstract, seed=0):
    """Variables of the shapes ``abstract`` holds, drawn with NumPy: ``init``'s many truncated-normal draws
    take ~1 s of XLA compilation per distinct shape on CPU, and these tests check wiring, not the init."""
    rs = np.random.default_rng(seed)

    def draw(leaf):
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 4
        return jnp.asarray(rs.normal(size=leaf.shape) / np.sqrt(fan_in), jnp.float32)

    variables = {"params": jax.tree.map(draw, abstract["params"])}
    if "batch_stats" in abstract:  # running mean 0 and variance 1, as init sets them
        variables["batch_stats"] = jax.tree_util.tree_map_with_path(
            lambda path, leaf: (jnp.ones if path[-1].key == "var" else jnp.zeros)(leaf.shape),
            abstract["batch_stats"],
        )
    return variables


# ----------------------------------------------------------------------------------------------- ConvFLU


@pytest.mark.parametrize("pooled", [False, True])
def test_convflu_gates_and_update_algebra(pooled):
    f_m = jax.random.normal(jax.random.key(1), (2, 5, 6, 4))
    f_n = jax.random.normal(jax.random.key(2), (2, 5, 6, 3))
    unit = ConvFLU(pooled_reset_gate=pooled)
    variables = _random_variables(jax.eval_shape(unit.init, RNG, f_m, f_n))
    assert set(variables["params"]) == {"reset", "u", "w", "update"}
    assert all(set(p) == {"kernel"} for p in variables["params"].values())  # 1x1 convs without bias
    (out, gates), plain = jax.jit(
        lambda v: (unit.apply(v, f_m, f_n, return_gates=True), unit.apply(v, f_m, f_n))
    )(variables)
    r, z = gates["reset"], gates["update"]
    assert out.shape == f_m.shape
    assert r.shape == ((2, 1, 1, 3) if pooled else (2, 5, 6, 3))
    assert z.shape == f_m.shape
    for gate in (r, z):
        assert bool(jnp.all((gate >= 0) & (gate <= 1)))
    # out == z * F_m + (1 - z) * tanh(U F_m + W (r * F_n)), recomputed from the returned gates.
    p = {name: np.asarray(v["kernel"][0, 0]) for name, v in variables["params"].items()}
    f_m, f_n, r, z = (np.asarray(a) for a in (f_m, f_n, r, z))
    both = np.concatenate([f_m, f_n], axis=-1)
    expected_r = 1 / (1 + np.exp(-(both.mean(axis=(1, 2), keepdims=True) if pooled else both) @ p["reset"]))
    np.testing.assert_allclose(r, expected_r, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z, 1 / (1 + np.exp(-both @ p["update"])), rtol=1e-5, atol=1e-6)
    candidate = np.tanh(f_m @ p["u"] + (r * f_n) @ p["w"])
    np.testing.assert_allclose(out, z * f_m + (1 - z) * candidate, rtol=1e-5, atol=1e-5)
    # The call without gates gives the same map.
    np.testing.assert_allclose(plain, out, rtol=1e-6)


def test_convflu_rejects_mismatched_inputs():
    f_m = jnp.zeros((2, 4, 4, 3))
    with pytest.raises(ValueError, match="spatial size"):
        ConvFLU().init(RNG, f_m, jnp.zeros((2, 2, 2, 3)))
    with pytest.raises(ValueError, match="features must equal"):
        ConvFLU(features=5).init(RNG, f_m, f_m)


# ----------------------------------------------------------------------------------------------- FERSNet


@pytest.mark.parametrize("size, channels", [(48, 1), (48, 3), (64, 1), (64, 3), (96, 1), (96, 3)])
def test_fersnet_output_shapes(size, channels):
    model = FERSNet(num_classes=NUM_CLASSES, image_shape=(size, size, channels), **TINY)
    x, t = jnp.zeros((2, size, size, channels)), _onehot([0, 3])
    variables = jax.eval_shape(functools.partial(model.init, train=False), RNG, x, t)
    out = jax.eval_shape(functools.partial(model.apply, train=False), variables, x, t)
    assert {k: (v.shape, v.dtype) for k, v in out.items()} == {
        "logits": ((2, NUM_CLASSES), jnp.float32),
        "features": ((2, 32), jnp.float32),
        "synthesis": ((2, size, size, channels), jnp.float32),
    }
    assert model.feature_dim == 32
    # No target: no synthesis.
    out = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
    assert set(out) == {"logits", "features"}
    synthesise = functools.partial(model.apply, train=False, method="synthesise")
    assert jax.eval_shape(synthesise, variables, x, t).shape == (2, size, size, channels)


def test_fersnet_bfloat16_and_pooled_reset_gate():
    model = FERSNet(
        num_classes=NUM_CLASSES, image_shape=(48, 48, 1), pooled_reset_gate=True, dtype=jnp.bfloat16, **TINY
    )
    x, t = jnp.zeros((2, 48, 48, 1)), _onehot([0, 3])
    variables = jax.eval_shape(functools.partial(model.init, train=False), RNG, x, t)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.float32)}
    mutable = ["batch_stats", "intermediates"]
    apply = functools.partial(model.apply, train=True, rngs={"noise": RNG}, mutable=mutable)
    out, state = jax.eval_shape(apply, variables, x, t)
    assert {v.dtype for v in out.values()} == {jnp.dtype(jnp.float32)}
    assert state["intermediates"]["flu_fer4_gates"][0]["reset"].shape == (2, 1, 1, 32)


def test_fersnet_default_widths_shapes_at_96px():
    """The released code's configuration (stem 64, widths (128, 256, 512)) on its 96 px grey input."""
    model = FERSNet(num_classes=6, image_shape=(96, 96, 1))
    x, t = jnp.zeros((1, 96, 96, 1)), jax.nn.one_hot(jnp.array([2]), 6)
    variables = jax.eval_shape(functools.partial(model.init, train=False), RNG, x, t)
    out = jax.eval_shape(functools.partial(model.apply, train=False), variables, x, t)
    assert out["synthesis"].shape == (1, 96, 96, 1) and out["features"].shape == (1, 512)


def test_fersnet_rejects_bad_inputs():
    model = FERSNet(num_classes=NUM_CLASSES, image_shape=(32, 32, 1), **TINY)  # 6 pools need > 32 px
    with pytest.raises(ValueError, match="at least 33x33"):
        jax.eval_shape(functools.partial(model.init, train=False), RNG, jnp.zeros((2, 32, 32, 1)))
    model = FERSNet(num_classes=NUM_CLASSES, image_shape=(48, 48, 1), **TINY)
    with pytest.raises(ValueError, match="expects images"):
        jax.eval_shape(functools.partial(model.init, train=False), RNG, jnp.zeros((2, 48, 48, 3)))
    with pytest.raises(ValueError, match="one-hot"):
        jax.eval_shape(
            functools.partial(model.init, train=False), RNG, jnp.zeros((2, 48, 48, 1)), jnp.zeros((2, 3))
        )


def test_expression_adain_init_and_noise():
    """[code] init: noise scale 0 and a 0.1-scaled Xavier style map, so gamma starts near 0."""
    layer = ExpressionAdaIN()
    x, t = _images(2, 6, 16), _onehot([0, 1])
    variables = layer.init(RNG, x, t, train=False)
    params = variables["params"]
    assert params["noise_scale"].shape == (1,) and float(params["noise_scale"][0]) == 0.0
    assert params["style"]["kernel"].shape == (NUM_CLASSES, 32)
    assert float(jnp.std(params["style"]["kernel"])) < 0.1
    # With the scale at 0, training noise changes nothing; with a scale it does.
    noisy = functools.partial(layer.apply, train=True, rngs={"noise": jax.random.key(5)})
    scaled = {"params": {**params, "noise_scale": jnp.ones((1,))}}
    clean, unscaled, noised = jax.jit(
        lambda: (layer.apply(variables, x, t, train=False), noisy(variables, x, t), noisy(scaled, x, t))
    )()
    np.testing.assert_allclose(unscaled, clean, atol=1e-6)
    assert float(jnp.max(jnp.abs(noised - clean))) > 1e-4
    # gamma * IN(x) + beta [code]: the instance-normalised input, rescaled per example and channel.
    style = t @ params["style"]["kernel"] + params["style"]["bias"]
    gamma, beta = style[:, None, None, :16], style[:, None, None, 16:]
    normalised = (x - x.mean(axis=(1, 2), keepdims=True)) / jnp.sqrt(x.var(axis=(1, 2), keepdims=True) + 1e-6)
    np.testing.assert_allclose(clean, gamma * normalised + beta, rtol=1e-4, atol=1e-5)
    assert ExpressionAdaIN(noise=False).init(RNG, x, t, train=False)["params"].keys() == {"style"}


@pytest.fixture(scope="module")
def tiny_fersnet():
    """A tiny 2-stage FERSNet on 48 px RGB, random variables with the noise scales at 1, and two jitted
    functions: evaluation (no 'noise' rng given: it must not need one) and a training-mode L1 synthesis
    loss's gradient with the synthesis as aux."""
    model = FERSNet(num_classes=NUM_CLASSES, image_shape=(48, 48, 3), widths=(8, 16), stem_width=8)
    x, target_images = _images(2, 48, 3), _images(2, 48, 3, seed=2)
    abstract = jax.eval_shape(functools.partial(model.init, train=False), RNG, x, _onehot([0, 1]))
    variables = _random_variables(abstract)
    params = flax.traverse_util.flatten_dict(variables["params"])
    assert sum(k[-1] == "noise_scale" for k in params) == 2 + 2  # bottleneck, stem skip, 2 stage skips
    params = {k: (jnp.ones_like(v) if k[-1] == "noise_scale" else v) for k, v in params.items()}
    variables["params"] = flax.traverse_util.unflatten_dict(params)

    @jax.jit
    def evaluate(variables, target):
        return model.apply(variables, x, target, train=False)

    def loss(params, target, noise_rng):
        out, _ = model.apply(
            {**variables, "params": params},
            x,
            target,
            train=True,
            rngs={"noise": noise_rng},
            mutable=["batch_stats"],
        )
        return jnp.mean(jnp.abs(out["synthesis"] - target_images)), out["synthesis"]

    return model, x, variables, evaluate, jax.jit(jax.grad(loss, has_aux=True))


def test_fersnet_decode_false_skips_the_decoder(tiny_fersnet):
    model, x, variables, evaluate, _ = tiny_fersnet
    init = functools.partial(model.init, train=False, decode=False)
    assert "decoder" not in jax.eval_shape(init, RNG, x, _onehot([0, 1]))["params"]
    # Runs without any decoder parameter (it would raise if it read one), even with a target.
    no_decoder = {**variables, "params": {k: v for k, v in variables["params"].items() if k != "decoder"}}
    classify = jax.jit(functools.partial(model.apply, train=False, decode=False, mutable=["intermediates"]))
    out, state = classify(no_decoder, x, _onehot([0, 1]))
    assert set(out) == {"logits", "features"}
    np.testing.assert_allclose(out["logits"], evaluate(variables, _onehot([0, 1]))["logits"], rtol=1e-5)
    gates = state["intermediates"]["flu_fes1_gates"][0]
    assert gates["update"].shape == (2, 12, 12, 8) and gates["reset"].shape == (2, 12, 12, 8)


@pytest.mark.slow
def test_fersnet_target_and_noise(tiny_fersnet):
    _, _, variables, evaluate, grad_fn = tiny_fersnet
    target = _onehot([0, 1])
    # Evaluation: no noise, deterministic.
    synthesis = evaluate(variables, target)["synthesis"]
    np.testing.assert_array_equal(synthesis, evaluate(variables, target)["synthesis"])
    # The target expression changes the synthesis.
    other = evaluate(variables, _onehot([4, 5]))["synthesis"]
    assert float(jnp.max(jnp.abs(synthesis - other))) > 1e-4
    # Training: the noise rng changes it; one rng reproduces it.
    a, b = jax.random.key(10), jax.random.key(11)
    _, train_a = grad_fn(variables["params"], target, a)
    np.testing.assert_array_equal(train_a, grad_fn(variables["params"], target, a)[1])
    assert float(jnp.max(jnp.abs(train_a - grad_fn(variables["params"], target, b)[1]))) > 1e-4


@pytest.mark.slow
def test_fersnet_synthesis_loss_reaches_both_branches(tiny_fersnet):
    _, _, variables, _, grad_fn = tiny_fersnet
    grads, _ = grad_fn(variables["params"], _onehot([2, 3]), jax.random.key(3))
    # The FER branch reaches the synthesis through the FES-side ConvFLUs and the joint block.
    for prefix in ("decoder", "stem_", "fes_stage", "flu_fes", "fer_stage", "flu_fer", "joint_block"):
        assert _any_nonzero(_subtrees(grads, prefix)), prefix
    # The classifier does not feed the synthesis.
    for prefix in ("classifier_", "logits"):
        assert not _any_nonzero(_subtrees(grads, prefix)), prefix


# ------------------------------------------------------------------------------------ PatchDiscriminator


@pytest.mark.parametrize("size, channels, patches", [(48, 1, 3), (64, 3, 4), (96, 1, 6)])
def test_discriminator_shapes(size, channels, patches):
    disc = PatchDiscriminator(num_classes=NUM_CLASSES, widths=(8, 16, 16, 32))
    x, c = jnp.zeros((2, size, size, channels)), _onehot([0, 1])
    variables = jax.eval_shape(disc.init, RNG, x, c)
    out = jax.eval_shape(disc.apply, variables, x, c)
    assert out.shape == (2, patches, patches, 1) and out.dtype == jnp.float32


def test_discriminator_condition_matters_and_bad_inputs_raise():
    disc = PatchDiscriminator(num_classes=NUM_CLASSES, widths=(8, 16, 16, 32))
    x = _images(2, 48, 1)
    variables = _random_variables(jax.eval_shape(disc.init, RNG, x, _onehot([0, 1])))
    apply = jax.jit(disc.apply)
    diff = apply(variables, x, _onehot([0, 1])) - apply(variables, x, _onehot([5, 6]))
    assert float(jnp.max(jnp.abs(diff))) > 1e-4
    with pytest.raises(ValueError, match="one-hot"):
        disc.apply(variables, x, jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="at least 16x16"):
        jax.eval_shape(disc.init, RNG, jnp.zeros((2, 8, 8, 1)), _onehot([0, 1]))
