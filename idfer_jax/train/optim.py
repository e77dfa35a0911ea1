"""Optimizers from config, shared by every recipe.

Weight decay applies to convolution and dense kernels only: decaying norm scales, biases or learned loss
weights (uncertainty weighting's log-variances) changes what those parameters mean, so they are masked out.

Fine-tuning: parameters are grouped by the backbone stage their path names (``stage3`` of a pretrained
encoder, ``stage3_block1`` or ``stem_conv`` of a ResNet, at any depth, so every recipe's streams, trunks
and branches are found). Stages up to ``config.model.freeze_until`` get no update at all (not even weight
decay), the other backbone stages learn at ``backbone_lr_multiplier`` x the rate, everything else (heads,
fusion, decoders, loss weights) at 1x.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import optax

from idfer_jax.configuration import ConfigError
from idfer_jax.losses.combinators import is_weighting_param

OPTIMIZERS = ("adamw", "adam", "sgd")  # config.optimizer.name
SCHEDULES = ("cosine", "constant", "milestones")  # config.optimizer.schedule
PARAM_GROUPS = ("head", "backbone", "frozen")
_STAGE_NAME = re.compile(r"stage(\d+)(?:_block\d+)?|stem_(?:conv|norm)")


def backbone_stage(path) -> int | None:
    """The 1-based backbone stage a parameter path lies in (the stem counts as stage 1), or None."""
    for entry in path:
        name = str(getattr(entry, "key", entry))
        match = _STAGE_NAME.fullmatch(name)
        if match:
            return int(match.group(1) or 1)
    return None


def param_groups(params: Any, freeze_until: int = 0) -> Any:
    """A tree like ``params`` of 'frozen' | 'backbone' | 'head' (see the module docstring);
    ``freeze_until=-1`` freezes every backbone stage (the linear probe)."""
    def group(path, _):
        stage = backbone_stage(path)
        if stage is None:
            return "head"
        return "frozen" if freeze_until < 0 or stage <= freeze_until else "backbone"

    return jax.tree_util.tree_map_with_path(group, params)


def check_milestones(milestones) -> tuple[float, ...]:
    """config.optimizer.milestones: fractions of the run in (0, 1)."""
    try:
        fractions = tuple(float(f) for f in milestones)
    except (TypeError, ValueError):
        fractions = None
    if fractions is None or any(not 0.0 < f < 1.0 for f in fractions):
        raise ConfigError(f"config.optimizer.milestones must be fractions of the run in (0, 1), e.g. "
                          f"(0.3, 0.8); got {milestones!r}.")
    return fractions


def decay_mask(params: Any) -> Any:
    """True for parameters that get weight decay: kernels (ndim > 1) that are not loss weights."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: leaf.ndim > 1 and not is_weighting_param(path), params
    )


def learning_rate_schedule(config, total_steps: int) -> optax.Schedule:
    lr = float(config.learning_rate)
    warmup = int(config.get("warmup_steps", 0))
    kind = config.get("schedule", "cosine")
    if kind == "constant":
        main = optax.constant_schedule(lr)
    elif kind == "cosine":
        main = optax.cosine_decay_schedule(lr, max(1, total_steps - warmup))
    elif kind == "milestones":
        # Step decay at fractions of the run, e.g. FERSNet's code: x0.1 at epochs 150 and 400 of 500
        # -> milestones (0.3, 0.8). Fractions, so the schedule keeps its shape at any step budget.
        fractions = check_milestones(config.get("milestones", ()))
        factor = float(config.get("milestone_factor", 0.1))
        boundaries = {max(1, round(f * total_steps) - warmup): factor for f in fractions}
        main = optax.piecewise_constant_schedule(lr, boundaries)
    else:
        raise ConfigError(f"Unknown config.optimizer.schedule {kind!r}; use one of {', '.join(SCHEDULES)}.")
    if warmup <= 0:
        return main
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), main], boundaries=[warmup]
    )


def make_optimizer(config, total_steps: int, freeze_until: int | None = None) -> optax.GradientTransformation:
    """`config` is an optimizer ConfigDict: name, learning_rate, weight_decay, schedule, ...,
    backbone_lr_multiplier. `freeze_until` is `config.model.freeze_until` for the optimizer of a model
    built on a backbone (see the module docstring); None (discriminators, adversaries, FERSNet's own
    network) trains every parameter alike and ignores `backbone_lr_multiplier`."""
    schedule = learning_rate_schedule(config, total_steps)
    multiplier = float(config.get("backbone_lr_multiplier", 1.0)) if freeze_until is not None else 1.0
    freeze_until = freeze_until or 0
    update = _update_rule(config, schedule)
    if freeze_until == 0 and multiplier == 1.0:
        opt = update
    else:
        opt = optax.multi_transform(
            {
                "head": update,
                "backbone": _update_rule(config, lambda step: multiplier * schedule(step)),
                "frozen": optax.set_to_zero(),
            },
            lambda params: param_groups(params, freeze_until),
        )
    clip = float(config.get("grad_clip", 0.0))
    return optax.chain(optax.clip_by_global_norm(clip), opt) if clip > 0 else opt


def _update_rule(config, schedule: optax.Schedule) -> optax.GradientTransformation:
    name = config.name
    wd = float(config.get("weight_decay", 0.0))
    if name == "adamw":
        opt = optax.adamw(schedule, b1=config.get("b1", 0.9), b2=config.get("b2", 0.999),
                          weight_decay=wd, mask=decay_mask)
    elif name == "adam":
        # Classic L2 (added to the gradient, not decoupled), as several FER codebases do.
        opt = optax.chain(optax.add_decayed_weights(wd, mask=decay_mask),
                          optax.adam(schedule, b1=config.get("b1", 0.9), b2=config.get("b2", 0.999)))
    elif name == "sgd":
        opt = optax.chain(optax.add_decayed_weights(wd, mask=decay_mask),
                          optax.sgd(schedule, momentum=config.get("momentum", 0.9), nesterov=True))
    else:
        raise ConfigError(f"Unknown config.optimizer.name {name!r}; use one of {', '.join(OPTIMIZERS)}.")
    return opt
