"""Adversaries: a classifier that tries to read a factor from a model output, and the encoder terms
that make it fail. Any recipe gets them through `common.build_recipe`, so the same identity or pose
adversary attaches to the baseline, IDEnNet, PhaNet or Halawa et al. alike.

An adversary is its own player: it owns the parameter group `adversary_<name>`, has its own optimizer
state, and trains with plain cross entropy on `stop_gradient(features)`, so it never moves the encoder.
The encoder (the recipe's model player) adds one term per adversary to its loss; adversary sub-updates
come first in each jitted step, then the model's, so the encoder always plays against an adversary that
has just seen the batch.

Formulations (`config.adversary.formulation`), as in METHODS.md section 2 [choice: default `uniform`]:
- `uniform`: the encoder term is KL(uniform || adversary's prediction), i.e. the cross entropy to
  the uniform distribution minus log K, so it is 0 when the adversary can only guess.
- `grl`: the encoder term is the adversary's cross entropy through a gradient-reversal layer with the
  DANN schedule `2 / (1 + exp(-10 p)) - 1` (p = step / num_steps): its gradient on the encoder is
  exactly -lambda times the plain gradient. This is the paper's single GRL loss split by parameter
  group, so each player keeps its own optimizer state; the adversary's half is its plain update.
- `negated_ce`: the encoder term is `-min(CE, log K)` per example [choice: the clip at log K, the
  cross entropy of a uniform guess; pushing past it only makes the adversary confidently wrong, which
  is information again, and unclipped nothing bounds the term].

Every adversary reads its features standardized over the batch (`AdversaryHead`, [choice]): without
that, the encoder silenced the adversary instead of removing what it reads (docs/results/adversarial.md).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from idfer_jax import config_defaults, losses
from idfer_jax.configuration import ConfigError
from idfer_jax.data.pipeline import DataSpec
from idfer_jax.methods import labels as L
from idfer_jax.models import ClassifierHead
from idfer_jax.train.interface import Player
from idfer_jax.train.optim import make_optimizer

FORMULATIONS = ("uniform", "grl", "negated_ce")
GROUP_PREFIX = "adversary_"
LabelFn = Callable[[Mapping[str, jax.Array]], tuple[jax.Array, jax.Array | None]]


class AdversaryHead(nn.Module):
    """An adversary's classifier, on features standardized over the batch (inside the graph).

    [choice] Without the standardization the encoder wins without removing anything: it moves the
    features to where the adversary's hidden ReLUs are off, so its prediction is constant and its
    gradient gone, while a probe on z-scored features still reads the subject. Measured on synthetic
    faces, fold 0, identity adversary: 2 of 256 hidden units ever active on 512 training images (with 3
    adversary steps at lr 1e-2; 28 of 256 with `grl`), and an identity probe of 0.71 / 0.73 against the
    baseline's 0.65. Standardized, a shift or a rescaling of the features is invisible to it.
    """

    num_classes: int
    hidden: int | None = 256
    standardize: bool = True

    @nn.compact
    def __call__(self, features: jax.Array, *, train: bool = False) -> jax.Array:
        x = features.astype(jnp.float32)
        if self.standardize:
            mean = jnp.mean(x, axis=0, keepdims=True)
            x = (x - mean) * jax.lax.rsqrt(jnp.var(x, axis=0, keepdims=True) + 1e-5)
        return ClassifierHead(num_classes=self.num_classes, hidden=self.hidden, name="classifier")(
            x, train=False)


@dataclasses.dataclass(frozen=True)
class Adversary:
    """Predicts `labels(batch)` from `outputs[reads]`; the encoder is trained so that it cannot."""

    name: str  # 'expression', 'identity', 'pose', ...: the group is 'adversary_<name>'
    reads: str  # which model output it reads, e.g. 'features' (z_e) or 'nuisance_features' (z_n)
    num_classes: int
    labels: LabelFn  # batch -> (integer labels, per-example 0/1 mask or None)
    weight: float = 1.0
    formulation: str = "uniform"
    hidden: int | None = 256
    batch_keys: tuple[str, ...] = ()  # batch entries `labels` reads
    standardize: bool = True  # see AdversaryHead

    def __post_init__(self):
        check_formulation(self.formulation)

    @property
    def group(self) -> str:
        return GROUP_PREFIX + self.name

    def head(self) -> AdversaryHead:
        return AdversaryHead(num_classes=self.num_classes, hidden=self.hidden, standardize=self.standardize)

    def logits(self, params: Mapping, features: jax.Array) -> jax.Array:
        return self.head().apply({"params": params[self.group]}, features, train=False)


def check_formulation(formulation: str) -> None:
    if formulation not in FORMULATIONS:
        raise ConfigError(f"Unknown adversary formulation {formulation!r}; use one of {FORMULATIONS}.")


def encoder_loss(formulation: str, logits: jax.Array, labels: jax.Array,
                 mask: jax.Array | None = None) -> jax.Array:
    """What the encoder minimises against an adversary's `logits` (already reversed for `grl`)."""
    check_formulation(formulation)
    logits = logits.astype(jnp.float32)
    num_classes = logits.shape[-1]
    if formulation == "uniform":
        per_example = -jnp.mean(jax.nn.log_softmax(logits), axis=-1) - math.log(num_classes)
    else:
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        per_example = ce if formulation == "grl" else -jnp.minimum(ce, math.log(num_classes))
    return losses.masked_mean(per_example, mask)


def init_heads(adversaries: Sequence[Adversary], rng: jax.Array, outputs: Mapping) -> dict:
    """Parameters of every adversary head, sized on the model `outputs` it reads (arrays or shapes)."""
    rngs = jax.random.split(rng, max(1, len(adversaries)))
    return {a.group: a.head().init(r, jnp.zeros(jnp.shape(outputs[a.reads]), jnp.float32))["params"]
            for a, r in zip(adversaries, rngs, strict=False)}


def encoder_terms(adversaries: Sequence[Adversary], params: Mapping, outputs: Mapping,
                  batch: Mapping, progress: jax.Array) -> tuple[dict, dict]:
    """(weighted terms for the encoder's loss, metrics); `progress` in [0, 1] drives the GRL schedule."""
    lam = losses.dann_lambda(progress)
    terms, metrics = {}, {}
    for a in adversaries:
        features = outputs[a.reads]
        if a.formulation == "grl":
            features = losses.gradient_reversal(features, lam)
            metrics["dann_lambda"] = lam
        labels, mask = a.labels(batch)
        terms[f"{a.name}_adversary"] = a.weight * encoder_loss(
            a.formulation, a.logits(params, features), labels, mask
        )
    return terms, metrics


def adversary_loss(adversaries: Sequence[Adversary], params: Mapping, outputs: Mapping,
                   batch: Mapping) -> tuple[jax.Array, dict]:
    """Sum of every adversary's plain cross entropy on frozen features: each head's gradient is its own
    term's, since heads share no parameters and the features are stop-gradient."""
    total = jnp.zeros((), jnp.float32)
    metrics = {}
    for a in adversaries:
        logits = a.logits(params, jax.lax.stop_gradient(outputs[a.reads]))
        labels, mask = a.labels(batch)
        ce = losses.softmax_cross_entropy(logits, labels, mask=mask)
        total = total + ce
        metrics[f"{a.name}_ce"] = ce
        metrics[f"{a.name}_accuracy"] = L.accuracy(logits, labels, mask)
    return total, metrics


def player(adversaries: Sequence[Adversary], forward, optimizer: optax.GradientTransformation,
           steps: int = 1) -> Player:
    """The player that trains every adversary head. `forward(params, model_state, images, rng) ->
    (outputs, new_model_state)` is the recipe's training-mode pass; its batch statistics are dropped,
    so only the model player's pass moves them."""

    def loss_fn(params, model_state, batch, rng, step):
        del step
        outputs, _ = forward(params, model_state, batch["image"], rng)
        loss, metrics = adversary_loss(adversaries, params, outputs, batch)
        return loss, (model_state, metrics)

    return Player("adversary", loss_fn, optimizer, owns=tuple(a.group for a in adversaries),
                  repeats=int(steps), updates_model_state=False)


def settings(run_config) -> ml_collections.ConfigDict:
    """The run's `config.adversary` block, or its defaults for a config made without one."""
    return run_config.get("adversary") or config_defaults.adversary()


def make_adversary_optimizer(run_config) -> optax.GradientTransformation:
    """The main optimizer's settings, at `config.adversary.learning_rate` where that is set."""
    opt = ml_collections.ConfigDict(run_config.optimizer.to_dict())
    lr = float(settings(run_config).get("learning_rate", 0.0))
    if lr > 0:
        opt.learning_rate = lr
    return make_optimizer(opt, run_config.train.num_steps)


def from_config(run_config, data_spec: DataSpec, reads: str = "features") -> tuple[Adversary, ...]:
    """The identity and pose adversaries `config.adversary` switches on, reading `outputs[reads]`."""
    c = settings(run_config)
    check_formulation(c.formulation)
    found: list[Adversary] = []
    if float(c.identity) > 0:
        if data_spec.num_train_subjects < 2:
            raise ConfigError(
                "config.adversary.identity > 0 needs subject ids for at least 2 training subjects; this "
                f"dataset's training fold has {data_spec.num_train_subjects}. Set it to 0."
            )
        train_subjects = data_spec.train_subjects
        found.append(Adversary(
            "identity", reads, data_spec.num_train_subjects,
            labels=lambda batch: L.train_subject_labels(train_subjects, batch["subject"]),
            weight=float(c.identity), formulation=c.formulation, hidden=c.get("hidden"),
            batch_keys=("subject",), standardize=c.get("standardize", True),
        ))
    if float(c.pose) > 0:
        if "yaw" not in data_spec.pose_keys:
            raise ConfigError(
                "config.adversary.pose > 0 needs yaw labels, and this dataset has none (pose keys: "
                f"{tuple(data_spec.pose_keys) or 'none'}). Set it to 0 or use a dataset with yaw."
            )
        edges = tuple(float(e) for e in c.pose_bin_edges)
        found.append(Adversary(
            "pose", reads, L.num_yaw_bins(edges),
            labels=lambda batch: (L.yaw_bin_labels(batch["yaw"], edges), None),
            weight=float(c.pose), formulation=c.formulation, hidden=c.get("hidden"),
            batch_keys=("yaw",), standardize=c.get("standardize", True),
        ))
    return tuple(found)
