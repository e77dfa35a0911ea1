"""Tests for idfer_jax.models: ResNet backbones and the classifier head.

Shapes and collections are checked with ``jax.eval_shape`` (no compute); a few real forward passes
check numerics, BatchNorm state and dtypes. Models stay tiny to keep this file fast on 2 CPU cores.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from idfer_jax.models import ClassifierHead, ResNet, build_backbone, resnet_config

RNG = jax.random.key(0)


def _images(n, size, channels=3, seed=1):
    return jax.random.uniform(jax.random.key(seed), (n, size, size, channels), minval=-1, maxval=1)


def _shapes(model, x, **kwargs):
    """(variables, output) shapes of init + apply, without running either."""
    variables = jax.eval_shape(functools.partial(model.init, train=False), RNG, x)
    out = jax.eval_shape(functools.partial(model.apply, train=False, **kwargs), variables, x)
    return variables, out


@pytest.mark.parametrize(
    "name, size, width, stage_shapes",
    [
        ("resnet_tiny", 32, 64, [(32, 32, 16), (16, 16, 32), (8, 8, 64)]),
        ("resnet_tiny", 64, 64, [(64, 64, 16), (32, 32, 32), (16, 16, 64)]),
        ("resnet_small", 32, 256, [(32, 32, 32), (16, 16, 64), (8, 8, 128), (4, 4, 256)]),
        ("resnet_small", 64, 256, [(64, 64, 32), (32, 32, 64), (16, 16, 128), (8, 8, 256)]),
        # ImageNet stem: /4 before the first stage.
        ("resnet18", 64, 512, [(16, 16, 64), (8, 8, 128), (4, 4, 256), (2, 2, 512)]),
        ("resnet50", 64, 2048, [(16, 16, 256), (8, 8, 512), (4, 4, 1024), (2, 2, 2048)]),
    ],
)
def test_output_and_stage_shapes(name, size, width, stage_shapes):
    model = build_backbone(name)
    x = jnp.zeros((2, size, size, 3))
    _, pooled = _shapes(model, x)
    assert pooled.shape == (2, width) and pooled.dtype == jnp.float32
    _, (pooled, stages) = _shapes(model, x, return_stages=True)
    assert pooled.shape == (2, width)
    assert [s.shape for s in stages] == [(2, *s) for s in stage_shapes]
    assert model.out_features == width


@pytest.fixture(scope="module")
def tiny():
    """resnet_tiny and its float32 variables, initialised once for the tests below."""
    model = build_backbone("resnet_tiny")
    return model, model.init(RNG, jnp.zeros((1, 16, 16, 3)), train=False)


def test_tiny_forward_train_updates_batch_stats_and_eval_uses_them(tiny):
    model, variables = tiny
    x = _images(4, 16)
    (pooled, stages), updates = model.apply(
        variables, x, train=True, return_stages=True, mutable=["batch_stats"]
    )
    assert pooled.shape == (4, 64) and bool(jnp.all(jnp.isfinite(pooled)))
    np.testing.assert_allclose(
        pooled, jnp.mean(stages[-1].astype(jnp.float32), axis=(1, 2)), rtol=1e-5, atol=1e-6
    )
    before = variables["batch_stats"]["stem_norm"]["mean"]
    after = updates["batch_stats"]["stem_norm"]["mean"]
    assert not np.allclose(before, after), "train=True must update the running statistics"
    # Eval mode reads running averages: no mutable collection needed, output per-example.
    new_vars = {"params": variables["params"], **updates}
    single = model.apply(new_vars, x[:1], train=False)
    np.testing.assert_allclose(
        single, model.apply(new_vars, x, train=False)[:1], rtol=1e-5, atol=1e-6
    )


@pytest.mark.slow
def test_residual_branches_start_as_identity(tiny):
    params = tiny[1]["params"]
    for i in (1, 2, 3):
        block = params[f"stage{i}_block1"]
        assert float(jnp.abs(block["norm2"]["scale"]).max()) == 0.0
        assert float(jnp.abs(block["norm1"]["scale"] - 1).max()) == 0.0
    # Kaiming normal fan-in: std ~ sqrt(2 / fan_in) (truncated normal, so a loose check).
    kernel = params["stage3_block1"]["conv2"]["kernel"]  # 3x3x64x64
    np.testing.assert_allclose(float(jnp.std(kernel)), np.sqrt(2 / (9 * 64)), rtol=0.15)
    # Without normalisation the last conv of each branch starts at zero instead.
    no_norm = ResNet(stage_sizes=(1, 1), widths=(4, 8), stem="small", norm="none")
    p = no_norm.init(RNG, jnp.zeros((1, 4, 4, 3)), train=False)["params"]
    assert float(jnp.abs(p["stage2_block1"]["conv2"]["kernel"]).max()) == 0.0
    assert float(jnp.abs(p["stage2_block1"]["conv1"]["kernel"]).max()) > 0.0
    assert "bias" in p["stage2_block1"]["conv1"]


@pytest.mark.parametrize(
    "norm, has_stats",
    [("batch", True), ("group", False), ("instance", False), ("layer", False), ("none", False)],
)
def test_batch_stats_only_for_batch_norm(norm, has_stats):
    # Width 48 is not a multiple of 32: GroupNorm must still find a valid group count.
    model = ResNet(stage_sizes=(1, 1), widths=(16, 48), stem="small", norm=norm)
    variables, out = _shapes(model, jnp.zeros((2, 16, 16, 3)))
    assert ("batch_stats" in variables) == has_stats
    assert out.shape == (2, 48)


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["group", "instance", "layer"])
def test_stateless_norms_run_in_train_mode_without_mutable(norm):
    model = ResNet(stage_sizes=(1, 1), widths=(8, 48), stem="small", norm=norm)
    x = _images(2, 8)
    variables = model.init(RNG, x, train=True)
    out = model.apply(variables, x, train=True)
    assert out.shape == (2, 48) and bool(jnp.all(jnp.isfinite(out)))
    # No batch statistics: an example's features do not depend on the rest of the batch.
    np.testing.assert_allclose(
        model.apply(variables, x[:1], train=True), out[:1], rtol=1e-5, atol=1e-6
    )


@pytest.mark.slow
def test_bfloat16_computes_in_bf16_with_float32_params_and_output(tiny):
    model = build_backbone("resnet_tiny", dtype=jnp.bfloat16)
    x = _images(2, 16)
    variables = jax.eval_shape(functools.partial(model.init, train=False), RNG, x)
    dtypes = {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)}
    assert dtypes == {jnp.dtype(jnp.float32)}
    # The computation dtype does not change the parameter tree, so float32 variables serve both.
    variables = tiny[1]
    (pooled, stages), _ = model.apply(
        variables, x, train=True, return_stages=True, mutable=["batch_stats"]
    )
    assert pooled.dtype == jnp.float32
    assert all(s.dtype == jnp.bfloat16 for s in stages)
    reference = tiny[0].apply(variables, x, train=False)
    np.testing.assert_allclose(
        model.apply(variables, x, train=False), reference, rtol=0.1, atol=0.05
    )


@pytest.mark.slow
def test_resnet18_single_forward_64px():
    model = build_backbone("resnet18")
    x = _images(1, 64)
    variables = jax.jit(functools.partial(model.init, train=False))(RNG, x)
    out = jax.jit(functools.partial(model.apply, train=False))(variables, x)
    assert out.shape == (1, 512) and bool(jnp.all(jnp.isfinite(out)))
    assert variables["params"]["stem_conv"]["kernel"].shape == (7, 7, 3, 64)


def test_wrong_rank_and_channels_raise_clear_errors():
    model = build_backbone("resnet_tiny")
    with pytest.raises(ValueError, match=r"\(batch, height, width, 3\).*\(32, 32, 3\)"):
        model.init(RNG, jnp.zeros((32, 32, 3)), train=False)
    with pytest.raises(ValueError, match=r"got 1 channels.*in_channels=1"):
        model.init(RNG, jnp.zeros((1, 32, 32, 1)), train=False)
    grey = build_backbone("resnet_tiny", in_channels=1)
    _, out = _shapes(grey, jnp.zeros((1, 16, 16, 1)))
    assert out.shape == (1, 64)


def test_presets_and_their_errors():
    assert resnet_config("resnet18")["stage_sizes"] == (2, 2, 2, 2)
    assert resnet_config("resnet34")["stage_sizes"] == (3, 4, 6, 3)
    assert resnet_config("resnet_small")["stem"] == "small"
    cfg = resnet_config("resnet_tiny")
    cfg["widths"] = (1,)
    assert resnet_config("resnet_tiny")["widths"] == (16, 32, 64), "must return a copy"
    with pytest.raises(ValueError, match="resnet18.*resnet_small.*resnet_tiny"):
        build_backbone("resnet19")
    with pytest.raises(ValueError, match="normm.*valid fields"):
        build_backbone("resnet_tiny", normm="group")
    with pytest.raises(ValueError, match="batch, group, instance, layer, none"):
        _shapes(build_backbone("resnet_tiny", norm="weird"), jnp.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match="equal length"):
        _shapes(ResNet(stage_sizes=(1, 1), widths=(8,)), jnp.zeros((1, 8, 8, 3)))


def test_classifier_head():
    features = jax.random.normal(jax.random.key(2), (4, 12))
    head = ClassifierHead(num_classes=7, hidden=16, dropout_rate=0.5, dtype=jnp.bfloat16)
    variables = head.init(RNG, features, train=False)
    assert set(variables["params"]) == {"hidden", "logits"}
    assert {x.dtype for x in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.float32)}
    logits = head.apply(variables, features, train=False)  # no 'dropout' rng needed
    assert logits.shape == (4, 7) and logits.dtype == jnp.float32
    np.testing.assert_array_equal(logits, head.apply(variables, features, train=False))

    a = head.apply(variables, features, train=True, rngs={"dropout": jax.random.key(3)})
    b = head.apply(variables, features, train=True, rngs={"dropout": jax.random.key(4)})
    assert not np.allclose(a, b), "dropout must be active in training"
    with pytest.raises(Exception, match="dropout"):
        head.apply(variables, features, train=True)

    linear = ClassifierHead(num_classes=3)
    lin_vars = linear.init(RNG, features, train=False)
    assert set(lin_vars["params"]) == {"logits"}
    # Rate 0: training needs no rng and equals evaluation.
    np.testing.assert_array_equal(
        linear.apply(lin_vars, features, train=True), linear.apply(lin_vars, features, train=False)
    )
