"""Loss terms, loss-weighting combinators and gradient reversal. Knows nothing of models."""

from idfer_jax.losses.combinators import (
    POLICIES,
    WEIGHTING_PARAM_KEY,
    Combinator,
    ConstrainedUncertaintyWeighting,
    LossRatioWeighting,
    UncertaintyWeighting,
    WeightedSum,
    is_weighting_param,
    make_combinator,
)
from idfer_jax.losses.gradient_reversal import dann_lambda, gradient_reversal
from idfer_jax.losses.terms import (
    LossTerm,
    cosine_distance,
    cross_entropy,
    l1,
    lsgan_discriminator,
    lsgan_generator,
    masked_mean,
    mse,
    softmax_cross_entropy,
)

__all__ = [
    "POLICIES",
    "WEIGHTING_PARAM_KEY",
    "Combinator",
    "ConstrainedUncertaintyWeighting",
    "LossRatioWeighting",
    "LossTerm",
    "UncertaintyWeighting",
    "WeightedSum",
    "cosine_distance",
    "cross_entropy",
    "dann_lambda",
    "gradient_reversal",
    "is_weighting_param",
    "l1",
    "lsgan_discriminator",
    "lsgan_generator",
    "make_combinator",
    "masked_mean",
    "mse",
    "softmax_cross_entropy",
]
