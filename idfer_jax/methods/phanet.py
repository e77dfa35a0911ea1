"""PhaNet: pose-adaptive hierarchical attention (Liu et al., arXiv 1905.10059; journal version SSA-Net).

[paper] Expression and head pose are recognised jointly. Spatial attention at hierarchical scales finds
the regions relevant to expression; a scale attention selects the most informative scales; training is
end to end on hierarchical attention losses + the FER loss + a pose loss, with dynamically learned loss
weights.

What this recipe builds, with every [choice] (not in a source we could read) a `config.model` switch:
- [choice] The maps of the last `attention_stages` (default 3) backbone stages; per scale an attention
  map `sigmoid(conv1x1(relu(conv3x3(F))))`, attention-weighted pooling, a projection to a common width
  `scale_width`, and a per-scale expression classifier whose cross entropy is that scale's "attention
  loss".
- [choice] Scale attention: weights `softmax(MLP(concat of the scale features))` per example; the fused
  feature is their weighted sum. Ours, beyond METHODS.md: the MLP reads the layer-normalised
  concatenation (`scale_attention_norm`, default on; without it one scale took 0.9998 of the weight
  within 40 steps) and its score layer starts at zero, so the weights start uniform. The expression
  head and the pose head read the fused feature, which is also what the leakage probes read.
- [choice] Pose head (`pose`): `bins` (default; yaw in `2 * len(yaw_bin_edges) + 1` bins, mirror-
  symmetric, `|yaw|` split at `yaw_bin_edges` = (20, 40) degrees), `regression` (yaw / 60 deg, squared
  error) or `none`. On data without yaw labels (CK+, JAFFE) the pose term is off; `build` says so.
- [choice] Loss weights (`weighting`): `uncertainty` (default; Kendall et al. 2018 learned
  log-variances, one per term) or `constrained` (the same with a floor `min_weight` on every weight, the
  SSA-Net-style alternative). The log-variances are kept out of weight decay.
- [paper] A horizontal flip negates yaw: the input pipeline flips the pose label with the image.

`apply` returns the attention maps (`attention`, one (N, h, w) map per scale) and the scale weights
(`scale_weights`, (N, S)); `idfer evaluate` overlays the maps on sample faces (`attention_maps.png`).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from idfer_jax import losses
from idfer_jax.configuration import ConfigError
from idfer_jax.console import announce
from idfer_jax.data.pipeline import DataSpec
from idfer_jax.methods import baseline, common
from idfer_jax.models import (
    ClassifierHead,
    ScaleAttention,
    SpatialAttentionPool,
    build_backbone,
    num_stages,
)
from idfer_jax.train.interface import Method

WEIGHTINGS = ("uncertainty", "constrained")
POSE_MODES = ("bins", "regression", "none")
YAW_SCALE = 60.0  # degrees: regression targets yaw / 60, about [-1, 1] for the usual ranges


class PhaNet(nn.Module):
    backbone: nn.Module
    scale_pools: tuple[SpatialAttentionPool, ...]
    scale_heads: tuple[nn.Module, ...]
    scale_attention: ScaleAttention
    expression_head: nn.Module
    pose_head: nn.Module | None

    def __call__(self, images, *, train: bool):
        _, maps = self.backbone(images, train=train, return_stages=True)
        maps = maps[len(maps) - len(self.scale_pools):]
        scale_features, attention, scale_logits = [], [], []
        for pool, head, feature_map in zip(self.scale_pools, self.scale_heads, maps, strict=True):
            feature, att = pool(feature_map)
            scale_features.append(feature)
            attention.append(att)
            scale_logits.append(head(feature, train=train))
        fused, scale_weights = self.scale_attention(jnp.stack(scale_features, axis=1))
        outputs = {
            "logits": self.expression_head(fused, train=train),
            "features": fused,
            "scale_logits": tuple(scale_logits),
            "attention": tuple(attention),
            "scale_weights": scale_weights,
        }
        if self.pose_head is not None:
            outputs["pose"] = self.pose_head(fused, train=train)
        return outputs


def model_config(**overrides) -> ml_collections.ConfigDict:
    """The `config.model` block: the baseline's backbone keys plus PhaNet's switches."""
    c = baseline.model_config()
    c.attention_stages = 3  # [choice] how many of the last backbone stages are attended
    c.scale_width = 128  # [choice] common width of the per-scale features
    c.scale_hidden = 64  # [choice] hidden width of the scale-attention MLP
    c.scale_attention_norm = True  # [choice] layer-normalise the scale-attention MLP's input
    c.pose = "bins"  # [choice] bins | regression | none
    c.yaw_bin_edges = (20.0, 40.0)  # [choice] |yaw| edges (degrees) of the mirror-symmetric bins
    c.weighting = "uncertainty"  # [choice] uncertainty | constrained
    c.min_weight = 0.1  # floor on each weight under `constrained`
    c.update(overrides)
    return c


def check_config(config) -> None:
    """The recipe's switches in `config.model` (run when the config is loaded)."""
    _check(config.model)
    _attention_stages(config.model, num_stages(config.model.backbone))


def _attention_stages(m, num_stages: int) -> None:
    if not 1 <= m.attention_stages <= num_stages:
        raise ConfigError(
            f"config.model.attention_stages={m.attention_stages}: {m.backbone!r} has {num_stages} "
            f"stages; use 1..{num_stages}."
        )


def _check(m) -> None:
    if m.weighting not in WEIGHTINGS:
        raise ConfigError(
            f"Unknown config.model.weighting {m.weighting!r} for PhaNet; use one of "
            f"{', '.join(WEIGHTINGS)}."
        )
    if m.pose not in POSE_MODES:
        raise ConfigError(f"Unknown config.model.pose {m.pose!r}; use one of {', '.join(POSE_MODES)}.")
    edges = tuple(m.yaw_bin_edges)
    if not edges or any(e <= 0 for e in edges) or list(edges) != sorted(set(edges)):
        raise ConfigError(
            f"config.model.yaw_bin_edges={edges} must be ascending positive |yaw| values in degrees, "
            "e.g. (20.0, 40.0)."
        )


def uses_pose(config, data_spec: DataSpec) -> bool:
    return config.model.pose != "none" and "yaw" in data_spec.pose_keys


def build_model(config, data_spec: DataSpec) -> PhaNet:
    m = config.model
    _check(m)
    dtype = jnp.dtype(config.dtype)
    backbone = build_backbone(m.backbone, in_channels=data_spec.image_shape[-1],
                              **common.backbone_options(config))
    num_stages = len(backbone.widths)
    _attention_stages(m, num_stages)
    num_scales = int(m.attention_stages)

    def classifier(num_classes: int) -> ClassifierHead:
        return ClassifierHead(num_classes=num_classes, hidden=m.get("head_hidden"),
                              dropout_rate=m.dropout, dtype=dtype)

    pose_head = None
    if uses_pose(config, data_spec):
        outputs = common.num_yaw_bins(m.yaw_bin_edges) if m.pose == "bins" else 1
        pose_head = ClassifierHead(num_classes=outputs, dtype=dtype)
    return PhaNet(
        backbone=backbone,
        scale_pools=tuple(SpatialAttentionPool(width=m.scale_width, dtype=dtype)
                          for _ in range(num_scales)),
        scale_heads=tuple(classifier(data_spec.num_classes) for _ in range(num_scales)),
        scale_attention=ScaleAttention(hidden=m.scale_hidden, normalize=m.scale_attention_norm,
                                       dtype=dtype),
        expression_head=classifier(data_spec.num_classes),
        pose_head=pose_head,
    )


def loss_names(num_scales: int, with_pose: bool) -> tuple[str, ...]:
    scales = tuple(f"attention{s + 1}" for s in range(num_scales))
    return ("expression", *scales, *(("pose",) if with_pose else ()))


def build(config, data_spec: DataSpec) -> Method:
    m = config.model
    model = build_model(config, data_spec)
    with_pose = uses_pose(config, data_spec)
    if m.pose != "none" and not with_pose:
        announce(f"PhaNet: the dataset has no yaw labels, so the pose term is off (config.model.pose="
                 f"{m.pose!r} asked for one). Expression and attention losses only.")
    names = loss_names(int(m.attention_stages), with_pose)
    weighting_kwargs = {"min_weight": float(m.min_weight)} if m.weighting == "constrained" else {}
    weighting = losses.make_combinator(m.weighting, names, **weighting_kwargs)
    cross_entropy = losses.cross_entropy(label_smoothing=m.label_smoothing)
    edges = tuple(float(e) for e in m.yaw_bin_edges)

    def objective(outputs, params, batch, step):
        del step
        terms = {"expression": cross_entropy(outputs, batch)}
        for s, logits in enumerate(outputs["scale_logits"]):
            terms[f"attention{s + 1}"] = losses.softmax_cross_entropy(
                logits, batch["expression"], label_smoothing=m.label_smoothing
            )
        metrics = {}
        if with_pose:
            if m.pose == "bins":
                yaw_bins = common.yaw_bin_labels(batch["yaw"], edges)
                terms["pose"] = losses.softmax_cross_entropy(outputs["pose"], yaw_bins)
                metrics["pose_accuracy"] = common.accuracy(outputs["pose"], yaw_bins)
            else:
                terms["pose"] = losses.mse(outputs["pose"][:, 0], batch["yaw"] / YAW_SCALE)
        _, loss_weights = common.split_loss_weights(params)
        total, weighting_metrics = weighting(loss_weights, terms)
        metrics.update(weighting_metrics)
        metrics["accuracy"] = common.accuracy(outputs["logits"], batch["expression"])
        for s in range(outputs["scale_weights"].shape[1]):
            metrics[f"scale_weight/{s + 1}"] = jnp.mean(outputs["scale_weights"][:, s])
        return total, metrics

    return common.build_recipe(
        "phanet", model, objective, config, data_spec, weighting=weighting,
        batch_keys=("image", "expression", *(("yaw",) if with_pose else ())),
        evaluations=("attention_maps",),
    )
