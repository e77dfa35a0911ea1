"""What many test files share: a fake data spec and batch, the smallest config of every recipe, and one
harness that trains recipes on 8 simulated devices and on 1 and compares them."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from idfer_jax import api
from idfer_jax.data import pipeline
from tests.conftest import REPO, subprocess_env

CLASSES = ("neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise")
TRAIN_SUBJECTS = (3, 5, 8, 9)
RECIPES = ("baseline", "idennet", "phanet", "halawa", "fersnet", "ipdfer")


def smoke(recipe: str) -> str:
    """The `:smoke` config spec of `recipe` on the synthetic set."""
    return str(REPO / "configs" / f"{recipe}_synthetic.py") + ":smoke"


def fake_spec(pose_keys=("yaw",), has_neutral: bool = False, size: int = 32) -> pipeline.DataSpec:
    return pipeline.DataSpec(image_shape=(size, size, 3), class_names=CLASSES, train_subjects=TRAIN_SUBJECTS,
                             pose_keys=pose_keys, has_neutral=has_neutral)


def fake_batch(n: int = 8, subjects=None, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    subjects = np.resize(np.asarray(subjects if subjects is not None else TRAIN_SUBJECTS), n)
    return {
        "image": jnp.asarray(rng.uniform(-1, 1, (n, 32, 32, 3)), jnp.float32),
        "expression": jnp.asarray(rng.integers(0, len(CLASSES), n), jnp.int32),
        "subject": jnp.asarray(subjects, jnp.int32),
        "yaw": jnp.asarray(rng.uniform(-60, 60, n), jnp.float32),
    }


def generative_batch(n: int = 8) -> dict:
    """`fake_batch` with the neutral and partner images the generative recipes read."""
    batch = fake_batch(n)
    rng = np.random.default_rng(1)
    batch.update(
        neutral_image=jnp.asarray(rng.uniform(-1, 1, (n, 32, 32, 3)), jnp.float32),
        partner_image=jnp.asarray(rng.uniform(-1, 1, (n, 32, 32, 3)), jnp.float32),
        partner_expression=(batch["expression"] + 1) % len(CLASSES),
        partner_mask=jnp.ones((n,), jnp.float32),
    )
    return batch


def tiny_config(spec_path: str, **model):
    """`spec_path`'s config with the smallest networks (these tests check wiring, not learning)."""
    config = api.load_config(spec_path)
    if config.method == "fersnet":
        config.model.update(discriminator_steps=2, discriminator_widths=(8, 16), stem_width=8, widths=(8,))
    elif config.method == "ipdfer":
        config.model.update(discriminator_steps=2, discriminator_widths=(8, 16), decoder_widths=(16, 8),
                            code_dim=32, backbone="resnet_tiny")
    else:
        config.model.backbone = "resnet_tiny"
    config.model.update(model)
    config.optimizer.warmup_steps = 0  # warm-up starts at learning rate 0: step 1 would change nothing
    return config


def changed(before, after) -> bool:
    return any(not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True))


# Trains each run of argv[3] (a JSON list of {"spec", "overrides", "steps" (4), "name" (the recipe)}) on the
# 8 simulated devices
# and on 1, from the same start, and writes the largest differences of the results to argv[2]/result.json.
MULTI_DEVICE_SCRIPT = r"""
import json, os, sys
import jax
import numpy as np
assert len(jax.devices()) == 8, jax.devices()
from idfer_jax import api

def maxdiff(a, b):
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))),
                                            jax.device_get(a), jax.device_get(b))), default=0.0)

out = {}
for run in json.loads(sys.argv[3]):
    config = api.load_config(run["spec"])
    config.data.data_dir = sys.argv[1]
    steps = run.get("steps", 4)
    config.train.update(num_steps=steps, checkpoint_every=steps, log_every=2)
    for dotted, value in run.get("overrides", {}).items():
        value = tuple(value) if isinstance(value, list) else value
        block, _, key = dotted.rpartition(".")
        node = config
        for part in block.split("."):
            node = node[part]
        node[key] = value
    name = run.get("name", config.method)
    on8 = api.train(config, os.path.join(sys.argv[2], name + "8"))
    on1 = api.train(config, os.path.join(sys.argv[2], name + "1"), devices=jax.devices()[:1])
    out[name] = {"params": maxdiff(on8.state.params, on1.state.params),
                 "model_state": maxdiff(on8.state.model_state, on1.state.model_state),
                 "opt_states": maxdiff(on8.state.opt_states, on1.state.opt_states),
                 "metrics8": on8.last_metrics, "metrics1": on1.last_metrics}
json.dump(out, open(os.path.join(sys.argv[2], "result.json"), "w"))
"""


def train_on_eight_devices_and_one(runs: list[dict], data_dir: str, compilation_cache: str, tmp_path) -> dict:
    """Runs MULTI_DEVICE_SCRIPT in a subprocess with 8 simulated CPU devices; returns its result.json."""
    env = subprocess_env(compilation_cache, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    command = [sys.executable, "-c", MULTI_DEVICE_SCRIPT, data_dir, str(tmp_path), json.dumps(runs)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1200, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.load(open(tmp_path / "result.json"))
