"""`idfer bench`: the CPU kernels compute what XLA's operations do, the PyTorch reference is the same
network, and a bench run measures every recipe it is asked for and writes its table and JSON."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from idfer_jax import api, methods
from idfer_jax.bench import run as bench
from idfer_jax.data.pipeline import DataSpec
from idfer_jax.methods import baseline
from idfer_jax.models import cpu_kernels
from tests.conftest import REPO

SMOKE = str(REPO / "configs" / "baseline_synthetic.py") + ":smoke"


@pytest.mark.parametrize("size,cin,cout,kernel,stride,padding", [
    (2, 16, 8, 3, 1, ((1, 1), (1, 1))),  # 2x2 output: patches x kernel
    (4, 8, 8, 3, 2, "SAME"),  # 2x2 output from a strided conv, string padding
    (3, 4, 6, 1, 1, "VALID"),  # 1x1 projection on a 3x3 map
    (5, 4, 4, 3, 2, ((0, 1), (1, 0))),  # asymmetric padding, 2x2 output
    (8, 4, 4, 3, 1, ((1, 1), (1, 1))),  # 8x8 output: XLA's own convolution
])
def test_cpu_convolution_matches_xla_values_and_gradients(size, cin, cout, kernel, stride, padding):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, size, size, cin)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(kernel, kernel, cin, cout)), jnp.float32)
    dn = ("NHWC", "HWIO", "NHWC")

    def ours(x, k):
        return cpu_kernels.conv_general_dilated(x, k, (stride, stride), padding, dimension_numbers=dn)

    def theirs(x, k):
        return lax.conv_general_dilated(x, k, (stride, stride), padding, dimension_numbers=dn)

    np.testing.assert_allclose(ours(x, k), theirs(x, k), atol=1e-4, rtol=1e-5)
    grad_ours = jax.grad(lambda x, k: jnp.sum(ours(x, k) ** 2), argnums=(0, 1))(x, k)
    grad_theirs = jax.grad(lambda x, k: jnp.sum(theirs(x, k) ** 2), argnums=(0, 1))(x, k)
    for a, b in zip(grad_ours, grad_theirs, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-4)


def test_cpu_max_pool_matches_flax_values_and_gradients():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 9, 8, 3)), jnp.float32)  # no ties

    def ours(x):
        return cpu_kernels.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))

    def theirs(x):
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    np.testing.assert_array_equal(ours(x), theirs(x))
    np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(ours(x) ** 3))(x),
                                  jax.grad(lambda x: jnp.sum(theirs(x) ** 3))(x))


@pytest.mark.slow
def test_pytorch_reference_is_the_same_network_as_the_baseline(smoke_config):
    torch = pytest.importorskip("torch", reason="the PyTorch reference needs `pip install torch==2.13.0`")
    from idfer_jax.bench import torch_reference
    from idfer_jax.models.resnet import resnet_config

    config = api.load_config(str(REPO / "configs" / "baseline_synthetic.py"))  # the full baseline
    spec = DataSpec(image_shape=(64, 64, 3), class_names=tuple("abcdefg"),
                                     train_subjects=(0,), pose_keys=(), has_neutral=False)
    model = baseline.build_model(config, spec)
    images = np.random.default_rng(2).uniform(-1, 1, (4, 64, 64, 3)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), images, train=False)
    # Non-trivial norm scales and running statistics, so every copied array matters.
    leaves, tree = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    variables = jax.tree.unflatten(tree, [v + 0.2 * jax.random.uniform(k, v.shape) if v.ndim == 1 else v
                                          for v, k in zip(leaves, keys, strict=True)])
    preset = resnet_config(config.model.backbone)
    preset["stem"] = config.model.stem
    reference = torch_reference.build_resnet(preset, num_classes=7, in_channels=3)
    assert sum(p.numel() for p in reference.parameters()) == sum(
        x.size for x in jax.tree.leaves(variables["params"]))
    torch_reference.load_flax_variables(reference, variables)
    nchw = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    for train in (False, True):
        reference.train(train)
        with torch.no_grad():
            expected = reference(nchw).numpy()
        if train:
            got, _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
        else:
            got = model.apply(variables, images, train=False)
        np.testing.assert_allclose(got["logits"], expected, atol=2e-4, rtol=1e-3)


@pytest.mark.slow
def test_bench_measures_each_recipe_and_the_pytorch_reference(smoke_config, tmp_path, capsys):
    pytest.importorskip("torch", reason="the PyTorch reference needs `pip install torch==2.13.0`")
    result = bench.bench(SMOKE, smoke_config, str(tmp_path), recipes="baseline,halawa", devices="1",
                         dtypes="float32", inputs="memory,pipeline", steps=3)
    rows = result["rows"]
    measured = {(r["framework"], r["recipe"], r["input"]) for r in rows}
    assert measured == {("jax", recipe, kind) for recipe in ("baseline", "halawa")
                        for kind in ("memory", "pipeline", "pipeline_only")} | {
                            ("pytorch", "baseline", "memory")}
    for r in rows:
        assert r["images_per_s"] > 0 and r["compile_s"] > 0 and r["batch_size"] == 32
        assert r["image_size"] == 48
    by = {(r["framework"], r["recipe"], r["input"]): r for r in rows}
    assert result["ratios"]["float32"] == pytest.approx(
        by["jax", "baseline", "memory"]["images_per_s"] / by["pytorch", "baseline", "memory"]["images_per_s"])
    saved = json.load(open(tmp_path / "bench.json"))
    assert saved["rows"] == json.loads(json.dumps(rows)) and saved["backend"] == "cpu"
    table = (tmp_path / "bench.md").read_text()
    assert "| pytorch | baseline | memory | float32 |" in table and "JAX / PyTorch" in table
    assert "JAX / PyTorch" in capsys.readouterr().out


def test_bench_rejects_what_it_cannot_measure():
    smoke_config = api.load_config(SMOKE)  # a config only: no data is prepared
    with pytest.raises(bench.BenchError, match="Unknown recipes"):
        bench.recipe_configs(SMOKE, smoke_config, "baseline,resnet")
    with pytest.raises(bench.BenchError, match="devices"):
        bench.device_counts("1,64")
    with pytest.raises(bench.BenchError, match="<recipe>_<dataset>"):
        bench.recipe_configs("/tmp/my_config.py", smoke_config, "all")
    siblings = bench.recipe_configs(SMOKE, smoke_config, "all")
    assert [c.method for c in siblings] == list(methods.BUILT_IN)
    assert {c.data.data_dir for c in siblings} == {smoke_config.data.data_dir}
    assert {c.train.batch_size for c in siblings} == {smoke_config.train.batch_size}
