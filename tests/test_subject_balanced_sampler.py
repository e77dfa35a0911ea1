"""`data.subjects_per_batch`: global training batches of exactly P subjects x K images
(`pipeline.SubjectBalancedSampler`), on a tiny in-memory dataset (no TFDS, no model)."""

from __future__ import annotations

import grain
import numpy as np
import pytest

from idfer_jax import api, configuration
from idfer_jax.config_defaults import data as data_block
from idfer_jax.configuration import ConfigError
from idfer_jax.data import pipeline
from tests.conftest import REPO
from tests.helpers import CLASSES

# Records per training subject: one with a single image, one with fewer than K = 3, others with more.
TRAIN_COUNTS = {10: 5, 11: 1, 12: 2, 13: 8, 14: 4, 15: 6}
TEST_SUBJECT = 99


def fake_dataset(counts=None, *, sampling: dict | None = None, unknown: int = 0) -> pipeline.Dataset:
    """A `Dataset` over in-memory records. Each record's `yaw` is its index + 1 (a flip negates it), so
    a decoded batch says which records it holds. `sampling` {subject: copies} repeats a subject's records
    in `train_sampling`, as `data.mix` does. `unknown` records of subject -1 join the training records."""
    counts = dict(TRAIN_COUNTS if counts is None else counts)
    subjects = [s for s, n in counts.items() for _ in range(n)] + [-1] * unknown + [TEST_SUBJECT] * 3
    rng = np.random.default_rng(0)
    source = [{"image": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "expression": i % len(CLASSES),
               "subject": s, "yaw": float(i + 1)} for i, s in enumerate(subjects)]
    labels = {"subject": np.asarray(subjects, np.int64),
              "expression": np.asarray([r["expression"] for r in source], np.int64)}
    train = np.flatnonzero(labels["subject"] != TEST_SUBJECT)
    test = np.flatnonzero(labels["subject"] == TEST_SUBJECT)
    train_sampling = None
    if sampling:
        train_sampling = np.sort(np.concatenate(
            [np.repeat(i, sampling.get(int(labels["subject"][i]), 1)) for i in train]))
    spec = pipeline.DataSpec(image_shape=(8, 8, 3), class_names=CLASSES,
                             train_subjects=tuple(sorted(s for s in counts)), pose_keys=("yaw",),
                             has_neutral=False)
    return pipeline.Dataset(source, labels, train, test, spec, {"dataset": "fake"}, train_sampling)


def data_config(p: int, **overrides):
    return data_block(subjects_per_batch=p, crop_padding=2, flip=True, image_size=8, **overrides)


def take(loader_or_iterator, n: int) -> list[dict]:
    it = iter(loader_or_iterator)
    return [next(it) for _ in range(n)]


def records_of(batch) -> np.ndarray:
    return np.abs(batch["yaw"]).astype(np.int64) - 1


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert sorted(x) == sorted(y)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_every_global_batch_is_p_subjects_by_k_images_and_all_subjects_come_up():
    ds = fake_dataset()
    p, k = 4, 3
    batches = take(pipeline.train_loader(ds, data_config(p), global_batch_size=p * k, seed=3), 40)
    seen = set()
    for batch in batches:
        assert batch["image"].shape == (p * k, 8, 8, 3)
        records = records_of(batch)
        np.testing.assert_array_equal(batch["subject"], ds.labels["subject"][records])
        np.testing.assert_array_equal(batch["expression"], ds.labels["expression"][records])
        groups = batch["subject"].reshape(p, k)  # rows are grouped by subject
        assert (groups == groups[:, :1]).all()
        assert len(set(groups[:, 0].tolist())) == p
        for subject, rows in zip(groups[:, 0], records.reshape(p, k), strict=True):
            # K distinct images where the subject has them; every image once, then repeats, where not.
            assert len(set(rows.tolist())) == min(k, TRAIN_COUNTS[int(subject)])
        seen |= set(groups[:, 0].tolist())
    assert seen == set(TRAIN_COUNTS)  # every training subject, and never the test subject
    assert len({records_of(b).tobytes() for b in batches}) == len(batches)  # batches differ by step


def test_a_global_batch_is_a_pure_function_of_seed_and_step():
    ds = fake_dataset()
    subjects = ds.labels["subject"][ds.train_indices]
    make = lambda seed: pipeline.SubjectBalancedSampler(  # noqa: E731
        subjects, subjects_per_batch=3, seed=seed, local_batch_size=6, process_count=1)
    a, b = make(5), make(5)
    forward = [a.global_batch(s).copy() for s in range(6)]
    backward = [b.global_batch(s).copy() for s in reversed(range(6))][::-1]  # random access, any order
    for x, y in zip(forward, backward, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(make(6).global_batch(0), forward[0])
    assert repr(a) == repr(b) and "seed=5" in repr(a) and "subjects_per_batch=3" in repr(a)
    assert "images_per_subject=2" in repr(a) and "table sha1" in repr(a)
    assert repr(make(6)) != repr(a)
    other = pipeline.SubjectBalancedSampler(subjects[1:], subjects_per_batch=3, seed=5,
                                            local_batch_size=6, process_count=1)
    assert repr(other).split("table sha1")[1] != repr(a).split("table sha1")[1]
    # Each record's rng follows its stream position, as grain's IndexSampler gives it.
    m = a[7]
    assert m.index == 7 and m.record_key == int(forward[1][1])
    assert m.rng.random() == np.random.Generator(np.random.Philox(key=5 + 7)).random()


def test_one_and_two_processes_read_the_same_global_batches(monkeypatch):
    ds = fake_dataset()
    config = data_config(3)
    config.augment.update(brightness=0.2, erasing=0.5)
    one = take(pipeline.train_loader(ds, config, global_batch_size=12, seed=1), 5)
    halves = []
    monkeypatch.setattr(pipeline, "_process_count", lambda: 2)
    for process in range(2):
        shard = lambda drop_remainder, p=process: grain.sharding.ShardOptions(p, 2, drop_remainder)  # noqa: E731
        monkeypatch.setattr(grain.sharding, "ShardByJaxProcess", shard)
        halves.append(take(pipeline.train_loader(ds, config, global_batch_size=12, seed=1), 5))
    joined = [{k: np.concatenate([h0[k], h1[k]]) for k in h0} for h0, h1 in zip(*halves, strict=True)]
    assert all(h["image"].shape[0] == 6 for h in halves[0])
    assert_same_batches(joined, one)


def test_a_restored_iterator_yields_the_same_following_batches():
    ds = fake_dataset()
    config = data_config(2)
    config.augment.update(brightness=0.2, erasing=0.5)
    it = iter(pipeline.train_loader(ds, config, global_batch_size=8, seed=2))
    take(it, 3)
    state = it.get_state()
    expected = take(it, 3)
    resumed = iter(pipeline.train_loader(ds, config, global_batch_size=8, seed=2))
    resumed.set_state(state)
    assert_same_batches(take(resumed, 3), expected)
    # Another seed's or another P's checkpoint is refused (grain compares the sampler's repr).
    for other in (dict(seed=3, config=config), dict(seed=2, config=data_config(4))):
        fresh = iter(pipeline.train_loader(ds, other["config"], global_batch_size=8, seed=other["seed"]))
        with pytest.raises(ValueError, match="Sampler in checkpoint does not match"):
            fresh.set_state(state)


def test_off_keeps_the_plain_sampler_batches():
    ds = fake_dataset()
    config = data_config(0)
    config.augment.update(brightness=0.2)
    source = pipeline.Subset(ds.source, ds.train_indices, "fake")
    plain = grain.DataLoader(
        data_source=source,
        sampler=pipeline.GlobalBatchSampler(len(source), seed=4, local_batch_size=8, process_count=1),
        operations=[pipeline.Decode(("yaw",), False),
                    pipeline.Augment(config.crop_padding, config.flip, config.augment),
                    grain.transforms.Batch(8, drop_remainder=True)],
        shard_options=grain.sharding.ShardByJaxProcess(drop_remainder=True),
    )
    expected = take(plain, 4)
    assert_same_batches(take(pipeline.train_loader(ds, config, global_batch_size=8, seed=4), 4), expected)
    del config["subjects_per_batch"]  # a config made before the key existed
    assert_same_batches(take(pipeline.train_loader(ds, config, global_batch_size=8, seed=4), 4), expected)


def test_mix_repeats_weight_subjects_and_repeated_records_count_once():
    # Subject 12 (2 records) repeated 20 times in the sampling list, as data.mix repeats a small set.
    ds = fake_dataset(sampling={12: 20})
    p, k = 2, 3
    batches = take(pipeline.train_loader(ds, data_config(p), global_batch_size=p * k, seed=0), 60)
    drawn = []
    for batch in batches:
        groups = batch["subject"].reshape(p, k)
        assert (groups == groups[:, :1]).all() and groups[0, 0] != groups[1, 0]
        for subject, rows in zip(groups[:, 0], records_of(batch).reshape(p, k), strict=True):
            # Its 2 records each once, then a repeat: copies in the sampling list are one record.
            assert len(set(rows.tolist())) == min(k, TRAIN_COUNTS[int(subject)])
        drawn.extend(groups[:, 0].tolist())
    # 40 of 64 sampling positions are subject 12's: it is in most batches (1 in 3 without the mix).
    assert drawn.count(12) > 0.7 * len(batches)


def test_partners_pair_within_the_balanced_batch():
    counts = {10: 4, 11: 4, 12: 4}
    ds = fake_dataset(counts)
    batch = take(pipeline.train_loader(ds, data_config(3, partner="other_expression"),
                                       global_batch_size=6, seed=0), 1)[0]
    groups = batch["subject"].reshape(3, 2)
    assert (groups == groups[:, :1]).all() and len(set(groups[:, 0].tolist())) == 3
    assert (batch["partner_mask"] == 1).all()
    assert (batch["partner_expression"] != batch["expression"]).all()


def test_batch_size_not_divisible_by_p_says_which_sizes_work():
    with pytest.raises(pipeline.DataError,
                       match=r"cannot hold config.data.subjects_per_batch=4 subjects.*multiple of 4 "
                             r"\(e.g. 8 or 12\).*divisor of 10 .*6 training subjects: 2, 5"):
        pipeline.train_loader(fake_dataset(), data_config(4), global_batch_size=10, seed=0)


def test_fewer_training_subjects_than_p_says_the_most_that_works():
    with pytest.raises(pipeline.DataError, match=r"subjects_per_batch=8, but this fold's training records "
                                                 r"hold only 6 subjects.*at most 6"):
        pipeline.train_loader(fake_dataset(), data_config(8), global_batch_size=16, seed=0)


def test_unknown_subjects_are_refused():
    with pytest.raises(pipeline.DataError, match=r"2 of the 28 training records have no subject id \(-1\)"
                                                 r".*subjects_per_batch=0"):
        pipeline.train_loader(fake_dataset(unknown=2), data_config(2), global_batch_size=8, seed=0)


@pytest.mark.parametrize("value, message", [
    (-1, r"config.data.subjects_per_batch=-1 is invalid: it must be an integer >= 0"),
    (5, r"subjects_per_batch=5 does not divide config.train.batch_size=8.*multiple of 5 \(e.g. 5 or 10\)"
        r".*divisor of 8 \(2, 4, 8\)"),
    (1, r"subjects_per_batch=1 puts one subject in every batch"),
])
def test_config_validation(value, message):
    config = api.load_config(str(REPO / "configs" / "baseline_synthetic.py") + ":smoke")
    config.train.batch_size = 8
    for valid in (0, 4):
        config.data.subjects_per_batch = valid
        configuration.validate(config, recipes=False)
    config.data.subjects_per_batch = value
    with pytest.raises(ConfigError, match=message):
        configuration.validate(config, recipes=False)
