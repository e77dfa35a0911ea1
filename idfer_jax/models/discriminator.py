"""Conditional PatchGAN discriminator (FERSNet's, Zhao et al. ICPR 2020; METHODS.md section 3).

A patch discriminator scores overlapping patches rather than the whole image, which pushes a generator
towards sharp local texture while its L1 loss takes care of the global layout. The condition (the expression
the image should show) is tiled into extra input channels, so the discriminator judges "a real face *with this
expression*", not only "a real face".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import chex
import flax.linen as nn
import jax.numpy as jnp

from idfer_jax.models.resnet import _conv_init

__all__ = ["PatchDiscriminator"]


class PatchDiscriminator(nn.Module):
    """``[image, tiled one-hot]`` -> (N, H / 2^k, W / 2^k, 1) raw patch scores (LSGAN: no sigmoid) [code].

    k = len(widths) blocks of 4x4/2 conv (padding 1) + InstanceNorm (none after the first) + LeakyReLU(0.2),
    then a 4x4/1 conv to one channel padded (2, 1) on each axis, which keeps the size, as the code's
    ``ZeroPad2d((1, 0, 1, 0))`` + padding 1 does [code]. The released code uses four blocks, widths
    (64, 128, 256, 512) [code], the default; a side that is not a multiple of 2^k is floored at each block.

    Attributes:
      num_classes: width of the condition one-hot.
      widths: output channels of the strided blocks.
      dtype: computation dtype; the scores are float32.

    There is no BatchNorm, so ``apply`` needs no mutable collection and no ``train`` flag.
    """

    num_classes: int
    widths: Sequence[int] = (64, 128, 256, 512)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jnp.ndarray, condition_onehot: jnp.ndarray) -> jnp.ndarray:
        chex.assert_rank([images, condition_onehot], [4, 2])
        n, h, w, _ = images.shape
        if condition_onehot.shape != (n, self.num_classes):
            raise ValueError(
                f"PatchDiscriminator expects the condition as a one-hot of shape (N, num_classes) = "
                f"({n}, {self.num_classes}); got {condition_onehot.shape}."
            )
        min_side = 2 ** len(self.widths)
        if min(h, w) < min_side:
            raise ValueError(
                f"PatchDiscriminator with {len(self.widths)} stride-2 blocks needs images of at least "
                f"{min_side}x{min_side} px; got {h}x{w}. Use larger images or fewer widths."
            )
        condition = jnp.broadcast_to(
            condition_onehot.astype(self.dtype)[:, None, None, :], (n, h, w, self.num_classes)
        )
        x = jnp.concatenate([images.astype(self.dtype), condition], axis=-1)
        for i, width in enumerate(self.widths):
            # A bias before an instance norm is cancelled by its mean subtraction: only the first has one.
            x = nn.Conv(
                width,
                (4, 4),
                strides=(2, 2),
                padding=((1, 1), (1, 1)),
                use_bias=i == 0,
                dtype=self.dtype,
                kernel_init=_conv_init,
                name=f"block{i + 1}_conv",
            )(x)
            if i > 0:
                # Non-affine with eps 1e-5: PyTorch's InstanceNorm2d default, which the code uses.
                x = nn.InstanceNorm(
                    use_scale=False, use_bias=False, epsilon=1e-5, dtype=self.dtype, name=f"block{i + 1}_norm"
                )(x)
            x = nn.leaky_relu(x, 0.2)
        x = nn.Conv(
            1, (4, 4), padding=((2, 1), (2, 1)), dtype=self.dtype, kernel_init=_conv_init, name="score"
        )(x)
        return x.astype(jnp.float32)
