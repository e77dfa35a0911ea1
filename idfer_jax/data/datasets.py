"""Opening a dataset for one run: builder registry, preparation, class selection and the protocol.

`open_dataset(config.data)` returns a `Dataset`: one random-access source over every record the run may
use, the labels of those records in memory, and the train / test record indices of the selected fold.
The protocol (`config.data.protocol`) decides the split:

- `kfold`: subject-independent k folds of the `train` split (`num_folds`, `split_seed`);
- `loso`: leave-one-subject-out, fold i holds out the i-th subject in sorted order;
- `official`: the dataset's own `train` / `test` splits (RAF-DB, AffectNet, SFEW, FER2013);
- cross-dataset, whenever `config.data.test.name` is set: train on every record of `data.name`, test on
  every record of `data.test.name` (its `test` split when it has one).

Classes: the run's `class_names` (empty = the dataset's own) select and order the classes. Datasets name
their classes with the canonical vocabulary of `face_builder.EXPRESSIONS`, so CK+'s 6-class protocol is
`class_names` without contempt, and cross-dataset runs match classes by name; `class_map` ('from:to,...')
renames or merges classes first. Records of unselected classes are left out, and the fold file says so.

A fold file (`folds.json`) records the whole split by subject *name*; `config.data.fold_file` replays one.
"""

from __future__ import annotations

import dataclasses
import errno
import importlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from idfer_jax.data import protocols
from idfer_jax.data.errors import DataError
from idfer_jax.errors import os_error_in

# Builders that ship with the library; importing the module registers the TFDS builder.
DATASET_MODULES = {
    "synthetic_faces": "idfer_jax.data.synthetic_faces",
    "image_folder": "idfer_jax.data.image_folder",
    "ck_plus": "idfer_jax.data.benchmarks.ck_plus",
    "ck_plus48": "idfer_jax.data.benchmarks.ck_plus48",
    "oulu_casia": "idfer_jax.data.benchmarks.oulu_casia",
    "mmi": "idfer_jax.data.benchmarks.mmi",
    "jaffe": "idfer_jax.data.benchmarks.jaffe",
    "kdef": "idfer_jax.data.benchmarks.kdef",
    "bu3dfe": "idfer_jax.data.benchmarks.bu3dfe",
    "multi_pie": "idfer_jax.data.benchmarks.multi_pie",
    "raf_db": "idfer_jax.data.benchmarks.raf_db",
    "affectnet": "idfer_jax.data.benchmarks.affectnet",
    "sfew": "idfer_jax.data.benchmarks.sfew",
    "fer2013": "idfer_jax.data.benchmarks.fer2013",
    "ferplus": "idfer_jax.data.benchmarks.fer2013",
}
# Builders that generate their data and so may be prepared on first use.
NEEDS_NO_DOWNLOAD = frozenset({"synthetic_faces"})
POSE_KEYS = ("yaw", "pitch", "roll")
PROTOCOLS = ("kfold", "loso", "official")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What a method needs to know about the data of one run (one fold)."""

    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    train_subjects: tuple[int, ...]  # identity heads index subjects by their position here
    pose_keys: tuple[str, ...]
    has_neutral: bool
    # Each record stores its exact counterfactual with another expression (the synthetic faces):
    # `data.partner='counterfactual'` pairs it as the partner image.
    has_counterfactual: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_train_subjects(self) -> int:
        return len(self.train_subjects)


@dataclasses.dataclass
class Dataset:
    """An opened dataset with one fold selected."""

    source: Any  # random-access source over every usable record, labels already mapped
    labels: dict[str, np.ndarray]  # per-record `expression`, `subject`, `sequence` and pose arrays
    train_indices: np.ndarray
    test_indices: np.ndarray
    spec: DataSpec
    fold_file: dict  # the protocol as data, written next to the results
    # The training records as the sampler draws them: train_indices with each set's records repeated to
    # reach `config.data.mix`; None = train_indices as they are.
    train_sampling: np.ndarray | None = None
    # Records of the training-fold subjects held out for choosing a model or a loss weight
    # (`config.data.validation_fraction`); never trained on, never part of the test fold.
    validation_indices: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    # Per record: its source file (relative to the dataset folder; '' where the builder stores none, as
    # the synthetic faces) and its dataset's name; subject id -> name. For per-image predictions.
    record_files: np.ndarray | None = None
    record_sets: np.ndarray | None = None
    subject_names: dict = dataclasses.field(default_factory=dict)

    @property
    def num_folds(self) -> int:
        return int(self.fold_file.get("num_folds", 1))


# ----------------------------------------------------------------------------------------------
# Builders


def dataset_name(data_config) -> str:
    name = data_config.name
    if data_config.get("config"):
        name = f"{name}/{data_config.config}"
    return name


def data_dir(data_config) -> str:
    """config.data.data_dir, else TFDS's own default ($TFDS_DATA_DIR or ~/tensorflow_datasets)."""
    directory = data_config.get("data_dir") or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return os.path.expanduser(directory)


def builder_kwargs(data_config) -> dict:
    """Extra builder arguments a builder derives from the data config (e.g. image_folder's pattern)."""
    module = importlib.import_module(DATASET_MODULES[data_config.name])
    make = getattr(module, "builder_kwargs_from_config", None)
    if make:
        return make(data_config)
    from idfer_jax.data import face_builder, image_folder

    try:
        cls = tfds.builder_cls(data_config.name)
    except tfds.core.registered.DatasetNotFoundError:
        return {}
    if issubclass(cls, face_builder.FaceBuilder):
        return {"max_image_pixels": image_folder.max_image_pixels(data_config)}
    return {}


def load_builder(data_config) -> tfds.core.DatasetBuilder:
    """The TFDS builder of `data_config`, prepared if needed (from `manual_dir` for real datasets)."""
    name = data_config.name
    if name not in DATASET_MODULES:
        raise DataError(
            f"Unknown dataset {name!r}. Known datasets: {', '.join(sorted(DATASET_MODULES))}. "
            "Set --config.data.name to one of them (or 'image_folder' for your own images)."
        )
    importlib.import_module(DATASET_MODULES[name])
    directory = data_dir(data_config)
    if data_config.get("data_dir") and not os.path.isdir(os.path.dirname(directory.rstrip("/"))):
        raise DataError(
            f"data_dir {directory} cannot be created: its parent directory does not exist. "
            "Pass an existing directory with --config.data.data_dir."
        )
    kwargs = builder_kwargs(data_config)
    # A builder configured from config.data (image_folder) gets its config object, not a name.
    name_and_config = name if "config" in kwargs else dataset_name(data_config)
    try:
        builder = tfds.builder(name_and_config, data_dir=directory, **kwargs)
    except (tfds.core.registered.DatasetNotFoundError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(
            f"Cannot open dataset {dataset_name(data_config)!r}: {e}. Check --config.data.config."
        ) from e
    if not builder.is_prepared():
        manual_dir = data_config.get("manual_dir") or None
        if name not in NEEDS_NO_DOWNLOAD and manual_dir and not os.path.isdir(manual_dir):
            raise DataError(
                f"manual_dir {manual_dir} does not exist. Point --config.data.manual_dir at the folder "
                f"that holds the {name} download.\n{builder.MANUAL_DOWNLOAD_INSTRUCTIONS or ''}"
            )
        download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
        try:
            builder.download_and_prepare(file_format="array_record", download_config=download_config)
        except (OSError, RuntimeError, ValueError) as e:
            # A full disk or an unwritable folder: TFDS raises the OSError, array_record a RuntimeError
            # or ValueError that names the errno ("write() failed: No space left on device").
            cause = None if isinstance(e, DataError) else os_error_in(e)
            if cause is None or cause.errno is None:
                raise
            _close_progress_bars()
            fix = ("free some space there, or pass a data_dir on another disk"
                   if cause.errno in (errno.ENOSPC, errno.EDQUOT) else "pass a data_dir you may write to")
            filename = getattr(cause, "filename", None)
            at = f" ({filename})" if filename and filename != directory else ""
            raise DataError(
                f"Cannot prepare {dataset_name(data_config)} in data_dir {directory}: "
                f"{os.strerror(cause.errno)}{at}; {fix} with --config.data.data_dir."
            ) from e
    return builder


def _close_progress_bars() -> None:
    """Ends the progress bars a failed preparation left open, so that its one-line error is not
    followed by their redraws at exit."""
    try:
        from tqdm import std
    except ImportError:
        return
    bars = list(getattr(std.tqdm, "_instances", ()))
    for bar in bars:
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - a bar that cannot close is only cosmetic
            pass
    if bars:  # a closed inner bar leaves the cursor mid-line
        sys.stderr.write("\r")
        sys.stderr.flush()


def _image_shape(builder) -> tuple[int, int, int]:
    return tuple(int(s) for s in builder.info.features["image"].shape)


TEXT_LABELS = ("subject_name", "file_name")


def read_labels(source, keys: Sequence[str], batch: int = 256) -> dict[str, np.ndarray]:
    """Reads the scalar label features of every record, in record order.

    A key the records lack (the synthetic set has no `sequence`, `subject_name` or `file_name`) reads as
    -1, or '' for the text keys (`TEXT_LABELS`).
    """
    columns: dict[str, list] = {k: [] for k in keys}
    for start in range(0, len(source), batch):
        records = source.__getitems__(range(start, min(start + batch, len(source))))
        for record in records:
            for k in keys:
                columns[k].append(record.get(k, "" if k in TEXT_LABELS else -1))
    return {k: np.asarray(v) for k, v in columns.items()}


# ----------------------------------------------------------------------------------------------
# Classes


def parse_class_map(spec: str | dict | None) -> dict[str, str]:
    """'happy:happiness, scream:' -> {'happy': 'happiness', 'scream': ''} ('' drops the class).

    Names are cleaned of invisible differences (`face_builder.clean_text`: spaces, byte-order marks,
    zero-width characters, Unicode compatibility forms).
    """
    from idfer_jax.data.face_builder import clean_text

    items = spec.items() if isinstance(spec, dict) else [
        tuple(item.split(":", 1)) if ":" in item else (item,) for item in (spec or "").split(",")]
    out = {}
    for item in items:
        if len(item) == 1:
            if not clean_text(item[0]):
                continue
            raise DataError(f"class_map entry {item[0]!r} is not of the form 'from:to' (e.g. "
                            "--config.data.class_map='1:surprise,2:fear').")
        src, dst = (clean_text(str(s)) for s in item)
        if not src:
            raise DataError(f"class_map entry {':'.join(item)!r} has no class before the ':'.")
        out[src] = dst
    return out


def _mapped(name: str, class_map: dict[str, str]) -> str:
    """`name` through `class_map`, matching its keys ignoring case and invisible differences."""
    from idfer_jax.data.face_builder import label_key

    keys = {label_key(k): v for k, v in class_map.items()}
    return keys.get(label_key(name), name)


def class_lookup(dataset_classes: Sequence[str], run_classes: Sequence[str], class_map: dict,
                 dataset: str, allow_missing: bool = False) -> np.ndarray:
    """Maps each dataset class index to a run class index, or -1 for classes the run leaves out.

    Class names match ignoring case and invisible differences (`face_builder.label_key`). A run class
    the dataset lacks is an error unless `allow_missing` (an added training set).
    """
    from idfer_jax.data.face_builder import label_key

    run_index = {label_key(c): i for i, c in enumerate(run_classes)}
    mapped = [_mapped(c, class_map) for c in dataset_classes]
    lookup = np.asarray([run_index.get(label_key(m), -1) if m else -1 for m in mapped], np.int64)
    have = {label_key(m) for m in mapped if m}
    missing = [c for c in run_classes if label_key(c) not in have]
    if missing and not allow_missing:
        after = [m for m in mapped if m]
        if class_map and after != list(dataset_classes):
            classes = (f"its classes after class_map: {', '.join(dict.fromkeys(after))}; before: "
                       f"{', '.join(dataset_classes)}")
            fix = ("class_names names the classes after class_map: fix --config.data.class_names, or "
                   "--config.data.class_map.")
        else:
            classes = f"its classes: {', '.join(dataset_classes)}"
            fix = ("Fix --config.data.class_names, or map a class onto it with --config.data.class_map "
                   "(e.g. '1:surprise').")
        raise DataError(f"{dataset} has no class {', '.join(missing)} ({classes}). {fix}")
    return lookup


# ----------------------------------------------------------------------------------------------
# Sources


class MappedSource:
    """Records of several TFDS sources, concatenated, with classes and subjects renumbered for the run."""

    def __init__(self, parts: Sequence[tuple[Any, np.ndarray, int]]):
        self._parts = list(parts)  # (source, class lookup, subject offset)
        self._starts = np.cumsum([0] + [len(p[0]) for p in self._parts])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _locate(self, index: int) -> tuple[int, int]:
        part = int(np.searchsorted(self._starts, index, side="right") - 1)
        return part, int(index - self._starts[part])

    def _map(self, part: int, record: dict) -> dict:
        _, lookup, offset = self._parts[part]
        record = dict(record)
        record["expression"] = lookup[record["expression"]]
        if "counterfactual_expression" in record:  # -1 where the run leaves that class out
            record["counterfactual_expression"] = lookup[record["counterfactual_expression"]]
        if offset and record["subject"] >= 0:
            record["subject"] = record["subject"] + offset
        return record

    def __getitem__(self, index: int) -> dict:
        part, local = self._locate(int(index))
        return self._map(part, self._parts[part][0][local])

    def __getitems__(self, indices) -> list[dict]:
        return [self[i] for i in indices]


# ----------------------------------------------------------------------------------------------
# Opening


def _test_config(data_config):
    """The data config of a cross-dataset test set, or None.

    `test.name` names the dataset and `test.manual_dir` its raw download; `test.config` defaults to the
    training set's (the same `<size>px` config gives the same image size). An image_folder test set reads
    `test.pattern` or `test.manifest` (either replaces both of the training set's) and `test.class_map`
    (replaces the training set's when set); everything else is shared.
    """
    test = data_config.get("test")
    if not test or not test.get("name"):
        return None
    merged = data_config.copy_and_resolve_references()
    with merged.unlocked():
        merged.name = test.name
        merged.manual_dir = test.get("manual_dir") or ""
        merged.config = test.get("config") or data_config.config
        if test.get("pattern") or test.get("manifest"):
            merged.pattern = test.get("pattern") or ""
            merged.manifest = test.get("manifest") or ""
        if test.get("class_map"):
            merged.class_map = test.class_map
        merged.test = None
        merged.is_test_set = True  # a test set may lack some of the run's classes
    return merged


CROSS_DATASET_ALIGN = ("auto", "no")  # config.data.test.align


def extra_data_configs(data_config) -> list:
    """The data configs of `config.data.extra`: more training sets, 'NAME[/CONFIG]=MANUAL_DIR' each.

    Each is a benchmark (or synthetic) dataset read with the run's image size, classes and class_map;
    CONFIG defaults to the main set's `data.config`, MANUAL_DIR may be empty for a prepared dataset.
    """
    specs = tuple(data_config.get("extra") or ())
    out = []
    for spec in specs:
        if not isinstance(spec, str) or not spec.strip():
            raise DataError(
                f"config.data.extra entries are 'NAME[/CONFIG]=MANUAL_DIR' strings; got {spec!r}.")
        head, _, manual_dir = spec.partition("=")
        name, _, config = head.strip().partition("/")
        if name not in DATASET_MODULES or name == "image_folder":
            raise DataError(
                f"config.data.extra entry {spec!r}: {name!r} is not a benchmark dataset; use one of "
                f"{', '.join(sorted(n for n in DATASET_MODULES if n != 'image_folder'))} (your own folder "
                "can be the main set: --config.data.name=image_folder).")
        extra = data_config.copy_and_resolve_references()
        with extra.unlocked():
            extra.name = name
            extra.config = config or data_config.config
            extra.manual_dir = os.path.expanduser(manual_dir.strip())
            extra.pattern = extra.manifest = ""
            extra.test = None
            extra.extra = ()
        out.append(extra)
    mix = tuple(data_config.get("mix") or ())
    if mix and (len(mix) != len(out) + 1 or any(not isinstance(m, (int, float)) or m <= 0 for m in mix)):
        raise DataError(
            f"config.data.mix={mix!r} needs one positive weight per training set: the main set, then each "
            f"of data.extra ({len(out) + 1} in all), e.g. "
            f"--config.data.mix=\"({', '.join(['1'] * (len(out) + 1))},)\".")
    return out


def mixed_sampling(train_idx: np.ndarray, sets: np.ndarray, mix: Sequence[float], names: Sequence[str],
                   *, seed: int) -> np.ndarray:
    """`train_idx` with each set's records repeated so that set i makes mix[i] / sum(mix) of the list.

    No set is subsampled: the largest ratio of records to weight sets the scale, and the others are
    repeated (whole copies, then a seeded choice for the fraction). The sampler shuffles this list per
    epoch, so a batch holds the sets in the mix ratio on average.
    """
    weights = np.asarray(mix, np.float64) / np.sum(mix)
    counts = np.asarray([np.sum(sets == i) for i in range(len(names))])
    if np.any(counts == 0):
        empty = [n for n, c in zip(names, counts, strict=True) if c == 0]
        raise DataError(f"config.data.mix: {', '.join(empty)} has no training records in this fold.")
    scale = np.max(counts / weights)
    rng = np.random.default_rng(seed)
    chosen = []
    for i, (count, weight) in enumerate(zip(counts, weights, strict=True)):
        records = train_idx[sets == i]
        target = int(round(scale * weight))
        whole, rest = divmod(target, count)
        chosen.extend([records] * whole)
        chosen.append(rng.choice(records, size=rest, replace=False))
    return np.sort(np.concatenate(chosen))


def cross_dataset_framing(data_config):
    """`data_config` with both sides of a cross-dataset run aligned to one template, if it asks for that.

    Why: a model trained on tight crops (CK+48) and tested on loose head shots (JAFFE's fixed box)
    is measured on framing as much as on expression. With `test.align='auto'` (the default) and the
    `[align]` extra installed, a run whose two sides are not both aligned uses `aligned_<size>px` for
    both; without the extra it says so and keeps the configs. Only the face-dataset builders (whose
    configs are `<size>px` / `aligned_<size>px`) are changed; the synthetic set is never aligned.
    The decision is written into the returned config (`test.align='no'` with the configs it chose), so
    the Trainer saves it: resuming or evaluating on a machine that decides otherwise is refused as a
    config change instead of silently reading differently framed data.
    """
    from idfer_jax.data import face_builder as fb

    test = data_config.get("test")
    if not test or not test.get("name") or test.get("align", "auto") == "no":
        return data_config
    configs = [data_config.get("config") or "", test.get("config") or data_config.get("config") or ""]
    names = [data_config.name, test.name]
    out = data_config.copy_and_resolve_references()
    with out.unlocked():
        out.test.align = "no"  # decided here, once
    if any(n in NEEDS_NO_DOWNLOAD for n in names) or not all(fb.CONFIG_NAME.match(c) for c in configs):
        return out
    if all(c.startswith("aligned_") for c in configs):
        return out
    from idfer_jax.console import announce
    from idfer_jax.data import alignment

    if not alignment.available():
        announce("Cross-dataset run with unaligned crops: the [align] extra (dlib) is not installed, so "
                 f"{names[0]}/{configs[0]} and {names[1]}/{configs[1]} keep their own framing. "
                 'pip install -e ".[align]" aligns both to one template.')
        return out
    aligned = fb.config_name(int(data_config.image_size), True)
    announce(f"Cross-dataset run: both sides aligned to one template ({names[0]}/{aligned} -> "
             f"{names[1]}/{aligned}); --config.data.test.align=no keeps {configs[0]} / {configs[1]}.")
    with out.unlocked():
        out.config = aligned
        out.test.config = aligned
    return out


def framing(config_name: str) -> str:
    """How a face-dataset config frames the face, in words (for reports)."""
    from idfer_jax.data import face_builder as fb

    match = fb.CONFIG_NAME.match(config_name or "")
    if not match:
        return f"the dataset's own framing (config {config_name!r})"
    if match.group(1):
        return f"detected and aligned to one 5-point template, {match.group(2)} px"
    return f"the dataset's own crop, resized to {match.group(2)} px"


def open_dataset(data_config) -> Dataset:
    """Opens `data_config.name` (and its added training sets and cross-dataset test set), maps their
    classes to the run's, and selects fold `data_config.fold`. DataError naming the fix for data no run
    could use."""
    data_config = cross_dataset_framing(data_config)
    test_config = _test_config(data_config)
    protocol = data_config.get("protocol", "kfold")
    if test_config is None and protocol not in PROTOCOLS:
        raise DataError(
            f"Unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)} (a cross-dataset run is "
            "chosen by setting --config.data.test.name)."
        )
    _check_data_dir(data_config)
    sets = _open_sets(data_config, test_config)
    image_shape = _check_image_sizes(sets, int(data_config.image_size))
    dataset_classes = [tuple(b.info.features["expression"].names) for b in sets.builders]
    run_classes = tuple(data_config.get("class_names") or ()) or dataset_classes[0]
    class_map = parse_class_map(data_config.get("class_map"))
    lookups = _class_lookups(sets, dataset_classes, run_classes, class_map, test_config)
    splits = _splits(sets, test_config, protocol)
    features = [b.info.features for b in sets.builders]
    pose_keys = tuple(k for k in POSE_KEYS if all(k in f for f in features))
    source, labels, part_of, set_of = _read_parts(sets, splits, lookups, pose_keys)
    subject_names = _subject_names(labels["subject"], labels.pop("subject_name"))
    file_names = np.asarray([n.decode() if isinstance(n, bytes) else str(n) for n in labels.pop("file_name")],
                            dtype=object)
    usable = labels["expression"] >= 0
    train_idx, test_idx, fold_file = _select_fold(data_config, test_config, protocol, sets, splits, labels,
                                                  part_of, usable, subject_names)
    train_idx, validation_idx = hold_out_validation_subjects(data_config, train_idx, labels["subject"])
    if len(validation_idx):
        held_out = np.unique(labels["subject"][validation_idx])
        fold_file["validation_subject_names"] = [subject_names.get(int(s), str(s)) for s in held_out]
    names, num_sets = sets.names, sets.num_sets
    dropped = [c for c, i in zip(dataset_classes[0], lookups[0], strict=True) if i < 0]
    training = " + ".join(names[:num_sets])
    if num_sets > 1:
        fold_file["training_sets"] = {
            n: int(np.sum(set_of[train_idx] == i)) for i, n in enumerate(names[:num_sets])}
    fold_file.update(
        dataset=training if test_config is None else f"{training} -> {names[-1]}",
        fold=int(data_config.get("fold", 0)),
        class_names=list(run_classes),
        classes_left_out=dropped,
        class_map=class_map,
        num_train=int(len(train_idx)),
        num_test=int(len(test_idx)),
    )
    spec = DataSpec(
        image_shape=image_shape,
        class_names=run_classes,
        train_subjects=tuple(int(s) for s in np.unique(labels["subject"][train_idx]) if s >= 0),
        pose_keys=pose_keys,
        has_neutral=all("neutral_image" in f for f in features),
        has_counterfactual=all("counterfactual_image" in f for f in features),
    )
    # Every class must have images in the training dataset; a cross-dataset test set may lack some.
    own = np.isin(part_of, [i for i, (b, _) in enumerate(splits) if b == 0])
    _check_every_class_has_records(labels["expression"][usable & own], run_classes, names[:1])
    sampling = None
    if num_sets > 1 and tuple(data_config.get("mix") or ()):
        sampling = mixed_sampling(train_idx, set_of[train_idx], data_config.mix, names[:num_sets],
                                  seed=int(data_config.get("split_seed", 0)))
        fold_file["mix"] = [float(m) for m in data_config.mix]
    return Dataset(source, labels, train_idx, test_idx, spec, fold_file, sampling, validation_idx,
                   record_files=file_names, record_sets=np.asarray(names, dtype=object)[set_of],
                   subject_names=subject_names)


def hold_out_validation_subjects(data_config, train_idx: np.ndarray,
                                 subjects: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(training records, validation records): `config.data.validation_fraction` of the fold's
    training subjects (rounded, at least 2 so an identity probe can run on them), drawn from
    (`split_seed`, `fold`), with all their records, leave training.

    A loss weight or a checkpoint is chosen on these subjects, never on the test fold (the sweep of
    `idfer sweep`). 0 = no validation split. DataError where the training records have no subject ids
    or too few subjects to keep at least 2 for training.
    """
    fraction = float(data_config.get("validation_fraction", 0.0) or 0.0)
    if fraction <= 0:
        return train_idx, np.zeros(0, np.int64)
    train_subjects = np.unique(subjects[train_idx])
    if (train_subjects < 0).any():
        raise DataError(
            "config.data.validation_fraction > 0 holds out training *subjects*, but this dataset's "
            "training records have no subject ids. Set --config.data.validation_fraction=0.")
    count = max(2, int(round(fraction * len(train_subjects))))
    if len(train_subjects) - count < 2:
        raise DataError(
            f"config.data.validation_fraction={fraction} would leave {len(train_subjects) - count} of this "
            f"fold's {len(train_subjects)} training subjects for training; use a smaller fraction.")
    rng = np.random.default_rng([int(data_config.get("split_seed", 0)), int(data_config.get("fold", 0)), 1])
    held_out = rng.choice(train_subjects, size=count, replace=False)
    is_validation = np.isin(subjects[train_idx], held_out)
    return train_idx[~is_validation], train_idx[is_validation]


@dataclasses.dataclass(frozen=True)
class _Sets:
    """The builders of one run: its training sets (the main one first), then its test set if any."""

    builders: list
    names: list[str]
    train_configs: list
    num_sets: int  # training sets; builders[num_sets], if there, is the cross-dataset test set


def _check_data_dir(data_config) -> None:
    directory = data_dir(data_config)
    if data_config.get("data_dir") and not os.path.exists(directory) and (
        data_config.name not in NEEDS_NO_DOWNLOAD and not data_config.get("manual_dir")
    ):
        raise DataError(
            f"data_dir {directory} does not exist. Pass the directory that holds the prepared "
            "datasets with --config.data.data_dir, or the raw download with --config.data.manual_dir "
            "to prepare it there."
        )


def _open_sets(data_config, test_config) -> _Sets:
    extra_configs = extra_data_configs(data_config)
    train_configs = [data_config, *extra_configs]
    builders = [load_builder(data_config)]
    for spec, extra in zip(data_config.get("extra") or (), extra_configs, strict=True):
        try:
            builders.append(load_builder(extra))
        except DataError as e:
            raise DataError(f"config.data.extra entry {spec!r}: {e}") from e
    if test_config is not None:
        builders.append(load_builder(test_config))
    names = [dataset_name(c) for c in train_configs] + ([dataset_name(test_config)] if test_config else [])
    return _Sets(builders, names, train_configs, len(train_configs))


def _check_image_sizes(sets: _Sets, expected: int) -> tuple[int, int, int]:
    """The (H, W, C) every set shares, which must be `config.data.image_size` square."""
    image_shape = _image_shape(sets.builders[0])
    for builder, name in zip(sets.builders, sets.names, strict=True):
        shape = _image_shape(builder)
        if shape[:2] != (expected, expected):
            raise DataError(
                f"{name} has {shape[0]}x{shape[1]} images but config.data.image_size={expected}. Set "
                f"--config.data.image_size={shape[0]} or pick a dataset config with that image size "
                f"(e.g. --config.data.config={expected}px)."
            )
        if shape != image_shape:
            raise DataError(f"{sets.names[0]} has {image_shape} images but {name} has {shape}.")
    return image_shape


def _class_lookups(sets: _Sets, dataset_classes, run_classes, class_map, test_config) -> list[np.ndarray]:
    """Per builder, its label -> the run's class index (-1: not in the run)."""
    # image_folder applies class_map to its labels while preparing (its classes are class_names already).
    # An added training set may lack some of the run's classes (JAFFE has no contempt): the main set
    # must have them all.
    maps = [class_map] * sets.num_sets
    if test_config is not None:  # a test set may map its own labels (test.class_map)
        maps.append(parse_class_map(test_config.get("class_map")))
    return [class_lookup(c, run_classes, {} if _maps_own_classes(b) else m, n,
                         allow_missing=0 < i < sets.num_sets)
            for i, (b, c, n, m) in enumerate(zip(sets.builders, dataset_classes, sets.names, maps,
                                                 strict=True))]


def _splits(sets: _Sets, test_config, protocol: str) -> list[tuple[int, str]]:
    """(builder index, split): the training sets' train splits, then the test part if the split is given."""
    splits = [(i, "train") for i in range(sets.num_sets)]
    if test_config is not None:
        splits.append((sets.num_sets, "test" if "test" in sets.builders[-1].info.splits else "train"))
    elif protocol == "official":
        if "test" not in sets.builders[0].info.splits:
            raise DataError(
                f"{sets.names[0]} has no official test split (splits: "
                f"{', '.join(sets.builders[0].info.splits)}); use --config.data.protocol=kfold or loso."
            )
        splits.append((0, "test"))
    return splits


def _read_parts(sets: _Sets, splits, lookups, pose_keys):
    """One source over every split's records, their labels (classes mapped, subjects of other sets
    shifted past every id before them), and per record its part (split) and set (builder)."""
    keys = ("expression", "subject", "sequence", "subject_name", "file_name", *pose_keys)
    parts, columns = [], []
    for i, (b, split) in enumerate(splits):
        builder, lookup = sets.builders[b], lookups[b]
        part_labels = read_labels(label_source(builder, split), keys)
        part_labels["expression"] = lookup[part_labels["expression"]]
        # Another dataset's subjects are shifted past every id before them (the splits of one dataset
        # share its subject numbering), and their names carry the dataset's, so no two sets share one.
        offset = 0
        if b != 0:
            if b < sets.num_sets:  # an added training set: "jaffe:KA" (or its id where it has no names)
                part_labels["subject_name"] = np.asarray(
                    [f"{sets.train_configs[b].name}:{(n.decode() if isinstance(n, bytes) else str(n)) or s}"
                     for n, s in zip(part_labels["subject_name"], part_labels["subject"], strict=True)],
                    dtype=object)
            offset = max(int(c["subject"].max(initial=-1)) for c in columns) + 1
            part_labels["subject"] = np.where(part_labels["subject"] >= 0,
                                              part_labels["subject"] + offset, -1)
        part_labels["part"] = np.full(len(part_labels["subject"]), i)
        part_labels["set"] = np.full(len(part_labels["subject"]), b)
        parts.append((builder.as_data_source(split=split), lookup, offset))
        columns.append(part_labels)
    labels = {k: np.concatenate([c[k] for c in columns]) for k in columns[0]}
    part_of = labels.pop("part")
    set_of = labels.pop("set")
    return MappedSource(parts), labels, part_of, set_of


def _select_fold(data_config, test_config, protocol, sets: _Sets, splits, labels, part_of, usable,
                 subject_names) -> tuple[np.ndarray, np.ndarray, dict]:
    """(train indices, test indices, fold file) of `data_config.fold` under the run's protocol."""
    if test_config is not None or protocol == "official":  # the last part is the test set
        test_part = len(splits) - 1
        train_idx = np.flatnonzero(usable & (part_of != test_part))
        test_idx = np.flatnonzero(usable & (part_of == test_part))
        fold_file = {
            "protocol": "cross_dataset" if test_config is not None else "official",
            "num_folds": 1,
            "train": " + ".join(f"{n}:train" for n in sets.names[:sets.num_sets]),
            "test": f"{sets.names[splits[-1][0]]}:{splits[-1][1]}",
        }
        if test_config is not None:
            fold_file["framing"] = {"train": framing(data_config.config), "test": framing(test_config.config)}
        if int(data_config.get("fold", 0)) != 0:
            raise DataError("This protocol has a single fold; set --config.data.fold=0.")
        return train_idx, test_idx, fold_file
    folds = _folds(data_config, protocol, labels["subject"][usable], subject_names)
    fold = int(data_config.fold)
    if not 0 <= fold < len(folds):
        raise DataError(
            f"config.data.fold={fold} but the {protocol} protocol has {len(folds)} folds "
            f"(0..{len(folds) - 1})."
        )
    is_test = np.isin(labels["subject"], folds[fold])
    fold_file = {
        "protocol": "leave_one_subject_out" if protocol == "loso" else "subject_kfold",
        "num_folds": len(folds),
        "seed": int(data_config.split_seed) if protocol == "kfold" else None,
        "test_subjects": [[int(s) for s in f] for f in folds],
        "test_subject_names": [[subject_names.get(int(s), str(s)) for s in f] for f in folds],
    }
    return np.flatnonzero(usable & ~is_test), np.flatnonzero(usable & is_test), fold_file


def _maps_own_classes(builder) -> bool:
    return bool(getattr(builder.builder_config, "class_map", ()))


def _check_every_class_has_records(expression: np.ndarray, run_classes: Sequence[str],
                                   names: Sequence[str]) -> None:
    """A run class no record has trains an output that is never right (and lowers chance).

    A user's own folder refuses it while preparing (`image_folder`); for a benchmark (e.g. a partial
    download) the run goes on, with a warning naming the classes.
    """
    counts = np.bincount(expression, minlength=len(run_classes))
    empty = [c for c, n in zip(run_classes, counts, strict=True) if n == 0]
    if empty:
        kept = ",".join(f"'{c}'" for c, n in zip(run_classes, counts, strict=True) if n)
        logging.warning(
            "%s has no images of class(es) %s: their outputs are never trained. Remove them from "
            "--config.data.class_names (e.g. --config.data.class_names=\"(%s)\") unless that is intended.",
            " + ".join(names), ", ".join(empty), kept)


def label_source(builder, split: str):
    """A data source of `split` that leaves images encoded: reading labels then costs no decoding."""
    decoders = {k: tfds.decode.SkipDecoding() for k in ("image", "neutral_image", "counterfactual_image")
                if k in builder.info.features}
    return builder.as_data_source(split=split, decoders=decoders)


def _folds(data_config, protocol: str, subjects: np.ndarray, names: dict[int, str]) -> list[np.ndarray]:
    """The test subjects of every fold: from `fold_file` if given, else from the protocol."""
    if (subjects < 0).any():
        raise DataError(
            f"{data_config.name} has no subject ids, so subject-independent folds are impossible; "
            "use --config.data.protocol=official (its own train/test split)."
        )
    path = data_config.get("fold_file")
    if path:
        return protocols.folds_from_file(os.path.expanduser(path), names)
    if protocol == "loso":
        return protocols.leave_one_subject_out(subjects)
    return protocols.subject_folds(subjects, int(data_config.num_folds), int(data_config.split_seed))


def _subject_names(subjects: np.ndarray, raw_names: np.ndarray) -> dict[int, str]:
    """Subject id -> the name a fold file records. A dataset without names (the synthetic faces) or with
    names that do not tell its subjects apart is named by id ('0', '1', ...), so fold files replay."""
    names = {int(s): n.decode() if isinstance(n, bytes) else str(n)
             for s, n in zip(subjects, raw_names, strict=True) if s >= 0}
    if any(not n for n in names.values()) or len(set(names.values())) < len(names):
        return {s: str(s) for s in names}
    return names


def write_fold_file(dataset: Dataset, path: str) -> None:
    with open(path, "w") as f:
        json.dump(dataset.fold_file, f, indent=1)
