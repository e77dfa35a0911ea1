"""SavedModel and TFLite export (`idfer_jax.inference.export`): the exported files agree with JAX in their
own runtimes (TensorFlow, the TFLite interpreter) at batch 1 and 5, on a toy model (fast) and on every
recipe's smoke model built without data (slow), and the model card names what it should."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from idfer_jax.inference import export

CLASSES = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")
RECIPES = ("baseline", "fersnet", "ipdfer", "idennet", "phanet", "halawa")


# --------------------------------------------------------------------------------------------------
# A toy model: convolution, batch norm, max-pool, dense (fast)


class _Toy(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), strides=(2, 2))(x)
        x = nn.BatchNorm(use_running_average=True)(x)
        x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
        features = nn.Dense(6)(x.reshape(x.shape[0], -1))
        return {"logits": nn.Dense(3)(features), "features": features, "extra": features.sum(-1)}


TOY_SHAPE = (16, 16, 3)


def _toy_apply(variables, images):
    return _Toy().apply({k: v for k, v in variables.items() if k != "unused"}, images)


@pytest.fixture(scope="module")
def toy():
    variables = _Toy().init(jax.random.PRNGKey(0), jnp.zeros((1, *TOY_SHAPE)))
    variables = jax.tree.map(np.asarray, {**variables,
                                          # What a recipe keeps besides inference (a discriminator).
                                          "unused": {"kernel": np.ones((32, 32), np.float32)}})
    images = np.random.default_rng(0).uniform(-1, 1, (5, *TOY_SHAPE)).astype(np.float32)
    return variables, images


def test_serving_function_gives_the_three_named_float32_outputs(toy):
    variables, images = toy
    out = jax.jit(export.serving_function(_toy_apply))(variables, images)
    assert sorted(out) == sorted(export.OUTPUT_NAMES)
    assert out["probabilities"].shape == out["logits"].shape == (5, 3)
    assert out["features"].shape == (5, 6)
    assert all(v.dtype == jnp.float32 for v in out.values())
    np.testing.assert_allclose(out["probabilities"], jax.nn.softmax(out["logits"]), atol=1e-6)
    with pytest.raises(KeyError, match="features"):
        export.serving_function(lambda v, x: {"logits": x[:, 0, 0]})(variables, images)


def _check_signature(directory, image_shape, num_classes, feature_dim):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(directory))
    assert list(loaded.signatures) == [export.SIGNATURE]
    signature = loaded.signatures[export.SIGNATURE]
    (spec,) = signature.structured_input_signature[1].values()
    assert list(signature.structured_input_signature[1]) == [export.INPUT_NAME]
    assert spec.dtype == tf.float32 and spec.shape.as_list() == [None, *image_shape]
    outputs = signature.structured_outputs
    assert sorted(outputs) == sorted(export.OUTPUT_NAMES)
    assert all(v.dtype == tf.float32 for v in outputs.values())
    for name in ("probabilities", "logits"):
        assert outputs[name].shape.as_list() == [None, num_classes]
    assert outputs["features"].shape.as_list() == [None, feature_dim]
    return loaded


def test_saved_model_of_a_toy_agrees_at_batch_1_and_5_and_drops_unused_weights(toy, tmp_path):
    variables, images = toy
    directory = export.export_saved_model(_toy_apply, variables, TOY_SHAPE, tmp_path / "sm")
    loaded = _check_signature(directory, TOY_SHAPE, 3, 6)
    # The weights are variables (not graph constants), and the unused (32, 32) leaf is not among them.
    shapes = sorted(tuple(v.shape) for v in loaded.weights)
    assert len(shapes) == len(jax.tree.leaves(variables)) - 1 and (32, 32) not in shapes
    for n in (1, 5):
        differences = export.check_export("saved_model", directory, _toy_apply, variables, images[:n])
        assert all(d <= export.TOLERANCES["saved_model"][k] for k, d in differences.items())
    outputs = export.run_saved_model(directory, images)
    assert {k: v.shape for k, v in outputs.items()} == {"probabilities": (5, 3), "logits": (5, 3),
                                                          "features": (5, 6)}


def test_tflite_of_a_toy_agrees_at_batch_1_and_5(toy, tmp_path):
    variables, images = toy
    path = export.export_tflite(_toy_apply, variables, TOY_SHAPE, tmp_path / "toy.tflite", batch_size=None)
    assert export.tflite_batch_size(path) is None  # asked for, and no slicing: a dynamic batch
    interpreter = export.tflite_interpreter(path)
    try:
        import ai_edge_litert  # noqa: F401
    except ImportError:
        pass
    else:
        assert type(interpreter).__module__.startswith("ai_edge_litert")
    runner = interpreter.get_signature_runner(export.SIGNATURE)
    (name, detail), = runner.get_input_details().items()
    assert name == export.INPUT_NAME and detail["dtype"] == np.float32
    assert list(detail["shape_signature"]) == [-1, *TOY_SHAPE]
    assert sorted(runner.get_output_details()) == sorted(export.OUTPUT_NAMES)
    for n, batch_size in ((1, 1), (5, 5), (5, 2)):
        differences = export.check_export("tflite", path, _toy_apply, variables, images[:n],
                                          batch_size=batch_size)
        assert all(d <= export.TOLERANCES["tflite"][k] for k, d in differences.items())
    # The default, a fixed batch of 1: any number of images still runs, one at a time; and a fixed 2
    # pads the last odd image.
    fixed = export.export_tflite(_toy_apply, variables, TOY_SHAPE, tmp_path / "fixed.tflite")
    assert export.tflite_batch_size(fixed) == 1
    export.check_export("tflite", fixed, _toy_apply, variables, images, batch_size=4)
    two = export.export_tflite(_toy_apply, variables, TOY_SHAPE, tmp_path / "two.tflite", batch_size=2)
    assert export.tflite_batch_size(two) == 2
    export.check_export("tflite", two, _toy_apply, variables, images, batch_size=4)
    assert export.time_tflite(path, images[:2], repeats=2) > 0


def test_a_mismatch_raises_and_names_the_outputs(toy, tmp_path):
    variables, images = toy
    path = export.export_tflite(_toy_apply, variables, TOY_SHAPE, tmp_path / "toy.tflite")
    changed = jax.tree.map(lambda x: x, variables)
    changed["params"]["Dense_1"]["bias"] = variables["params"]["Dense_1"]["bias"] + 1.0
    with pytest.raises(export.ExportMismatchError, match="logits"):
        export.check_export("tflite", path, _toy_apply, changed, images)
    with pytest.raises(ValueError, match="Unknown export format"):
        export.check_export("onnx", path, _toy_apply, variables, images)
    with pytest.raises(ValueError, match="image_shape"):
        export.export_tflite(_toy_apply, variables, (16, 16), tmp_path / "bad.tflite")


def test_model_card_writes_json_as_is_and_markdown_naming_classes_in_order(tmp_path):
    card = {
        "recipe": "baseline",
        "class_names": list(CLASSES),
        "input": {"shape": [48, 48, 3], "dtype": "float32", "range": [-1.0, 1.0],
                  "normalisation": "x / 127.5 - 1", "channel_order": "RGB"},
        "framing": {"description": "The whole rendered face, centred."},
        "training": {"dataset": "synthetic_faces/smoke", "protocol": "kfold", "fold": 0, "num_train": 504,
                     "steps": 800, "config_hash": "abc123"},
        "accuracy": {"fold_accuracy": 0.875},
        "export": {"tflite": {"file": "model.tflite", "size_bytes": 340576,
                              "max_abs_difference": {"probabilities": 6e-8, "logits": 3.6e-7},
                              "runtime": "ai-edge-litert 2.3.0"}},
    }
    md_path, json_path = export.write_model_card(tmp_path / "card", card)
    assert json.loads(open(json_path).read()) == card
    text = open(md_path).read()
    positions = [text.index(f"{i}. {name}") for i, name in enumerate(CLASSES)]
    assert positions == sorted(positions)
    for expected in ("baseline", "RGB", "x / 127.5 - 1", "The whole rendered face", "abc123", "0.875",
                     "model.tflite", "340576", "ai-edge-litert"):
        assert expected in text
    # Absent sections are left out; an empty accuracy says so.
    md_path, _ = export.write_model_card(tmp_path / "small", {"class_names": ["a", "b"], "accuracy": {}})
    small = open(md_path).read()
    assert "0. a" in small and "1. b" in small and "Not measured" in small and "Training" not in small


# --------------------------------------------------------------------------------------------------
# The recipes' smoke models, built without data (slow: each builds and lowers a real network)


def _recipe(name: str):
    from idfer_jax import api, methods
    from idfer_jax.data import pipeline
    from idfer_jax.data.datasets import DataSpec
    from idfer_jax.train import trainer as trainer_lib
    from tests.conftest import REPO

    config = api.load_config(f"{REPO}/configs/{name}_synthetic.py:smoke")
    size = int(config.data.image_size)
    spec = DataSpec(image_shape=(size, size, 3), class_names=CLASSES, train_subjects=tuple(range(8)),
                    pose_keys=("yaw", "pitch", "roll"), has_neutral=True, has_counterfactual=True)
    method = methods.build(config, spec)
    batch = jax.tree.map(jnp.asarray, pipeline.example_batch(spec, config.data))
    state = trainer_lib.init_state(method, jax.random.PRNGKey(0), batch)
    return method.apply, jax.tree.map(np.asarray, state.variables()), spec.image_shape


def _faces(image_shape, noise: int = 3) -> np.ndarray:
    """Two rendered synthetic faces (as the pipeline normalises them) and `noise` uniform images."""
    from idfer_jax.data import synthetic_faces as sf

    config = sf.SyntheticFacesConfig(name="export_test", resolution=image_shape[0], num_subjects=4,
                                     samples_per_expression=2)
    faces = [sf.render(sf.sample_example_factors(config, i), image_shape[0]) for i in (3, 40)]
    faces = np.stack(faces).astype(np.float32) / 127.5 - 1.0
    uniform = np.random.default_rng(1).uniform(-1, 1, (noise, *image_shape)).astype(np.float32)
    return np.concatenate([faces, uniform])


def _export_and_check(name: str, tmp_path) -> dict:
    apply_fn, variables, shape = _recipe(name)
    images = _faces(shape)
    assert images.shape[0] == 5
    out = jax.jit(export.serving_function(apply_fn))(variables, images[:1])
    num_classes, feature_dim = out["logits"].shape[1], out["features"].shape[1]
    directory = export.export_saved_model(apply_fn, variables, shape, tmp_path / "sm")
    _check_signature(directory, shape, num_classes, feature_dim)
    path = export.export_tflite(apply_fn, variables, shape, tmp_path / export.TFLITE_FILENAME)
    differences = {}
    for n in (1, 5):
        differences[f"saved_model@{n}"] = export.check_export("saved_model", directory, apply_fn,
                                                              variables, images[:n])
        differences[f"tflite@{n}"] = export.check_export("tflite", path, apply_fn, variables, images[:n],
                                                         batch_size=n)
    sizes = {"saved_model": sum(f.stat().st_size for f in (tmp_path / "sm").rglob("*") if f.is_file()),
             "tflite": (tmp_path / export.TFLITE_FILENAME).stat().st_size}
    # The measures, for the docs (`pytest -s` shows them).
    print(f"\n{name}: sizes {sizes}; max abs differences {differences}")
    return {"differences": differences, "tflite": path, "tflite_batch": export.tflite_batch_size(path),
            "images": images, "apply_fn": apply_fn, "variables": variables}


@pytest.mark.slow
def test_baseline_exports_to_both_formats_and_agrees_with_jax(tmp_path):
    result = _export_and_check("baseline", tmp_path)
    assert result["tflite_batch"] == 1
    assert export.time_tflite(result["tflite"], result["images"], repeats=3) > 0
    # A dynamic TFLite batch on request: the baseline has no slice, so the converter takes it.
    dynamic = export.export_tflite(result["apply_fn"], result["variables"], result["images"].shape[1:],
                                   tmp_path / "dynamic.tflite", batch_size=None)
    assert export.tflite_batch_size(dynamic) is None
    export.check_export("tflite", dynamic, result["apply_fn"], result["variables"], result["images"],
                        batch_size=5)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [r for r in RECIPES if r != "baseline"])
def test_every_recipe_exports_to_both_formats_and_agrees_with_jax(recipe, tmp_path):
    result = _export_and_check(recipe, tmp_path)
    assert result["tflite_batch"] == 1
    if recipe == "fersnet":
        # It slices its joint features: the converter refuses a dynamic batch, so it stays 1.
        path = export.export_tflite(result["apply_fn"], result["variables"], result["images"].shape[1:],
                                    tmp_path / "dynamic.tflite", batch_size=None)
        assert export.tflite_batch_size(path) == 1
