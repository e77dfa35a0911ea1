"""Flax linen modules: backbones, heads, fusion, attention, decoders. Knows nothing of losses or training."""

from idfer_jax.models.attention import ScaleAttention, SpatialAttentionPool
from idfer_jax.models.backbones import BACKBONES, PRETRAINED_BACKBONES, build_backbone, num_stages
from idfer_jax.models.convflu import ConvFLU
from idfer_jax.models.decoder import ImageDecoder
from idfer_jax.models.discriminator import PatchDiscriminator
from idfer_jax.models.fersnet import FERSNet
from idfer_jax.models.fusion import FUSION_OPS, SpatialFusion
from idfer_jax.models.heads import ClassifierHead
from idfer_jax.models.resnet import (
    BLOCKS,
    NORMS,
    PRESETS,
    STEMS,
    BasicBlock,
    BottleneckBlock,
    ResNet,
    resnet_config,
)

__all__ = [
    "BACKBONES",
    "PRETRAINED_BACKBONES",
    "num_stages",
    "BLOCKS",
    "FUSION_OPS",
    "NORMS",
    "PRESETS",
    "STEMS",
    "BasicBlock",
    "BottleneckBlock",
    "ClassifierHead",
    "ConvFLU",
    "FERSNet",
    "ImageDecoder",
    "PatchDiscriminator",
    "ResNet",
    "ScaleAttention",
    "SpatialAttentionPool",
    "SpatialFusion",
    "build_backbone",
    "resnet_config",
]
