"""A trained model as a TensorFlow SavedModel or a TFLite file, checked in its own runtime, with a card.

Everything here is written against one small interface, so it serves every recipe:

    apply_fn(variables, images) -> dict   pure JAX; `images` float32 (N, H, W, C) RGB in [-1, 1];
                                          returns at least 'logits' (N, K) and 'features' (N, D)
    variables                             the pytree of arrays `apply_fn` reads (params, batch stats)

Both formats serve `serving_function(apply_fn)`: one input `images` float32 [N, H, W, C] RGB in [-1, 1],
three outputs `probabilities` (softmax of the logits, float32 (N, K)), `logits` float32 (N, K) and
`features` float32 (N, D), under those names.

- SavedModel: `jax2tf.convert` with jax2tf's native serialization (the only one jax 0.10 has: its
  `convert` drops `native_serialization` / `enable_xla` with a DeprecationWarning, so there is no
  non-native `enable_xla=False` path to fall back to),
  lowered for CPU only (`native_serialization_platforms=('cpu',)`, see `PLATFORMS`), the batch dimension
  symbolic, the weights `tf.Variable`s (the jax2tf README's pattern: the graph holds one `XlaCallModule`
  op and the weights are checkpoint variables, not graph constants).
- TFLite: the same concrete function through `tf.lite.TFLiteConverter.from_concrete_functions`, which
  legalises the StableHLO inside `XlaCallModule` to TFLite builtin ops (no Flex / TF select ops), float32,
  at a fixed batch of 1 by default: measured on the baseline smoke model (48 px, 2 cores, LiteRT 2.3),
  11,600 images/s at batch 1 against 1,700 for the same model with a dynamic batch (2,000 at batch 32):
  a symbolic batch adds shape arithmetic (SHAPE, BROADCAST_TO, UNSORTED_SEGMENT_PROD) around the layers
  and, presumably, keeps XNNPACK from delegating the dynamic tensors.
  `run_tflite` runs any number of images one batch at a time. `batch_size=None` keeps the batch
  dynamic (-1 in the input's shape signature) where the converter can: a model that slices an array
  (FERSNet, PHANet) lowers the slice to a `dynamic_gather` under a symbolic batch, which the converter
  refuses, and is then exported at batch 1 all the same.
- Both trace the plain XLA convolution and max-pool (`serving_function`), not the CPU-only kernels.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from idfer_jax.errors import UserError
from idfer_jax.inference.predictor import named_outputs

FORMATS = ("saved_model", "tflite")
INPUT_NAME = "images"
OUTPUT_NAMES = ("probabilities", "logits", "features")
SIGNATURE = "serving_default"
TFLITE_FILENAME = "model.tflite"

# Lowered for CPU only [choice]: a SavedModel lowered for several platforms carries one StableHLO
# module that dispatches on the platform, and the TFLite converter legalises only a single-platform
# module; CPU is where TF Serving / TFLite of a model this size runs. ('cpu', 'cuda') works for the
# SavedModel alone; a GPU TF would otherwise refuse to run a CPU-only XlaCallModule on its GPU, so
# `export_saved_model(..., platforms=('cpu', 'cuda'))` is there for that deployment.
PLATFORMS = ("cpu",)

# The largest max |exported - JAX| allowed per output, per format, on inputs in [-1, 1] (float32).
# Measured (tests/test_export.py, the six recipes' smoke models at random init, 48 px, batches 1 and 5,
# two rendered faces + uniform noise, JAX on XLA:CPU with its CPU kernels as reference): SavedModel
# probabilities <= 9e-8, logits <= 6e-7, features <= 1e-6 (FERSNet; 0 for most: the same XLA CPU
# kernels); TFLite (LiteRT 2.3, XNNPACK) probabilities <= 3e-7, logits <= 1.3e-6, features <= 1.4e-6.
# The tolerances leave ~100-1000x headroom for trained weights (logits and features scale with their
# magnitude) and other CPUs' vector widths, and stay far below what changes a prediction.
TOLERANCES = {
    "saved_model": {"probabilities": 1e-4, "logits": 1e-3, "features": 1e-3},
    "tflite": {"probabilities": 1e-3, "logits": 1e-2, "features": 1e-2},
}


class ExportMismatchError(RuntimeError):
    """An exported model's outputs differ from JAX's by more than `TOLERANCES` (a converter bug or an
    op the runtime computes differently): the message names the format, the outputs and the measures."""


def serving_function(apply_fn: Callable[[Any, jax.Array], Mapping[str, jax.Array]]
                     ) -> Callable[[Any, jax.Array], dict[str, jax.Array]]:
    """`fn(variables, images) -> {'probabilities', 'logits', 'features'}`, pure JAX, what both formats
    export.

    `images` float32 (N, H, W, C) RGB in [-1, 1]; `probabilities` = softmax(logits) float32 (N, K) in
    [0, 1] summing to 1 per row; `logits` float32 (N, K); `features` float32 (N, D). It traces the
    plain XLA operations (`cpu_kernels.traced_for('portable')`), not the CPU-only kernels of
    `idfer_jax.models.cpu_kernels`: their strided slices become a `dynamic_gather` under a symbolic
    batch, which the TFLite converter refuses ("'vhlo.dynamic_gather_v1' op is not part of the vhlo
    support yet"), while a plain convolution / max-pool becomes TFLite's own CONV_2D / MAX_POOL_2D.
    KeyError when `apply_fn` returns no 'logits' or 'features'."""
    from idfer_jax.models import cpu_kernels

    return cpu_kernels.traced_for("portable", named_outputs(apply_fn))


# --------------------------------------------------------------------------------------------------
# Conversion


def _check_image_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(d) for d in image_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image_shape must be (H, W, C) of positive sizes; got {tuple(image_shape)}.")
    return shape  # type: ignore[return-value]


def _export(fn, variables, image_shape, batch: int | str):
    """`jax.export` of `fn` on the variables' flattened leaves and a (batch, H, W, C) float32 image;
    `batch` an int, or a name for a symbolic batch. Returns (exported, leaves as numpy, treedef)."""
    leaves, treedef = jax.tree.flatten(variables)
    leaves = [np.asarray(leaf) for leaf in leaves]
    specs = [jax.ShapeDtypeStruct(leaf.shape, leaf.dtype) for leaf in leaves]
    h, w, c = image_shape
    shape = (jax.export.symbolic_shape(f"{batch}, {h}, {w}, {c}") if isinstance(batch, str)
             else (batch, h, w, c))
    image_spec = jax.ShapeDtypeStruct(shape, jnp.float32)
    exported = jax.export.export(jax.jit(lambda flat, images: fn(jax.tree.unflatten(treedef, flat), images)),
                                 platforms=PLATFORMS)(specs, image_spec)
    return exported, leaves, treedef


def _kept_leaves(fn, variables, image_shape) -> tuple[list[np.ndarray], Any, tuple[int, ...]]:
    """The variables' leaves as numpy, their treedef, and the indices of those `fn` reads.

    A recipe's variables hold more than inference reads (a GAN's discriminator, a frozen identity
    network used only by a loss): exporting them would only grow the file. `jax.export` keeps exactly
    the arguments the lowered module reads (`module_kept_var_idx`), which tells which leaves to keep;
    it does so only for static shapes (with a symbolic one it keeps every argument), hence batch 1."""
    exported, leaves, treedef = _export(fn, variables, image_shape, 1)
    # Argument indices count the flattened (leaves..., images); the images are the last one.
    kept = tuple(i for i in exported.module_kept_var_idx if i < len(leaves))
    return leaves, treedef, kept


def _tf_module(apply_fn, variables, image_shape, platforms: Sequence[str] = PLATFORMS, *,
               batch_size: int | None = None):
    """A `tf.Module` whose `serve` is the converted serving function with its weights as variables;
    a symbolic batch when `batch_size` is None, else that fixed batch."""
    import tensorflow as tf
    from jax.experimental import jax2tf

    h, w, c = _check_image_shape(image_shape)
    fn = serving_function(apply_fn)
    leaves, treedef, kept = _kept_leaves(fn, variables, (h, w, c))
    dropped = {i: (leaf.shape, leaf.dtype) for i, leaf in enumerate(leaves) if i not in kept}

    def on_kept(kept_leaves, images):
        # Leaves the model never reads are zeros of their shape here: dead code XLA removes.
        it = iter(kept_leaves)
        flat = [jnp.zeros(*dropped[i]) if i in dropped else next(it) for i in range(len(leaves))]
        return fn(jax.tree.unflatten(treedef, flat), images)

    converted = jax2tf.convert(
        on_kept,
        # The batch is symbolic (any N >= 1 runs); the weights' shapes are fixed.
        polymorphic_shapes=[None, f"(b, {h}, {w}, {c})"] if batch_size is None else None,
        with_gradient=False,  # inference only: no custom gradient, no VJP module in the graph
        native_serialization_platforms=tuple(platforms),
    )
    module = tf.Module()
    # A list attribute of a tf.Module is tracked: the SavedModel stores these as checkpoint variables.
    module.weights = [tf.Variable(leaves[i], trainable=False, name=f"w{i}") for i in kept]

    @tf.function(autograph=False,
                 input_signature=[tf.TensorSpec([batch_size, h, w, c], tf.float32, name=INPUT_NAME)])
    def serve(images):
        return converted(list(module.weights), images)

    module.serve = serve
    return module


def export_saved_model(apply_fn, variables, image_shape: Sequence[int], directory: str | os.PathLike,
                       *, platforms: Sequence[str] = PLATFORMS) -> str:
    """Writes a TensorFlow SavedModel of `serving_function(apply_fn)` to `directory`; returns its path.

    Its `serving_default` signature takes `images` float32 [None, H, W, C] (any batch, RGB in [-1, 1],
    `image_shape` = (H, W, C)) and returns `probabilities`, `logits` (float32 [None, K]) and `features`
    (float32 [None, D]). The computation is one `XlaCallModule` op (jax2tf native serialization) lowered
    for `platforms` (default CPU only, `PLATFORMS`); the weights are variables. ValueError for a bad
    `image_shape`; jax2tf's errors for a function it cannot lower with a symbolic batch."""
    import tensorflow as tf

    module = _tf_module(apply_fn, variables, image_shape, platforms)
    directory = os.fspath(directory)
    tf.saved_model.save(module, directory,
                        signatures={SIGNATURE: module.serve.get_concrete_function()},
                        options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
    return directory


# StableHLO ops of a symbolic-batch function the TFLite converter (TF 2.21) cannot legalise: any
# `x[..., a:b]` on a symbolic-batch array lowers to a `dynamic_gather` (jnp refuses a static slice of
# a polymorphic shape), refused with "'vhlo.dynamic_gather_v1' op is not part of the vhlo support yet"
# (FERSNet's split of its joint features, `models/fersnet.py`; PHANet).
_TFLITE_DYNAMIC_REFUSED = ("stablehlo.dynamic_gather",)


def export_tflite(apply_fn, variables, image_shape: Sequence[int], path: str | os.PathLike, *,
                  batch_size: int | None = 1) -> str:
    """Writes a float32 TFLite flatbuffer of `serving_function(apply_fn)` to `path`; returns the path.

    Builtin TFLite ops only (the converter fails rather than adding Flex ops). One signature,
    `serving_default`: input `images` float32 [B, H, W, C] (RGB in [-1, 1]), outputs `probabilities`,
    `logits`, `features` as in `export_saved_model`. The batch B is `batch_size` (default 1: the
    ~6x faster than a dynamic batch, see the module docstring); with None it is
    dynamic (-1 in the input's shape signature; `run_tflite` resizes the input to each chunk) when the
    model lowers without an op TFLite refuses under a symbolic batch (`_TFLITE_DYNAMIC_REFUSED`), else
    1. `tflite_batch_size(path)` says which a file has. ValueError for a batch_size < 1; the converter's
    error (naming the op) when it cannot legalise an op to TFLite builtins."""
    import tensorflow as tf

    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size must be None (dynamic) or >= 1; got {batch_size}.")
    if batch_size is None:
        exported, _, _ = _export(serving_function(apply_fn), variables, _check_image_shape(image_shape), "b")
        stablehlo = exported.mlir_module()
        batch_size = 1 if any(op in stablehlo for op in _TFLITE_DYNAMIC_REFUSED) else None
    module = _tf_module(apply_fn, variables, image_shape, PLATFORMS,
                        batch_size=None if batch_size is None else int(batch_size))
    function = module.serve.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.optimizations = []  # float32 weights and activations: no quantisation
    model = converter.convert()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model)
    return str(path)


# --------------------------------------------------------------------------------------------------
# Running the exported files


def _check_images(images) -> np.ndarray:
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[0] < 1:
        raise ValueError(f"images must be float32 (N, H, W, C) with N >= 1; got shape {images.shape}.")
    return images


def run_saved_model(directory: str | os.PathLike, images) -> dict[str, np.ndarray]:
    """The SavedModel's `serving_default` on `images` (float32 (N, H, W, C), RGB in [-1, 1]) in
    TensorFlow: {'probabilities', 'logits', 'features'} as float32 numpy arrays with N rows. TF's
    errors for a missing directory or a shape the signature refuses."""
    import tensorflow as tf

    loaded = tf.saved_model.load(os.fspath(directory))
    outputs = loaded.signatures[SIGNATURE](**{INPUT_NAME: tf.constant(_check_images(images))})
    return {name: value.numpy() for name, value in outputs.items()}


@contextlib.contextmanager
def _quiet_tf_lite_deprecation() -> Iterator[None]:
    # tf.lite.Interpreter warns (TF >= 2.20) that it moves to ai_edge_litert; only that warning is hidden.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*tf\.lite\.Interpreter is deprecated.*")
        warnings.filterwarnings("ignore", message=r".*ai.edge.litert.*", category=UserWarning)
        yield


def tflite_interpreter(path: str | os.PathLike, *, num_threads: int | None = None):
    """An interpreter of the file at `path`: LiteRT's (`ai_edge_litert`, the `export` extra) when
    installed, else TensorFlow's deprecated `tf.lite.Interpreter`. ValueError for an unreadable file."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        with _quiet_tf_lite_deprecation():
            return tf.lite.Interpreter(model_path=os.fspath(path), num_threads=num_threads)
    return Interpreter(model_path=os.fspath(path), num_threads=num_threads)


def runtime_name() -> str:
    """Which TFLite runtime `run_tflite` uses here, with its version ('ai-edge-litert 2.3.0')."""
    try:
        import ai_edge_litert
    except ImportError:
        import tensorflow as tf

        return f"tf.lite {tf.__version__}"
    from importlib.metadata import version

    return f"ai-edge-litert {getattr(ai_edge_litert, '__version__', None) or version('ai-edge-litert')}"


def _input_batch(interpreter) -> int | None:
    """The fixed batch of the interpreter's `images` input, or None for a dynamic one (-1)."""
    detail = interpreter.get_signature_runner(SIGNATURE).get_input_details()[INPUT_NAME]
    batch = int(detail["shape_signature"][0])
    return None if batch < 0 else batch


def tflite_batch_size(path: str | os.PathLike) -> int | None:
    """The batch a TFLite file from `export_tflite` takes: None when dynamic, else its fixed size."""
    return _input_batch(tflite_interpreter(path))


def run_tflite(path: str | os.PathLike, images, *, batch_size: int = 1,
               interpreter=None) -> dict[str, np.ndarray]:
    """The TFLite model at `path` on `images` (float32 (N, H, W, C), RGB in [-1, 1]), `batch_size`
    images per invocation (a dynamic-batch model's input is resized to each chunk; a fixed-batch model
    takes chunks of its own batch, the last one padded): {'probabilities', 'logits', 'features'} as
    float32 numpy arrays with N rows, by output name. Reuses `interpreter` when given (from
    `tflite_interpreter`). ValueError for a bad `batch_size` or images."""
    images = _check_images(images)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
    interpreter = interpreter or tflite_interpreter(path)
    fixed = _input_batch(interpreter)
    step = fixed or batch_size
    runner = interpreter.get_signature_runner(SIGNATURE)  # resizes its input to each call's shape
    chunks: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(images), step):
        chunk = images[start:start + step]
        n = len(chunk)
        if fixed and n < fixed:
            chunk = np.concatenate([chunk, np.zeros((fixed - n, *chunk.shape[1:]), np.float32)])
        outputs = runner(**{INPUT_NAME: chunk})
        for name, value in outputs.items():
            chunks.setdefault(name, []).append(np.array(value[:n]))  # a copy: the buffer is reused
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


def time_tflite(path: str | os.PathLike, images, repeats: int = 5) -> float:
    """Images per second of the TFLite model at batch 1: the median over `repeats` passes over
    `images` (float32 (N, H, W, C)), after one warm-up image (allocation, kernel set-up). ValueError
    for a file with a fixed batch other than 1."""
    images = _check_images(images)
    interpreter = tflite_interpreter(path)
    if _input_batch(interpreter) not in (None, 1):
        raise ValueError(f"{path} takes a fixed batch of {_input_batch(interpreter)}, not 1.")
    runner = interpreter.get_signature_runner(SIGNATURE)
    for image in images[:1]:
        runner(**{INPUT_NAME: image[None]})
    rates = []
    for _ in range(max(1, int(repeats))):
        start = time.perf_counter()
        for image in images:
            runner(**{INPUT_NAME: image[None]})
        rates.append(len(images) / (time.perf_counter() - start))
    return float(statistics.median(rates))


# --------------------------------------------------------------------------------------------------
# Checking against JAX


def max_abs_differences(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> dict[str, float]:
    """max |actual - expected| per output of `OUTPUT_NAMES` (inf for a missing output or a shape
    mismatch, so the check fails rather than broadcasts)."""
    out = {}
    for name in OUTPUT_NAMES:
        a = np.asarray(actual[name], np.float64) if name in actual else None
        e = np.asarray(expected[name], np.float64)
        out[name] = (float(np.max(np.abs(a - e))) if a is not None and a.shape == e.shape else math.inf)
    return out


def check_export(fmt: str, path: str | os.PathLike, apply_fn, variables, images, *,
                 tolerances: Mapping[str, float] | None = None, batch_size: int | None = None
                 ) -> dict[str, float]:
    """Runs the exported `fmt` file at `path` on `images` (float32 (N, H, W, C), RGB in [-1, 1]) in its
    own runtime (TensorFlow for 'saved_model', the TFLite interpreter for 'tflite', `batch_size` images
    per call, default all at once) and returns max |exported - JAX| per output name.

    Raises ExportMismatchError when any output differs by more than its tolerance: by default
    `TOLERANCES[fmt]` (SavedModel: probabilities 1e-4, logits / features 1e-3; TFLite: 1e-3 and 1e-2;
    the measured differences are ~50x smaller, see `TOLERANCES`). ValueError for an unknown `fmt`."""
    if fmt not in FORMATS:
        raise ValueError(f"Unknown export format {fmt!r}; use one of {', '.join(FORMATS)}.")
    images = _check_images(images)
    # The reference is the model as JAX runs it here (this platform's kernels), so the measure covers
    # the portable kernels' reassociation as well as the conversion.
    expected = jax.tree.map(np.asarray, jax.jit(named_outputs(apply_fn))(variables, images))
    if fmt == "saved_model":
        actual = run_saved_model(path, images)
    else:
        actual = run_tflite(path, images, batch_size=batch_size or len(images))
    differences = max_abs_differences(expected, actual)
    limits = dict(TOLERANCES[fmt] if tolerances is None else tolerances)
    over = {k: v for k, v in differences.items() if not v <= limits.get(k, math.inf)}
    if over:
        raise ExportMismatchError(
            f"The {fmt} export at {path} differs from the JAX model by more than the tolerance: "
            + ", ".join(f"{k} {v:.3g} > {limits[k]:g}" for k, v in over.items())
            + f" (max abs difference over {len(images)} images).")
    return differences


# --------------------------------------------------------------------------------------------------
# Model card


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_format_value(v) for v in value) + ")"
    return str(value)


def _table(rows: Mapping[str, Any]) -> list[str]:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {key} | {_format_value(value)} |" for key, value in rows.items()]
    return lines


_INPUT_KEYS = ("shape", "dtype", "range", "normalisation", "channel_order")
_TRAINING_KEYS = ("dataset", "protocol", "fold", "num_train", "steps", "config_hash")


def _ordered(block: Mapping[str, Any], first: Sequence[str]) -> dict[str, Any]:
    """`block` with the keys of `first` first (those present), then the rest in their own order."""
    head = {k: block[k] for k in first if k in block}
    return {**head, **{k: v for k, v in block.items() if k not in head}}


def render_model_card(card: Mapping[str, Any]) -> str:
    """The card as Markdown: one section per key present (`recipe`, `class_names`, `input`,
    `framing`, `training`, `accuracy`, `export`); any other key is listed at the end as is."""
    lines = [f"# Model card: {card.get('recipe', 'idfer_jax model')}", ""]
    if "recipe" in card:
        lines += [f"Recipe: `{card['recipe']}` (idfer_jax). Outputs `probabilities` (softmax), `logits` "
                  "and `features`, one row per image.", ""]
    if card.get("class_names"):
        lines += ["## Classes (in output order)", ""]
        lines += [f"{i}. {name}" for i, name in enumerate(card["class_names"])] + [""]
    if card.get("input"):
        lines += ["## Input", ""] + _table(_ordered(card["input"], _INPUT_KEYS)) + [""]
    if card.get("framing"):
        framing = card["framing"]
        lines += ["## Framing", ""]
        if "description" in framing:
            lines += [str(framing["description"]), ""]
        rest = {k: v for k, v in framing.items() if k != "description"}
        lines += (_table(rest) + [""]) if rest else []
    if card.get("training"):
        lines += ["## Training", ""] + _table(_ordered(card["training"], _TRAINING_KEYS)) + [""]
    if "accuracy" in card:
        lines += ["## Accuracy and leakage (held-out subjects of the training run's test fold)", ""]
        lines += (_table(card["accuracy"]) if card["accuracy"] else ["Not measured for this model."]) + [""]
    if card.get("limitations"):
        lines += ["## Intended use and limitations", ""]
        lines += [f"- {item}" for item in card["limitations"]] + [""]
    if card.get("export"):
        lines += ["## Exported files", "", "| format | file | size (bytes) | max abs difference to JAX "
                  "| runtime | batch | images/s at batch 1 |", "|---|---|---|---|---|---|---|"]
        for fmt, entry in card["export"].items():
            difference = entry.get("max_abs_difference")
            if isinstance(difference, Mapping):
                difference = ", ".join(f"{k} {_format_value(v)}" for k, v in difference.items())
            lines.append(f"| {fmt} | {entry.get('file', '')} | {entry.get('size_bytes', '')} | "
                         f"{'' if difference is None else _format_value(difference)} | "
                         f"{entry.get('runtime', '')} | {entry.get('batch', 'any')} | "
                         f"{entry.get('images_per_second_batch_1', '')} |")
        lines.append("")
    known = {"recipe", "class_names", "input", "framing", "training", "accuracy", "limitations", "export"}
    extra = {k: v for k, v in card.items() if k not in known}
    if extra:
        lines += ["## Other", ""] + _table(extra) + [""]
    return "\n".join(lines)


def write_model_card(directory: str | os.PathLike, card: Mapping[str, Any]) -> tuple[str, str]:
    """Writes `model_card.json` (`card` as is, JSON; numpy scalars and tuples become numbers and lists)
    and `model_card.md` (`render_model_card`) in `directory` (created); returns (md_path, json_path).
    TypeError for a value JSON cannot hold."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / "model_card.json", directory / "model_card.md"

    def default(value):
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
        raise TypeError(f"model card value of type {type(value).__name__} is not JSON: {value!r}")

    json_path.write_text(json.dumps(card, indent=2, default=default) + "\n")
    md_path.write_text(render_model_card(card))
    return str(md_path), str(json_path)


# --------------------------------------------------------------------------------------------------
# A loaded model (`idfer_jax.inference.predictor.Predictor`), as `idfer export` writes it


class ExportExistsError(UserError, FileExistsError):
    """The export's file or folder already exists (nothing a user made is overwritten)."""


CHECK_FACES = 16  # rendered faces checked when the user gives no images


def rendered_faces(size: int, count: int = CHECK_FACES) -> np.ndarray:
    """`count` procedurally rendered faces (`idfer_jax.data.synthetic_faces`' renderer, every expression,
    several subjects and poses), uint8 (count, size, size, 3): inputs any export can be checked on without
    data."""
    from idfer_jax.data import synthetic_factors, synthetic_render

    config = synthetic_factors.SyntheticFacesConfig(name="check", resolution=size)
    step = max(1, config.num_examples // count)
    return np.stack([synthetic_render.render(synthetic_factors.sample_example_factors(config, i * step), size)
                     for i in range(count)])


def export_predictor(predictor, directory: str | os.PathLike, fmt: str, *, check_images=()) -> dict:
    """Writes `predictor`'s model in `fmt` under `directory` (`saved_model/` or `model.tflite`), checks it in
    its own runtime against JAX on `check_images` (paths or arrays `Predictor.preprocess` takes; default:
    `rendered_faces`), and writes `model_card.md` / `.json` beside it (updated when another format is
    exported to the same folder). Returns the card's entry for this format, with a `summary` line.

    Raises ExportExistsError when the file or folder to write exists, ExportMismatchError when the export
    disagrees with JAX beyond `TOLERANCES`, ValueError for an unknown format."""
    from idfer_jax.inference import predictor as predictor_lib

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}.")
    directory = os.fspath(directory)
    target = os.path.join(directory, "saved_model" if fmt == "saved_model" else TFLITE_FILENAME)
    if os.path.lexists(target):
        raise ExportExistsError(f"{target} exists; choose another --output folder or remove it (idfer export "
                                "never overwrites).")
    card = predictor_lib.model_card(predictor)
    exports = _earlier_exports(directory, card)
    images = predictor.preprocess(_read_check_images(check_images) if len(check_images) else
                                  rendered_faces(predictor.image_shape[0]))
    os.makedirs(directory, exist_ok=True)
    apply_fn, variables, shape = predictor.method.apply, predictor.variables, predictor.image_shape
    variables = jax.device_get(variables)
    if fmt == "saved_model":
        export_saved_model(apply_fn, variables, shape, target)
        size = sum(p.stat().st_size for p in pathlib.Path(target).rglob("*") if p.is_file())
    else:
        export_tflite(apply_fn, variables, shape, target)
        size = os.path.getsize(target)
    differences = check_export(fmt, target, apply_fn, variables, images)
    entry = {"file": os.path.relpath(target, directory), "size_bytes": int(size),
             "max_abs_difference": differences, "tolerance": TOLERANCES[fmt],
             "checked_on": (f"{len(images)} given images" if len(check_images) else
                            f"{len(images)} rendered faces"),
             "runtime": "TensorFlow " + _tf_version() if fmt == "saved_model" else runtime_name()}
    if fmt == "tflite":
        entry["batch"] = tflite_batch_size(target) or "dynamic"
        entry["images_per_second_batch_1"] = round(time_tflite(target, images, repeats=3), 1)
    card["export"] = {**exports, fmt: entry}
    write_model_card(directory, card)
    worst = max(differences.values())
    entry["summary"] = (f"Exported {predictor.record['recipe']} (step {predictor.step}) to {target} "
                        f"({size / 1e6:.1f} MB); max |difference| from JAX {worst:.2g} on "
                        f"{entry['checked_on']} in {entry['runtime']}; model card: "
                        f"{os.path.join(directory, 'model_card.md')}")
    return entry


def _earlier_exports(directory: str, card: dict) -> dict:
    """The export entries of the card already in `directory` when it describes this same model (run and
    step), so that a second format joins it. ExportExistsError when the folder holds a card of another
    model, or a `model_card.md` idfer did not write (nothing a user made is replaced)."""
    md, js = os.path.join(directory, "model_card.md"), os.path.join(directory, "model_card.json")
    if not os.path.lexists(js):
        if os.path.lexists(md):
            raise ExportExistsError(f"{md} exists and was not written by idfer export; choose another "
                                    "--output folder.")
        return {}
    try:
        with open(js) as f:
            old = json.load(f)
        same = (old["training"]["config_hash"], old["training"]["step"]) == (
            card["training"]["config_hash"], card["training"]["step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ExportExistsError(f"{js} exists and is not a model card of idfer export ({e}); choose another "
                                "--output folder.") from e
    if not same:
        raise ExportExistsError(
            f"{directory} holds the export of another model (run {old['training'].get('config_hash')}, step "
            f"{old['training'].get('step')}); this one is run {card['training']['config_hash']}, step "
            f"{card['training']['step']}. Choose another --output folder.")
    return dict(old.get("export", {}))


def _read_check_images(paths) -> list:
    """The images (files, or every image of a folder) an export is checked on, as uint8 arrays; a
    DataError naming any that cannot be read. Arrays pass through."""
    from idfer_jax.data.errors import DataError
    from idfer_jax.inference import inputs

    if isinstance(paths, np.ndarray):
        return paths
    arrays = [p for p in paths if not isinstance(p, (str, os.PathLike))]
    files, unreadable = inputs.list_inputs([os.fspath(p) for p in paths if isinstance(p, (str, os.PathLike))])
    videos = [f for f in files if inputs.is_video_name(f)]
    if videos:
        raise DataError(f"Export is checked on still images; {videos[0]} is a video.")
    frames = list(inputs.iter_frames(files, unreadable=unreadable))
    if unreadable:
        shown = "; ".join(f"{u.source}: {u.reason}" for u in unreadable[:3])
        raise DataError(f"Cannot use these images to check the export: {shown}. Give image files or folders.")
    images = arrays + [f.image for f in frames]
    if not images:
        raise DataError(f"No image to check the export on in {', '.join(map(str, paths))}.")
    return images


def _tf_version() -> str:
    import tensorflow as tf

    return tf.__version__
