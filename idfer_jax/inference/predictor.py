"""A trained model, loaded from its workdir, that predicts on new faces: `load(workdir) -> Predictor`.

Loading reads only the workdir: the checkpoint's config and its `inference` record (classes, input,
framing; see `idfer_jax.train.inference_record`) rebuild the method, and orbax restores its variables. No
dataset, no TFDS preparation, no Trainer, no pretrained file (a frozen identity network is part of the
checkpoint).

    predictor = idfer_jax.api.load("workdirs/baseline")
    probabilities = predictor.predict(["face1.png", "face2.jpg"])     # (2, C) float32, rows sum to 1
    predictor.class_names[probabilities.argmax(-1)[0]]

`predict`, `features` and `outputs` run in batches of `batch_size`, jitted once per batch shape (the last
batch is padded up to a power of two, so a folder of any size compiles at most log2(batch_size) + 1 shapes),
split over the host's local devices (data parallel, parameters replicated).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from idfer_jax.errors import UserError
from idfer_jax.train import inference_record as record_lib

DEFAULT_BATCH_SIZE = 64


class ModelLoadError(UserError):
    """The workdir holds no model this version can load; the message says what to do."""


def _tuples(value: Any) -> Any:
    """The saved config went through JSON (tuples became lists): give the config its tuples back."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def config_from_saved(saved: dict) -> ml_collections.ConfigDict:
    """A checkpoint's saved config (JSON) as the locked ConfigDict the run was trained with."""
    config = ml_collections.ConfigDict(_tuples(saved))
    config.lock()
    return config


def checkpoint_steps(workdir: str) -> list[int]:
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def _no_model_message(workdir: str) -> str:
    if not os.path.exists(workdir):
        return f"{workdir} does not exist; give the --workdir of a trained run (where `idfer train` wrote)."
    if not os.path.isdir(workdir):
        return f"{workdir} is a file; give the --workdir directory of a trained run."
    parts = os.path.normpath(os.path.abspath(workdir)).split(os.sep)
    if "checkpoints" in parts[1:]:
        run = os.sep.join(parts[:parts.index("checkpoints", 1)]) or os.sep
        return (f"{workdir} is inside a run's checkpoints folder; give the run's own directory: "
                f"--workdir={run}.")
    runs = sorted({os.path.relpath(root, workdir) for root, dirs, _ in os.walk(workdir)
                   if "checkpoints" in dirs})
    if runs:
        shown = ", ".join(os.path.join(workdir, r) for r in runs[:4]) + (" ..." if len(runs) > 4 else "")
        return (f"{workdir} holds no checkpoint of its own, but {len(runs)} run(s) below it (a crossval or "
                f"sweep): each fold's model saw other subjects, so pick one, e.g. --workdir={shown}.")
    return (f"No checkpoint in {workdir}. Train first: idfer train --config=... --workdir={workdir}.")


def choose_step(workdir: str, step: int | None = None) -> int:
    """`step` if the workdir has that checkpoint, else the newest; ModelLoadError naming what there is."""
    steps = checkpoint_steps(workdir)
    if not steps:
        raise ModelLoadError(_no_model_message(workdir))
    if step is None:
        return steps[-1]
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise ModelLoadError(f"step must be an integer (a checkpoint's step: {', '.join(map(str, steps))}); "
                             f"got {step!r}.")
    if int(step) not in steps:
        raise ModelLoadError(f"{workdir} has no checkpoint at step {step}; it has step(s) "
                             f"{', '.join(map(str, steps))}. Leave out --step for the newest.")
    return int(step)


def read_step(workdir: str, step: int) -> tuple[dict, dict]:
    """(saved config, inference record) of one checkpoint; ModelLoadError when either is missing."""
    step_dir = os.path.join(workdir, "checkpoints", str(step))
    from idfer_jax.train import checkpoint as ckpt_lib

    try:
        saved = ckpt_lib.read_saved_config(step_dir)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"Checkpoint {step} in {workdir} is unreadable (its config: {e}); pass another "
                             "--step, or retrain.") from e
    try:
        record = record_lib.read(step_dir)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"Checkpoint {step} in {workdir}: {e}. Run `idfer evaluate --config=<its "
                             f"training config> --workdir={workdir}` to write it anew, or pass another "
                             "--step.") from e
    if record is None:
        raise ModelLoadError(
            f"Checkpoint {step} in {workdir} was written before checkpoints described themselves: it lacks "
            "the class names in output order, the input size and the framing of its training data. Run "
            f"`idfer evaluate --config=<its training config> --workdir={workdir}` once with the data "
            "present: it adds them to the checkpoint, and the model then loads without the data.")
    return saved, record


@dataclasses.dataclass(eq=False)
class Predictor:
    """A trained model and what using it needs.

    Attributes:
      class_names: the outputs' classes, in order (canonical names: 'happiness', 'surprise', ...).
      image_shape: (H, W, C) of one model input; C is 3 (RGB).
      record: the checkpoint's inference record (`idfer_jax.train.inference_record`): framing, run, ...
      config: the run's config (a locked ConfigDict).
      step: the checkpoint's step.
      workdir: where it was loaded from.
      method: the rebuilt recipe (`Method`); `variables` its restored variables (on the local devices).
    """

    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    record: dict
    config: ml_collections.ConfigDict
    step: int
    workdir: str
    method: Any
    variables: Any
    mesh: jax.sharding.Mesh
    _framers: dict = dataclasses.field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------------------------------------
    # Input

    def preprocess(self, images) -> np.ndarray:
        """Face crops -> the model's input batch, float32 (N, H, W, 3) in [-1, 1] (`uint8 RGB / 127.5 - 1`).

        `images`: one or a sequence of file paths (str / os.PathLike), PIL images or uint8 arrays (H, W),
        (H, W, 1|3|4), or a uint8 batch (N, H, W, C). Each is taken as a face crop: converted to RGB (grey
        repeated, transparency over white), its largest centred square resized (bicubic) to the model's
        size, as the dataset builders prepared the training images. A float32 batch of the model's shape
        with values in [-1, 1] is returned unchanged (already preprocessed). To find and align the faces of
        a photo first, use `faces` (or `idfer predict`, which does both).

        Raises ValueError for an array of another dtype / rank or a float batch out of range, and
        DataError for an unreadable file.
        """
        from idfer_jax.data import face_builder as fb
        from idfer_jax.data import pipeline

        h, w, c = self.image_shape
        if images is None or isinstance(images, (int, float, bytes, dict)):
            raise TypeError(f"images must be a path, a PIL image, a uint8 array or a sequence of them; got "
                            f"{type(images).__name__}.")
        if isinstance(images, np.ndarray) or isinstance(images, jax.Array):
            array = np.asarray(images)
            if array.dtype != np.uint8:
                floats = np.issubdtype(array.dtype, np.floating)
                if array.ndim == 4 and array.shape[1:] == (h, w, c) and floats:
                    if not np.isfinite(array).all():
                        raise ValueError("The float batch holds NaN or infinite values.")
                    low, high = float(array.min(initial=0.0)), float(array.max(initial=0.0))
                    if len(array) and low >= 0.0:
                        # Faces in [-1, 1] have dark pixels below 0; a batch without one is almost surely
                        # images scaled to [0, 1], which would be read as over-bright faces.
                        raise ValueError(
                            "A float batch is taken as already preprocessed, values in [-1, 1], but this one "
                            f"has none below 0 (range [{low:.3g}, {high:.3g}]): images in [0, 1]? Pass "
                            "uint8 images (0..255), or x * 2 - 1.")
                    if low < -1.0 - 1e-3 or high > 1.0 + 1e-3:
                        raise ValueError(
                            "A float batch is taken as already preprocessed, values in [-1, 1]; this one "
                            f"spans [{low:.3g}, {high:.3g}]. Pass uint8 images (0..255) to have them "
                            "normalised.")
                    return array.astype(np.float32)
                raise ValueError(
                    f"Images must be uint8 (0..255) arrays of shape (H, W), (H, W, C) or (N, H, W, C), or an "
                    f"already preprocessed float batch (N, {h}, {w}, {c}) in [-1, 1]; got {array.dtype} "
                    f"{array.shape}.")
            if array.ndim == 4 and array.shape[-1] in (1, 3, 4):
                images = list(array)
            elif array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 3, 4)):
                images = [array]
            else:
                raise ValueError(
                    f"uint8 images must be (H, W), (H, W, C) or (N, H, W, C) with C in 1, 3, 4 (channels "
                    f"last; a batch of grey images is (N, H, W, 1)); got {array.shape}.")
        elif isinstance(images, (str, os.PathLike)) or _is_pil(images):
            images = [images]
        else:
            images = list(images)  # any iterable (a generator too)
        out = np.empty((len(images), h, w, c), np.float32)
        for i, image in enumerate(images):
            if isinstance(image, (str, os.PathLike)):
                image = read_image(image)
            elif isinstance(image, np.ndarray) and (
                    image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1]
                                                                         in (1, 3, 4)))):
                raise ValueError(f"Image {i}: uint8 (H, W) or (H, W, C) with C in 1, 3, 4 expected; got "
                                 f"{image.dtype} {image.shape}.")
            elif not isinstance(image, np.ndarray) and not _is_pil(image):
                raise TypeError(f"Image {i}: a path, a PIL image or a uint8 array expected; got "
                                f"{type(image).__name__}.")
            crop = np.asarray(fb.center_square_resize(fb.to_rgb(image), h))
            out[i] = pipeline.to_model_input(crop)
        return out

    def faces(self, image, *, detect: bool = True, dataset_crop: bool = False):
        """The faces of one photo (a path, a PIL image or a uint8 array), framed as the training data was:
        a list of `faces.Face` (box in the photo's pixels, uint8 crop of the model's size), largest first.
        See `idfer_jax.inference.faces`."""
        if isinstance(image, (str, os.PathLike)):
            image = read_image(image)
        elif not (isinstance(image, np.ndarray) or _is_pil(image)):
            raise TypeError(f"faces() takes one image (a path, a PIL image or a uint8 array); got "
                            f"{type(image).__name__}. For several, call it once per image.")
        return self._framer(detect, dataset_crop).frame(image)

    def _framer(self, detect: bool, dataset_crop: bool = False):
        from idfer_jax.inference import faces as faces_lib

        key = (bool(detect), bool(dataset_crop))
        if key not in self._framers:  # the detector loads its model once
            self._framers[key] = faces_lib.Framer(self.record["framing"], self.image_shape[0], detect=detect,
                                                  dataset_crop=dataset_crop)
        return self._framers[key]

    # ------------------------------------------------------------------------------------------------
    # Output

    def outputs(self, images, *, batch_size: int = DEFAULT_BATCH_SIZE) -> dict[str, np.ndarray]:
        """Every output of the model on `images` (anything `preprocess` takes): 'logits' (N, C) float32,
        'probabilities' (N, C) float32 (softmax of the logits), 'features' (N, D) float32 (the expression
        features the leakage probes read), in input order."""
        batch = self.preprocess(images)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
        chunks: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(batch), int(batch_size)):
            part = batch[start:start + int(batch_size)]
            size = self._padded_size(len(part), int(batch_size))
            padded = np.concatenate([part, np.zeros((size - len(part), *part.shape[1:]), part.dtype)])
            result = jax.device_get(self._apply(self.variables, jax.device_put(padded, self._batch_sharding)))
            for k, v in result.items():
                chunks.setdefault(k, []).append(np.asarray(v[:len(part)], np.float32))
        if not chunks:
            shapes = jax.eval_shape(named_outputs(self.method.apply), self.variables,
                                    jax.ShapeDtypeStruct((1, *self.image_shape), jnp.float32))
            return {k: np.zeros((0, *v.shape[1:]), np.float32) for k, v in shapes.items()}
        return {k: np.concatenate(v) for k, v in chunks.items()}

    def predict(self, images, *, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """Class probabilities, float32 (N, C) in [0, 1], rows summing to 1; columns as `class_names`."""
        return self.outputs(images, batch_size=batch_size)["probabilities"]

    def features(self, images, *, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """The expression features, float32 (N, D)."""
        return self.outputs(images, batch_size=batch_size)["features"]

    # ------------------------------------------------------------------------------------------------

    @property
    def _batch_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, P("data"))

    def _padded_size(self, n: int, batch_size: int) -> int:
        """n rounded up to a power of two (at most the batch size), then to a multiple of the devices."""
        size = min(1 << max(0, n - 1).bit_length(), batch_size) if n < batch_size else batch_size
        size = max(size, n)
        devices = self.mesh.size
        return -(-size // devices) * devices

    @functools.cached_property
    def _apply(self):
        from idfer_jax.models import cpu_kernels

        platform = self.mesh.devices.flat[0].platform
        return jax.jit(cpu_kernels.traced_for(platform, named_outputs(self.method.apply)),
                       in_shardings=(NamedSharding(self.mesh, P()), self._batch_sharding),
                       out_shardings=NamedSharding(self.mesh, P()))

    def __repr__(self) -> str:
        return (f"Predictor({self.record['recipe']}, step {self.step} of {self.workdir}, classes "
                f"{list(self.class_names)}, input {self.image_shape})")


def read_image(path) -> Any:
    """A PIL image of the file at `path`; DataError with a one-line reason when it cannot be read."""
    from idfer_jax.data import face_builder as fb
    from idfer_jax.data.errors import DataError
    from idfer_jax.inference import inputs

    try:
        return fb.read_image(os.fspath(path))
    except Exception as error:  # noqa: BLE001 - any failure to read is the file's, said in one line
        raise DataError(f"Cannot read {os.fspath(path)}: {inputs.image_reason(error)}.") from error


def _is_pil(image) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return False
    return isinstance(image, Image.Image)


def named_outputs(apply_fn):
    """`fn(variables, images) -> {'probabilities', 'logits', 'features'}` of a method's `apply`: float32,
    `probabilities` = softmax(logits) (N, K) in [0, 1], `logits` (N, K), `features` (N, D). What
    `Predictor.outputs` returns and what `export` serves. KeyError when `apply_fn` returns no 'logits' or
    'features'."""

    def serve(variables, images):
        outputs = apply_fn(variables, images)
        missing = [k for k in ("logits", "features") if k not in outputs]
        if missing:
            raise KeyError(f"apply_fn returned {sorted(outputs)}; an exported model needs {missing} too.")
        logits = jnp.asarray(outputs["logits"], jnp.float32)
        return {"probabilities": jax.nn.softmax(logits, axis=-1), "logits": logits,
                "features": jnp.asarray(outputs["features"], jnp.float32)}

    return serve


def load(workdir, step: int | None = None, *, devices: Sequence[jax.Device] | None = None) -> Predictor:
    """The model of one training run (`idfer train --workdir=...`; a crossval fold's `fold_<i>`).

    `step`: a checkpoint's step (default the newest). `devices`: where to run (default this host's local
    devices). Raises ModelLoadError (a UserError: one line saying what to do) for a workdir without a
    checkpoint, a crossval root, or a checkpoint from before checkpoints recorded classes and framing.
    """
    from idfer_jax import methods
    from idfer_jax.data import pipeline
    from idfer_jax.train import checkpoint as ckpt_lib
    from idfer_jax.train import trainer as trainer_lib

    workdir = os.fspath(workdir)
    step = choose_step(workdir, step)
    saved, record = read_step(workdir, step)
    config = config_from_saved(saved)
    spec = record_lib.data_spec(record)
    mesh = trainer_lib.make_mesh(list(devices) if devices is not None else jax.local_devices())
    replicated = NamedSharding(mesh, P())
    method = methods.build(config, spec)
    sample = jax.tree.map(jnp.asarray, pipeline.example_batch(spec, config.data))
    # The checkpoint holds every weight, pretrained ones included: no weights file is read.
    abstract = trainer_lib.abstract_train_state(method, sample, replicated)
    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), save_every=1, keep=1 << 30,
                                         async_save=False, create=False)
    try:
        state = checkpointer.restore_state(step, abstract)
    except Exception as e:  # noqa: BLE001 - any unreadable state: say which checkpoint and what to do
        raise ModelLoadError(f"Checkpoint {step} in {workdir} cannot be read ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200] if str(e) else ''}); pass another --step, or "
                             "retrain.") from e
    finally:
        checkpointer.close()
    variables = {"params": state.params, **state.model_state}
    return Predictor(class_names=tuple(record["class_names"]), image_shape=tuple(record["input"]["shape"]),
                     record=record, config=config, step=step, workdir=workdir, method=method,
                     variables=variables, mesh=mesh)


def model_card(predictor: Predictor) -> dict:
    """What a model card says (`idfer export`): recipe, classes, input, framing, training run, accuracy."""
    card = {"recipe": predictor.record["recipe"], "class_names": list(predictor.class_names),
            "input": predictor.record["input"], "framing": predictor.record["framing"],
            "training": {**predictor.record["run"], "step": predictor.step, "workdir": predictor.workdir}}
    results = os.path.join(predictor.workdir, "eval_results.json")
    try:
        with open(results) as f:
            evaluated = json.load(f)
        if int(evaluated.get("checkpoint_step", -1)) == predictor.step:
            card["accuracy"] = {k: evaluated[k] for k in ("accuracy", "mean_class_accuracy", "chance",
                                                          "num_test_images", "num_test_subjects")
                                if k in evaluated}
            identity, pose = evaluated.get("identity_leakage", {}), evaluated.get("pose_leakage", {})
            for key, value in (("identity_probe_linear", identity.get("linear_acc")),
                               ("identity_probe_mlp", identity.get("mlp_acc")),
                               ("identity_chance", identity.get("chance")),
                               ("verification_auc", evaluated.get("verification_auc")),
                               ("yaw_r2", pose.get("yaw_r2")), ("pitch_r2", pose.get("pitch_r2"))):
                if value is not None:
                    card["accuracy"][key] = value
    except (OSError, ValueError, AttributeError):
        pass
    framing, run = predictor.record["framing"], predictor.record["run"]
    card["limitations"] = [
        f"Trained on {run.get('num_train', '?')} images of {run.get('dataset', '?')} "
        f"({framing['description']}); accuracy and leakage above are for that dataset's held-out subjects "
        "only. Faces framed otherwise, other people, lighting, cameras or spontaneous expressions were not "
        "measured.",
        "Identity and pose leakage: the expression features may still tell who the person is or how the head "
        "is turned (the probe numbers above, beside chance).",
        "For research. The licence of the training data governs the use of the model (CK+, JAFFE, KDEF, "
        "RAF-DB, AffectNet and most FER sets are research-only).",
    ]
    return card
