"""Builders of BU-3DFE, Multi-PIE, RAF-DB, AffectNet, SFEW, FER2013 and FERPlus on tiny fake copies.

Each fixture mimics the real distribution's folder and file naming and label encoding with a few tiny
random images (never real data), so that the layout, label mapping and split logic are tested.
"""

from __future__ import annotations

import csv
import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from idfer_jax.data import face_builder as fb
from idfer_jax.data.benchmarks import affectnet, bu3dfe, fer2013, multi_pie, raf_db, sfew  # noqa: F401
from idfer_jax.data.errors import ManualDataError

RNG = np.random.default_rng(0)


def _image(path: pathlib.Path, size=(12, 12), color=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    array = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8) if color is None else np.full((h, w, 3), color,
                                                                                           np.uint8)
    Image.fromarray(array).save(path)


def _build(name: str, manual: pathlib.Path, tmp_path: pathlib.Path):
    builder = tfds.builder(name, data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(
        file_format="array_record", download_config=tfds.download.DownloadConfig(manual_dir=str(manual))
    )
    return builder


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _records(builder, split: str) -> dict[str, dict]:
    source = builder.as_data_source(split)
    return {_text(r["file_name"]): r for r in (source[i] for i in range(len(source)))}


def _labels(builder, records: dict[str, dict]) -> dict[str, str]:
    names = builder.info.features["expression"].names
    return {k: names[int(r["expression"])] for k, r in records.items()}


# ----------------------------------------------------------------------------------------------
# BU-3DFE


def _bu3dfe_tree(manual: pathlib.Path) -> None:
    for subject, race in (("F0001", "WH"), ("F0002", "AE"), ("M0001", "BL")):
        folder = manual / "BU-3DFE" / subject
        _image(folder / f"{subject}_NE00{race}_F2D.bmp")
        for code in ("AN", "HA"):
            for intensity in range(1, 5):
                _image(folder / f"{subject}_{code}{intensity:02d}{race}_F2D.bmp")
        (folder / f"{subject}_AN04{race}_F3D.wrl").write_text("#VRML V2.0 utf8\n")  # ignored
        _image(folder / f"{subject}_AN04{race}_F3D.bmp")  # 3-D texture: ignored


def test_bu3dfe_all_intensities_and_peak_config(tmp_path):
    _bu3dfe_tree(tmp_path / "manual")
    builder = _build("bu3dfe/64px", tmp_path / "manual", tmp_path)
    assert builder.info.features["expression"].names == [
        "neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise"]
    assert list(builder.info.splits) == ["train"]
    records = _records(builder, "train")
    assert len(records) == 3 * (1 + 2 * 4)
    labels = _labels(builder, records)
    assert labels["F0001/F0001_NE00WH_F2D.bmp"] == "neutral"
    assert labels["M0001/M0001_AN03BL_F2D.bmp"] == "anger"
    assert labels["F0002/F0002_HA01AE_F2D.bmp"] == "happiness"
    record = records["F0002/F0002_HA01AE_F2D.bmp"]
    assert _text(record["subject_name"]) == "F0002" and int(record["subject"]) == 1
    assert record["image"].shape == (64, 64, 3)
    # The 4 intensities of one expression share a sequence; other expressions do not.
    sequence = {k: int(r["sequence"]) for k, r in records.items()}
    assert sequence["F0001/F0001_AN01WH_F2D.bmp"] == sequence["F0001/F0001_AN04WH_F2D.bmp"]
    assert sequence["F0001/F0001_AN01WH_F2D.bmp"] != sequence["F0001/F0001_HA01WH_F2D.bmp"]
    assert "yaw" not in builder.info.features

    peak = _build("bu3dfe/48px_i4", tmp_path / "manual", tmp_path)  # any size parses, like '<size>px'
    assert sorted(_records(peak, "train")) == sorted(
        f"{s}/{s}_{c}{r}_F2D.bmp" for s, r in (("F0001", "WH"), ("F0002", "AE"), ("M0001", "BL"))
        for c in ("NE00", "AN04", "HA04"))
    assert peak.builder_config.intensities == (4,)
    assert _records(peak, "train")["F0001/F0001_HA04WH_F2D.bmp"]["image"].shape == (48, 48, 3)
    assert bu3dfe.bu3dfe_config("aligned_96px_i34").intensities == (3, 4)
    with pytest.raises(ValueError, match="_i"):
        bu3dfe.bu3dfe_config("64px_i5")


# ----------------------------------------------------------------------------------------------
# Multi-PIE


def _pie(root: pathlib.Path, subject: str, session: str, recording: str, camera: str, flash: str) -> str:
    relative = (f"data/session{session}/multiview/{subject}/{recording}/{camera}/"
                f"{subject}_{session}_{recording}_{camera.replace('_', '')}_{flash}.png")
    _image(root / relative, size=(16, 12))
    return relative


def test_multi_pie_expressions_views_and_flash(tmp_path):
    root = tmp_path / "manual" / "Multi-Pie"
    kept = {}
    for session, recording, expression in (("01", "01", "neutral"), ("01", "02", "happiness"),
                                           ("02", "02", "surprise"), ("03", "03", "disgust"),
                                           ("04", "02", "neutral")):
        for camera in ("05_1", "24_0", "11_0", "04_1"):
            kept[_pie(root, "001", session, recording, camera, "07")] = (expression, camera)
            _pie(root, "001", session, recording, camera, "00")  # other flash: skipped
        _pie(root, "001", session, recording, "08_1", "07")  # elevated view: skipped
    for session, recording in (("02", "03"), ("04", "03")):  # squint, scream: skipped
        _pie(root, "001", session, recording, "05_1", "07")
    kept[_pie(root, "002", "01", "01", "14_0", "07")] = ("neutral", "14_0")

    builder = _build("multi_pie/64px", tmp_path / "manual", tmp_path)
    assert builder.info.features["expression"].names == ["neutral", "disgust", "happiness", "surprise"]
    records = _records(builder, "train")
    assert sorted(records) == sorted(kept)
    labels = _labels(builder, records)
    yaw = {"05_1": 0.0, "24_0": 90.0, "11_0": -90.0, "04_1": 30.0, "14_0": -15.0}
    for key, (expression, camera) in kept.items():
        assert labels[key] == expression, key
        assert float(records[key]["yaw"]) == yaw[camera], key
    one = records["data/session03/multiview/001/03/24_0/001_03_03_240_07.png"]
    assert _text(one["subject_name"]) == "001" and one["image"].shape == (64, 64, 3)
    # The views of one recording share a sequence; recordings differ.
    seq = {k: int(r["sequence"]) for k, r in records.items()}
    assert seq["data/session01/multiview/001/01/05_1/001_01_01_051_07.png"] == \
        seq["data/session01/multiview/001/01/24_0/001_01_01_240_07.png"]
    assert seq["data/session01/multiview/001/01/05_1/001_01_01_051_07.png"] != \
        seq["data/session04/multiview/001/02/05_1/001_04_02_051_07.png"]


# ----------------------------------------------------------------------------------------------
# RAF-DB


def test_raf_db_codes_and_official_split(tmp_path):
    basic = tmp_path / "manual" / "basic"
    lines = [("train_00001", 1), ("train_00002", 2), ("train_00003", 3), ("train_00004", 4),
             ("train_00005", 5), ("test_0001", 6), ("test_0002", 7)]
    (basic / "EmoLabel").mkdir(parents=True)
    (basic / "EmoLabel" / "list_patition_label.txt").write_text(
        "".join(f"{name}.jpg {code}\n" for name, code in lines))
    for name, _ in lines:
        _image(basic / "Image" / "aligned" / f"{name}_aligned.jpg", size=(20, 20))
        _image(basic / "Image" / "original" / f"{name}.jpg", size=(30, 40))  # not read
    builder = _build("raf_db/64px", tmp_path / "manual", tmp_path)
    assert builder.info.features["expression"].names == [
        "neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise"]
    train, test = _records(builder, "train"), _records(builder, "test")
    assert len(train) == 5 and len(test) == 2
    labels = {**_labels(builder, train), **_labels(builder, test)}
    expected = {1: "surprise", 2: "fear", 3: "disgust", 4: "happiness", 5: "sadness", 6: "anger",
                7: "neutral"}
    for name, code in lines:
        assert labels[f"Image/aligned/{name}_aligned.jpg"] == expected[code]
    record = test["Image/aligned/test_0001_aligned.jpg"]
    assert int(record["subject"]) == -1 and record["image"].shape == (64, 64, 3)


def test_raf_db_unextracted_aligned_zip_says_so(tmp_path):
    basic = tmp_path / "manual" / "basic"
    (basic / "EmoLabel").mkdir(parents=True)
    (basic / "EmoLabel" / "list_patition_label.txt").write_text("train_00001.jpg 1\n")
    (basic / "Image").mkdir()
    (basic / "Image" / "aligned.zip").write_bytes(b"PK")
    with pytest.raises(ManualDataError, match="aligned.zip is not extracted"):
        _build("raf_db/64px", tmp_path / "manual", tmp_path)


# ----------------------------------------------------------------------------------------------
# AffectNet

_AFFECTNET_HEADER = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
                     "facial_landmarks", "expression", "valence", "arousal"]


def _affectnet_row(relative: str, code: int, box=(10, 5, 20, 20)) -> list:
    return [relative, *box, ";".join(["12.5"] * 136), code, "0.1", "-0.2"]


def test_affectnet_keeps_codes_0_to_7_and_crops_the_box(tmp_path):
    root = tmp_path / "manual" / "AffectNet"
    images = root / "Manually_Annotated_Images"
    train_rows = []
    for code in range(11):
        relative = f"{100 + code}/{'ab' * 10}{code}.jpg"
        path = images / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        array = np.zeros((40, 44, 3), np.uint8)
        array[5:25, 10:30] = 255  # the face box (x=10, y=5, 20x20) is white, the rest black
        Image.fromarray(array).save(path, quality=95)
        train_rows.append(_affectnet_row(relative, code))
    _image(images / "900" / "v0.jpg", size=(30, 30))
    _image(images / "900" / "v1.JPG", size=(30, 30))
    lists = root / "Manually_Annotated_file_lists"
    lists.mkdir()
    with open(lists / "training.csv", "w", newline="") as f:
        csv.writer(f).writerows([_AFFECTNET_HEADER, *train_rows])
    with open(lists / "validation.csv", "w", newline="") as f:  # some copies have no header row
        csv.writer(f).writerows([_affectnet_row("900/v0.jpg", 7, (0, 0, 30, 30)),
                                 _affectnet_row("900/v1.JPG", 9, (0, 0, 30, 30))])

    builder = _build("affectnet/64px", tmp_path / "manual", tmp_path)
    assert builder.info.features["expression"].names == list(fb.EXPRESSIONS)
    train, test = _records(builder, "train"), _records(builder, "test")
    assert len(train) == 8 and list(test) == ["Manually_Annotated_Images/900/v0.jpg"]
    labels = _labels(builder, train)
    names = ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt")
    for code, name in enumerate(names):
        assert labels[f"Manually_Annotated_Images/{100 + code}/{'ab' * 10}{code}.jpg"] == name
    assert _labels(builder, test)["Manually_Annotated_Images/900/v0.jpg"] == "contempt"
    record = train[f"Manually_Annotated_Images/101/{'ab' * 10}1.jpg"]
    assert record["image"].shape == (64, 64, 3) and int(record["subject"]) == -1
    assert record["image"][4:-4, 4:-4].min() > 200  # only the white face box is left


def test_affectnet_repackaged_layout(tmp_path):
    root = tmp_path / "manual"
    for folder, codes in (("train_set", (0, 3, 8, 7)), ("val_set", (6,))):
        (root / folder / "annotations").mkdir(parents=True)
        for n, code in enumerate(codes):
            _image(root / folder / "images" / f"{n}.jpg", size=(24, 24))
            np.save(root / folder / "annotations" / f"{n}_exp.npy", np.array(str(code)))
            np.save(root / folder / "annotations" / f"{n}_val.npy", np.array("0.5"))
    builder = _build("affectnet/64px", root, tmp_path)
    train, test = _records(builder, "train"), _records(builder, "test")
    assert _labels(builder, train) == {
        "train_set/images/0.jpg": "neutral", "train_set/images/1.jpg": "surprise",
        "train_set/images/3.jpg": "contempt",
    }
    assert _labels(builder, test) == {"val_set/images/0.jpg": "anger"}


# ----------------------------------------------------------------------------------------------
# SFEW


def test_sfew_prefers_aligned_faces_and_val_is_test(tmp_path):
    root = tmp_path / "manual" / "SFEW_2"
    folders = ("Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise")
    for i, name in enumerate(folders):
        _image(root / "Train_Aligned_Faces" / name / f"Movie_{i:03d}_00000001.png", size=(14, 18))
        _image(root / "Train" / name / f"Movie_{i:03d}_00000001.png", size=(36, 29))
        _image(root / "Train" / name / f"Movie_{i:03d}_00000002.png", size=(36, 29))  # no aligned face
    _image(root / "Val_Aligned_Faces" / "Sad" / "Film_001_00000003.png", size=(14, 18))
    _image(root / "Val_Aligned_Faces" / "Surprise" / "Film_002_00000004.png", size=(14, 18))
    _image(root / "Val" / "Sad" / "Film_001_00000003.png", size=(36, 29))
    builder = _build("sfew/64px", tmp_path / "manual", tmp_path)
    assert builder.info.features["expression"].names == [
        "neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise"]
    train, test = _records(builder, "train"), _records(builder, "test")
    assert len(train) == 7 and all(k.startswith("Train_Aligned_Faces/") for k in train)
    assert _labels(builder, train)["Train_Aligned_Faces/Happy/Movie_003_00000001.png"] == "happiness"
    assert _labels(builder, test) == {"Val_Aligned_Faces/Sad/Film_001_00000003.png": "sadness",
                                      "Val_Aligned_Faces/Surprise/Film_002_00000004.png": "surprise"}
    record = test["Val_Aligned_Faces/Sad/Film_001_00000003.png"]
    assert int(record["subject"]) == -1 and record["image"].shape == (64, 64, 3)


# ----------------------------------------------------------------------------------------------
# FER2013 and FERPlus

_FER_ROWS = [(0, "Training"), (3, "Training"), (6, "Training"), (1, "Training"), (5, "PublicTest"),
             (2, "PublicTest"), (4, "PrivateTest"), (3, "PrivateTest")]


def _fer_pixels(n: int) -> list[np.ndarray]:
    return [RNG.integers(0, 256, (48, 48), dtype=np.uint8) for _ in range(n)]


def _write_fer2013(path: pathlib.Path, pixels, icml: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        if icml:  # the competition's later table: other column order, a space after each comma
            writer.writerow(["emotion", " Usage", " pixels"])
        else:
            writer.writerow(["emotion", "pixels", "Usage"])
        for (code, usage), image in zip(_FER_ROWS, pixels, strict=True):
            text = " ".join(str(v) for v in image.reshape(-1))
            writer.writerow([code, usage, text] if icml else [code, text, usage])


@pytest.mark.parametrize("table", ["fer2013/fer2013.csv", "icml_face_data.csv"])
def test_fer2013_rows_labels_and_splits(tmp_path, table):
    pixels = _fer_pixels(len(_FER_ROWS))
    _write_fer2013(tmp_path / "manual" / table, pixels, icml=table.startswith("icml"))
    builder = _build("fer2013/48px", tmp_path / "manual", tmp_path)
    assert builder.info.features["expression"].names == [
        "neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise"]
    splits = {s: _records(builder, s) for s in ("train", "validation", "test")}
    assert {s: len(r) for s, r in splits.items()} == {"train": 4, "validation": 2, "test": 2}
    names = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
    name = pathlib.Path(table).name
    for row, (code, _) in enumerate(_FER_ROWS):
        split = {"Training": "train", "PublicTest": "validation", "PrivateTest": "test"}[_FER_ROWS[row][1]]
        record = splits[split][f"{name}:{row}"]
        assert _labels(builder, {"r": record})["r"] == names[code]
        assert int(record["subject"]) == -1
        np.testing.assert_array_equal(record["image"], np.repeat(pixels[row][..., None], 3, axis=-1))


def _write_ferplus(path: pathlib.Path, votes: list[tuple[str, list[int]]]) -> None:
    columns = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
               "unknown", "NF"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Usage", "Image name", *columns])
        for (_, usage), (name, counts) in zip(_FER_ROWS, votes, strict=True):
            writer.writerow([usage, name, *counts])


def test_ferplus_majority_vote(tmp_path):
    manual = tmp_path / "manual"
    _write_fer2013(manual / "fer2013" / "fer2013.csv", _fer_pixels(len(_FER_ROWS)))
    #          neu hap sur sad ang dis fea con unk NF
    votes = [
        ("fer0000000.png", [6, 2, 2, 0, 0, 0, 0, 0, 0, 0]),  # neutral
        ("fer0000001.png", [4, 4, 1, 1, 0, 0, 0, 0, 0, 0]),  # tie after dropping single votes: dropped
        ("fer0000002.png", [0, 0, 0, 0, 0, 0, 0, 6, 4, 0]),  # contempt
        ("fer0000003.png", [4, 3, 3, 0, 0, 0, 0, 0, 0, 0]),  # plurality but no majority: dropped
        ("fer0000004.png", [0, 0, 5, 0, 0, 0, 0, 0, 0, 1]),  # surprise (the single NF vote is dropped)
        ("fer0000005.png", [0, 0, 0, 0, 0, 0, 0, 0, 7, 3]),  # unknown: dropped
        ("", [0, 0, 0, 0, 0, 0, 0, 0, 0, 10]),               # removed by FERPlus (not a face)
        ("fer0000007.png", [0, 0, 0, 0, 2, 8, 0, 0, 0, 0]),  # disgust
    ]
    _write_ferplus(manual / "fer2013new.csv", votes)
    builder = _build("ferplus/48px", manual, tmp_path)
    assert builder.info.features["expression"].names == list(fb.EXPRESSIONS)
    labels = {s: _labels(builder, _records(builder, s)) for s in ("train", "validation", "test")}
    assert labels == {
        "train": {"fer0000000.png": "neutral", "fer0000002.png": "contempt"},
        "validation": {"fer0000004.png": "surprise"},
        "test": {"fer0000007.png": "disgust"},
    }
    assert fer2013.Ferplus.LABEL_MODE == "majority"


def test_ferplus_needs_its_vote_table(tmp_path):
    _write_fer2013(tmp_path / "manual" / "fer2013.csv", _fer_pixels(len(_FER_ROWS)))
    with pytest.raises(ManualDataError, match=r"(?s)not fer2013new\.csv.*github\.com/microsoft/FERPlus"):
        _build("ferplus/48px", tmp_path / "manual", tmp_path)


# ----------------------------------------------------------------------------------------------
# Missing manual downloads


@pytest.mark.parametrize("name,expected", [
    ("bu3dfe/64px", r"BU-3DFE\.zip"),
    ("multi_pie/64px", r"Multi-Pie/data/session"),
    ("raf_db/64px", r"basic\.zip.*list_patition_label\.txt"),
    ("affectnet/64px", r"Manually_Annotated_Images"),
    ("sfew/64px", r"Train_Aligned_Faces"),
    ("fer2013/48px", r"fer2013\.tar\.gz"),
    ("ferplus/48px", r"fer2013new\.csv"),
])
@pytest.mark.parametrize("present", [True, False])
def test_missing_manual_download_names_the_archive_or_folder(tmp_path, name, expected, present):
    manual = tmp_path / "manual"
    if present:
        manual.mkdir()
        (manual / "README.txt").write_text("not the dataset")
    with pytest.raises(ManualDataError, match=f"(?s){expected}"):
        _build(name, manual, tmp_path)
