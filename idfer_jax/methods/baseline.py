"""Baseline: an expression classifier on a ResNet backbone, trained with cross entropy.

Every disentangling method is compared against this. Its expression features (the pooled backbone
output, before the classifier) are what the identity and pose leakage probes read.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from idfer_jax import config_defaults, losses
from idfer_jax.data.pipeline import DataSpec
from idfer_jax.methods import common
from idfer_jax.models import ClassifierHead, build_backbone
from idfer_jax.train.interface import Method


class ExpressionClassifier(nn.Module):
    # Submodules given as fields take the field names, so the parameter groups are 'backbone' and 'head'.
    backbone: nn.Module
    head: nn.Module

    def __call__(self, images, *, train: bool):
        features = self.backbone(images, train=train)
        return {"logits": self.head(features, train=train), "features": features}


def model_config(**overrides) -> ml_collections.ConfigDict:
    """The `config.model` block of the baseline."""
    c = config_defaults.backbone(ml_collections.ConfigDict())
    c.head_hidden = ml_collections.FieldReference(None, field_type=int)
    c.dropout = 0.0
    c.label_smoothing = 0.0
    c.update(overrides)
    return c


def build_model(config, data_spec: DataSpec) -> ExpressionClassifier:
    m = config.model
    dtype = jnp.dtype(config.dtype)
    backbone = build_backbone(m.backbone, in_channels=data_spec.image_shape[-1],
                              **common.backbone_options(config))
    head = ClassifierHead(
        num_classes=data_spec.num_classes, hidden=m.get("head_hidden"),
        dropout_rate=m.dropout, dtype=dtype,
    )
    return ExpressionClassifier(backbone=backbone, head=head)


def build(config, data_spec: DataSpec) -> Method:
    model = build_model(config, data_spec)
    cross_entropy = losses.cross_entropy(label_smoothing=config.model.label_smoothing)

    def objective(outputs, params, batch, step):
        del params, step
        loss = cross_entropy(outputs, batch)
        return loss, {"accuracy": common.accuracy(outputs["logits"], batch["expression"])}

    return common.build_recipe("baseline", model, objective, config, data_spec)
