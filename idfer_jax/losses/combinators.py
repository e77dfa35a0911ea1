"""Loss combinators: turn named scalar losses into one total, possibly with learned weights.

A combinator has two methods::

    weight_params = combinator.init()                    # {} or {loss name: float32 scalar}
    total, metrics = combinator(weight_params, losses)   # losses: {name: scalar}

``metrics`` holds ``'loss/<name>'`` (the raw loss) and ``'weight/<name>'`` (the effective weight,
i.e. d total / d loss) for every term; the uncertainty policies add ``'log_var/<name>'``.

Where learned weights live, and weight decay
---------------------------------------------
Learned weighting parameters (log-variances) are trained with the model's optimizer, so a method
stores them in its parameter pytree under the top-level key ``WEIGHTING_PARAM_KEY``
(``'loss_weights'``)::

    params = {'backbone': ..., 'head': ..., 'loss_weights': combinator.init()}

They must NOT be weight-decayed: decay pulls every log-variance to 0 (weight 0.5) whatever the
losses say. ``is_weighting_param(path)`` tests one key path; ``train.optim.decay_mask`` uses it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

__all__ = [
    "POLICIES",
    "WEIGHTING_PARAM_KEY",
    "Combinator",
    "ConstrainedUncertaintyWeighting",
    "LossRatioWeighting",
    "UncertaintyWeighting",
    "WeightedSum",
    "is_weighting_param",
    "make_combinator",
]

WEIGHTING_PARAM_KEY = "loss_weights"

Metrics = dict[str, jax.Array]


@runtime_checkable
class Combinator(Protocol):
    """Combines named scalar losses into ``(total, metrics)``; may own learnable weights."""

    def init(self) -> dict[str, jax.Array]:
        """Initial weighting params: a plain dict of float32 arrays ({} if nothing is learned)."""
        ...

    def __call__(
        self, weight_params: Mapping[str, jax.Array], losses: Mapping[str, jax.Array]
    ) -> tuple[jax.Array, Metrics]:
        """Returns the total loss and ``{'loss/<name>': ..., 'weight/<name>': ...}`` metrics."""
        ...


# --- helpers ------------------------------------------------------------------------------------


def _key_name(entry: Any) -> Any:
    """The plain key of one jax key-path entry (dict key, attribute name or sequence index)."""
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return entry


def is_weighting_param(path: Sequence[Any]) -> bool:
    """True if a parameter's key path (jax key-path entries or strings) is under 'loss_weights'."""
    return any(_key_name(entry) == WEIGHTING_PARAM_KEY for entry in path)


def _check_names(combinator: str, expected: Sequence[str], losses: Mapping[str, Any]) -> None:
    """Fails loudly when the losses and the combinator's names disagree: a silent mismatch would
    drop a loss from training or leave a learned weight untrained."""
    missing = [n for n in expected if n not in losses]
    extra = [n for n in losses if n not in expected]
    if missing or extra:
        raise ValueError(
            f"{combinator} was built for losses {list(expected)} but got {sorted(losses)}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unexpected {extra}" if extra else "")
            + "."
        )


def _as_f32(x: jax.Array) -> jax.Array:
    return jnp.asarray(x, dtype=jnp.float32)


def _to_tuple(obj: Any, field: str) -> None:
    """Frozen dataclasses: store sequences as tuples so the combinator is hashable (jit static)."""
    value = getattr(obj, field)
    if isinstance(value, str):
        value = (value,)
    object.__setattr__(obj, field, tuple(value))


# --- combinators --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WeightedSum:
    """``total = sum_i w_i * L_i`` with fixed weights; a loss without a weight gets 1.0.

    A weight named after a loss that is not passed is an error (most likely a typo in a config).
    """

    weights: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        # A private copy, so a config dict edited later cannot change the weights; hashing by
        # content keeps the combinator usable as a jit static argument.
        object.__setattr__(self, "weights", dict(self.weights))

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.weights.items())))

    def init(self) -> dict[str, jax.Array]:
        """No learned parameters."""
        return {}

    def __call__(
        self, weight_params: Mapping[str, jax.Array], losses: Mapping[str, jax.Array]
    ) -> tuple[jax.Array, Metrics]:
        """Weighted sum of ``losses``; ``weight_params`` is ignored."""
        del weight_params
        unknown = sorted(set(self.weights) - set(losses))
        if unknown:
            raise ValueError(
                f"WeightedSum has weights for {unknown}, which are not among the losses "
                f"{sorted(losses)}."
            )
        total = jnp.zeros((), jnp.float32)
        metrics: Metrics = {}
        for name, loss in losses.items():
            w = _as_f32(self.weights.get(name, 1.0))
            total = total + w * _as_f32(loss)
            metrics[f"loss/{name}"] = _as_f32(loss)
            metrics[f"weight/{name}"] = w
        return total, metrics




@dataclasses.dataclass(frozen=True)
class UncertaintyWeighting:
    """Learned homoscedastic-uncertainty weights (Kendall, Gal & Cipolla, CVPR 2018).

    With one learned ``s_i = log sigma_i^2`` per loss::

        total = sum_i 0.5 * exp(-s_i) * L_i + 0.5 * s_i

    (the regression form of the paper, used for every term as is common practice). For a fixed L_i
    the optimum is ``s_i = log L_i``, i.e. effective weight ``0.5 / L_i``; the ``0.5 * s_i`` term
    stops the weights collapsing to 0. The total can be negative once losses are small; that is
    expected.

    Params: ``{name: float32 scalar s_i}``, to be stored under ``params['loss_weights']`` and
    excluded from weight decay (see the module docstring and ``train.optim.decay_mask``).
    """

    names: Sequence[str]
    init_log_var: float = 0.0

    param_prefix: ClassVar[str] = WEIGHTING_PARAM_KEY

    def __post_init__(self) -> None:
        _to_tuple(self, "names")

    def init(self) -> dict[str, jax.Array]:
        """One log-variance per loss, all ``init_log_var`` (0 means every weight starts at 0.5)."""
        return {name: jnp.asarray(self.init_log_var, jnp.float32) for name in self.names}

    def _weights(self, log_vars: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        return {name: 0.5 * jnp.exp(-_as_f32(log_vars[name])) for name in self.names}

    def __call__(
        self, weight_params: Mapping[str, jax.Array], losses: Mapping[str, jax.Array]
    ) -> tuple[jax.Array, Metrics]:
        """Uncertainty-weighted total; gradients reach both the losses and the log-variances."""
        _check_names(type(self).__name__, self.names, losses)
        _check_names(f"{type(self).__name__} params", self.names, weight_params)
        weights = self._weights(weight_params)
        total = jnp.zeros((), jnp.float32)
        metrics: Metrics = {}
        for name in self.names:
            s = _as_f32(weight_params[name])
            loss = _as_f32(losses[name])
            total = total + weights[name] * loss + 0.5 * s
            metrics[f"loss/{name}"] = loss
            metrics[f"weight/{name}"] = weights[name]
            metrics[f"log_var/{name}"] = s
        return total, metrics


@dataclasses.dataclass(frozen=True)
class ConstrainedUncertaintyWeighting(UncertaintyWeighting):
    """Uncertainty weighting whose effective weights never fall below ``min_weight``.

    ``weight_i = max(0.5 * exp(-s_i), min_weight)`` — a hard floor, so the weight is exactly the
    Kendall weight above the floor. Below it the loss gives s_i no gradient and the ``0.5 * s_i``
    term pulls s_i back to the floor, so a term the model finds hard (large L_i, Kendall weight
    0.5 / L_i) keeps at least ``min_weight`` instead of being switched off (the SSA-Net-style
    alternative).
    """

    min_weight: float = 0.1

    def _weights(self, log_vars: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        floor = jnp.float32(self.min_weight)
        return {name: jnp.maximum(w, floor) for name, w in super()._weights(log_vars).items()}


@dataclasses.dataclass(frozen=True)
class LossRatioWeighting:
    """IDEnNet-style "self-constrained" weighting, policy ``loss_ratio`` (the form is a [choice]).

    ``total = L_p + sum_s stop_gradient(L_p / (L_p + L_s)) * L_s``: the primary loss has weight 1;
    a secondary loss is down-weighted while it is large relative to the primary one (e.g. identity
    classification early in training), so it cannot swamp the primary task. The ratio is a
    constant for differentiation: gradients reach L_s only through L_s itself.
    """

    primary: str
    secondary: Sequence[str]

    def __post_init__(self) -> None:
        _to_tuple(self, "secondary")
        if self.primary in self.secondary:
            raise ValueError(f"Primary loss {self.primary!r} is also listed as secondary.")

    def init(self) -> dict[str, jax.Array]:
        """No learned parameters."""
        return {}

    def __call__(
        self, weight_params: Mapping[str, jax.Array], losses: Mapping[str, jax.Array]
    ) -> tuple[jax.Array, Metrics]:
        """Loss-ratio weighted total; ``weight_params`` is ignored."""
        del weight_params
        _check_names(type(self).__name__, (self.primary, *self.secondary), losses)
        primary = _as_f32(losses[self.primary])
        p = jax.lax.stop_gradient(primary)
        total = primary
        metrics: Metrics = {
            f"loss/{self.primary}": primary,
            f"weight/{self.primary}": jnp.ones((), jnp.float32),
        }
        for name in self.secondary:
            loss = _as_f32(losses[name])
            denom = p + jax.lax.stop_gradient(loss)
            # Both losses zero: nothing to balance, so split evenly instead of dividing 0 by 0.
            w = jnp.where(denom > 0, p / jnp.where(denom > 0, denom, 1.0), 0.5)
            total = total + w * loss
            metrics[f"loss/{name}"] = loss
            metrics[f"weight/{name}"] = w
        return total, metrics


POLICIES = ("constant", "weighted_sum", "uncertainty", "constrained", "loss_ratio")


def make_combinator(policy: str, names: Sequence[str], **kwargs: Any) -> Combinator:
    """Builds the combinator for ``policy`` over the losses ``names``.

    Policies and their keyword arguments:
      - 'constant': every weight 1.
      - 'weighted_sum': ``weights={name: w}`` (unlisted names get 1.0).
      - 'uncertainty': ``init_log_var=0.0``.
      - 'constrained': ``init_log_var=0.0, min_weight=0.1``.
      - 'loss_ratio': ``primary=names[0]``; every other name is secondary.
    """
    names = tuple(names)

    def reject_unknown(allowed: Sequence[str]) -> None:
        unknown = sorted(set(kwargs) - set(allowed))
        if unknown:
            raise ValueError(
                f"Policy {policy!r} takes no argument(s) {unknown}; it takes {list(allowed)}."
            )

    if policy == "constant":
        reject_unknown(())
        return WeightedSum()  # every weight 1
    if policy == "weighted_sum":
        reject_unknown(("weights",))
        weights = dict(kwargs.get("weights", {}))
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise ValueError(
                f"Weights given for {unknown}, which are not among the losses {names}."
            )
        return WeightedSum(weights)
    if policy == "uncertainty":
        reject_unknown(("init_log_var",))
        return UncertaintyWeighting(names, **kwargs)
    if policy == "constrained":
        reject_unknown(("init_log_var", "min_weight"))
        return ConstrainedUncertaintyWeighting(names, **kwargs)
    if policy == "loss_ratio":
        reject_unknown(("primary",))
        primary = kwargs.get("primary", names[0] if names else None)
        if primary not in names:
            raise ValueError(f"Primary loss {primary!r} is not among the losses {names}.")
        return LossRatioWeighting(primary, tuple(n for n in names if n != primary))
    raise ValueError(
        f"Unknown loss-weighting policy {policy!r}; valid policies: {', '.join(POLICIES)}."
    )
