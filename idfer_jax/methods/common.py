"""What several recipes need beside their model: training-mode apply, and labels made from the batch."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from idfer_jax.losses import WEIGHTING_PARAM_KEY
from idfer_jax.train.interface import LossFn, Method, Player
from idfer_jax.train.optim import make_optimizer


def split_loss_weights(params: dict) -> tuple[dict, dict]:
    """(model parameters, learned loss weights): the weights live beside the model's groups."""
    model_params = {k: v for k, v in params.items() if k != WEIGHTING_PARAM_KEY}
    return model_params, params.get(WEIGHTING_PARAM_KEY, {})


def init_with_loss_weights(model: nn.Module, combinator, rng, images) -> dict:
    """`model.init` plus the combinator's learned weights (if any) under `params['loss_weights']`."""
    params_rng, dropout_rng = jax.random.split(rng)
    variables = dict(model.init({"params": params_rng, "dropout": dropout_rng}, images, train=False))
    weights = combinator.init() if combinator is not None else {}
    if weights:
        variables["params"] = {**variables["params"], WEIGHTING_PARAM_KEY: weights}
    return variables


def apply_for_training(model: nn.Module, params: dict, model_state: dict, images, rng):
    """Training-mode forward pass: returns (outputs, new model state); loss weights are left out."""
    model_params, _ = split_loss_weights(params)
    outputs, new_state = model.apply(
        {"params": model_params, **model_state}, images, train=True,
        mutable=list(model_state), rngs={"dropout": rng},
    )
    return outputs, dict(new_state)


def one_player_method(name: str, model: nn.Module, loss_fn: LossFn, config, *, weighting=None,
                      batch_keys: tuple[str, ...] = ("image", "expression"),
                      description: str = "") -> Method:
    """A recipe whose one player trains the model (and its learned loss weights, if `weighting` has
    any) with the optimizer of `config.optimizer`; inference ignores the loss weights."""

    def init(rng, batch):
        return init_with_loss_weights(model, weighting, rng, batch["image"])

    def apply(variables, images):
        params, _ = split_loss_weights(variables["params"])
        return model.apply({**variables, "params": params}, images, train=False)

    optimizer = make_optimizer(config.optimizer, config.train.num_steps)
    return Method(name=name, init=init, players=(Player("model", loss_fn, optimizer),), apply=apply,
                  batch_keys=batch_keys, description=description)


def train_subject_labels(train_subjects: Sequence[int], subjects: jax.Array):
    """Dataset subject ids -> (index among this fold's training subjects, valid mask).

    An identity head classifies the training subjects of the current fold only, so a subject that is
    not among them (a held-out subject, or -1 = unknown) gets mask 0 and never reaches its loss.
    """
    table = jnp.asarray(np.sort(np.asarray(train_subjects, np.int32)))
    if table.size == 0:
        return jnp.zeros_like(subjects), jnp.zeros(subjects.shape, jnp.float32)
    index = jnp.clip(jnp.searchsorted(table, subjects), 0, table.size - 1)
    valid = table[index] == subjects
    return jnp.where(valid, index, 0).astype(jnp.int32), valid.astype(jnp.float32)


def yaw_bin_labels(yaw: jax.Array, magnitude_edges: Sequence[float]) -> jax.Array:
    """Yaw in degrees -> one of `2 * len(magnitude_edges) + 1` bins, mirror-symmetric about 0.

    `|yaw|` is binned at the ascending `magnitude_edges` and the sign picks the side, so the centre bin
    is `|yaw| < edges[0]` and `bin(-yaw) == num_bins - 1 - bin(yaw)` exactly, also for datasets whose
    yaws sit on bin edges (Multi-PIE's 15 and 45 degree cameras): a flipped image, whose yaw the
    pipeline negates, always lands in the mirrored bin.
    """
    edges = jnp.asarray(magnitude_edges, jnp.float32)
    magnitude = jnp.digitize(jnp.abs(yaw), edges)
    return (len(magnitude_edges) + jnp.sign(yaw).astype(jnp.int32) * magnitude).astype(jnp.int32)


def num_yaw_bins(magnitude_edges: Sequence[float]) -> int:
    return 2 * len(magnitude_edges) + 1


def accuracy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    hits = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    if mask is None:
        return jnp.mean(hits)
    return jnp.sum(hits * mask) / jnp.maximum(jnp.sum(mask), 1.0)
