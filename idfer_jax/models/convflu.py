"""ConvFLU, the convolutional feature leaky unit of FERSNet (Zhao et al., ICPR 2020; METHODS.md section 3).

FERSNet runs an expression-recognition (FER) and an expression-synthesis (FES) branch side by side and, after
every stage, lets each branch take in part of the other's map through a ConvFLU: a GRU-like cell whose reset
gate picks what of the other map is read and whose update gate picks, per position and channel, how much of
the own map is replaced. That is how the paper's "selective feature sharing" filters harmful features.
"""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["ConvFLU"]


class ConvFLU(nn.Module):
    """Gated transfer of F_n into F_m; all four maps are 1x1 convolutions without bias [code]::

        r  = sigmoid(W_r [F_m, F_n])            reset gate, F_n's channels
        F~ = tanh(U F_m + W (r * F_n))          candidate, F_m's channels
        z  = sigmoid(W_z [F_m, F_n])            update gate, F_m's channels
        out = z * F_m + (1 - z) * F~

    ``out`` is a gated mix of F_m, so it has F_m's shape; F_n must have F_m's spatial size but may have
    another channel count (the released code always uses equal widths).

    Attributes:
      features: F_m's channel count, declared as the code's ``n_features``; only checked (the output width
        cannot differ from F_m's). None takes it from F_m.
      pooled_reset_gate: compute r from the globally average-pooled [F_m, F_n], one gate per channel of
        each example, shape (N, 1, 1, C_n), as in an earlier version of the code; False (default) is the
        released code's per-position gate [code].
      dtype: computation dtype; parameters stay float32.

    The 1x1 kernels use Flax's default LeCun-normal init [choice]: a variance-preserving init suited to
    the sigmoid and tanh that follow (the code keeps PyTorch's default, also fan-in scaled).
    """

    features: int | None = None
    pooled_reset_gate: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, f_m: jnp.ndarray, f_n: jnp.ndarray, *, return_gates: bool = False
    ) -> jnp.ndarray | tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
        """Returns the updated F_m, and with ``return_gates`` also ``{'reset': r, 'update': z}``.

        Args:
          f_m: the map being updated, (N, H, W, C_m).
          f_n: the other branch's map, (N, H, W, C_n).
          return_gates: also return the gates (in the computation dtype), for tests and gate analyses.
        """
        chex.assert_rank([f_m, f_n], 4)
        if f_m.shape[:3] != f_n.shape[:3]:
            raise ValueError(
                "ConvFLU needs F_m and F_n of one batch and spatial size (N, H, W); got "
                f"{f_m.shape} and {f_n.shape}."
            )
        channels = f_m.shape[-1]
        if self.features is not None and self.features != channels:
            raise ValueError(
                f"ConvFLU(features={self.features}) got F_m with {channels} channels; the output is a "
                "gated mix of F_m, so features must equal F_m's channel count (or be None)."
            )
        conv = lambda width, name: nn.Conv(  # noqa: E731
            width, (1, 1), use_bias=False, dtype=self.dtype, name=name
        )
        f_m = f_m.astype(self.dtype)
        f_n = f_n.astype(self.dtype)
        both = jnp.concatenate([f_m, f_n], axis=-1)
        reset_input = jnp.mean(both, axis=(1, 2), keepdims=True) if self.pooled_reset_gate else both
        reset = jax.nn.sigmoid(conv(f_n.shape[-1], "reset")(reset_input))
        candidate = jnp.tanh(conv(channels, "u")(f_m) + conv(channels, "w")(reset * f_n))
        update = jax.nn.sigmoid(conv(channels, "update")(both))
        out = update * f_m + (1.0 - update) * candidate
        if return_gates:
            return out, {"reset": reset, "update": update}
        return out
