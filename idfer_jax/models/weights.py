"""Parameter initializers that read a converted pretrained checkpoint instead of drawing random values.

Why initializers: a pretrained encoder is then an ordinary linen module. ``model.init`` of any recipe
that contains it (once, twice in IDEnNet's two streams, cut in two in Halawa et al.'s trunk and branches)
puts the pretrained values where they belong, with no per-recipe loading code and no tree surgery.
A ``WeightSource`` is a frozen dataclass (hashable, like every linen field) naming the converted file
and the path of a layer inside it; ``None`` means random initialisation.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Initializer = Callable[..., jnp.ndarray]
_SHAPES_ONLY = contextvars.ContextVar("idfer_jax_pretrained_shapes_only", default=False)


@contextlib.contextmanager
def shapes_only() -> Iterator[None]:
    """Within it, pretrained initializers return zeros instead of reading their file.

    For the abstract state a checkpoint is restored into (``jax.eval_shape`` of the init): only
    shapes matter there, and evaluating or resuming a run must not need the weights it started from.
    """
    token = _SHAPES_ONLY.set(True)
    try:
        yield
    finally:
        _SHAPES_ONLY.reset(token)


@dataclasses.dataclass(frozen=True)
class WeightSource:
    """Where a layer's pretrained values are: ``kind`` ('facenet' | 'mini_xception'), the converted
    checkpoint ``path`` and the ``prefix`` of the layer in its parameter tree."""

    kind: str
    path: str
    prefix: tuple[str, ...] = ()

    def child(self, name: str) -> WeightSource:
        return dataclasses.replace(self, prefix=(*self.prefix, name))

    def value(self, leaf: str) -> np.ndarray:
        from idfer_jax import pretrained

        node = pretrained.load_tree(self.kind, self.path)
        for key in (*self.prefix, leaf):
            node = node[key]
        return np.asarray(node)


def child(source: WeightSource | None, name: str) -> WeightSource | None:
    return None if source is None else source.child(name)


def initializer(source: WeightSource | None, leaf: str, default: Initializer) -> Initializer:
    """``default`` without a source; else an initializer returning the stored ``leaf`` (shape checked)."""
    if source is None:
        return default

    def init(key, shape, dtype=jnp.float32):
        del key
        if _SHAPES_ONLY.get():
            return jnp.zeros(shape, dtype)
        value = source.value(leaf)
        if tuple(value.shape) != tuple(shape):
            raise ValueError(
                f"pretrained {source.kind} parameter {'/'.join((*source.prefix, leaf))} has shape "
                f"{value.shape}, the module expects {tuple(shape)}"
            )
        return jnp.asarray(value, dtype)

    return init


def frozen(module_cls: type[nn.Module], initializing: bool) -> type[nn.Module]:
    """``module_cls`` whose parameters are read through ``stop_gradient``: it still passes gradients to
    its input (a generator upstream still learns), but its own parameters get none, so XLA drops their
    weight-gradient convolutions. The optimizer keeps them bit-identical (``train.optim`` masks them:
    weight decay would move them otherwise). ``initializing``: the calling module's
    ``self.is_initializing()`` (the parameters are created, then read through the stop).
    """
    return nn.map_variables(
        module_cls, "params", trans_in_fn=lambda tree: jax.tree_util.tree_map(jax.lax.stop_gradient, tree),
        init=initializing,
    )
