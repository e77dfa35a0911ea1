"""What every recipe needs beside its model: training-mode apply, adversaries, and the Method itself."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from idfer_jax.data.pipeline import DataSpec
from idfer_jax.losses import WEIGHTING_PARAM_KEY
from idfer_jax.methods import adversaries as adv
from idfer_jax.methods.labels import accuracy, num_yaw_bins, train_subject_labels, yaw_bin_labels
from idfer_jax.models import num_stages, weights
from idfer_jax.train.interface import Method, Player
from idfer_jax.train.optim import make_optimizer

__all__ = [
    "Objective",
    "accuracy",
    "apply_for_training",
    "backbone_options",
    "build_recipe",
    "init_with_loss_weights",
    "num_yaw_bins",
    "split_loss_weights",
    "train_subject_labels",
    "yaw_bin_labels",
]

# (training-mode outputs, params incl. loss weights, batch, step) -> (loss, metrics)
Objective = Callable[[Mapping, Mapping, Mapping, jax.Array], tuple[jax.Array, dict]]


def backbone_options(config) -> dict:
    """The keyword arguments of `models.build_backbone` that `config.model` sets, for any backbone."""
    m = config.model
    freeze_until = int(m.get("freeze_until", 0))
    return {
        "norm": m.get("norm") or None,
        "stem": m.get("stem") or None,
        "dtype": jnp.dtype(config.dtype),
        "pretrained": m.get("pretrained", ""),
        "input_size": int(m.get("input_size", 0)),
        "frozen_stages": num_stages(m.backbone) if freeze_until < 0 else freeze_until,
    }


def split_loss_weights(params: dict) -> tuple[dict, dict]:
    """(model parameters, learned loss weights): the weights live beside the model's groups."""
    model_params = {k: v for k, v in params.items() if k != WEIGHTING_PARAM_KEY}
    return model_params, params.get(WEIGHTING_PARAM_KEY, {})


def model_params(params: Mapping) -> dict:
    """The model's own groups: without learned loss weights and adversary heads."""
    return {k: v for k, v in params.items()
            if k != WEIGHTING_PARAM_KEY and not k.startswith(adv.GROUP_PREFIX)}


def init_with_loss_weights(model: nn.Module, combinator, rng, images) -> dict:
    """`model.init` plus the combinator's learned weights (if any) under `params['loss_weights']`."""
    params_rng, dropout_rng = jax.random.split(rng)
    variables = dict(model.init({"params": params_rng, "dropout": dropout_rng}, images, train=False))
    weights = combinator.init() if combinator is not None else {}
    if weights:
        variables["params"] = {**variables["params"], WEIGHTING_PARAM_KEY: weights}
    return variables


def apply_for_training(model: nn.Module, params: dict, model_state: dict, images, rng, **kwargs):
    """Training-mode forward pass: returns (outputs, new model state); loss weights and adversary
    heads are left out. `kwargs` go to the model's `__call__`."""
    model_state = model_collections(model_state)
    outputs, new_state = model.apply(
        {"params": model_params(params), **model_state}, images, train=True,
        mutable=list(model_state), rngs={"dropout": rng}, **kwargs,
    )
    return outputs, dict(new_state)


def model_collections(variables: Mapping) -> dict:
    """The collections the model itself reads: without the adversaries' replay buffer."""
    return {k: v for k, v in variables.items() if k != adv.REPLAY_COLLECTION}


def build_recipe(name: str, model: nn.Module, objective: Objective, config, data_spec: DataSpec, *,
                 weighting=None, batch_keys: tuple[str, ...] = ("image", "expression"),
                 adversaries: Sequence[adv.Adversary] = (), adversary_call: Mapping | None = None,
                 evaluations: tuple[str, ...] = (), codes: tuple[str, ...] = ("features",)) -> Method:
    """The Method of a recipe: its model, trained on `objective` (and its learned loss weights, if
    `weighting` has any) with the optimizer of `config.optimizer`.

    `adversaries` are the recipe's own (Halawa et al.'s expression adversary on z_n); the identity and
    pose adversaries that `config.adversary` switches on are added for every recipe, on the model's
    `outputs['features']`. With any adversary, an `adversary` player (its own optimizer state) updates
    first in each step, then the `model` player. Inference ignores loss weights and adversaries.
    `adversary_call` are keyword arguments of the model's `__call__` for the adversary player's
    forward pass, which needs only the features (Halawa et al. skip the decoder there). `batch_keys`:
    what `objective` reads from a batch; `evaluations`, `codes`: see `train.interface`.
    """
    adversaries = (*adversaries, *adv.from_config(config, data_spec))
    # Past batches kept for the trained adversaries (methods.build refuses it where none is trained).
    # Like `formulation` and `steps`, it applies to the run's adversaries, if any: a weight-0 run of a
    # sweep is the baseline with the same settings.
    replay = int(adv.settings(config).get("replay", 0) or 0) if adversaries else 0
    num_steps = max(1, int(config.train.num_steps))

    def forward(params, model_state, images, rng, **kwargs):
        return apply_for_training(model, params, model_state, images, rng, **kwargs)

    def adversary_forward(params, model_state, images, rng):
        return forward(params, model_state, images, rng, **(adversary_call or {}))

    def loss_fn(params, model_state, batch, rng, step):
        outputs, new_state = forward(params, model_state, batch["image"], rng)
        loss, metrics = objective(outputs, params, batch, step)
        if replay:  # this batch's features go to the adversaries' buffer for the next steps
            new_state[adv.REPLAY_COLLECTION] = adv.push_replay(
                model_state[adv.REPLAY_COLLECTION], adversaries, outputs, batch, step)
        if adversaries:
            terms, adversary_metrics = adv.encoder_terms(
                adversaries, params, outputs, batch, step / num_steps,
                replay=model_state[adv.REPLAY_COLLECTION] if replay else None,
            )
            for term_name, value in terms.items():
                loss = loss + value
                metrics[term_name] = value
            metrics.update(adversary_metrics)
        return loss, (new_state, metrics)

    def init(rng, batch):
        if not adversaries:
            return init_with_loss_weights(model, weighting, rng, batch["image"])
        model_rng, heads_rng = jax.random.split(rng)
        variables = init_with_loss_weights(model, weighting, model_rng, batch["image"])
        # Only the shapes of what the adversaries read: no forward pass at start-up.
        outputs = jax.eval_shape(
            lambda v: model.apply({**v, "params": model_params(v["params"])}, batch["image"], train=False),
            variables,
        )
        variables["params"] = {**variables["params"], **adv.init_heads(adversaries, heads_rng, outputs)}
        if replay:
            variables[adv.REPLAY_COLLECTION] = adv.init_replay(
                adversaries, outputs, int(config.train.batch_size), replay)
        return variables

    def apply(variables, images):
        return model.apply({**model_collections(variables), "params": model_params(variables["params"])},
                           images, train=False)

    optimizer = make_optimizer(config.optimizer, config.train.num_steps,
                               freeze_until=config.model.get("freeze_until", 0) if "backbone" in config.model
                               else None)
    trained = [a for a in adversaries if not a.closed_form]
    if not trained:  # no adversary at all, or only closed-form ones solved inside loss_fn
        players = (Player("model", loss_fn, optimizer),)
    else:
        sample = {"image": jnp.zeros((2, *data_spec.image_shape), jnp.float32)}
        with weights.shapes_only():
            groups = jax.eval_shape(init, jax.random.PRNGKey(0), sample)["params"]
        players = (
            adv.player(trained, adversary_forward, adv.make_adversary_optimizer(config),
                       steps=adv.settings(config).get("steps", 1), replay=bool(replay)),
            Player("model", loss_fn, optimizer,
                   owns=tuple(k for k in groups if not k.startswith(adv.GROUP_PREFIX))),
        )
    batch_keys = tuple(dict.fromkeys((*batch_keys, *(k for a in adversaries for k in a.batch_keys))))
    return Method(name=name, init=init, players=players, apply=apply,
                  batch_keys=batch_keys, evaluations=evaluations, codes=tuple(codes))
