"""ResNet backbones (He et al. 2016) in Flax linen, configurable for FER-sized inputs.

The backbone returns a pooled feature vector and, on request, the map after every stage, because
several methods fuse (IDEnNet), attend over (PhaNet) or exchange (FERSNet) intermediate stage maps.

Parameters are always float32; ``dtype`` only sets the computation dtype (e.g. ``jnp.bfloat16`` on
accelerators). The pooled features are returned in float32 so that heads and losses never see bf16.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import chex
import flax.linen as nn
import jax.numpy as jnp

from idfer_jax.models import cpu_kernels, weights

__all__ = [
    "BLOCKS",
    "NORMS",
    "PRESETS",
    "STEMS",
    "BasicBlock",
    "BottleneckBlock",
    "ResNet",
    "build_backbone",
    "resnet_config",
]

BLOCKS = ("basic", "bottleneck")
NORMS = ("batch", "group", "instance", "layer", "none")
STEMS = ("imagenet", "small")

# He et al. use a fan-out normal; fan-in (JAX's he_normal) keeps the forward activations' scale,
# which is what matters for the zero-init-residual trick below. Either is "Kaiming normal".
_conv_init = nn.initializers.kaiming_normal()

_MAX_GROUPS = 32


def _group_count(channels: int) -> int:
    """Largest divisor of ``channels`` up to 32, so GroupNorm works for any width (16, 48, ...)."""
    return max(g for g in range(1, min(_MAX_GROUPS, channels) + 1) if channels % g == 0)


def _normalize(
    x: jnp.ndarray,
    *,
    kind: str,
    train: bool,
    momentum: float,
    dtype: Any,
    zero_init: bool = False,
    name: str | None = None,
) -> jnp.ndarray:
    """Applies the normalisation layer ``kind`` to an NHWC map.

    Called from inside a compact ``__call__``, so the layer it creates belongs to the calling
    module. ``zero_init`` zeroes the scale so that a residual branch starts as the identity
    (Goyal et al. 2017).
    """
    scale_init = nn.initializers.zeros_init() if zero_init else nn.initializers.ones_init()
    if kind == "batch":
        return nn.BatchNorm(
            use_running_average=not train,
            momentum=momentum,
            epsilon=1e-5,
            dtype=dtype,
            scale_init=scale_init,
            name=name,
        )(x)
    if kind == "group":
        return nn.GroupNorm(
            num_groups=_group_count(x.shape[-1]), dtype=dtype, scale_init=scale_init, name=name
        )(x)
    if kind == "instance":
        return nn.InstanceNorm(dtype=dtype, scale_init=scale_init, name=name)(x)
    if kind == "layer":
        # Normalise over the whole (H, W, C) map of each example, with a per-channel affine.
        return nn.LayerNorm(
            reduction_axes=(-3, -2, -1),
            feature_axes=-1,
            dtype=dtype,
            scale_init=scale_init,
            name=name,
        )(x)
    if kind == "none":
        return x
    raise ValueError(f"Unknown norm {kind!r}; valid norms: {', '.join(NORMS)}.")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or projected) shortcut; expansion 1.

    Attributes:
      features: inner width (the block outputs ``features * expansion`` channels).
      conv: ``nn.Conv``-like constructor with the dtype, bias and init already bound.
      norm: ``norm(x, *, name, zero_init=False) -> x``, e.g. ``functools.partial(_normalize, ...)``
        as ``ResNet`` builds it; it creates its layer inside this block.
      strides: stride of the block (2 to halve the spatial size).
      zero_init_last_conv: start the branch's last conv at zero (used when there is no norm
        layer whose scale could be zeroed instead).
    """

    features: int
    conv: Callable[..., nn.Module]
    norm: Callable[..., jnp.ndarray]
    strides: int = 1
    zero_init_last_conv: bool = False

    expansion = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        residual = x
        y = self.conv(self.features, (3, 3), strides=self.strides, name="conv1")(x)
        y = nn.relu(self.norm(y, name="norm1"))
        last_kwargs = (
            {"kernel_init": nn.initializers.zeros_init()} if self.zero_init_last_conv else {}
        )
        y = self.conv(self.features, (3, 3), name="conv2", **last_kwargs)(y)
        y = self.norm(y, zero_init=True, name="norm2")
        if residual.shape != y.shape:
            residual = self.conv(self.features, (1, 1), strides=self.strides, name="proj_conv")(x)
            residual = self.norm(residual, name="proj_norm")
        return nn.relu(residual + y)


class BottleneckBlock(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with an identity (or projected) shortcut.

    Attributes:
      features: inner width (the block outputs ``features * expansion`` channels).
      conv: ``nn.Conv``-like constructor with the dtype, bias and init already bound.
      norm: ``norm(x, *, name, zero_init=False) -> x``, e.g. ``functools.partial(_normalize, ...)``
        as ``ResNet`` builds it; it creates its layer inside this block.
      strides: stride of the block (2 to halve the spatial size).
      zero_init_last_conv: start the branch's last conv at zero (used when there is no norm
        layer whose scale could be zeroed instead).
    """

    features: int
    conv: Callable[..., nn.Module]
    norm: Callable[..., jnp.ndarray]
    strides: int = 1
    zero_init_last_conv: bool = False

    expansion = 4

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        out_features = self.features * self.expansion
        residual = x
        y = self.conv(self.features, (1, 1), name="conv1")(x)
        y = nn.relu(self.norm(y, name="norm1"))
        y = self.conv(self.features, (3, 3), strides=self.strides, name="conv2")(y)
        y = nn.relu(self.norm(y, name="norm2"))
        last_kwargs = (
            {"kernel_init": nn.initializers.zeros_init()} if self.zero_init_last_conv else {}
        )
        y = self.conv(out_features, (1, 1), name="conv3", **last_kwargs)(y)
        y = self.norm(y, zero_init=True, name="norm3")
        if residual.shape != y.shape:
            residual = self.conv(out_features, (1, 1), strides=self.strides, name="proj_conv")(x)
            residual = self.norm(residual, name="proj_norm")
        return nn.relu(residual + y)


_BLOCK_CLASSES: dict[str, type[nn.Module]] = {"basic": BasicBlock, "bottleneck": BottleneckBlock}


class ResNet(nn.Module):
    """A ResNet backbone: stem, ``len(stage_sizes)`` residual stages, global average pooling.

    Attributes:
      stage_sizes: residual blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
      widths: inner width of each stage; a stage outputs ``width * expansion`` channels
        (expansion 1 for 'basic', 4 for 'bottleneck').
      block: 'basic' | 'bottleneck'.
      norm: 'batch' | 'group' | 'instance' | 'layer' | 'none'. Only 'batch' has state (the
        'batch_stats' collection, to be marked mutable when ``train=True``). With 'none',
        convolutions get biases and the last conv of every residual branch starts at zero instead
        of a norm scale.
      stem: 'imagenet' (7x7/2 conv + 3x3/2 max-pool, for >=112 px inputs) or 'small' (one 3x3/1
        conv, for 32-64 px inputs, which the ImageNet stem would shrink 4x before the first stage).
      stem_width: output channels of the stem; defaults to ``widths[0]``.
      dtype: computation dtype; parameters stay float32 and the pooled output is float32.
      bn_momentum: BatchNorm running-average momentum.
      in_channels: expected input channels, checked with a clear error; None accepts any.
      start_stage, end_stage: run only stages ``start_stage .. end_stage - 1`` (0-based; end None
        = the last). With ``start_stage > 0`` there is no stem and the input is the map an earlier
        stage produced, so a network can be cut at a stage and something inserted there (IDEnNet
        fuses two streams at a stage, then runs the remaining stages on the fused map). Stage and
        block names keep their full-network numbering.
    """

    stage_sizes: Sequence[int]
    widths: Sequence[int]
    block: str = "basic"
    norm: str = "batch"
    stem: str = "imagenet"
    stem_width: int | None = None
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    in_channels: int | None = 3
    start_stage: int = 0
    end_stage: int | None = None
    frozen_stages: int = 0

    @property
    def out_features(self) -> int:
        """Width of the pooled feature vector."""
        return self.widths[-1] * _BLOCK_CLASSES[self.block].expansion

    def _validate(self) -> None:
        if self.block not in BLOCKS:
            raise ValueError(f"Unknown block {self.block!r}; valid blocks: {', '.join(BLOCKS)}.")
        if self.norm not in NORMS:
            raise ValueError(f"Unknown norm {self.norm!r}; valid norms: {', '.join(NORMS)}.")
        if self.stem not in STEMS:
            raise ValueError(f"Unknown stem {self.stem!r}; valid stems: {', '.join(STEMS)}.")
        if len(self.stage_sizes) != len(self.widths) or not self.widths:
            raise ValueError(
                f"stage_sizes {tuple(self.stage_sizes)} and widths {tuple(self.widths)} must be "
                "non-empty and of equal length (one width per stage)."
            )
        end = len(self.widths) if self.end_stage is None else self.end_stage
        if not 0 <= self.start_stage < end <= len(self.widths):
            raise ValueError(
                f"start_stage={self.start_stage}, end_stage={self.end_stage} do not select a "
                f"non-empty range of the {len(self.widths)} stages."
            )

    def _check_input(self, x: jnp.ndarray) -> None:
        channels = "C" if self.in_channels is None else str(self.in_channels)
        expected = f"(batch, height, width, {channels}) NHWC"
        try:
            chex.assert_rank(x, 4)
        except AssertionError as e:
            raise ValueError(
                f"ResNet expects images of shape {expected}; got an array of shape {x.shape}."
            ) from e
        if self.in_channels is not None and x.shape[-1] != self.in_channels:
            raise ValueError(
                f"ResNet expects images of shape {expected}; got {x.shape[-1]} channels "
                f"(shape {x.shape}). Convert the images or set in_channels={x.shape[-1]}."
            )

    @nn.compact
    def __call__(
        self, x: jnp.ndarray, *, train: bool, return_stages: bool = False
    ) -> jnp.ndarray | tuple[jnp.ndarray, list[jnp.ndarray]]:
        """Runs the backbone on NHWC images.

        Args:
          x: images of shape (N, H, W, in_channels), usually float32 in [-1, 1].
          train: batch statistics instead of running averages for BatchNorm (and updates them).
          return_stages: also return the output map of every stage.

        Returns:
          The pooled features of the last stage run, float32 of shape (N, width * expansion); with
          ``return_stages=True``, ``(pooled, [map of each stage run])`` where the maps are
          NHWC in the computation dtype, each stage after the first halving the spatial size.
        """
        self._validate()
        if self.start_stage == 0:
            self._check_input(x)
        else:
            chex.assert_rank(x, 4)
        use_norm = self.norm != "none"
        conv = functools.partial(
            nn.Conv,
            # A bias before a norm layer is cancelled by its mean subtraction.
            use_bias=not use_norm,
            dtype=self.dtype,
            kernel_init=_conv_init,
            conv_general_dilated=cpu_kernels.conv_general_dilated,
        )
        norm = functools.partial(
            _normalize, kind=self.norm, train=train, momentum=self.bn_momentum, dtype=self.dtype
        )

        def stage_layers(i: int):
            """(stem conv, norm, block class) of stage i: frozen ones read stopped parameters and
            run their norms on the running statistics."""
            if i >= self.frozen_stages:
                return conv, norm, _BLOCK_CLASSES[self.block]
            initializing = self.is_initializing()
            return (functools.partial(weights.frozen(nn.Conv, initializing), **conv.keywords),
                    functools.partial(norm, train=False),
                    weights.frozen(_BLOCK_CLASSES[self.block], initializing))

        x = x.astype(self.dtype)
        stem_width = self.stem_width or self.widths[0]
        if self.start_stage == 0:  # a later start continues from a stage's map: no stem
            stem_conv, stem_norm, _ = stage_layers(0)
            if self.stem == "imagenet":
                x = stem_conv(stem_width, (7, 7), strides=2, padding=((3, 3), (3, 3)),
                              name="stem_conv")(x)
                x = nn.relu(stem_norm(x, name="stem_norm"))
                x = cpu_kernels.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
            else:
                x = stem_conv(stem_width, (3, 3), name="stem_conv")(x)
                x = nn.relu(stem_norm(x, name="stem_norm"))

        stage_maps = []
        end = len(self.widths) if self.end_stage is None else self.end_stage
        for i, (num_blocks, width) in enumerate(zip(self.stage_sizes, self.widths, strict=True)):
            if not self.start_stage <= i < end:
                continue
            _, stage_norm, block_cls = stage_layers(i)
            for j in range(num_blocks):
                x = block_cls(
                    features=width,
                    strides=2 if i > 0 and j == 0 else 1,
                    conv=conv,
                    norm=stage_norm,
                    # Without norm layers, a zero last conv makes each block start as the
                    # identity (as in Fixup), so the un-normalised signal does not grow with depth.
                    zero_init_last_conv=not use_norm,
                    name=f"stage{i + 1}_block{j + 1}",
                )(x)
            stage_maps.append(x)

        # Pool in float32: a bf16 mean over many positions loses precision the heads would inherit.
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        if return_stages:
            return pooled, stage_maps
        return pooled


PRESETS: dict[str, dict[str, Any]] = {
    "resnet18": dict(
        stage_sizes=(2, 2, 2, 2), widths=(64, 128, 256, 512), block="basic", stem="imagenet"
    ),
    "resnet34": dict(
        stage_sizes=(3, 4, 6, 3), widths=(64, 128, 256, 512), block="basic", stem="imagenet"
    ),
    "resnet50": dict(
        stage_sizes=(3, 4, 6, 3), widths=(64, 128, 256, 512), block="bottleneck", stem="imagenet"
    ),
    # CPU-friendly default for 64 px faces.
    "resnet_small": dict(
        stage_sizes=(1, 1, 1, 1), widths=(32, 64, 128, 256), block="basic", stem="small"
    ),
    # For smoke tests only.
    "resnet_tiny": dict(stage_sizes=(1, 1, 1), widths=(16, 32, 64), block="basic", stem="small"),
}


def resnet_config(name: str) -> dict[str, Any]:
    """Returns the ResNet keyword arguments of preset ``name`` (a fresh dict, safe to edit)."""
    if name not in PRESETS:
        raise ValueError(f"Unknown backbone {name!r}; valid names: {', '.join(sorted(PRESETS))}.")
    return dict(PRESETS[name])


def build_backbone(name: str, **overrides: Any) -> ResNet:
    """Builds preset ``name`` with any ResNet field overridden, e.g. ``norm='group'``."""
    config = resnet_config(name)
    fields = {f.name for f in dataclasses.fields(ResNet)} - {"parent", "name"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"Unknown ResNet field(s) {unknown} for backbone {name!r}; valid fields: "
            f"{', '.join(sorted(fields))}."
        )
    config.update(overrides)
    return ResNet(**config)
