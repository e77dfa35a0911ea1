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
- `ridge` [choice; the closed-form adversary of issue 19]: no trained head and no adversary player. In
  every step, inside the jitted loss, kernel ridge regression from the batch-standardized features to
  the centred one-hot labels is solved exactly on the batch, and the encoder term is its
  leave-one-out R^2 (clipped at 0; the largest over `config.adversary.ridge_alphas`). It is the
  in-batch version of the linear identity probe of `idfer evaluate`: each image's label is predicted
  from the *other* images of the batch, so with P x K batches (`config.data.subjects_per_batch`) it
  asks "is this the same person as those K - 1 images?". Being a closed-form optimum on the current
  features it cannot lag behind the encoder, which is what the trained heads did
  (docs/results/adversarial.md). `config.adversary.ridge_kernel='rbf'` makes it non-linear.

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

FORMULATIONS = ("uniform", "grl", "negated_ce", "ridge")
CLOSED_FORM = ("ridge",)
RIDGE_KERNELS = ("linear", "rbf")
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
    depth: int = 1  # hidden ReLU layers of width `hidden`: 0 = linear, 1 = the default, 2+ = more capacity

    @nn.compact
    def __call__(self, features: jax.Array, *, train: bool = False,
                 weights: jax.Array | None = None) -> jax.Array:
        """(N, D) features -> (N, num_classes) float32 logits; `weights` (N,) 0/1 leave rows (an
        unfilled replay slot) out of the standardization statistics."""
        x = features.astype(jnp.float32)
        if self.standardize:
            x = standardize_over_batch(x, weights)
        hidden = self.hidden if self.depth > 0 else None
        for i in range(1, self.depth):  # layers beyond the classifier's own hidden layer
            x = nn.relu(nn.Dense(int(self.hidden), name=f"hidden_{i}")(x))
        return ClassifierHead(num_classes=self.num_classes, hidden=hidden, name="classifier")(
            x, train=False)


def standardize_over_batch(x: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """(N, D) features z-scored per dimension over the batch (rows of weight 0 left out of the
    statistics), so that no adversary sees a feature's shift or scale."""
    if weights is None:
        mean = jnp.mean(x, axis=0, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(jnp.var(x, axis=0, keepdims=True) + 1e-5)
    w = weights[:, None] / jnp.maximum(jnp.sum(weights), 1.0)
    mean = jnp.sum(w * x, axis=0, keepdims=True)
    var = jnp.sum(w * (x - mean) ** 2, axis=0, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + 1e-5)


def ridge_leave_one_out(features: jax.Array, labels: jax.Array, num_classes: int,
                        mask: jax.Array | None = None, *, alphas: Sequence[float] = (1.0,),
                        kernel: str = "linear") -> tuple[jax.Array, jax.Array]:
    """The closed-form adversary: leave-one-out fit of kernel ridge regression on one batch.

    Args:
      features: (N, D) float; standardized over the batch (weighted by `mask`) inside, so that shifting
        or scaling them changes nothing.
      labels: (N,) int in [0, num_classes); regressed as one-hot targets, with an intercept.
      mask: (N,) 0/1 float or None; rows with 0 take no part (they are zeroed and predict nothing).
      alphas: ridge penalties, relative to the mean of the kernel's diagonal (1 for the linear kernel
        on standardized features); the best (largest R^2) is kept, as a probe that picks its penalty.
      kernel: 'linear' (K = X X^T / D) or 'rbf' (exp(-|x_i - x_j|^2 / 2D), non-linear).

    Returns:
      (R^2, predictions): R^2 = 1 - sum |e_i|^2 / sum |y_i - mean(y)|^2 of the leave-one-out residuals
      e_i, a float32 scalar <= 1 (0 = no better than the batch mean, below 0 = worse; 0 where the labels
      do not vary); predictions (N, C) are the leave-one-out predictions of the best penalty (argmax =
      the predicted class).

    Kernel ridge in its dual form: with A = K + lambda I, the leave-one-out residual of example i is
    (A^-1 Y)_i / (A^-1)_ii exactly (Rifkin & Lippert 2007), so one Cholesky factorisation of an N x N
    matrix per penalty gives every held-out prediction; gradients flow through the solve. The intercept
    is a constant added to the kernel (nearly unpenalised), so it too is fitted without example i.
    [choice] The features are standardized on the batch once, example i included.
    """
    if kernel not in RIDGE_KERNELS:
        raise ConfigError(f"Unknown ridge kernel {kernel!r}; use one of {RIDGE_KERNELS}.")
    dtype = jnp.promote_types(features.dtype, jnp.float32)  # float64 where x64 is on (gradient checks)
    x = features.astype(dtype)
    n, d = x.shape
    w = jnp.ones((n,), dtype) if mask is None else mask.astype(dtype)
    x = standardize_over_batch(x, w) * w[:, None]
    # Targets are not centred: an intercept fitted with the rest does it, leaving example i out. (Centring
    # on the batch makes y_i minus the sum of the others, which a fit with D >= N reads off the features'
    # own batch centring: R^2 ~ 0.15 on pure noise at N = 64, D = 512.)
    y = jax.nn.one_hot(labels, num_classes, dtype=dtype) * w[:, None]
    gram = x @ x.T / d
    if kernel == "rbf":
        sq = jnp.diagonal(gram)
        gram = jnp.exp(-0.5 * jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0))
        gram = gram * (w[:, None] * w[None, :])
    count = jnp.maximum(jnp.sum(w), 1.0)
    scale = jnp.sum(jnp.diagonal(gram)) / count
    # The intercept: a constant feature of large weight, i.e. an almost unpenalised bias in the dual.
    gram = gram + INTERCEPT_WEIGHT * scale * (w[:, None] * w[None, :])
    centred = (y - jnp.sum(y, axis=0, keepdims=True) / count) * w[:, None]
    total = jnp.sum(centred**2)
    fits = []
    for alpha in alphas:
        a = gram + (float(alpha) * scale + 1e-6) * jnp.eye(n, dtype=dtype)
        chol = jax.scipy.linalg.cho_factor(a, lower=True)
        inverse = jax.scipy.linalg.cho_solve(chol, jnp.eye(n, dtype=dtype))
        residual = (inverse @ y) / jnp.diagonal(inverse)[:, None] * w[:, None]
        fits.append((_r2(jnp.sum(residual**2), total), y - residual))
    return _best_fit(fits)


INTERCEPT_WEIGHT = 100.0  # [choice] its penalty is alpha / 100 of a feature's


def _r2(residual_ss: jax.Array, total_ss: jax.Array) -> jax.Array:
    """1 - residual / total sum of squares; 0 where the targets do not vary (one subject or one yaw
    bin in the batch, every row masked): there is nothing to predict, so nothing leaks."""
    return jnp.where(total_ss > 1e-6, 1.0 - residual_ss / jnp.maximum(total_ss, 1e-6), 0.0)


def _best_fit(fits: Sequence[tuple[jax.Array, jax.Array]]) -> tuple[jax.Array, jax.Array]:
    """The (R^2, predictions) of the largest R^2 among one fit per ridge penalty (traced: no branch)."""
    r2s = jnp.stack([r2 for r2, _ in fits])
    best = jnp.argmax(r2s)
    return r2s[best], jnp.stack([pred for _, pred in fits])[best]


def ridge_on_buffer(features: jax.Array, labels: jax.Array, num_classes: int, buffer: Mapping,
                    mask: jax.Array | None = None, *,
                    alphas: Sequence[float] = (1.0,)) -> tuple[jax.Array, jax.Array]:
    """The closed-form adversary with a memory: linear ridge regression fitted exactly on the replay
    `buffer` (the features and labels of the last L batches, `init_replay`), scored on this batch.

    The in-batch fit (`ridge_leave_one_out`) sees K images of each subject; a probe trained on a whole
    test fold sees dozens, and finds identity directions too weak for one batch. Here the fit uses L
    batches (e.g. 16 x 64 = 1024 rows for D = 256), refitted from scratch every step, so it lags the
    encoder by at most L steps and never by an optimizer's pace. The buffer is stop-gradient (features
    of earlier steps); the gradient reaches the encoder through this batch's features, standardized over
    this batch (so shrinking the features cannot hide them from the fit). Of `alphas` (relative to the
    mean of X^T X / N's diagonal, 1 on standardized features) the one that predicts this batch best is
    kept: the batch is held out from the fit, so this is a fair choice for the adversary.

    Args: features (N, D); labels (N,) int; buffer {'features' (M, D), 'labels' (M,), 'weights' (M,)};
    mask (N,) 0/1 or None. Returns (R^2 on this batch, a float32 scalar <= 1; predictions (N, C)).
    An empty buffer (weights all 0, the first steps) predicts nothing: R^2 <= 0.
    """
    dtype = jnp.promote_types(features.dtype, jnp.float32)
    n = features.shape[0]
    w = jnp.ones((n,), dtype) if mask is None else mask.astype(dtype)
    x = standardize_over_batch(features.astype(dtype), w) * w[:, None]
    y = jax.nn.one_hot(labels, num_classes, dtype=dtype) * w[:, None]
    y = (y - jnp.sum(y, axis=0, keepdims=True) / jnp.maximum(jnp.sum(w), 1.0)) * w[:, None]
    wb = jax.lax.stop_gradient(buffer["weights"]).astype(dtype)
    count = jnp.maximum(jnp.sum(wb), 1.0)
    xb = standardize_over_batch(jax.lax.stop_gradient(buffer["features"]).astype(dtype), wb) * wb[:, None]
    yb = jax.nn.one_hot(buffer["labels"], num_classes, dtype=dtype) * wb[:, None]
    yb = (yb - jnp.sum(yb, axis=0, keepdims=True) / count) * wb[:, None]
    d = x.shape[1]
    gram = xb.T @ xb / count
    cross = xb.T @ yb / count
    scale = jnp.trace(gram) / d
    total = jnp.sum(y**2)
    fits = []
    for alpha in alphas:
        a = gram + (float(alpha) * scale + 1e-6) * jnp.eye(d, dtype=dtype)
        coef = jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(a, lower=True), cross)
        pred = (x @ coef) * w[:, None]
        fits.append((_r2(jnp.sum((y - pred) ** 2), total), pred))
    return _best_fit(fits)


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
    depth: int = 1  # hidden layers of the trained head (AdversaryHead)
    ridge_alphas: tuple[float, ...] = (0.1, 1.0, 10.0)  # `ridge` formulation: see ridge_leave_one_out
    ridge_kernel: str = "linear"

    def __post_init__(self):
        check_formulation(self.formulation)

    @property
    def group(self) -> str:
        return GROUP_PREFIX + self.name

    @property
    def closed_form(self) -> bool:
        """Solved on each batch inside the encoder's loss: no head, no optimizer, no adversary player."""
        return self.formulation in CLOSED_FORM

    def head(self) -> AdversaryHead:
        return AdversaryHead(num_classes=self.num_classes, hidden=self.hidden, standardize=self.standardize,
                             depth=self.depth)

    def ridge_fit(self, features: jax.Array, batch: Mapping) -> tuple[jax.Array, jax.Array]:
        """(leave-one-out R^2, in-batch leave-one-out accuracy) of the closed-form adversary."""
        labels, mask = self.labels(batch)
        r2, predictions = ridge_leave_one_out(features, labels, self.num_classes, mask,
                                              alphas=self.ridge_alphas, kernel=self.ridge_kernel)
        return r2, L.accuracy(predictions, labels, mask)

    def logits(self, params: Mapping, features: jax.Array, weights: jax.Array | None = None) -> jax.Array:
        return self.head().apply({"params": params[self.group]}, features, train=False, weights=weights)


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
    trained = [a for a in adversaries if not a.closed_form]
    rngs = jax.random.split(rng, max(1, len(trained)))
    return {a.group: a.head().init(r, jnp.zeros(jnp.shape(outputs[a.reads]), jnp.float32))["params"]
            for a, r in zip(trained, rngs, strict=False)}


def encoder_terms(adversaries: Sequence[Adversary], params: Mapping, outputs: Mapping,
                  batch: Mapping, progress: jax.Array, replay: Mapping | None = None) -> tuple[dict, dict]:
    """(weighted terms for the encoder's loss, metrics); `progress` in [0, 1] drives the GRL schedule.
    With a `replay` buffer a closed-form adversary is fitted on the buffer (`ridge_on_buffer`)."""
    lam = losses.dann_lambda(progress)
    terms, metrics = {}, {}
    for a in adversaries:
        features = outputs[a.reads]
        if a.closed_form and replay is not None:
            labels, mask = a.labels(batch)
            r2, predictions = ridge_on_buffer(features, labels, a.num_classes, replay[a.name], mask,
                                              alphas=a.ridge_alphas)
            terms[f"{a.name}_adversary"] = a.weight * jnp.maximum(r2, 0.0)
            metrics[f"{a.name}_ridge_r2"] = r2
            metrics[f"{a.name}_ridge_accuracy"] = L.accuracy(predictions, labels, mask)
            continue
        if a.closed_form:
            r2, accuracy = a.ridge_fit(features, batch)
            terms[f"{a.name}_adversary"] = a.weight * jnp.maximum(r2, 0.0)
            metrics[f"{a.name}_ridge_r2"] = r2
            metrics[f"{a.name}_ridge_accuracy"] = accuracy
            continue
        if a.formulation == "grl":
            features = losses.gradient_reversal(features, lam)
            metrics["dann_lambda"] = lam
        labels, mask = a.labels(batch)
        terms[f"{a.name}_adversary"] = a.weight * encoder_loss(
            a.formulation, a.logits(params, features), labels, mask
        )
    return terms, metrics


def adversary_loss(adversaries: Sequence[Adversary], params: Mapping, outputs: Mapping,
                   batch: Mapping, replay: Mapping | None = None) -> tuple[jax.Array, dict]:
    """Sum of every adversary's plain cross entropy on frozen features: each head's gradient is its own
    term's, since heads share no parameters and the features are stop-gradient. With a `replay` buffer
    (`init_replay`), each head trains on the batch and the buffer's recent batches together."""
    total = jnp.zeros((), jnp.float32)
    metrics = {}
    for a in adversaries:
        if a.closed_form:
            continue
        features = jax.lax.stop_gradient(outputs[a.reads])
        labels, mask = a.labels(batch)
        weights = jnp.ones(labels.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
        if replay is not None:
            past = replay[a.name]
            features = jnp.concatenate([features.astype(jnp.float32), past["features"]])
            labels = jnp.concatenate([labels.astype(jnp.int32), past["labels"]])
            weights = jnp.concatenate([weights, past["weights"]])
        logits = a.logits(params, features, weights if replay is not None else None)
        ce = losses.softmax_cross_entropy(logits, labels, mask=weights)
        total = total + ce
        metrics[f"{a.name}_ce"] = ce
        metrics[f"{a.name}_accuracy"] = L.accuracy(logits, labels, weights)
    return total, metrics


# --- replay: the trained adversaries also learn from the features of the last few batches ---------
REPLAY_COLLECTION = "adversary_replay"  # a model_state collection: checkpointed, so resume stays exact


def init_replay(adversaries: Sequence[Adversary], outputs: Mapping, batch_size: int, length: int) -> dict:
    """Empty buffers of `length` batches of `batch_size` rows for each adversary: features
    (L * B, D) float32, labels (L * B,) int32 and weights (L * B,) float32 (0 = slot not filled yet)."""
    rows = int(length) * int(batch_size)
    return {a.name: {"features": jnp.zeros((rows, jnp.shape(outputs[a.reads])[-1]), jnp.float32),
                     "labels": jnp.zeros((rows,), jnp.int32), "weights": jnp.zeros((rows,), jnp.float32)}
            for a in adversaries}


def push_replay(buffer: Mapping, adversaries: Sequence[Adversary], outputs: Mapping, batch: Mapping,
                step: jax.Array) -> dict:
    """`buffer` with this batch's features and labels in slot `step % length` (oldest out first)."""
    out = {}
    for a in adversaries:
        past = buffer[a.name]
        labels, mask = a.labels(batch)
        rows = labels.shape[0]
        start = (step % (past["labels"].shape[0] // rows)) * rows
        weights = jnp.ones((rows,), jnp.float32) if mask is None else mask.astype(jnp.float32)
        new = {"features": jax.lax.stop_gradient(outputs[a.reads]).astype(jnp.float32),
               "labels": labels.astype(jnp.int32), "weights": weights}
        out[a.name] = {k: jax.lax.dynamic_update_slice_in_dim(past[k], new[k], start, axis=0)
                       for k in past}
    return out


def player(adversaries: Sequence[Adversary], forward, optimizer: optax.GradientTransformation,
           steps: int = 1, replay: bool = False) -> Player:
    """The player that trains every adversary head. `forward(params, model_state, images, rng) ->
    (outputs, new_model_state)` is the recipe's training-mode pass; its batch statistics are dropped,
    so only the model player's pass moves them. With `replay`, the features are computed once per step
    (`prepare`) and each of the `steps` sub-updates trains on them and the replay buffer of
    `model_state[REPLAY_COLLECTION]`, which the model player fills."""
    if replay:
        def prepare(params, model_state, batch, rng, step):
            del step
            outputs, _ = forward(params, model_state, batch["image"], rng)
            return {f"_adversary_input/{a.reads}": outputs[a.reads] for a in adversaries}

        def replay_loss_fn(params, model_state, batch, rng, step):
            del rng, step
            outputs = {a.reads: batch[f"_adversary_input/{a.reads}"] for a in adversaries}
            loss, metrics = adversary_loss(adversaries, params, outputs, batch,
                                           replay=model_state[REPLAY_COLLECTION])
            return loss, (model_state, metrics)

        return Player("adversary", replay_loss_fn, optimizer, owns=tuple(a.group for a in adversaries),
                      repeats=int(steps), updates_model_state=False, prepare=prepare)

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


def options(run_config) -> dict:
    """The `Adversary` fields every adversary of a run shares, from `config.adversary`."""
    c = settings(run_config)
    return {
        "formulation": c.formulation,
        "hidden": c.get("hidden"),
        "standardize": c.get("standardize", True),
        "depth": int(c.get("depth", 1)),
        "ridge_alphas": tuple(float(a) for a in c.get("ridge_alphas", (0.1, 1.0, 10.0))),
        "ridge_kernel": c.get("ridge_kernel", "linear"),
    }


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
            weight=float(c.identity), batch_keys=("subject",), **options(run_config),
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
            weight=float(c.pose), batch_keys=("yaw",), **options(run_config),
        ))
    return tuple(found)
