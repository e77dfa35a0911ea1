"""Whether a generator worked: measures of expression transfer and neutralisation against ground truth.

The synthetic faces store, for every image, its exact neutral face and its exact counterfactual with
another expression (same subject, pose, light and background), so a generated face has a true answer:

- transfer (FERSNet): face-region L1 between G(x, t) and the true counterfactual x_t, beside the
  "copy the input" baseline L1(x, x_t) (a generator that ignores the target scores exactly that); the
  share of transfers that an *independent reader* (an expression classifier trained on the fold's real
  training images only, never on generated ones, and not the generator's own head) reads as t, beside
  the reader's accuracy on the true counterfactuals (its ceiling) and on the real test images;
- neutralisation (IPD-FER): face-region L1 of G_n(x) to the true neutral x_n as a ratio to L1(x, x_n),
  the input's own distance to its neutral (below 1: moved toward the neutral; 0: exact), over
  non-neutral inputs;
- both: the identity network's cosine between each generated face and its source, beside the same
  network's cosine between two real images of the same subject and of different subjects.

[choice] The face region is a centred ellipse (half-axes 0.36 W x 0.44 H, centre 0.02 H below the
middle), which holds the face of an aligned crop and leaves out most of the background, where source and
target agree and every method looks good.

All functions here are numpy (or a small Flax/optax loop for the reader); `train.evaluate` feeds them.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

FACE_REGION = (0.36, 0.44, 0.02)  # half-axes (fractions of W, H) and downward shift of the centre


def face_region(height: int, width: int) -> np.ndarray:
    """(H, W) float32 mask, 1 inside the face ellipse ([choice], module docstring), else 0."""
    ax, ay, shift = FACE_REGION
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    u = (xx + 0.5 - width / 2) / (ax * width)
    v = (yy + 0.5 - height / 2 - shift * height) / (ay * height)
    return (u * u + v * v <= 1.0).astype(np.float32)


def face_l1(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image mean |a - b| over the face region and channels of (N, H, W, C) images in [-1, 1]:
    (N,) float, 0 = equal, 2 = opposite."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    mask = face_region(*a.shape[1:3])[None, :, :, None]
    return np.sum(np.abs(a - b) * mask, axis=(1, 2, 3)) / (mask.sum() * a.shape[-1])


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of (N, D) arrays: (N,) in [-1, 1]."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


def identity_references(embeddings: np.ndarray, subjects: np.ndarray, seed: int = 0) -> dict:
    """Mean cosine between real images of the same subject and of different subjects: the scale on
    which a generated face's cosine to its source is read. Pairs each image with one random other image
    of its subject (if any) and one of another subject (if any)."""
    rng = np.random.default_rng(seed)
    same, other = [], []
    for i, s in enumerate(subjects):
        mine = np.flatnonzero((subjects == s) & (np.arange(len(subjects)) != i))
        rest = np.flatnonzero(subjects != s)
        if len(mine):
            same.append(cosine(embeddings[i:i + 1], embeddings[rng.choice(mine)][None])[0])
        if len(rest):
            other.append(cosine(embeddings[i:i + 1], embeddings[rng.choice(rest)][None])[0])
    return {"identity_cosine_same_subject": float(np.mean(same)) if same else float("nan"),
            "identity_cosine_other_subject": float(np.mean(other)) if other else float("nan")}


class ReaderCNN(nn.Module):
    """The independent expression reader: 3 x (3x3 conv, ReLU, 2x2 max pool) at widths 32/64/128, global
    average pool, dropout-free dense head [choice]. No BatchNorm, so reading a generated face never
    depends on the rest of its batch."""

    num_classes: int

    @nn.compact
    def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
        x = images
        for width in (32, 64, 128):
            x = nn.relu(nn.Conv(width, (3, 3))(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        x = nn.relu(nn.Dense(128)(jnp.mean(x, axis=(1, 2))))
        return nn.Dense(self.num_classes)(x)


def train_reader(images: np.ndarray, labels: np.ndarray, num_classes: int, *, steps: int,
                 batch_size: int = 32, learning_rate: float = 1e-3, seed: int = 0,
                 ) -> Callable[[np.ndarray], np.ndarray]:
    """Trains a `ReaderCNN` on real (N, H, W, C) images in [-1, 1] with int labels (Adam, random
    horizontal flips and 2-px shifts) and returns `read(images) -> (N,) predicted classes`.

    Raises:
      ValueError: with fewer than 2 images or `steps` < 1.
    """
    if len(images) < 2 or steps < 1:
        raise ValueError(f"The reader needs >= 2 training images and >= 1 step; got {len(images)} images "
                         f"and {steps} steps (config.eval.reader_steps).")
    model = ReaderCNN(num_classes)
    rng = np.random.default_rng(seed)
    params = model.init(jax.random.PRNGKey(seed), jnp.asarray(images[:1]))
    optimizer = optax.adam(learning_rate)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss_fn(p):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    batch_size = min(batch_size, len(images))
    pad = 2
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    h, w = images.shape[1:3]
    for _ in range(steps):
        pick = rng.integers(0, len(images), batch_size)
        dy, dx = rng.integers(0, 2 * pad + 1, 2)
        x = padded[pick, dy:dy + h, dx:dx + w]
        flip = rng.random(batch_size) < 0.5
        x[flip] = x[flip, :, ::-1]
        params, opt_state = step(params, opt_state, jnp.asarray(x), jnp.asarray(labels[pick], jnp.int32))

    predict = jax.jit(lambda p, x: jnp.argmax(model.apply(p, x), -1))

    def read(batch: np.ndarray) -> np.ndarray:
        out = [np.asarray(predict(params, jnp.asarray(batch[i:i + 256]))) for i in range(0, len(batch), 256)]
        return np.concatenate(out) if out else np.zeros((0,), np.int64)

    return read
