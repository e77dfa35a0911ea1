"""Opening datasets: the image_folder builder, protocols, class selection, fold files, real-data counts."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from idfer_jax import config_defaults
from idfer_jax.data import alignment, datasets
from idfer_jax.data.errors import DataError
from tests.conftest import SHARED_DATA

PATTERN = r"(?P<subject>S\d+)/(?P<expression>[A-Za-z]+)_(?P<sequence>\d+)\.png"
CLASSES = ("anger", "happiness", "sadness")


def write_folder(root, subjects=("S01", "S02", "S03", "S04"), expressions=("AN", "happy", "Sad"),
                 per_class=2, size=(40, 30)):
    rng = np.random.default_rng(0)
    for s in subjects:
        os.makedirs(root / s, exist_ok=True)
        for e in expressions:
            for i in range(per_class):
                pixels = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / s / f"{e}_{i}.png")
    (root / "README.txt").write_text("not an image")
    return root


def folder_config(tmp_path, root, **overrides):
    values = dict(name="image_folder", config="32px", image_size=32, data_dir=str(tmp_path / "tfds"),
                  manual_dir=str(root), pattern=PATTERN, class_names=CLASSES, num_folds=2)
    values.update(overrides)
    return config_defaults.data(**values)


def test_class_names_select_a_subset_of_an_image_folders_classes(tmp_path, capsys):
    root = write_folder(tmp_path / "raw")
    ds = datasets.open_dataset(folder_config(tmp_path, root, class_names=("happiness", "anger")))
    assert ds.spec.class_names == ("happiness", "anger")
    assert np.bincount(ds.labels["expression"]).tolist() == [8, 8]
    assert "label not in class_names: 'Sad'" in capsys.readouterr().out


def test_image_folder_labels_from_the_path_regex(tmp_path):
    root = write_folder(tmp_path / "raw")
    ds = datasets.open_dataset(folder_config(tmp_path, root))
    assert len(ds.source) == 4 * 3 * 2
    assert ds.spec.class_names == CLASSES and ds.spec.image_shape == (32, 32, 3)
    # 'AN' and 'Sad' reach their canonical classes; every class has 4 subjects x 2 images.
    assert np.bincount(ds.labels["expression"]).tolist() == [8, 8, 8]
    assert sorted(np.unique(ds.labels["subject"])) == [0, 1, 2, 3]
    record = ds.source[int(ds.test_indices[0])]
    assert record["image"].shape == (32, 32, 3) and record["image"].dtype == np.uint8
    names = {int(s): n for s, n in zip(ds.fold_file["test_subjects"][0],
                                       ds.fold_file["test_subject_names"][0], strict=True)}
    assert all(n.startswith("S0") for n in names.values())


def test_image_folder_rejects_bad_patterns_and_unknown_classes(tmp_path):
    root = write_folder(tmp_path / "raw")
    with pytest.raises(DataError, match="no named group 'expression'"):
        datasets.open_dataset(folder_config(tmp_path, root, pattern=r"(?P<subject>S\d+)/.*\.png"))
    with pytest.raises(DataError, match="unknown named groups"):
        datasets.open_dataset(folder_config(tmp_path, root, pattern=r"(?P<who>S\d+)/(?P<expression>\w+)"))
    with pytest.raises(DataError, match="its labels are .*'Sad' x8"):
        datasets.open_dataset(folder_config(tmp_path, root, class_names=("fear", "surprise")))
    with pytest.raises(DataError, match="is labelled by the pattern"):
        datasets.open_dataset(folder_config(tmp_path, root, pattern=r"(?P<expression>x)/nothing"))
    with pytest.raises(DataError, match="manual_dir"):
        datasets.open_dataset(folder_config(tmp_path, tmp_path / "missing"))


def test_image_folder_manifest_with_official_split_and_pose(tmp_path):
    root = write_folder(tmp_path / "raw", per_class=1)
    rows = ["path,expression,yaw,split"]
    for i, path in enumerate(sorted(p.relative_to(root) for p in root.rglob("*.png"))):
        rows.append(f"{path.as_posix()},{path.name.split('_')[0]},{10.0 * i},{'test' if i % 3 else 'train'}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    config = folder_config(tmp_path, root, pattern="", manifest="labels.csv", protocol="official")
    ds = datasets.open_dataset(config)
    assert ds.fold_file["protocol"] == "official"
    assert len(ds.train_indices) == 4 and len(ds.test_indices) == 8
    assert ds.spec.pose_keys == ("yaw",)
    assert sorted(ds.labels["yaw"].tolist()) == [10.0 * i for i in range(12)]
    assert (ds.labels["subject"] == -1).all()  # the manifest names no subjects
    config.protocol = "kfold"
    with pytest.raises(DataError, match="no subject ids"):
        datasets.open_dataset(config)


def test_kfold_and_loso_hold_out_every_subject_once(tmp_path):
    root = write_folder(tmp_path / "raw")
    config = folder_config(tmp_path, root, protocol="loso")
    held_out = []
    for fold in range(4):
        config.fold = fold
        ds = datasets.open_dataset(config)
        assert ds.num_folds == 4 and ds.fold_file["protocol"] == "leave_one_subject_out"
        test_subjects = set(ds.labels["subject"][ds.test_indices])
        assert len(test_subjects) == 1
        assert not test_subjects & set(ds.labels["subject"][ds.train_indices])
        assert len(ds.train_indices) + len(ds.test_indices) == 24
        held_out += sorted(test_subjects)
    assert sorted(held_out) == [0, 1, 2, 3]
    config.fold = 4
    with pytest.raises(DataError, match="has 4 folds"):
        datasets.open_dataset(config)


def test_fold_file_replays_a_split_by_subject_name(tmp_path):
    root = write_folder(tmp_path / "raw")
    first = datasets.open_dataset(folder_config(tmp_path, root, split_seed=3))
    path = tmp_path / "folds.json"
    datasets.write_fold_file(first, str(path))
    # Another image size is another prepared dataset; the names still match.
    replay = datasets.open_dataset(folder_config(tmp_path, root, config="48px", image_size=48,
                                                 split_seed=99, fold_file=str(path)))
    assert (replay.test_indices.size == first.test_indices.size)
    assert replay.fold_file["test_subject_names"] == first.fold_file["test_subject_names"]
    broken = json.loads(path.read_text())
    broken["test_subject_names"][0] = ["S77"]
    path.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="S77"):
        datasets.open_dataset(folder_config(tmp_path, root, fold_file=str(path)))


def test_class_selection_and_map(smoke_config):
    data = smoke_config.data
    full = datasets.open_dataset(data)
    counts = np.bincount(full.labels["expression"])  # neutral, anger, ..., surprise
    data.class_names = ("sadness", "anger")
    ds = datasets.open_dataset(data)
    assert ds.spec.class_names == ("sadness", "anger")
    usable = np.concatenate([ds.train_indices, ds.test_indices])
    assert len(usable) == counts[5] + counts[1]
    assert ds.fold_file["classes_left_out"] == ["neutral", "disgust", "fear", "happiness", "surprise"]
    # Class indices follow the run's order, in the labels and in the records the loaders read.
    assert np.bincount(ds.labels["expression"][usable]).tolist() == [counts[5], counts[1]]
    assert all(ds.source[int(i)]["expression"] == ds.labels["expression"][i] for i in usable[:20])
    # The same subjects are held out whatever the classes.
    assert ds.fold_file["test_subjects"] == full.fold_file["test_subjects"]
    data.class_names = ("negative", "happiness")
    data.class_map = "anger:negative, sadness:negative, disgust:negative"
    merged = datasets.open_dataset(data)
    usable = np.concatenate([merged.train_indices, merged.test_indices])
    assert np.bincount(merged.labels["expression"][usable]).tolist() == [
        counts[1] + counts[5] + counts[2], counts[4]]
    data.class_map = ""
    data.class_names = ("fear", "contempt")
    with pytest.raises(DataError, match="has no class contempt"):
        datasets.open_dataset(data)


def test_cross_dataset_trains_on_one_and_tests_on_another(tmp_path):
    a = write_folder(tmp_path / "a", subjects=("S01", "S02"))
    b = write_folder(tmp_path / "b", subjects=("S01", "S02", "S03"), expressions=("happy", "AN"))
    config = folder_config(tmp_path, a)
    config.test.update(name="image_folder", manual_dir=str(b))
    ds = datasets.open_dataset(config)
    assert ds.fold_file["protocol"] == "cross_dataset" and ds.num_folds == 1
    assert len(ds.train_indices) == 2 * 3 * 2
    assert len(ds.test_indices) == 3 * 2 * 2
    # b's subjects are renumbered past a's, so "S01" of b is not a training subject.
    assert not set(ds.labels["subject"][ds.train_indices]) & set(ds.labels["subject"][ds.test_indices])
    # Both sides are framed alike: aligned to one template where the [align] extra is installed.
    framing = ds.fold_file["framing"]
    if alignment.available():
        assert "aligned_32px" in ds.fold_file["dataset"].split(" -> ")[1]
        assert framing["train"] == framing["test"] == "detected and aligned to one 5-point template, 32 px"
    # The decision is written into the config the Trainer saves: a resume elsewhere cannot redo it.
    resolved = datasets.cross_dataset_framing(config)
    assert resolved.test.align == "no" and (resolved.config == "aligned_32px") == alignment.available()
    config.test.align = "no"
    ds = datasets.open_dataset(config)
    assert ds.fold_file["framing"]["test"] == "the dataset's own crop, resized to 32 px"


def test_cross_dataset_test_folder_with_its_own_manifest_and_letter_codes(tmp_path):
    """The test set is a user's folder labelled by a CSV in letter codes that only its class_map names;
    its extra class (NE) is left out by the run's class_names."""
    a = write_folder(tmp_path / "a", subjects=("S01", "S02"))
    b = tmp_path / "b"
    b.mkdir()
    rows = ["path,expression,subject"]
    for i, code in enumerate(["HA", "AN", "SA", "NE"] * 3):
        Image.fromarray(np.full((40, 30, 3), 40 * i % 255, np.uint8)).save(b / f"img{i}.png")
        rows.append(f"img{i}.png,{code},P{i % 3}")
    (b / "labels.csv").write_text("\n".join(rows) + "\n")
    config = folder_config(tmp_path, a, class_names=("anger", "happiness", "sadness"))
    config.test.update(name="image_folder", manual_dir=str(b), manifest="labels.csv",
                       class_map="HA:happiness,AN:anger,SA:sadness")
    ds = datasets.open_dataset(config)
    test_labels = ds.labels["expression"][ds.test_indices]
    assert len(ds.train_indices) == 2 * 3 * 2 and len(test_labels) == 9
    assert np.bincount(test_labels).tolist() == [3, 3, 3]


def test_training_on_a_folder_and_a_benchmark_at_once_keeps_subjects_apart(tmp_path, smoke_data_dir):
    """data.extra adds a training set: its classes meet the run's by name (the rest are left out), its
    subjects stay apart from the main set's, the folds split the union of subjects, and data.mix sets how
    often each set is drawn."""
    root = write_folder(tmp_path / "raw", size=(48, 48))
    config = folder_config(tmp_path, root, config="48px", image_size=48, data_dir=smoke_data_dir,
                           class_names=("anger", "happiness", "sadness"), extra=("synthetic_faces/smoke=",),
                           mix=(1.0, 1.0))
    ds = datasets.open_dataset(config)
    assert ds.fold_file["dataset"].endswith(" + synthetic_faces/smoke")
    sets = ds.fold_file["training_sets"]
    assert len(sets) == 2 and all(n > 0 for n in sets.values())
    names = ds.fold_file["test_subject_names"]
    everyone = [n for fold in names for n in fold]
    assert len(everyone) == len(set(everyone)) == 4 + 24  # folder subjects + prefixed synthetic ones
    assert sum(n.startswith("synthetic_faces:") for n in everyone) == 24
    assert not set(ds.labels["subject"][ds.train_indices]) & set(ds.labels["subject"][ds.test_indices])
    folder_records = set(ds.train_indices[: sets[next(iter(sets))]])
    share = np.isin(ds.train_sampling, list(folder_records)).mean()
    assert 0.45 < share < 0.55, share  # the small folder is repeated to half of what is drawn
    with pytest.raises(DataError, match="one positive weight per training set"):
        config.mix = (1.0,)
        datasets.open_dataset(config)
    config.mix = ()
    config.extra = ("no_such_set=",)
    with pytest.raises(DataError, match="'no_such_set' is not a benchmark dataset"):
        datasets.open_dataset(config)


def test_missing_manual_download_names_the_archive_and_folder(tmp_path):
    config = config_defaults.data(name="ck_plus48", config="48px", image_size=48,
                                  data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"(?s)manual_dir .*nowhere does not exist.*CK\+48\.zip"):
        datasets.open_dataset(config)
    (tmp_path / "empty").mkdir()
    config.manual_dir = str(tmp_path / "empty")
    with pytest.raises(DataError, match=r"(?s)CK\+48.*<expression>/S<subject>"):
        datasets.open_dataset(config)
    config.name = "ck_plus_49"
    with pytest.raises(DataError, match="Unknown dataset 'ck_plus_49'"):
        datasets.open_dataset(config)


def _needs_shared(name):
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent: the real-data check needs the research-only sets in ../shared/data")
    return path


@pytest.mark.parametrize("name,builder,config,size,images,subjects,protocol", [
    ("ckplus48", "ck_plus48", "48px", 48, 981, 118, "kfold"),
    ("jaffe", "jaffe", "64px", 64, 213, 10, "loso"),
])
def test_real_data_counts_and_subject_disjoint_folds(tmp_path, name, builder, config, size, images,
                                                       subjects, protocol):
    manual = _needs_shared(name)
    data = config_defaults.data(name=builder, config=config, image_size=size,
                                data_dir=str(tmp_path / "tfds"), manual_dir=str(manual),
                                protocol=protocol, num_folds=10)
    ds = datasets.open_dataset(data)
    assert len(ds.source) == images
    assert len(np.unique(ds.labels["subject"])) == subjects
    assert ds.num_folds == 10
    folds = [set(f) for f in ds.fold_file["test_subjects"]]
    assert sorted(s for f in folds for s in f) == list(range(subjects))  # each subject tested once
    for fold in range(10):
        data.fold = fold
        split = datasets.open_dataset(data)
        train, test = (set(split.labels["subject"][i]) for i in (split.train_indices, split.test_indices))
        assert not train & test and test == folds[fold]
        assert len(split.train_indices) + len(split.test_indices) == images
    if name == "ckplus48":
        assert len(np.unique(ds.labels["sequence"])) == 327  # 3 frames of each labelled sequence


def test_aligned_config_detects_every_jaffe_face(tmp_path):
    pytest.importorskip("dlib", reason="alignment needs the [align] extra (dlib-bin)")
    manual = _needs_shared("jaffe")
    import tensorflow_datasets as tfds

    data = config_defaults.data(name="jaffe", config="aligned_64px", image_size=64,
                                data_dir=str(tmp_path / "tfds"), manual_dir=str(manual), protocol="loso")
    ds = datasets.open_dataset(data)
    assert len(ds.source) == 213
    builder = tfds.builder("jaffe/aligned_64px", data_dir=str(tmp_path / "tfds"))
    found = [bool(r["face_found"]) for r in builder.as_data_source("train")]
    assert all(found)
