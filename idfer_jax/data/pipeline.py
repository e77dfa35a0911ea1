"""Input pipeline: TFDS array_record data sources read with grain.

A dataset is opened once (`datasets.open_dataset`, re-exported here): its builder is prepared, its labels
are read into memory, and the protocol of `config.data` picks the train and test records.
Training batches come from a grain `DataLoader` (random access, per-process sharding, checkpointable
iterator state); evaluation batches are padded to full size with a 0/1 `mask` so the last partial batch
counts (FER test folds are small).

Batches are dicts of numpy arrays with the keys `image` (NHWC float32 in [-1, 1]), `expression` (int32),
`subject` (int32, -1 where the dataset has none) and, where the dataset has them, `yaw`, `pitch`, `roll`
(float32 degrees) and `neutral_image`. With `config.data.partner` set, each training example also carries a
*partner* image of the same subject (`partner_image`, `partner_expression`, `partner_mask`): see `Partners`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import sys
from collections.abc import Iterator, Sequence

import grain
import numpy as np

from idfer_jax.config_defaults import AUGMENT_DEFAULTS

# The dataset side of the pipeline, re-exported: callers need one module.
from idfer_jax.data.datasets import (  # noqa: F401
    DATASET_MODULES,
    Dataset,
    DataSpec,
    cross_dataset_framing,
    load_builder,
    open_dataset,
)
from idfer_jax.data.errors import DataError, ManualDataError  # noqa: F401

# Flipping a face horizontally mirrors these angles.
MIRRORED_POSE_KEYS = ("yaw", "roll")
IMAGE_KEYS = ("image", "neutral_image", "partner_image")
PARTNER_MODES = ("", "other_expression", "neutral", "counterfactual")


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
        record_index = int(self._indices[index])
        # The record's position in the dataset travels with it, for transforms that look up its
        # neighbours (`Partners`); `Decode` drops it.
        return {**self._source[record_index], "_record": record_index}


class Partners(grain.transforms.RandomMap):
    """Pairs each training record with another image of the same subject, drawn anew every epoch.

    - `other_expression`: a record of the subject with another expression (FERSNet's synthesis target,
      METHODS.md section 3). A subject with a single expression among the training records is paired
      with itself (`partner_mask` 0) [choice]: a recipe decides what an unpaired example is worth.
    - `neutral`: a record of the subject labelled `neutral` (IPD-FER's real neutral target, e.g.
      JAFFE's NE images); `partner_mask` is 0 where the subject has none in the training records.
    - `counterfactual`: the record's own stored counterfactual (the synthetic faces: the same subject,
      pose, light and background with another expression, `counterfactual_expression`), so every
      synthesis target is exact; `partner_mask` 1 (0, paired with itself, where the run leaves the
      counterfactual's class out or maps it onto the face's own).
    Partners come from the training records only, so no test image is ever a target.
    """

    def __init__(self, source, labels: dict, train_indices: np.ndarray, mode: str,
                 neutral_class: int | None, has_counterfactual: bool = False):
        if mode not in PARTNER_MODES[1:]:
            raise DataError(f"Unknown data.partner {mode!r}; use one of {PARTNER_MODES}.")
        self._mode = mode
        if mode == "counterfactual":
            if not has_counterfactual:
                raise DataError(
                    "data.partner='counterfactual' needs a dataset that stores counterfactual faces "
                    "(synthetic_faces); on real data use data.partner='other_expression'.")
            return
        if mode == "neutral" and neutral_class is None:
            raise DataError(
                "data.partner='neutral' needs a 'neutral' class among data.class_names; this run's "
                "classes have none. Add it, or use data.with_neutral on a dataset with neutral renders."
            )
        self._source = source
        subjects = labels["subject"]
        expressions = labels["expression"]
        train = np.asarray(train_indices)
        if (subjects[train] < 0).any():
            raise DataError("data.partner needs subject ids, and this dataset has none.")
        self._candidates: dict[int, np.ndarray] = {}
        by_subject = {s: train[subjects[train] == s] for s in np.unique(subjects[train])}
        for i in train:
            same = by_subject[subjects[i]]
            if mode == "other_expression":
                self._candidates[int(i)] = same[expressions[same] != expressions[i]]
            else:
                self._candidates[int(i)] = same[expressions[same] == neutral_class]

    def random_map(self, record, rng: np.random.Generator):
        index = int(record["_record"])
        if self._mode == "counterfactual":
            # Unpaired: a class this run leaves out, or one a class_map merged with the face's own.
            if record["counterfactual_expression"] in (-1, record["expression"]):
                return {**record, "_partner": {"image": record["image"], "expression": record["expression"],
                                               "mask": 0.0, "record": index}}
            return {**record, "_partner": {"image": record["counterfactual_image"],
                                           "expression": record["counterfactual_expression"],
                                           "mask": 1.0, "record": index}}
        candidates = self._candidates[index]
        if len(candidates):
            partner_index, mask = int(candidates[rng.integers(len(candidates))]), 1.0
            partner = self._source[partner_index]
        else:
            partner_index, mask, partner = index, 0.0, record
        return {**record, "_partner": {"image": partner["image"], "expression": partner["expression"],
                                       "mask": mask, "record": partner_index}}


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
        if "_partner" in record:
            partner = record["_partner"]
            example["partner_image"] = to_model_input(partner["image"])
            example["partner_expression"] = np.int32(partner["expression"])
            example["partner_mask"] = np.float32(partner["mask"])
        return example


# Where each optional batch key comes from, for the error when a method reads one the run does not give.
BATCH_KEY_SWITCHES = {
    "neutral_image": "--config.data.with_neutral=True (on a dataset that renders neutral faces)",
    "partner_image": "--config.data.partner=other_expression, =neutral or =counterfactual",
    "partner_expression": "--config.data.partner=other_expression, =neutral or =counterfactual",
    "partner_mask": "--config.data.partner=other_expression, =neutral or =counterfactual",
    "yaw": "a dataset with yaw labels (synthetic_faces, or a manifest with a yaw column)",
    "pitch": "a dataset with pitch labels",
    "roll": "a dataset with roll labels",
}


def example_batch(spec: DataSpec, data_config, size: int = 2) -> dict[str, np.ndarray]:
    """Zeros of every key, shape and dtype a training batch of this run carries (`Decode`), for
    initialising a method and checking what it reads (`Method.batch_keys`) before any data is decoded."""
    h, w, c = spec.image_shape
    image = np.zeros((size, h, w, c), np.float32)
    labels = np.zeros((size,), np.int32)
    batch = {"image": image, "expression": labels, "subject": labels}
    for k in spec.pose_keys:
        batch[k] = np.zeros((size,), np.float32)
    if spec.has_neutral and data_config.get("with_neutral"):
        batch["neutral_image"] = image
    if data_config.get("partner"):
        batch.update(partner_image=image, partner_expression=labels,
                     partner_mask=np.zeros((size,), np.float32))
    return batch


def check_batch_keys(method_name: str, batch_keys: Sequence[str], spec: DataSpec, data_config) -> None:
    """DataError naming the switch that provides each batch key `method_name` reads and this run lacks."""
    given = example_batch(spec, data_config)
    missing = [k for k in batch_keys if k not in given]
    if missing:
        fixes = "; ".join(f"{k}: {BATCH_KEY_SWITCHES.get(k, 'no dataset switch provides it')}"
                          for k in missing)
        raise DataError(
            f"{method_name} reads {missing} from each training batch, which this run's data does not "
            f"provide (it gives {sorted(given)}). To provide them: {fixes}."
        )


_LUMA = np.asarray([0.299, 0.587, 0.114], np.float32)


class Augment(grain.transforms.RandomMap):
    """Training-time augmentation, applied alike to every image key of an example (an image and its
    neutral or partner image move together).

    Always: random pad-and-crop translation (``crop_padding`` px) and horizontal flip. A flip mirrors
    the head, so it negates yaw and roll: without that the pose label would be wrong for half the
    training images. Switched on by ``augment`` (keys and meaning: ``config_defaults.AUGMENT_DEFAULTS``):
    a random resized crop and a small rotation (one bilinear affine warp, edges replicated), brightness /
    contrast / saturation jitter, grey conversion, and random erasing (filled with uniform noise).

    The random numbers come from grain's per-record generator, which follows the record's position in
    the global stream: the same on 1 or N hosts, and restored with the iterator's state on resume.
    """

    def __init__(self, crop_padding: int, flip: bool, augment=None):
        self._pad = int(crop_padding)
        self._flip = bool(flip)
        self._aug = {**AUGMENT_DEFAULTS, **dict(augment or {})}

    def _affine(self, example, keys, rng):
        a = self._aug
        scale, rotation = float(a["resized_crop_scale"]), float(a["rotation"])
        if scale >= 1.0 and rotation <= 0.0:
            return
        from scipy import ndimage

        h, w = example["image"].shape[:2]
        area = rng.uniform(scale, 1.0) if scale < 1.0 else 1.0
        log_r = np.log1p(float(a["aspect_ratio"])) if scale < 1.0 else 0.0
        ratio = np.exp(rng.uniform(-log_r, log_r))
        sy, sx = min(1.0, np.sqrt(area / ratio)), min(1.0, np.sqrt(area * ratio))
        ty = rng.uniform(-(1 - sy) * h / 2, (1 - sy) * h / 2)
        tx = rng.uniform(-(1 - sx) * w / 2, (1 - sx) * w / 2)
        theta = np.deg2rad(rng.uniform(-rotation, rotation)) if rotation > 0 else 0.0
        cos, sin = np.cos(theta), np.sin(theta)
        matrix = np.asarray([[cos, -sin], [sin, cos]]) @ np.diag([sy, sx])
        centre = np.asarray([(h - 1) / 2, (w - 1) / 2])
        offset = centre + np.asarray([ty, tx]) - matrix @ centre
        for k in keys:
            image = example[k]
            example[k] = np.stack([
                ndimage.affine_transform(image[..., c], matrix, offset, order=1, mode="nearest")
                for c in range(image.shape[-1])], axis=-1).astype(np.float32)

    def _photometric(self, example, keys, rng):
        a = self._aug
        brightness = rng.uniform(-a["brightness"], a["brightness"]) if a["brightness"] > 0 else 0.0
        contrast = rng.uniform(1 - a["contrast"], 1 + a["contrast"]) if a["contrast"] > 0 else 1.0
        saturation = rng.uniform(1 - a["saturation"], 1 + a["saturation"]) if a["saturation"] > 0 else 1.0
        grey = a["grey"] > 0 and rng.random() < a["grey"]
        if not (brightness or contrast != 1.0 or saturation != 1.0 or grey):
            return
        for k in keys:
            x = example[k]
            if x.shape[-1] == 3 and (grey or saturation != 1.0):
                luma = (x @ _LUMA)[..., None]
                x = np.broadcast_to(luma, x.shape) if grey else luma + saturation * (x - luma)
            x = (x - x.mean()) * contrast + x.mean() + brightness
            example[k] = np.clip(x, -1.0, 1.0).astype(np.float32)

    def _erase(self, example, keys, rng):
        p = float(self._aug["erasing"])
        if p <= 0 or rng.random() >= p:
            return
        h, w = example["image"].shape[:2]
        area = rng.uniform(0.02, 0.2) * h * w
        ratio = np.exp(rng.uniform(np.log(0.3), np.log(1 / 0.3)))
        eh = min(h, max(1, int(round(np.sqrt(area * ratio)))))
        ew = min(w, max(1, int(round(np.sqrt(area / ratio)))))
        y, x = rng.integers(0, h - eh + 1), rng.integers(0, w - ew + 1)
        noise = rng.uniform(-1, 1, (eh, ew, example["image"].shape[-1])).astype(np.float32)
        for k in keys:
            image = example[k].copy()
            image[y:y + eh, x:x + ew] = noise
            example[k] = image

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
        self._affine(example, keys, rng)
        self._photometric(example, keys, rng)
        self._erase(example, keys, rng)
        for k in keys:
            example[k] = np.ascontiguousarray(example[k])
        return example


def train_loader(
    dataset: Dataset, data_config, *, global_batch_size: int, seed: int
) -> grain.DataLoader:
    """An endless shuffled loader of per-process training batches over the training subjects.

    Each process gets batches of `global_batch_size / process_count` examples (this module's docstring).
    `data_config.subjects_per_batch` = P > 0 makes every global batch P distinct subjects x K images
    (`SubjectBalancedSampler`); 0 (or no such key) keeps the plain shuffled stream (`GlobalBatchSampler`).
    """
    process_count = _process_count()
    if global_batch_size % process_count:
        raise DataError(
            f"batch_size={global_batch_size} is not divisible by the {process_count} processes."
        )
    records = dataset.train_indices if dataset.train_sampling is None else dataset.train_sampling
    source = Subset(dataset.source, records, dataset.fold_file["dataset"])
    pairing = []
    if data_config.get("partner"):
        names = list(dataset.spec.class_names)
        pairing = [Partners(dataset.source, dataset.labels, dataset.train_indices, data_config.partner,
                            names.index("neutral") if "neutral" in names else None,
                            dataset.spec.has_counterfactual)]
    local_batch = global_batch_size // process_count
    subjects_per_batch = int(data_config.get("subjects_per_batch", 0) or 0)
    if subjects_per_batch:
        sampler = SubjectBalancedSampler(
            dataset.labels["subject"][records], records=records, subjects_per_batch=subjects_per_batch,
            seed=seed, local_batch_size=local_batch, process_count=process_count)
    else:
        sampler = GlobalBatchSampler(len(source), seed=seed, local_batch_size=local_batch,
                                     process_count=process_count)
    return grain.DataLoader(
        data_source=source,
        sampler=sampler,
        operations=[
            *pairing,
            Decode(dataset.spec.pose_keys, dataset.spec.has_neutral and data_config.with_neutral),
            Augment(data_config.crop_padding, data_config.flip, data_config.get("augment")),
            grain.transforms.Batch(local_batch, drop_remainder=True),
        ],
        shard_options=grain.sharding.ShardByJaxProcess(drop_remainder=True),
        worker_count=int(data_config.worker_count),
    )


class GlobalBatchSampler:
    """One shuffled stream of training records, read as global batches by any number of processes.

    Global batch `s` is always the records at stream positions `[s * G, (s + 1) * G)` (G the global batch
    size), and process `p` reads the slice `[s * G + p * L, s * G + (p + 1) * L)` of it (L = G / process
    count), so the rows of the global array that `jax.make_array_from_process_local_data` assembles are
    in stream order whatever the number of hosts, and each record's augmentation rng follows its stream
    position. Two hosts with 4 devices each thus train on exactly the batches one host with 8 devices
    does. (grain's `ShardByJaxProcess` on the sampler would instead give each host its own shuffle of
    half the records.) The grain `DataLoader` asks for index `k * process_count + p` on process `p`,
    its local position `k`.
    """

    def __init__(self, num_records: int, *, seed: int, local_batch_size: int, process_count: int):
        self._stream = grain.samplers.IndexSampler(num_records=num_records, shuffle=True, seed=seed,
                                                   num_epochs=None)
        self._local_batch = int(local_batch_size)
        self._process_count = int(process_count)

    def __repr__(self) -> str:
        # grain compares this with the checkpointed repr when restoring an iterator.
        return (f"GlobalBatchSampler({self._stream!r}, local_batch_size={self._local_batch}, "
                f"process_count={self._process_count})")

    def __len__(self) -> int:
        return len(self._stream)

    def __getitem__(self, index: int):
        local_position, process = divmod(int(index), self._process_count)
        step, row = divmod(local_position, self._local_batch)
        position = (step * self._process_count + process) * self._local_batch + row
        record = self._stream[position]
        # The loader's own index stays in the metadata: grain's checkpointed state counts in it.
        return dataclasses.replace(record, index=int(index))


class SubjectBalancedSampler:
    """Global batches of exactly P distinct subjects with K images each (P * K = G, the global batch size).

    Why: an identity adversary (`idfer_jax.methods.adversaries`, METHODS.md section 2) learns who is in
    an image from the batch it sees. In a plain shuffled batch of a set with many subjects most subjects
    appear once, so there is little identity signal to learn or to remove; P subjects x K images give
    every subject in the batch K examples. P is `config.data.subjects_per_batch`, K = G / P.

    `subjects[i]` is the subject of source position `i` (the positions of the training `Subset`, i.e. of
    `dataset.train_sampling` when `data.mix` repeats records, else of `dataset.train_indices`);
    `records[i]` is the dataset record at that position (default: each position its own record), so a
    record that `data.mix` repeats counts once when drawing images and by its number of copies when
    weighting its subject.

    Global batch `s` is a pure function of `(seed, s)`: `np.random.default_rng([seed, s])` draws
    - P subjects without replacement, each with probability proportional to its number of positions
      [choice]: a subject with more images is drawn more often (closer to the plain stream than a
      uniform draw of subjects), and with `data.mix` the sets keep roughly their mix weights. Over many
      steps every subject is drawn;
    - then K distinct records of each drawn subject without replacement; a subject with fewer than K
      distinct training records gives each of them once and draws the rest with replacement [choice].
    Rows are grouped by subject [choice]: rows `[j * K, (j + 1) * K)` of the global batch (shape `(G,)` of
    source positions) are the j-th drawn subject, subjects in the order drawn (random), so a loss can
    reshape a batch to `(P, K, ...)`.

    The multi-process contract is `GlobalBatchSampler`'s: global batch `s` is the stream positions
    `[s * G, (s + 1) * G)`, process `p` reads rows `[p * L, (p + 1) * L)` of it (L = G / process count,
    so on several hosts a process may hold only some of a subject's K images; the global array holds all),
    the grain `DataLoader` asks for index `k * process_count + p` on process `p`, and each record's
    augmentation rng is `Philox(seed + stream position)`, as grain's `IndexSampler` gives: the same rows,
    order and augmentation on 1 or N hosts, and restored with the iterator's state on resume.
    """

    def __init__(self, subjects: np.ndarray, *, subjects_per_batch: int, seed: int, local_batch_size: int,
                 process_count: int, records: np.ndarray | None = None):
        subjects = np.asarray(subjects, np.int64)
        records = np.arange(len(subjects)) if records is None else np.asarray(records, np.int64)
        if records.shape != subjects.shape or not len(subjects):
            raise ValueError(f"subjects ({subjects.shape}) and records ({records.shape}) must be one "
                             "non-empty entry per source position.")
        self._p = int(subjects_per_batch)
        self._local_batch = int(local_batch_size)
        self._process_count = int(process_count)
        self._seed = int(seed)
        global_batch = self._local_batch * self._process_count
        if self._p < 1:
            raise ValueError(f"subjects_per_batch must be >= 1; got {self._p} (0 = GlobalBatchSampler).")
        unknown = int(np.sum(subjects < 0))
        if unknown:
            raise DataError(
                f"config.data.subjects_per_batch={self._p} groups each training batch by subject, but "
                f"{unknown} of the {len(subjects)} training records have no subject id (-1). Use a dataset "
                "with subject labels (an image_folder needs a `subject` group in data.pattern or column in "
                "data.manifest) or set --config.data.subjects_per_batch=0.")
        ids, inverse, counts = np.unique(subjects, return_inverse=True, return_counts=True)
        if global_batch % self._p:
            step = math.lcm(self._p, self._process_count)
            sizes = sorted({max(step, global_batch // step * step), global_batch // step * step + step})
            divisors = [d for d in range(2, min(global_batch, len(ids)) + 1) if global_batch % d == 0]
            raise DataError(
                f"The global batch of {global_batch} images cannot hold config.data.subjects_per_batch="
                f"{self._p} subjects with the same number of images each. Set --config.train.batch_size to "
                f"a multiple of {step} (e.g. {' or '.join(map(str, sizes))}), or "
                f"--config.data.subjects_per_batch to a divisor of {global_batch} (at most the "
                f"{len(ids)} training subjects: {', '.join(map(str, divisors))}).")
        if len(ids) < self._p:
            raise DataError(
                f"config.data.subjects_per_batch={self._p}, but this fold's training records hold only "
                f"{len(ids)} subjects. Set --config.data.subjects_per_batch to at most {len(ids)} (and a "
                f"divisor of the global batch size {global_batch}).")
        self._k = global_batch // self._p
        self._global_batch = global_batch
        # Each subject's distinct records, by the first source position that holds each of them.
        _, first = np.unique(records, return_index=True)
        first = np.sort(first)
        order = first[np.argsort(inverse[first], kind="stable")]
        self._members = np.split(order, np.cumsum(np.bincount(inverse[first], minlength=len(ids)))[:-1])
        self._weights = counts / counts.sum()
        digest = hashlib.sha1()
        for part in (ids, counts, *self._members):
            digest.update(np.asarray(part, np.int64).tobytes())
            digest.update(b"|")
        self._digest = digest.hexdigest()[:12]
        self._num_subjects = len(ids)
        self._cache: tuple[int, np.ndarray] = (-1, np.empty(0, np.int64))

    def __repr__(self) -> str:
        # grain compares this with the checkpointed repr when restoring an iterator: the draw's every
        # input, and no object address.
        return (f"SubjectBalancedSampler(subjects_per_batch={self._p}, images_per_subject={self._k}, "
                f"seed={self._seed}, local_batch_size={self._local_batch}, "
                f"process_count={self._process_count}, {self._num_subjects} subjects, "
                f"table sha1 {self._digest})")

    def __len__(self) -> int:
        return sys.maxsize  # endless, like the plain stream

    def global_batch(self, step: int) -> np.ndarray:
        """The source positions of global batch `step`, shape (G,): P groups of K, one subject each."""
        cached = self._cache
        if cached[0] == step:
            return cached[1]
        rng = np.random.default_rng([self._seed, int(step)])
        chosen = rng.choice(self._num_subjects, size=self._p, replace=False, p=self._weights)
        rows = []
        for subject in chosen:
            members = self._members[subject]
            if len(members) >= self._k:
                rows.append(members[rng.choice(len(members), size=self._k, replace=False)])
            else:
                extra = rng.choice(len(members), size=self._k - len(members), replace=True)
                rows.append(members[np.concatenate([rng.permutation(len(members)), extra])])
        positions = np.concatenate(rows)
        self._cache = (int(step), positions)  # one tuple, swapped whole: safe across grain's threads
        return positions

    def __getitem__(self, index: int):
        if index < 0:
            raise IndexError(f"SubjectBalancedSampler index {index} < 0.")
        local_position, process = divmod(int(index), self._process_count)
        step, row = divmod(local_position, self._local_batch)
        row += process * self._local_batch
        position = step * self._global_batch + row
        return grain.RecordMetadata(
            index=int(index),  # the loader's own index: grain's checkpointed state counts in it
            record_key=int(self.global_batch(step)[row]),
            rng=np.random.Generator(np.random.Philox(key=self._seed + position)),
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
    for step in range(num_steps):
        lo = step * per_step + process_index * local_batch
        batch = load_examples(dataset, padded[lo : lo + local_batch], with_neutral=with_neutral)
        batch["mask"] = mask[lo : lo + local_batch]
        yield batch


def load_examples(dataset: Dataset, indices, *, with_neutral: bool = False) -> dict[str, np.ndarray]:
    """The records at `indices`, decoded and stacked into one batch (no sharding, no augmentation)."""
    decode = Decode(dataset.spec.pose_keys, dataset.spec.has_neutral and with_neutral)
    examples = [decode.map(r) for r in dataset.source.__getitems__([int(i) for i in indices])]
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def _process_count() -> int:
    import jax

    return jax.process_count()


def _process_index() -> int:
    import jax

    return jax.process_index()
