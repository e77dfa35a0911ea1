"""The small interface between a method (a recipe) and the generic trainer.

A method is data plus pure functions. It owns its parameters as a dict whose *top-level keys* are the
groups that players update: a one-player method (the baseline) has one player that owns every group; a
two-player method (an adversary, a GAN discriminator) has a player per group set, each with its own loss
and its own optimizer state. Sharing one Adam state between players is a known bug of hand-rolled GAN
code, so the trainer never does it.

`loss_fn(params, model_state, batch, rng, step) -> (loss, (new_model_state, metrics))`
    `params` holds every group (a player differentiates only its own); `model_state` holds the non-
    trainable collections (batch statistics); `metrics` is a flat dict of scalars for the logs.
`apply(variables, images) -> {'logits': ..., 'features': ...}`
    inference without side effects; `features` are the expression features that leakage probes read.
`frozen_variables() -> {collection: pytree}` (optional)
    pretrained weights no player trains (a frozen face-recognition network): the trainer puts them in
    the model state after `init`, outside `jit`, so a large network is never a compiled constant.
`batch_keys`: every key `loss_fn` reads from a batch; the trainer checks the run's data gives them all
    (an error naming the data switch otherwise, before anything is compiled).
`codes` (optional, default `('features',)`): the names of `apply`'s 2-D (N, D) outputs that are a
    representation the recipe claims to separate (Halawa et al.'s `('features', 'nuisance_features')`);
    `idfer evaluate` runs the identity, verification, pose and expression probes on every one of them
    (`results['codes']`). 'features' comes first.
`evaluations` (optional): what `idfer evaluate` runs besides accuracy and leakage, by name from
    `train.evaluate.EVALUATORS` ('attention_maps', 'reconstructions', 'expression_transfer',
    'neutralisation', 'swap').
`generators` (optional) name -> pure function, for the figures and numbers of generative recipes:
    `'transfer': (variables, images, target_onehot) -> images` (expression transfer),
    `'neutralise': (variables, images) -> images` (the same face, neutral),
    `'embed_identity': (variables, images) -> L2-normalised identity embeddings`.
`finishing_stage` (optional): a second stage after the last step, e.g. FERSNet's synthesis-to-balance
    fine-tuning: `run(trainer, state) -> state` advanced by `steps`; the trainer checkpoints its result
    as step `num_steps + steps`, so a finished run does not repeat it and evaluation reads it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import optax

PyTree = Any
LossFn = Callable[[PyTree, PyTree, Mapping[str, jax.Array], jax.Array, jax.Array], tuple]


@dataclasses.dataclass(frozen=True)
class Player:
    """One participant of training: the parameter groups it owns, its loss and its optimizer."""

    name: str
    loss_fn: LossFn
    optimizer: optax.GradientTransformation
    owns: tuple[str, ...] | None = None  # top-level param keys; None = every group
    repeats: int = 1  # sub-updates per train step (e.g. 3 discriminator steps per generator step)
    updates_model_state: bool = True  # whether its forward pass's batch statistics are kept
    # (params, model_state, batch, rng, step) -> extra batch entries, computed once before the
    # `repeats` sub-updates: a discriminator's several steps on *one* batch of fakes (FERSNet's code)
    # without running the generator again for each.
    prepare: LossFn | None = None


@dataclasses.dataclass(frozen=True)
class FinishingStage:
    """Work after the main loop whose result replaces the final state (see the module docstring)."""

    steps: int
    run: Callable[[Any, Any], Any]  # (trainer, TrainState) -> TrainState with step + steps
    description: str = ""


@dataclasses.dataclass(frozen=True)
class Method:
    """A recipe the trainer runs without knowing which one it is."""

    name: str
    init: Callable[[jax.Array, Mapping[str, jax.Array]], dict]  # -> {'params': ..., **collections}
    players: tuple[Player, ...]
    apply: Callable[[dict, jax.Array], dict]
    batch_keys: tuple[str, ...] = ("image", "expression")  # what loss_fn reads from the batch
    evaluations: tuple[str, ...] = ()  # names in train.evaluate.EVALUATORS
    codes: tuple[str, ...] = ("features",)  # apply's (N, D) outputs the leakage probes read
    frozen_variables: Callable[[], dict] | None = None
    generators: Mapping[str, Callable] = dataclasses.field(default_factory=dict)
    finishing_stage: FinishingStage | None = None

    def player(self, name: str) -> Player:
        for p in self.players:
            if p.name == name:
                return p
        raise KeyError(f"Method {self.name} has no player {name!r}.")


def owned(params: Mapping[str, PyTree], player: Player) -> dict:
    """The parameter groups `player` updates."""
    if player.owns is None:
        return dict(params)
    missing = [k for k in player.owns if k not in params]
    if missing:
        raise KeyError(
            f"Player {player.name!r} owns {missing} but the parameters have groups {list(params)}."
        )
    return {k: params[k] for k in player.owns}
