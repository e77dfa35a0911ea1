"""What a checkpoint stores so that the model can be used without its training data.

Every checkpoint `idfer train` writes holds, beside the train state and the config, an `inference` item:
a JSON object (`FORMAT_VERSION` 1) with

- `recipe`: `config.method`;
- `class_names`: the model's outputs, in order;
- `input`: `shape` [H, W, C], `dtype` float32, `range` [-1, 1], `normalisation` ("uint8 RGB / 127.5 - 1"),
  `channels` "RGB" (grey datasets are stored as RGB, so a grey photo is repeated over the 3 channels);
- `framing`: how the training images were framed, which `idfer predict` reproduces on a new photo:
  `kind` is "aligned" (detected and warped onto a 5-point template: `template` and its `template_points`
  in the crop's unit square, see `idfer_jax.data.alignment`), "dataset_crop" (the dataset's own crop,
  optionally a fixed `crop_box` (top, left, bottom, right) of the raw image, then the largest centred square
  resized) or "rendered" (the procedural synthetic faces); `dataset`, `config`, `image_size` and a
  `description` in words;
- `data_spec`: the `DataSpec` the recipe was built for (image shape, classes, training subject ids, pose keys,
  neutral / counterfactual flags), so the method is rebuilt exactly without opening the data;
- `run`: the training run's identity: `config_hash` (sha256 of the saved config, first 16 hex digits),
  `dataset`, `protocol`, `fold`, `num_folds`, `num_train`, `num_test`, `test_subject_names` where the
  protocol has them, `idfer_jax` and `jax` versions.

The step is the checkpoint's own folder name, so one record serves every step of a run.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from typing import Any

FORMAT_VERSION = 1
ITEM = "inference"  # the checkpoint item (a folder of each step, beside `state`, `data`, `config`)
NORMALISATION = "uint8 RGB / 127.5 - 1"
FRAMING_KINDS = ("aligned", "dataset_crop", "rendered")


def config_hash(config_dict: dict) -> str:
    """The first 16 hex digits of the sha256 of the config as JSON (sorted keys): two checkpoints of one run
    share it, and any change of a value changes it."""
    text = json.dumps(config_dict, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def framing_of(data_config, image_shape) -> dict:
    """The `framing` entry for a run's training data (`config.data`)."""
    from idfer_jax.data import datasets
    from idfer_jax.data import face_builder as fb

    name, config_name = str(data_config.name), str(data_config.get("config") or "")
    size = int(image_shape[0])
    out = {"dataset": name, "config": config_name, "image_size": size}
    if name in datasets.NEEDS_NO_DOWNLOAD:
        return {**out, "kind": "rendered", "crop_box": None,
                "description": f"procedurally rendered {size} px faces (the whole image is the face crop)"}
    match = fb.CONFIG_NAME.match(config_name)
    if match and match.group(1):
        from idfer_jax.data import alignment

        template = "default"  # what the face builders align with (`FaceBuilder._aligner`)
        return {**out, "kind": "aligned", "template": template,
                "template_points": alignment.TEMPLATES[template].round(6).tolist(), "crop_box": None,
                "description": datasets.framing(config_name)}
    return {**out, "kind": "dataset_crop", "crop_box": _crop_box(name),
            "description": datasets.framing(config_name)}


def _crop_box(dataset_name: str) -> list[float] | None:
    """The builder's fixed (top, left, bottom, right) crop of the raw image; None when its images are
    crops already."""
    import importlib

    import tensorflow_datasets as tfds

    from idfer_jax.data import datasets

    module = datasets.DATASET_MODULES.get(dataset_name)
    if module is None:
        return None
    importlib.import_module(module)
    try:
        box = getattr(tfds.builder_cls(dataset_name), "CROP_BOX", None)
    except Exception:  # noqa: BLE001 - an unregistered name: no fixed box is known
        return None
    return None if box is None else [float(b) for b in box]


def make_record(config, spec, fold_file: dict) -> dict:
    """The `inference` item of a run's checkpoints: `config` (ConfigDict as trained), its `DataSpec`, and the
    fold file of its split (`Dataset.fold_file`)."""
    import jax

    config_dict = json.loads(json.dumps(config.to_dict(), default=str))
    run = {"config_hash": config_hash(config_dict),
           **{k: fold_file[k] for k in ("dataset", "protocol", "fold", "num_folds", "num_train", "num_test")
              if k in fold_file},
           "idfer_jax": _version("idfer_jax"), "jax": jax.__version__}
    fold = int(fold_file.get("fold", 0))
    names = fold_file.get("test_subject_names")
    if isinstance(names, list) and 0 <= fold < len(names):
        run["test_subject_names"] = names[fold]
    h, w, c = (int(s) for s in spec.image_shape)
    return {
        "format_version": FORMAT_VERSION,
        "recipe": str(config.method),
        "class_names": list(spec.class_names),
        "input": {"shape": [h, w, c], "dtype": "float32", "range": [-1.0, 1.0],
                  "normalisation": NORMALISATION, "channels": "RGB"},
        "framing": framing_of(config.data, spec.image_shape),
        "data_spec": {"image_shape": [h, w, c], "class_names": list(spec.class_names),
                      "train_subjects": [int(s) for s in spec.train_subjects],
                      "pose_keys": list(spec.pose_keys), "has_neutral": bool(spec.has_neutral),
                      "has_counterfactual": bool(spec.has_counterfactual)},
        "run": run,
    }


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def data_spec(record: dict):
    """The `DataSpec` stored in a record."""
    from idfer_jax.data.datasets import DataSpec

    s = record["data_spec"]
    return DataSpec(image_shape=tuple(int(x) for x in s["image_shape"]), class_names=tuple(s["class_names"]),
                    train_subjects=tuple(int(x) for x in s["train_subjects"]),
                    pose_keys=tuple(s["pose_keys"]),
                    has_neutral=bool(s["has_neutral"]), has_counterfactual=bool(s.get("has_counterfactual")))


REQUIRED = ("recipe", "class_names", "input", "framing", "data_spec", "run")


def check(record: dict) -> None:
    """ValueError naming what is wrong with a record that was edited or damaged: a missing entry, classes
    or input shape that disagree with the `data_spec` the model was built for, an unknown framing."""
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise ValueError(f"it lacks {', '.join(missing)}")
    spec = record["data_spec"]
    for key in ("image_shape", "class_names", "train_subjects", "pose_keys", "has_neutral"):
        if key not in spec:
            raise ValueError(f"its data_spec lacks {key}")
    if list(record["class_names"]) != list(spec["class_names"]):
        raise ValueError(f"its class_names {record['class_names']} differ from the model's "
                         f"{spec['class_names']}")
    shape = record["input"].get("shape") if isinstance(record["input"], dict) else None
    if shape is None or [int(x) for x in shape] != [int(x) for x in spec["image_shape"]]:
        raise ValueError(f"its input shape {shape} differs from the model's {spec['image_shape']}")
    kind = record["framing"].get("kind") if isinstance(record["framing"], dict) else None
    if kind not in FRAMING_KINDS:
        raise ValueError(f"its framing kind {kind!r} is none of {', '.join(FRAMING_KINDS)}")


def path(step_dir: str) -> str:
    """Where a checkpoint step folder keeps its record (orbax's JSON item file)."""
    return os.path.join(step_dir, ITEM, "metadata")


def read(step_dir: str) -> dict | None:
    """The record of one checkpoint step folder; None when the checkpoint predates records (or lost it).
    Raises ValueError for a record this version cannot read."""
    try:
        with open(path(step_dir)) as f:
            record: Any = json.load(f)
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path(step_dir)} is not valid JSON ({e})") from e
    if not isinstance(record, dict) or "format_version" not in record:
        raise ValueError(f"{path(step_dir)} is not an inference record")
    if int(record["format_version"]) > FORMAT_VERSION:
        raise ValueError(f"{path(step_dir)} has format version {record['format_version']}, newer than this "
                         f"idfer_jax reads ({FORMAT_VERSION}); upgrade idfer_jax")
    try:
        check(record)
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        raise ValueError(f"{path(step_dir)} is damaged or was edited: {e}") from e
    return record


def write(step_dir: str, record: dict) -> None:
    """Adds a record to a checkpoint written before records existed (`idfer evaluate` does, having opened
    the data); written atomically, in the layout orbax's JSON handler uses."""
    target = path(step_dir)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = target + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, target)
