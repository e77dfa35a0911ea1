"""Every backbone a recipe can name in ``config.model.backbone``, behind one interface.

A backbone is a linen module ``backbone(images, *, train, return_stages=False)`` returning float32 pooled
features (N, D) and, on request, the map of every stage it ran; ``start_stage`` / ``end_stage`` cut it
(IDEnNet fuses at a stage, Halawa et al. branch at one), ``widths`` has one entry per stage and
``frozen_stages`` freezes the first stages. Recipes build theirs with :func:`build_backbone` and never
look at which kind it is:

* the ResNet presets (``resnet18`` ... ``resnet_tiny``), randomly initialised;
* ``facenet``: FaceNet's Inception-ResNet-v1 (face identity, VGGFace2), 3 stages, 1792-D features read
  before the identity bottleneck, 160 px RGB prewhitened input;
* ``mini_xception``: `fer`'s mini-Xception (expression, FER2013), 4 stages, 128-D features, 64 px grey.

The pretrained encoders do their own input handling (grey <-> RGB, resize to ``input_size``, their
normalisation), so 48 px grey crops and 112 px colour faces both work unchanged. Their architecture is
fixed, so the ResNet switches ``norm`` and ``stem`` do not apply to them (they are accepted and unused).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from idfer_jax.models import facenet, mini_xception, resnet, weights

__all__ = ["BACKBONES", "PRETRAINED_BACKBONES", "PretrainedBackbone", "build_backbone", "num_stages"]

# name -> (stage module, stage widths, native input size, prefix of a stage in the converted tree)
_PRETRAINED = {
    "facenet": (facenet.FaceNetStage, facenet.FACENET_STAGE_WIDTHS, facenet.FACENET_INPUT_SIZE, False),
    "mini_xception": (mini_xception.MiniXceptionStage, mini_xception.MINI_XCEPTION_WIDTHS,
                      mini_xception.MINI_XCEPTION_INPUT_SIZE, True),
}
PRETRAINED_BACKBONES = tuple(_PRETRAINED)
BACKBONES = (*resnet.PRESETS, *PRETRAINED_BACKBONES)


def num_stages(name: str) -> int:
    """Stages of backbone ``name`` (what ``fusion_stage``, ``branch_stage``, ``freeze_until`` count)."""
    if name in _PRETRAINED:
        return len(_PRETRAINED[name][1])
    return len(resnet.resnet_config(name)["widths"])


class PretrainedBackbone(nn.Module):
    """A pretrained encoder (``kind`` in :data:`PRETRAINED_BACKBONES`) with the ResNet backbone interface.

    Attributes:
      kind: 'facenet' | 'mini_xception'.
      weights: converted checkpoint to initialise from (``idfer_jax.pretrained.resolve``); '' = random
        initialisation of the same architecture (the from-scratch reference).
      input_size: side (px) the network sees; 0 = the one it was trained at (160 FaceNet, 64
        mini-Xception). FaceNet needs >= 75.
      dtype: computation dtype; parameters stay float32 and the pooled output is float32.
      start_stage, end_stage, frozen_stages: as :class:`idfer_jax.models.resnet.ResNet` (0-based).

    Input: NHWC images in [-1, 1], 1 or 3 channels, any size (``start_stage == 0``), else the map of
    the stage before. Output: (N, widths[end - 1]) float32, plus the stage maps with ``return_stages``.
    """

    kind: str
    weights: str = ""
    input_size: int = 0
    dtype: Any = jnp.float32
    start_stage: int = 0
    end_stage: int | None = None
    frozen_stages: int = 0

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(_PRETRAINED[self.kind][1])

    @property
    def out_features(self) -> int:
        return self.widths[(len(self.widths) if self.end_stage is None else self.end_stage) - 1]

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool, return_stages: bool = False):
        del train  # no normalisation or dropout layers: batch norm is folded into the convolutions
        stage_cls, widths, native_size, nested = _PRETRAINED[self.kind]
        end = len(widths) if self.end_stage is None else self.end_stage
        if not 0 <= self.start_stage < end <= len(widths):
            raise ValueError(f"start_stage={self.start_stage}, end_stage={self.end_stage} do not select "
                             f"a non-empty range of the {len(widths)} stages of {self.kind}.")
        if self.start_stage == 0:
            size = self.input_size or native_size
            if self.kind == "facenet":
                if size < facenet.FACENET_MIN_INPUT_SIZE:
                    raise ValueError(
                        f"FaceNet needs input_size >= {facenet.FACENET_MIN_INPUT_SIZE}, got {size}")
                x = facenet.to_facenet_input(x, size)
            else:
                x = mini_xception.to_mini_xception_input(x, size)
        root = weights.WeightSource(self.kind, self.weights) if self.weights else None
        stage_maps = []
        for i in range(self.start_stage, end):
            cls = weights.frozen(stage_cls, self.is_initializing()) if i < self.frozen_stages else stage_cls
            name = f"stage{i + 1}"
            source = weights.child(root, name) if nested else root
            x = cls(index=i + 1, source=source, dtype=self.dtype, name=name)(x.astype(self.dtype))
            stage_maps.append(x)
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        return (pooled, stage_maps) if return_stages else pooled


def build_backbone(name: str, *, pretrained: str = "", input_size: int = 0, norm: str | None = None,
                   stem: str | None = None, **fields: Any) -> nn.Module:
    """Backbone ``name`` (one of :data:`BACKBONES`) with the interface described in this module.

    ``pretrained``: for the pretrained encoders, '' = the weights their package ships, 'none' = random,
    or a converted checkpoint's path (see ``idfer_jax.pretrained.resolve``); ResNets take '' or 'none'.
    ``fields``: ``dtype``, ``in_channels``, ``start_stage``, ``end_stage``, ``frozen_stages`` for any
    backbone, plus any other :class:`ResNet` field for a ResNet.

    Raises:
      ValueError: an unknown name or field, or a checkpoint path / input size given to a ResNet.
      MissingWeightsError, InvalidCheckpointError: the pretrained weights cannot be found or read.
    """
    if name in _PRETRAINED:
        from idfer_jax import pretrained as pretrained_weights

        del norm, stem  # fixed by the pretrained architecture
        fields.pop("in_channels", None)  # grey or RGB: the encoder converts
        unknown = sorted(set(fields) - {"dtype", "start_stage", "end_stage", "frozen_stages"})
        if unknown:
            raise ValueError(f"Unknown field(s) {unknown} for the pretrained backbone {name!r}.")
        return PretrainedBackbone(kind=name, weights=pretrained_weights.resolve(name, pretrained),
                                  input_size=int(input_size), **fields)
    if pretrained not in ("", "none"):
        raise ValueError(f"config.model.pretrained={pretrained!r}: pretrained weights exist for "
                         f"{', '.join(PRETRAINED_BACKBONES)}, not for the ResNet {name!r}.")
    if input_size:
        raise ValueError(f"config.model.input_size={input_size} applies to the pretrained backbones "
                         f"({', '.join(PRETRAINED_BACKBONES)}); a ResNet sees data.image_size.")
    overrides = {k: v for k, v in (("norm", norm), ("stem", stem)) if v}
    return resnet.build_backbone(name, **overrides, **fields)
