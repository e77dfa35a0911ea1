"""Measures how strong identity and expression are as factors of the synthetic faces.

1. Prepare time of the config (rendering, PNG encoding and array_record writing), unless already prepared.
2. Identity strength: 1-nearest-neighbour subject classification on raw pixels (32x32 colour, each image
   standardised) with a random 50/50 split of every subject's images; compared with chance 1/num_subjects.
3. Expression learnability: a small CNN (3 conv + dense, flax.linen + Adam) trained on the images of 3/4
   of the subjects and tested on the held-out 1/4; compared with chance 1/7.

    PYTHONPATH=. python scripts/measure_synthetic_faces.py [--config=64px] [--data_dir=DIR]

Without ``--data_dir`` the dataset is prepared into a temporary directory (and deleted afterwards).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

import numpy as np

from idfer_jax.data.synthetic_faces import EXPRESSIONS


def prepare(config: str, data_dir: str) -> float | None:
    """Prepares ``synthetic_faces/<config>``; returns the wall time, or None if it was already there."""
    import tensorflow_datasets as tfds

    import idfer_jax.data.synthetic_faces  # noqa: F401  (registers the builder)

    builder = tfds.builder(f'synthetic_faces/{config}', data_dir=data_dir)
    if builder.is_prepared():
        return None
    start = time.perf_counter()
    builder.download_and_prepare(file_format='array_record')
    return time.perf_counter() - start


def load(config: str, data_dir: str) -> dict[str, np.ndarray]:
    """Reads every example through ``tfds.data_source`` (random access, no TensorFlow)."""
    import tensorflow_datasets as tfds

    source = tfds.data_source(f'synthetic_faces/{config}', split='train', data_dir=data_dir)
    examples = [source[i] for i in range(len(source))]
    return {key: np.stack([ex[key] for ex in examples]) for key in examples[0]}


def nearest_neighbour_identity(images: np.ndarray, subjects: np.ndarray, seed: int) -> float:
    """Subject accuracy of 1-NN on standardised 32x32 colour pixels, split 50/50 within subjects."""
    x = images.astype(np.float32)
    factor = x.shape[1] // 32
    if factor > 1:
        x = x[:, :32 * factor, :32 * factor].reshape(len(x), 32, factor, 32, factor, 3).mean((2, 4))
    x = x.reshape(len(x), -1)
    x = (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-6)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(x), bool)
    for s in np.unique(subjects):
        idx = rng.permutation(np.flatnonzero(subjects == s))
        test[idx[: len(idx) // 2]] = True
    xtr, ytr, xte, yte = x[~test], subjects[~test], x[test], subjects[test]
    # Squared distances via the dot product (all vectors have the same norm after standardising).
    nearest = np.argmax(xte @ xtr.T, axis=1)
    return float(np.mean(ytr[nearest] == yte))


def train_expression_cnn(images: np.ndarray, labels: np.ndarray, subjects: np.ndarray, *,
                         epochs: int, batch_size: int, seed: int) -> dict[str, float]:
    """Trains a small CNN on 3/4 of the subjects and tests expression accuracy on the rest."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    class SmallCNN(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array, train: bool) -> jax.Array:
            # Strided convolutions keep one epoch to seconds on a laptop CPU.
            for features in (32, 64, 128):
                x = nn.relu(nn.Conv(features, (3, 3), strides=(2, 2))(x))
            x = x.reshape(x.shape[0], -1)
            x = nn.Dropout(0.3, deterministic=not train)(x)
            x = nn.relu(nn.Dense(128)(x))
            return nn.Dense(7)(x)

    rng = np.random.default_rng(seed)
    ids = rng.permutation(np.unique(subjects))
    held_out = ids[: len(ids) // 4]
    test = np.isin(subjects, held_out)
    x = images.astype(np.float32) / 127.5 - 1
    xtr, ytr, xte, yte = x[~test], labels[~test], x[test], labels[test]

    model = SmallCNN()
    key = jax.random.PRNGKey(seed)
    params = model.init(key, jnp.zeros((1,) + x.shape[1:]), train=False)['params']
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, xb, yb, key):
        def loss_fn(p):
            logits = model.apply({'params': p}, xb, train=True, rngs={'dropout': key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def predict(params, xb):
        return jnp.argmax(model.apply({'params': params}, xb, train=False), -1)

    def accuracy(xs: np.ndarray, ys: np.ndarray) -> float:
        preds = np.concatenate([np.asarray(predict(params, xs[i:i + 256]))
                                for i in range(0, len(xs), 256)])
        return float(np.mean(preds == ys))

    start = time.perf_counter()
    steps_per_epoch = len(xtr) // batch_size
    shift = max(1, x.shape[1] // 16)
    for epoch in range(epochs):
        order = rng.permutation(len(xtr))
        losses = []
        for i in range(steps_per_epoch):
            b = order[i * batch_size:(i + 1) * batch_size]
            xb = xtr[b]
            # Mirroring and small shifts keep the expression label.
            flip = rng.random(len(b)) < 0.5
            xb = np.where(flip[:, None, None, None], xb[:, :, ::-1], xb)
            dy, dx = rng.integers(-shift, shift + 1, 2)
            xb = np.roll(xb, (dy, dx), axis=(1, 2))
            key, sub = jax.random.split(key)
            params, opt_state, loss = step(params, opt_state, xb, ytr[b], sub)
            losses.append(float(loss))
        print(f'  epoch {epoch + 1}/{epochs}: loss {np.mean(losses):.3f}, '
              f'held-out accuracy {accuracy(xte, yte):.3f}, {time.perf_counter() - start:.0f} s',
              flush=True)
    seconds = time.perf_counter() - start
    preds = np.concatenate([np.asarray(predict(params, xte[i:i + 256]))
                            for i in range(0, len(xte), 256)])
    confusion = np.zeros((7, 7), int)
    np.add.at(confusion, (yte, preds), 1)
    return {'train_accuracy': accuracy(xtr, ytr), 'test_accuracy': float(np.mean(preds == yte)),
            'seconds': seconds, 'held_out_subjects': len(held_out), 'confusion': confusion}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config', default='64px')
    parser.add_argument('--data_dir', default=None)
    parser.add_argument('--epochs', type=int, default=30)
    parser.add_argument('--batch_size', type=int, default=64)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()

    tmp = None
    data_dir = args.data_dir
    if data_dir is None:
        tmp = data_dir = tempfile.mkdtemp(prefix='synthetic_faces_')
    try:
        seconds = prepare(args.config, data_dir)
        print(f'prepare synthetic_faces/{args.config}: '
              + ('already prepared' if seconds is None else f'{seconds:.1f} s wall'), flush=True)
        data = load(args.config, data_dir)
        n_subjects = len(np.unique(data['subject']))
        print(f'{len(data["image"])} examples, {n_subjects} subjects')

        nn_acc = nearest_neighbour_identity(data['image'], data['subject'], args.seed)
        print(f'identity: 1-NN subject accuracy {nn_acc:.3f} (chance {1 / n_subjects:.3f})',
              flush=True)

        result = train_expression_cnn(data['image'], data['expression'], data['subject'],
                                      epochs=args.epochs, batch_size=args.batch_size,
                                      seed=args.seed)
        print(f'expression: CNN accuracy on {result["held_out_subjects"]} held-out subjects '
              f'{result["test_accuracy"]:.3f} (train {result["train_accuracy"]:.3f}, chance '
              f'{1 / 7:.3f}), {result["seconds"]:.0f} s of training')
        print('confusion on held-out subjects (rows: true, columns: predicted):')
        print(' ' * 10 + ' '.join(f'{name[:5]:>5}' for name in EXPRESSIONS))
        for name, row in zip(EXPRESSIONS, result['confusion'], strict=True):
            print(f'{name:>10}' + ' '.join(f'{n:5d}' for n in row))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
