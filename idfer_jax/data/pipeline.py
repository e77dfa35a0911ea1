"""Input pipeline: TFDS array_record data sources read with grain.

A dataset is opened once (`open_dataset`): its builder is prepared if it needs no download, its labels are
read into memory, and the subject-independent fold of `config.data` picks the train and test records.
Training batches come from a grain `DataLoader` (random access, per-process sharding, checkpointable
iterator state); evaluation batches are padded to full size with a 0/1 `mask` so the last partial batch
counts (FER test folds are small).

Batches are dicts of numpy arrays with the keys `image` (NHWC float32 in [-1, 1]), `expression` (int32),
`subject` (int32) and, where the dataset has them, `yaw`, `pitch`, `roll` (float32 degrees) and
`neutral_image`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds

from idfer_jax.data import protocols
from idfer_jax.data.errors import DataError, ManualDataError  # noqa: F401 (re-exported)

# Builders that ship with the library; importing the module registers the TFDS builder.
DATASET_MODULES = {
    "synthetic_faces": "idfer_jax.data.synthetic_faces",
}
# Builders that generate their data and so may be prepared on first use.
NEEDS_NO_DOWNLOAD = frozenset({"synthetic_faces"})
POSE_KEYS = ("yaw", "pitch", "roll")
# Flipping a face horizontally mirrors these angles.
MIRRORED_POSE_KEYS = ("yaw", "roll")
IMAGE_KEYS = ("image", "neutral_image")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What a method needs to know about the data of one run (one fold)."""

    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    train_subjects: tuple[int, ...]  # identity heads index subjects by their position here
    pose_keys: tuple[str, ...]
    has_neutral: bool

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_train_subjects(self) -> int:
        return len(self.train_subjects)


@dataclasses.dataclass
class Dataset:
    """An opened dataset with one fold selected."""

    source: Any  # random-access TFDS data source over every record
    labels: dict[str, np.ndarray]  # per-record `expression`, `subject` and pose arrays
    train_indices: np.ndarray
    test_indices: np.ndarray
    spec: DataSpec
    fold_file: dict  # the protocol as data, written next to the results


def dataset_name(data_config) -> str:
    name = data_config.name
    if data_config.get("config"):
        name = f"{name}/{data_config.config}"
    return name


def data_dir(data_config) -> str:
    """config.data.data_dir, else TFDS's own default ($TFDS_DATA_DIR or ~/tensorflow_datasets)."""
    directory = data_config.get("data_dir") or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return os.path.expanduser(directory)


def load_builder(data_config) -> tfds.core.DatasetBuilder:
    """The TFDS builder of `data_config`, prepared if it needs no download."""
    name = data_config.name
    if name not in DATASET_MODULES:
        raise DataError(
            f"Unknown dataset {name!r}. Known datasets: {', '.join(sorted(DATASET_MODULES))}. "
            "Set --config.data.name to one of them."
        )
    importlib.import_module(DATASET_MODULES[name])
    directory = data_dir(data_config)
    try:
        builder = tfds.builder(dataset_name(data_config), data_dir=directory)
    except (tfds.core.registered.DatasetNotFoundError, ValueError) as e:
        raise DataError(
            f"Cannot open dataset {dataset_name(data_config)!r}: {e}. Check --config.data.config."
        ) from e
    if not builder.is_prepared():
        if name not in NEEDS_NO_DOWNLOAD:
            raise DataError(
                f"Dataset {dataset_name(data_config)!r} is not prepared in {directory}. Prepare it "
                "first (see its manual download instructions), or point --config.data.data_dir at "
                "the directory that holds it."
            )
        if data_config.get("data_dir") and not os.path.isdir(os.path.dirname(directory.rstrip("/"))):
            raise DataError(
                f"data_dir {directory} cannot be created: its parent directory does not exist. "
                "Pass an existing directory with --config.data.data_dir."
            )
        builder.download_and_prepare(file_format="array_record")
    return builder


def _image_shape(builder) -> tuple[int, int, int]:
    shape = builder.info.features["image"].shape
    return tuple(int(s) for s in shape)


def read_labels(source, keys: Sequence[str], batch: int = 256) -> dict[str, np.ndarray]:
    """Reads the scalar label features of every record, in record order."""
    columns: dict[str, list] = {k: [] for k in keys}
    for start in range(0, len(source), batch):
        records = source.__getitems__(range(start, min(start + batch, len(source))))
        for record in records:
            for k in keys:
                columns[k].append(record[k])
    return {k: np.asarray(v) for k, v in columns.items()}


def open_dataset(data_config) -> Dataset:
    """Opens `data_config.name`, reads its labels and selects fold `data_config.fold`."""
    directory = data_dir(data_config)
    if data_config.get("data_dir") and not os.path.exists(directory) and (
        data_config.name not in NEEDS_NO_DOWNLOAD
    ):
        raise DataError(
            f"data_dir {directory} does not exist. Pass the directory that holds the prepared "
            "datasets with --config.data.data_dir."
        )
    builder = load_builder(data_config)
    image_shape = _image_shape(builder)
    expected = int(data_config.image_size)
    if image_shape[:2] != (expected, expected):
        raise DataError(
            f"{dataset_name(data_config)} has {image_shape[0]}x{image_shape[1]} images but "
            f"config.data.image_size={expected}. Set --config.data.image_size={image_shape[0]} or "
            "pick a dataset config with the image size you want."
        )
    features = builder.info.features
    class_names = tuple(features["expression"].names)
    declared = tuple(data_config.get("class_names") or ())
    if declared and declared != class_names:
        raise DataError(
            f"config.data.class_names {declared} do not match the dataset's classes {class_names}."
        )
    pose_keys = tuple(k for k in POSE_KEYS if k in features)
    source = builder.as_data_source(split="train")
    labels = read_labels(source, ("expression", "subject", *pose_keys))
    train_idx, test_idx = protocols.fold_indices(
        labels["subject"], data_config.fold, data_config.num_folds, data_config.split_seed
    )
    spec = DataSpec(
        image_shape=image_shape,
        class_names=class_names,
        train_subjects=tuple(int(s) for s in np.unique(labels["subject"][train_idx])),
        pose_keys=pose_keys,
        has_neutral="neutral_image" in features,
    )
    fold_file = protocols.fold_assignment(
        labels["subject"], data_config.num_folds, data_config.split_seed
    )
    fold_file.update(dataset=dataset_name(data_config), fold=int(data_config.fold))
    return Dataset(source, labels, train_idx, test_idx, spec, fold_file)


class Subset(grain.sources.RandomAccessDataSource):
    """The records of `source` at `indices`, as a random-access source of its own."""

    def __init__(self, source, indices: np.ndarray, name: str):
        self._source = source
        self._indices = np.asarray(indices, dtype=np.int64)
        self._name = name

    def __repr__(self) -> str:
        # grain checks a restored iterator against repr(source): name the data and the exact records,
        # not the object's address, so a resumed run matches and another fold's checkpoint does not.
        digest = hashlib.sha1(self._indices.tobytes()).hexdigest()[:12]
        return f"Subset({self._name}, {len(self._indices)} records, sha1 {digest})"

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, index: int):
        return self._source[int(self._indices[index])]


def to_model_input(image: np.ndarray) -> np.ndarray:
    """uint8 HWC (or HW) image -> float32 HWC in [-1, 1]."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    return image.astype(np.float32) / 127.5 - 1.0


class Decode(grain.transforms.Map):
    """A TFDS record -> the batch example dict of this module's docstring."""

    def __init__(self, pose_keys: Sequence[str], with_neutral: bool):
        self._pose_keys = tuple(pose_keys)
        self._with_neutral = with_neutral

    def map(self, record):
        example = {
            "image": to_model_input(record["image"]),
            "expression": np.int32(record["expression"]),
            "subject": np.int32(record["subject"]),
        }
        for k in self._pose_keys:
            example[k] = np.float32(record[k])
        if self._with_neutral:
            example["neutral_image"] = to_model_input(record["neutral_image"])
        return example


class Augment(grain.transforms.RandomMap):
    """Random pad-and-crop translation and horizontal flip, applied alike to every image key.

    A flip mirrors the head, so it negates yaw and roll: without that the pose label would be wrong
    for half the training images.
    """

    def __init__(self, crop_padding: int, flip: bool):
        self._pad = int(crop_padding)
        self._flip = bool(flip)

    def random_map(self, example, rng: np.random.Generator):
        example = dict(example)
        keys = [k for k in IMAGE_KEYS if k in example]
        if self._pad:
            h, w = example["image"].shape[:2]
            dy, dx = rng.integers(0, 2 * self._pad + 1, size=2)
            for k in keys:
                padded = np.pad(
                    example[k], ((self._pad, self._pad), (self._pad, self._pad), (0, 0)), "edge"
                )
                example[k] = padded[dy : dy + h, dx : dx + w]
        if self._flip and rng.random() < 0.5:
            for k in keys:
                example[k] = example[k][:, ::-1]
            for k in MIRRORED_POSE_KEYS:
                if k in example:
                    example[k] = -example[k]
        for k in keys:
            example[k] = np.ascontiguousarray(example[k])
        return example


def train_loader(
    dataset: Dataset, data_config, *, global_batch_size: int, seed: int
) -> grain.DataLoader:
    """An endless shuffled loader of per-process training batches over the training subjects."""
    process_count = _process_count()
    if global_batch_size % process_count:
        raise DataError(
            f"batch_size={global_batch_size} is not divisible by the {process_count} processes."
        )
    source = Subset(dataset.source, dataset.train_indices, dataset.fold_file["dataset"])
    return grain.DataLoader(
        data_source=source,
        sampler=grain.samplers.IndexSampler(
            num_records=len(source),
            shuffle=True,
            seed=seed,
            num_epochs=None,
            shard_options=grain.sharding.ShardByJaxProcess(drop_remainder=True),
        ),
        operations=[
            Decode(dataset.spec.pose_keys, dataset.spec.has_neutral and data_config.with_neutral),
            Augment(data_config.crop_padding, data_config.flip),
            grain.transforms.Batch(global_batch_size // process_count, drop_remainder=True),
        ],
        worker_count=int(data_config.worker_count),
    )


def eval_batches(
    dataset: Dataset,
    indices: np.ndarray,
    *,
    global_batch_size: int,
    with_neutral: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
    """This process's share of `indices`, in order, as full batches with a 0/1 `mask`.

    The index list is padded so that every process yields the same number of batches (a jitted step
    over a global array needs all of them); padded examples repeat a real one and have mask 0.
    """
    process_count, process_index = _process_count(), _process_index()
    local_batch = global_batch_size // process_count
    indices = np.asarray(indices)
    per_step = local_batch * process_count
    num_steps = max(1, -(-len(indices) // per_step))
    padded = np.full(num_steps * per_step, indices[0] if len(indices) else 0, dtype=np.int64)
    padded[: len(indices)] = indices
    mask = np.zeros(len(padded), np.float32)
    mask[: len(indices)] = 1.0
    decode = Decode(dataset.spec.pose_keys, dataset.spec.has_neutral and with_neutral)
    for step in range(num_steps):
        lo = step * per_step + process_index * local_batch
        records = dataset.source.__getitems__([int(i) for i in padded[lo : lo + local_batch]])
        examples = [decode.map(r) for r in records]
        batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
        batch["mask"] = mask[lo : lo + local_batch]
        yield batch


def _process_count() -> int:
    import jax

    return jax.process_count()


def _process_index() -> int:
    import jax

    return jax.process_index()
