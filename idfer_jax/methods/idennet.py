"""IDEnNet: identity-enhanced expression recognition (Li et al., ACCV 2018, arXiv 1812.04207).

[paper] Expression is learned jointly with identity, through spatial fusion and "self-constrained"
multi-task learning, so the network can tell appearance changes caused by expression from those caused
by who the person is. Evaluated 10-fold subject-independent on Oulu-CASIA, CK+ and MMI.

What this recipe builds, with every [choice] (not in a source we could read) a `config.model` switch:
- [choice] Two streams of the same backbone on the same image, an expression stream and an identity
  stream (`backbone`). At stage `fusion_stage` (0-based index into the backbone's stages; default -1 =
  the last) the two stage maps are fused by `fusion` = `sum | max | concat | conv` (default `conv`: a
  1x1 conv over the concatenation); the expression stream's remaining stages run on the fused map and
  its pooled output feeds the expression head. These pooled fused features are the "expression
  features" that the leakage probes read.
- [choice] The identity stream runs all its stages; its pooled output feeds an identity head over the
  *training subjects of the current fold* only (`DataSpec.train_subjects`): a held-out subject has no
  class and is masked out of the identity loss.
- [choice] "Self-constrained" multi-task weighting (`weighting`): `constant` (default; the identity loss
  times `identity_weight` = 1), `loss_ratio` (identity weight = stop_gradient(L_exp / (L_exp + L_id)))
  or `uncertainty` (Kendall et al. 2018 learned log-variances, kept out of weight decay). These are the
  core's loss combinators (`idfer_jax.losses.make_combinator`).
- Its two codes (`Method.codes`), each probed by `idfer evaluate`: `features` (the fused expression
  stream, pooled) and `identity_features` (the identity stream, pooled).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from idfer_jax import losses
from idfer_jax.configuration import ConfigError
from idfer_jax.data.pipeline import DataSpec
from idfer_jax.methods import baseline, common
from idfer_jax.models import FUSION_OPS, ClassifierHead, SpatialFusion, build_backbone, num_stages
from idfer_jax.train.interface import Method

WEIGHTINGS = ("constant", "loss_ratio", "uncertainty")
LOSS_NAMES = ("expression", "identity")


class IDEnNet(nn.Module):
    expression_stream: nn.Module  # stages 0 .. fusion_stage
    expression_stream_top: nn.Module | None  # stages after fusion_stage, on the fused map
    identity_stream: nn.Module  # every stage
    fusion: SpatialFusion
    expression_head: nn.Module
    identity_head: nn.Module
    fusion_stage: int  # 0-based, non-negative

    def __call__(self, images, *, train: bool):
        _, expression_maps = self.expression_stream(images, train=train, return_stages=True)
        identity_features, identity_maps = self.identity_stream(images, train=train, return_stages=True)
        fused = self.fusion(expression_maps[-1], identity_maps[self.fusion_stage])
        if self.expression_stream_top is not None:
            features = self.expression_stream_top(fused, train=train)
        else:
            features = jnp.mean(fused.astype(jnp.float32), axis=(1, 2))
        return {
            "logits": self.expression_head(features, train=train),
            "features": features,
            "identity_logits": self.identity_head(identity_features, train=train),
            "identity_features": identity_features,
        }


def model_config(**overrides) -> ml_collections.ConfigDict:
    """The `config.model` block: the baseline's backbone keys plus IDEnNet's switches."""
    c = baseline.model_config()
    c.fusion_stage = -1  # [choice] 0-based backbone stage whose maps are fused; -1 = the last
    c.fusion = "conv"  # [choice] sum | max | concat | conv
    c.weighting = "constant"  # [choice] constant | loss_ratio | uncertainty
    c.identity_weight = 1.0  # weight of the identity loss under `constant`
    c.update(overrides)
    return c


def check_config(config) -> None:
    """The recipe's switches in `config.model` (run when the config is loaded)."""
    _check(config.model)
    _fusion_stage(config.model, num_stages(config.model.backbone))


def _fusion_stage(m, num_stages: int) -> int:
    stage = m.fusion_stage if m.fusion_stage >= 0 else num_stages + m.fusion_stage
    if not 0 <= stage < num_stages:
        raise ConfigError(
            f"config.model.fusion_stage={m.fusion_stage} is outside the {num_stages} stages of "
            f"{m.backbone!r}; use 0..{num_stages - 1} or -1 for the last."
        )
    return stage


def _check(m) -> None:
    if m.fusion not in FUSION_OPS:
        raise ConfigError(f"Unknown config.model.fusion {m.fusion!r}; use one of {', '.join(FUSION_OPS)}.")
    if m.weighting not in WEIGHTINGS:
        raise ConfigError(
            f"Unknown config.model.weighting {m.weighting!r} for IDEnNet; use one of "
            f"{', '.join(WEIGHTINGS)}."
        )


def build_model(config, data_spec: DataSpec) -> IDEnNet:
    m = config.model
    _check(m)
    dtype = jnp.dtype(config.dtype)
    kwargs = common.backbone_options(config)
    identity_stream = build_backbone(m.backbone, in_channels=data_spec.image_shape[-1], **kwargs)
    num_stages = len(identity_stream.widths)
    stage = _fusion_stage(m, num_stages)
    top = (build_backbone(m.backbone, start_stage=stage + 1, in_channels=None, **kwargs)
           if stage + 1 < num_stages else None)
    if data_spec.num_train_subjects < 2:
        raise ConfigError(
            "IDEnNet's identity head needs subject ids for at least 2 training subjects; this "
            f"dataset's training fold has {data_spec.num_train_subjects}. Use a dataset with subjects."
        )
    return IDEnNet(
        expression_stream=build_backbone(
            m.backbone, end_stage=stage + 1, in_channels=data_spec.image_shape[-1], **kwargs
        ),
        expression_stream_top=top,
        identity_stream=identity_stream,
        fusion=SpatialFusion(op=m.fusion, dtype=dtype),
        expression_head=ClassifierHead(
            num_classes=data_spec.num_classes, hidden=m.get("head_hidden"),
            dropout_rate=m.dropout, dtype=dtype,
        ),
        identity_head=ClassifierHead(
            num_classes=data_spec.num_train_subjects, dropout_rate=m.dropout, dtype=dtype
        ),
        fusion_stage=stage,
    )


def make_weighting(m) -> losses.Combinator:
    if m.weighting == "constant":
        return losses.make_combinator(
            "weighted_sum", LOSS_NAMES, weights={"identity": float(m.identity_weight)}
        )
    return losses.make_combinator(m.weighting, LOSS_NAMES)


def build(config, data_spec: DataSpec) -> Method:
    model = build_model(config, data_spec)
    weighting = make_weighting(config.model)
    expression_loss = losses.cross_entropy(label_smoothing=config.model.label_smoothing)
    identity_loss = losses.cross_entropy("identity_logits", "identity", mask_key="identity_mask")
    train_subjects = data_spec.train_subjects

    def objective(outputs, params, batch, step):
        del step
        identity, identity_mask = common.train_subject_labels(train_subjects, batch["subject"])
        labels = {**batch, "identity": identity, "identity_mask": identity_mask}
        terms = {"expression": expression_loss(outputs, labels), "identity": identity_loss(outputs, labels)}
        _, loss_weights = common.split_loss_weights(params)
        total, metrics = weighting(loss_weights, terms)
        metrics["accuracy"] = common.accuracy(outputs["logits"], batch["expression"])
        metrics["identity_accuracy"] = common.accuracy(
            outputs["identity_logits"], identity, identity_mask
        )
        return total, metrics

    return common.build_recipe(
        "idennet", model, objective, config, data_spec, weighting=weighting,
        batch_keys=("image", "expression", "subject"),
        codes=("features", "identity_features"),
    )
