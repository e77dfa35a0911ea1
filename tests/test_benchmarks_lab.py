"""The lab benchmark builders (CK+, Oulu-CASIA, MMI, KDEF) on tiny fixture trees laid out like the real ones.

Every fixture here is random noise written in the real distribution's folder / file naming and label
encoding; no real data is read.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from idfer_jax.data import face_builder as fb
from idfer_jax.data.benchmarks import ck_plus, kdef, mmi, oulu_casia  # noqa: F401  (register the builders)

SIZE = 48
RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------------------------
# Fixture writers


def write_image(path, size=(32, 24), mode="L", value=None):
    """A tiny random (or constant `value`) image; the format follows the file extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    channels = () if mode == "L" else (3,)
    if value is None:
        array = RNG.integers(0, 256, (h, w, *channels), dtype=np.uint8)
    else:
        array = np.full((h, w, *channels), value, np.uint8)
    Image.fromarray(array, mode).save(path)
    return path


# CK+: subject -> sequence -> (number of frames, label value or None, frame mode)
CK_SEQUENCES = {
    "S005": {"001": (5, 3, "L"), "002": (4, None, "L"), "003": (3, 7, "L")},
    "S010": {"001": (6, 2, "RGB"), "002": (4, "empty", "L")},
}


def write_ck_plus(root):
    """CK+/cohn-kanade-images/S005/001/S005_001_00000001.png ... and CK+/Emotion/... label files."""
    for subject, sequences in CK_SEQUENCES.items():
        for sequence, (frames, label, mode) in sequences.items():
            for i in range(1, frames + 1):
                name = f"{subject}_{sequence}_{i:08d}.png"
                write_image(root / "cohn-kanade-images" / subject / sequence / name, (64, 49), mode)
            labels = root / "Emotion" / subject / sequence
            if label is None:
                continue
            labels.mkdir(parents=True)  # "empty": the real release has empty folders for unlabelled ones
            if label != "empty":
                # the real files hold one float in scientific notation, padded with spaces
                (labels / f"{subject}_{sequence}_{frames:08d}_emotion.txt").write_text(
                    f"   {float(label):.7e}\n"
                )
    (root / "cohn-kanade-images" / ".DS_Store").write_bytes(b"\0")
    return root


OULU_SEQUENCES = {"P001": {"Anger": 5, "Happiness": 4}, "P002": {"Anger": 4, "Surprise": 6}}


def write_oulu_casia(root):
    """OriginalImg/VL/Strong/P001/Anger/000.jpeg ... plus an NI (near-infrared) part that is not used."""
    for subject, sequences in OULU_SEQUENCES.items():
        for expression, frames in sequences.items():
            for i in range(frames):
                write_image(root / "VL" / "Strong" / subject / expression / f"{i:03d}.jpeg", (32, 24), "RGB")
    write_image(root / "NI" / "Strong" / "P001" / "Anger" / "000.jpeg", (32, 24))
    return root


def session_xml(subject=None, emotion=None) -> str:
    parts = ['<?xml version="1.0" encoding="utf-8"?>',
             '<session sessionId="1" mediaFile="S001-001.avi" view="0">']
    if subject is not None:
        parts.append(f'  <subject id="{subject}" />')
    parts.append('  <track id="0" type="Video" view="0">')
    if emotion is not None:
        parts.append(f'    <Metatag Name="Emotion" Value="{emotion}" />')
    parts += ["  </track>", "</session>"]
    return "\n".join(parts)


# MMI: session -> (subject id, emotion value or None, number of frames or "avi")
MMI_SESSIONS = {"1": ("1", 4, 7), "2": ("2", 6, 5), "3": ("1", None, 4), "12": ("2", 1, 2)}


def write_mmi(root, sessions=MMI_SESSIONS):
    """MMI/Sessions/<n>/session.xml + frames <media>_0000.png ... (or the .avi) + the FACS XML."""
    for session, (subject, emotion, frames) in sessions.items():
        folder = root / "Sessions" / session
        folder.mkdir(parents=True)
        (folder / "session.xml").write_text(session_xml(subject, emotion))
        media = f"S{int(subject):03d}-{int(session):03d}"
        (folder / f"{media}.xml").write_text("<ActionUnits/>")
        if frames == "avi":
            (folder / f"{media}.avi").write_bytes(b"RIFF not really a video")
        else:
            for i in range(frames):
                write_image(folder / f"{media}_{i:04d}.png", (40, 32), "RGB", value=10 * i)
    return root


# KDEF: folder -> [expression + view codes]
KDEF_FILES = {
    "AF01": ["AFFL", "AFS", "HAHR", "NEFR", "SUHL"],
    "BF01": ["AFS", "SAS"],
    "AM02": ["DIS", "ANFL"],
}


def write_kdef(root):
    """KDEF_and_AKDEF/KDEF/AF01/AF01AFFL.JPG ... (and an AKDEF folder that is not used)."""
    kdef_dir = root / "KDEF_and_AKDEF" / "KDEF"
    for folder, codes in KDEF_FILES.items():
        for code in codes:
            write_image(kdef_dir / folder / f"{folder}{code}.JPG", (28, 38), "RGB")
    write_image(kdef_dir / "AF01" / "AF01XXS.JPG", (28, 38), "RGB")  # not a KDEF name: skipped
    write_image(root / "KDEF_and_AKDEF" / "AKDEF" / "AF.JPG", (28, 38), "RGB")
    return root


# ----------------------------------------------------------------------------------------------
# Building


def build(name, manual, tmp_path, split="train"):
    builder = tfds.builder(f"{name}/{SIZE}px", data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(
        file_format="array_record", download_config=tfds.download.DownloadConfig(manual_dir=str(manual))
    )
    source = builder.as_data_source(split)
    records = [source[i] for i in range(len(source))]
    return builder, {_text(r["file_name"]): r for r in records}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def labels(builder, records) -> dict[str, str]:
    names = builder.info.features["expression"].names
    return {k: names[int(r["expression"])] for k, r in records.items()}


# ----------------------------------------------------------------------------------------------
# CK+


def test_ck_plus_last_three_frames_and_first_frame_neutral(tmp_path):
    manual = write_ck_plus(tmp_path / "manual" / "CK+")
    builder, records = build("ck_plus", manual.parent, tmp_path)
    assert builder.info.features["expression"].names == list(fb.EXPRESSIONS)  # 8, with neutral + contempt
    got = labels(builder, records)
    frame = "cohn-kanade-images/{0}/{1}/{0}_{1}_{2:08d}.png".format
    expected = {
        frame("S005", "001", 1): "neutral",
        **{frame("S005", "001", i): "disgust" for i in (3, 4, 5)},
        # a 3-frame sequence: its first frame is a peak frame, so no neutral record
        **{frame("S005", "003", i): "surprise" for i in (1, 2, 3)},
        frame("S010", "001", 1): "neutral",
        **{frame("S010", "001", i): "contempt" for i in (4, 5, 6)},
    }
    assert got == expected  # unlabelled sequences (no file, empty folder) give nothing
    for key, record in records.items():
        subject, sequence = key.split("/")[1:3]
        assert _text(record["subject_name"]) == subject
        assert record["image"].shape == (SIZE, SIZE, 3) and record["image"].dtype == np.uint8
    # the neutral frame shares its sequence id with the peak frames of its recording
    sequences = {k: int(r["sequence"]) for k, r in records.items()}
    assert sequences[frame("S005", "001", 1)] == sequences[frame("S005", "001", 5)]
    assert len(set(sequences.values())) == 3
    assert len({int(r["subject"]) for r in records.values()}) == 2


def test_ck_plus_from_its_two_archives(tmp_path):
    tree = write_ck_plus(tmp_path / "tree")
    manual = tmp_path / "manual"
    manual.mkdir()
    shutil.make_archive(str(manual / "extended-cohn-kanade-images"), "zip", tree, "cohn-kanade-images")
    shutil.make_archive(str(manual / "Emotion_labels"), "zip", tree, "Emotion")
    _, records = build("ck_plus", manual, tmp_path)
    assert len(records) == 11


def test_ck_plus_corrupt_frame_names_the_file(tmp_path):
    manual = write_ck_plus(tmp_path / "manual")
    bad = manual / "cohn-kanade-images" / "S005" / "001" / "S005_001_00000004.png"
    bad.write_bytes(b"this is not a png" * 10)
    with pytest.raises(fb.ManualDataError, match=r"S005_001_00000004\.png"):
        build("ck_plus", manual, tmp_path)


def test_ck_plus_bad_label_file_names_the_file(tmp_path):
    manual = write_ck_plus(tmp_path / "manual")
    (manual / "Emotion" / "S005" / "001" / "S005_001_00000005_emotion.txt").write_text("happy\n")
    with pytest.raises(fb.ManualDataError, match=r"S005_001_00000005_emotion\.txt"):
        build("ck_plus", manual, tmp_path)


def test_ck_plus_names_the_missing_part(tmp_path):
    manual = write_ck_plus(tmp_path / "manual")
    shutil.rmtree(manual / "Emotion")
    with pytest.raises(fb.ManualDataError, match=r"(?s)Cannot find Emotion/ \(from Emotion_labels\.zip\)"):
        build("ck_plus", manual, tmp_path)


# ----------------------------------------------------------------------------------------------
# Oulu-CASIA


def test_oulu_casia_last_three_frames_of_each_sequence(tmp_path):
    manual = write_oulu_casia(tmp_path / "manual" / "OriginalImg")
    builder, records = build("oulu_casia", manual.parent, tmp_path)
    names = builder.info.features["expression"].names
    assert names == ["anger", "disgust", "fear", "happiness", "sadness", "surprise"]
    expected = {}
    for subject, sequences in OULU_SEQUENCES.items():
        for expression, frames in sequences.items():
            label = fb.canonical_expression(expression)
            for i in range(frames - 3, frames):
                expected[f"VL/Strong/{subject}/{expression}/{i:03d}.jpeg"] = label
    assert labels(builder, records) == expected
    for key, record in records.items():
        assert _text(record["subject_name"]) == key.split("/")[2]
        assert record["image"].shape == (SIZE, SIZE, 3)
    assert len({int(r["sequence"]) for r in records.values()}) == 4
    assert len({int(r["subject"]) for r in records.values()}) == 2


def test_oulu_casia_from_an_archive(tmp_path):
    tree = write_oulu_casia(tmp_path / "tree" / "OriginalImg")
    manual = tmp_path / "manual"
    manual.mkdir()
    shutil.make_archive(str(manual / "OriginalImg"), "zip", tree.parent, "OriginalImg")
    _, records = build("oulu_casia", manual, tmp_path)
    assert len(records) == 12


# ----------------------------------------------------------------------------------------------
# MMI


def test_mmi_three_middle_frames_of_labelled_sessions(tmp_path):
    manual = write_mmi(tmp_path / "manual" / "MMI")
    builder, records = build("mmi", manual, tmp_path)
    assert builder.info.features["expression"].names == [
        "anger", "disgust", "fear", "happiness", "sadness", "surprise"]
    frame = "Sessions/{0}/S{1:03d}-{0:03d}_{2:04d}.png".format
    expected = {
        **{frame(1, 1, i): "happiness" for i in (2, 3, 4)},  # 7 frames: the middle 3
        **{frame(2, 2, i): "surprise" for i in (1, 2, 3)},  # 5 frames
        **{frame(12, 2, i): "anger" for i in (0, 1)},  # shorter than 3: every frame
    }  # session 3 has no Emotion metatag: skipped
    assert labels(builder, records) == expected
    for key, record in records.items():
        session, index = key.split("/")[1], int(key[-8:-4])
        assert _text(record["subject_name"]) == f"S{int(MMI_SESSIONS[session][0]):03d}"
        np.testing.assert_allclose(record["image"], 10 * index, atol=1)  # the frame written there
    subjects = {_text(r["subject_name"]): int(r["subject"]) for r in records.values()}
    assert sorted(subjects) == ["S001", "S002"]
    assert len({int(r["sequence"]) for r in records.values()}) == 3


def test_mmi_video_sessions_need_a_reader_or_extracted_frames(tmp_path, monkeypatch):
    manual = write_mmi(tmp_path / "manual", {"1": ("1", 4, 5), "7": ("3", 3, "avi")})
    monkeypatch.setattr(mmi, "video_reader", lambda: None)
    with pytest.raises(fb.ManualDataError, match=r"(?s)S003-007\.avi.*ffmpeg -loglevel error -i"):
        build("mmi", manual, tmp_path)

    # With a reader: the 3 middle frames of the decoded video (9 frames -> 3, 4, 5).
    def read(path):
        assert path.endswith("S003-007.avi")
        for i in range(9):
            yield np.full((30, 40, 3), 20 * i, np.uint8)

    monkeypatch.setattr(mmi, "video_reader", lambda: read)
    builder, records = build("mmi", manual, tmp_path / "with_reader")
    video = {k: r for k, r in records.items() if ".avi" in k}
    assert sorted(video) == [f"Sessions/7/S003-007.avi#frame{i:05d}" for i in (3, 4, 5)]
    for key, record in video.items():
        np.testing.assert_allclose(record["image"], 20 * int(key[-5:]), atol=1)
        assert labels(builder, {key: record})[key] == "fear"
        assert _text(record["subject_name"]) == "S003"


def test_mmi_from_an_archive(tmp_path):
    tree = write_mmi(tmp_path / "tree" / "MMI")
    manual = tmp_path / "manual"
    manual.mkdir()
    shutil.make_archive(str(manual / "MMI"), "zip", tree.parent, "MMI")
    _, records = build("mmi", manual, tmp_path)
    assert len(records) == 8


def test_mmi_malformed_session_xml_names_the_file(tmp_path):
    manual = write_mmi(tmp_path / "manual")
    (manual / "Sessions" / "2" / "session.xml").write_text("<session><subject id='2'>")
    with pytest.raises(fb.ManualDataError, match=r"Sessions/2/session\.xml"):
        build("mmi", manual, tmp_path)


# ----------------------------------------------------------------------------------------------
# KDEF


def test_kdef_labels_yaw_subjects_and_sessions(tmp_path):
    manual = write_kdef(tmp_path / "manual")
    builder, records = build("kdef", manual, tmp_path)
    assert builder.info.features["expression"].names == [
        "neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise"]
    assert len(records) == 9  # AF01XXS.JPG and AKDEF are not KDEF records
    names = labels(builder, records)
    got = {k: (names[k], float(r["yaw"]), _text(r["subject_name"])) for k, r in records.items()}
    assert got["AF01/AF01AFFL.JPG"] == ("fear", -90.0, "F01")
    assert got["AF01/AF01AFS.JPG"] == ("fear", 0.0, "F01")
    assert got["AF01/AF01HAHR.JPG"] == ("happiness", 45.0, "F01")
    assert got["AF01/AF01NEFR.JPG"] == ("neutral", 90.0, "F01")
    assert got["AF01/AF01SUHL.JPG"] == ("surprise", -45.0, "F01")
    assert got["BF01/BF01SAS.JPG"] == ("sadness", 0.0, "F01")
    assert got["AM02/AM02DIS.JPG"] == ("disgust", 0.0, "M02")
    assert got["AM02/AM02ANFL.JPG"] == ("anger", -90.0, "M02")
    # sessions A and B of one actor: one subject, two sequences
    assert records["AF01/AF01AFS.JPG"]["subject"] == records["BF01/BF01SAS.JPG"]["subject"]
    assert records["AF01/AF01AFS.JPG"]["sequence"] != records["BF01/BF01SAS.JPG"]["sequence"]
    assert len({int(r["sequence"]) for r in records.values()}) == 3
    assert all(r["image"].shape == (SIZE, SIZE, 3) for r in records.values())


def test_kdef_from_its_archive(tmp_path):
    tree = write_kdef(tmp_path / "tree")
    manual = tmp_path / "manual"
    manual.mkdir()
    shutil.make_archive(str(manual / "KDEF_and_AKDEF"), "zip", tree, "KDEF_and_AKDEF")
    _, records = build("kdef", manual, tmp_path)
    assert len(records) == 9


# ----------------------------------------------------------------------------------------------
# Missing downloads


@pytest.mark.parametrize("name,archive,folder", [
    ("ck_plus", "extended-cohn-kanade-images.zip", "CK+/cohn-kanade-images"),
    ("oulu_casia", "OriginalImg.zip", "OriginalImg/VL/Strong"),
    ("mmi", "MMI.zip", "MMI/Sessions"),
    ("kdef", "KDEF_and_AKDEF.zip", "KDEF/AF01"),
])
def test_missing_manual_download_names_the_archive_and_folder(tmp_path, name, archive, folder):
    unrelated = tmp_path / "unrelated"  # exists and is not empty, but holds no dataset
    write_image(unrelated / "photos" / "cat.png")
    for manual, says in ((tmp_path / "nowhere", "does not exist"), (unrelated, "Cannot find")):
        with pytest.raises(fb.ManualDataError) as error:
            build(name, manual, tmp_path)
        message = str(error.value)
        assert says in message and str(manual) in message, message
        assert archive in message and folder in message, message
