"""Flax linen modules: backbones and heads. Knows nothing of losses or training."""

from idfer_jax.models.heads import ClassifierHead
from idfer_jax.models.resnet import (
    BLOCKS,
    NORMS,
    PRESETS,
    STEMS,
    BasicBlock,
    BottleneckBlock,
    ResNet,
    build_backbone,
    resnet_config,
)

__all__ = [
    "BLOCKS",
    "NORMS",
    "PRESETS",
    "STEMS",
    "BasicBlock",
    "BottleneckBlock",
    "ClassifierHead",
    "ResNet",
    "build_backbone",
    "resnet_config",
]
