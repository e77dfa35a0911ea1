"""The same maths as `lax.conv_general_dilated` and a strided max-pool, in forms XLA:CPU runs fast.

On the CPU, XLA's convolution is 10-20x slower than a matrix product of the same size when the output map
is tiny and the channels many (measured on 2 cores, batch 64, 3x3 convolution with its gradients: 256
channels on a 2x2 map 68 ms as a convolution, 3.9 ms as patches x kernel; PyTorch 3.8 ms), which is where
a ResNet's last stages sit for 48-112 px faces. The gradient of `nn.max_pool` (a select-and-scatter) is
5x slower than the max of shifted slices. So on the CPU backend `conv_general_dilated` computes small-output
convolutions as patches times kernel, and `max_pool` takes the max of the window's strided slices. Both
give the same values up to float reassociation (tested), the parameters are the same arrays, and on
GPU/TPU (where the convolution libraries are fast) they are the plain XLA operations.

Which platform a function is traced for is the caller's to say (`traced_for(platform, fn)`: the trainer
passes its mesh's), since a process may hold CPU and accelerator devices at once; without it, JAX's
default backend decides.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# Output positions (H x W) up to which a CPU convolution runs as a matrix product (measured: at 4x4
# the two are equal, below it the product wins by up to 17x, above it the convolution wins).
MATMUL_MAX_OUTPUT_POSITIONS = 9


_PLATFORM: contextvars.ContextVar[str | None] = contextvars.ContextVar("idfer_jax_kernel_platform",
                                                                        default=None)


@contextlib.contextmanager
def for_platform(platform: str | None):
    """Within this context, layers trace the kernels of `platform` ('cpu', 'gpu', 'tpu'; None = JAX's
    default backend)."""
    token = _PLATFORM.set(platform)
    try:
        yield
    finally:
        _PLATFORM.reset(token)


def traced_for(platform: str | None, fn: Callable) -> Callable:
    """`fn`, tracing the kernels of `platform` (to be jitted for devices of that platform)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with for_platform(platform):
            return fn(*args, **kwargs)

    return wrapped


def _on_cpu() -> bool:
    return (_PLATFORM.get() or jax.default_backend()) == "cpu"


def _channels_last(lhs, rhs, dimension_numbers) -> bool:
    if lhs.ndim != 4:
        return False
    expected = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    return dimension_numbers is None or lax.conv_dimension_numbers(
        lhs.shape, rhs.shape, dimension_numbers) == expected


def _patches_times_kernel(lhs, rhs, strides, pads):
    kh, kw, cin, cout = rhs.shape
    _, h, w, _ = lhs.shape
    (pt, pb), (pl, pr) = pads
    x = jnp.pad(lhs, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    sh, sw = strides
    ho, wo = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
    windows = [x[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :]
               for i in range(kh) for j in range(kw)]
    patches = jnp.concatenate(windows, axis=-1)
    return patches @ rhs.reshape(kh * kw * cin, cout)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """`lax.conv_general_dilated`, as patches x kernel for small NHWC outputs on the CPU (`nn.Conv`'s
    `conv_general_dilated` hook)."""
    plain = (lhs_dilation in (None, (1, 1)) and rhs_dilation in (None, (1, 1)) and feature_group_count == 1
             and not kwargs and _channels_last(lhs, rhs, dimension_numbers))
    if plain and _on_cpu():
        pads = (lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
                if isinstance(padding, str) else tuple(tuple(p) for p in padding))
        (pt, pb), (pl, pr) = pads
        ho = (lhs.shape[1] + pt + pb - rhs.shape[0]) // window_strides[0] + 1
        wo = (lhs.shape[2] + pl + pr - rhs.shape[1]) // window_strides[1] + 1
        if ho * wo <= MATMUL_MAX_OUTPUT_POSITIONS:
            return _patches_times_kernel(lhs, rhs, tuple(window_strides), pads)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                    rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                    feature_group_count=feature_group_count, precision=precision, **kwargs)


def max_pool(x, window: Sequence[int], strides: Sequence[int], padding: Sequence[tuple[int, int]]):
    """`nn.max_pool(x, window, strides, padding)` for NHWC maps with explicit padding."""
    if not _on_cpu():
        return nn.max_pool(x, tuple(window), strides=tuple(strides), padding=tuple(padding))
    (pt, pb), (pl, pr) = padding
    (kh, kw), (sh, sw) = window, strides
    padded = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=-jnp.inf)
    ho = (x.shape[1] + pt + pb - kh) // sh + 1
    wo = (x.shape[2] + pl + pr - kw) // sw + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            s = padded[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :]
            out = s if out is None else jnp.maximum(out, s)
    return out


def same_pads(size: Sequence[int], window: Sequence[int], strides: Sequence[int]) -> list[tuple[int, int]]:
    """TensorFlow/Keras 'SAME' padding of an (H, W) map as explicit (low, high) pairs."""
    return list(lax.padtype_to_pads(tuple(size), tuple(window), tuple(strides), "SAME"))


def depthwise_conv(x, kernel):
    """A stride-1 'SAME' depthwise convolution (``feature_group_count == channels``, multiplier 1).

    ``kernel`` is Flax's grouped layout (kh, kw, 1, C). Computed as a sum of the kh x kw shifted maps
    times per-channel weights: the same maths as the grouped convolution, whose gradient XLA:CPU runs
    about 10x slower (it is what made a 48k-parameter mini-Xception train at 60 images/s).
    """
    kh, kw = kernel.shape[:2]
    (pt, pb), (pl, pr) = same_pads(x.shape[1:3], (kh, kw), (1, 1))
    padded = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    h, w = x.shape[1:3]
    out = None
    for i in range(kh):
        for j in range(kw):
            term = padded[:, i:i + h, j:j + w, :] * kernel[i, j, 0]
            out = term if out is None else out + term
    return out
