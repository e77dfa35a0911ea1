"""Issue 16, section 1: a user's folder gives the faces, labels and counts an image viewer and a file
manager show (EXIF orientation, links, every Pillow format, empty classes, BOMs, class_map, the
preparation summary, large photos). Tiny generated images only; no training."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from PIL import Image

from idfer_jax import config_defaults
from idfer_jax import evaluation as E
from idfer_jax.data import datasets
from idfer_jax.data import face_builder as fb
from idfer_jax.data.errors import DataError

PATTERN = r"(?P<subject>[^/]+)/(?P<expression>[^/]+)/[^/]+"
RAF_DB_MAP = "1:surprise,2:fear,3:disgust,4:happiness,5:sadness,6:anger,7:neutral"


def noise(seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)


def write_images(root, layout: dict[str, dict[str, int]], ext: str | dict[str, str] = ".png") -> None:
    """layout: subject -> expression folder -> number of images."""
    seed = 0
    for subject, classes in layout.items():
        for expression, count in classes.items():
            folder = root / subject / expression
            folder.mkdir(parents=True, exist_ok=True)
            suffix = ext.get(expression, ".png") if isinstance(ext, dict) else ext
            for i in range(count):
                seed += 1
                Image.fromarray(noise(seed)).save(folder / f"{i}{suffix}")


def folder_config(tmp_path, root, **overrides):
    values = dict(name="image_folder", config="32px", image_size=32, data_dir=str(tmp_path / "tfds"),
                  manual_dir=str(root), pattern=PATTERN, class_names=("happiness", "sadness"),
                  num_folds=2)
    values.update(overrides)
    return config_defaults.data(**values)


def class_counts(ds) -> dict[str, int]:
    counts = np.bincount(ds.labels["expression"], minlength=len(ds.spec.class_names))
    return dict(zip(ds.spec.class_names, counts.tolist(), strict=True))


def record_of(ds, file_name: str) -> dict:
    for i in range(len(ds.source)):
        record = ds.source[i]
        name = record["file_name"]
        if (name.decode() if isinstance(name, bytes) else name) == file_name:
            return record
    raise AssertionError(f"{file_name} not stored")


# -- 1. EXIF orientation --------------------------------------------------------------------------


def test_exif_orientation_6_is_stored_upright(tmp_path):
    root = tmp_path / "raw"
    write_images(root, {"S01": {"happy": 2, "sad": 2}, "S02": {"happy": 2, "sad": 2}})
    # Stored sideways: a bright block in the stored top-left corner; orientation 6 says "rotate 90
    # degrees clockwise to view", so a viewer shows the block top-right.
    stored = np.zeros((32, 32, 3), np.uint8)
    stored[:12, :12] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(root / "S01" / "happy" / "phone.jpg", exif=exif, quality=95)

    upright = np.asarray(fb.read_image(root / "S01" / "happy" / "phone.jpg"))
    assert upright[:12, -12:].mean() > 200 and upright[:12, :12].mean() < 50

    ds = datasets.open_dataset(folder_config(tmp_path, root))
    image = record_of(ds, "S01/happy/phone.jpg")["image"].astype(float)
    quadrants = {"top-left": image[:12, :12].mean(), "top-right": image[:12, -12:].mean(),
                 "bottom-left": image[-12:, :12].mean(), "bottom-right": image[-12:, -12:].mean()}
    assert max(quadrants, key=quadrants.get) == "top-right", quadrants
    assert quadrants["top-right"] > 200 and quadrants["top-left"] < 50


# -- 2. symbolic links --------------------------------------------------------------------------


def test_linked_subject_class_and_file_are_read_and_a_link_loop_ends(tmp_path, capsys):
    root, elsewhere = tmp_path / "raw", tmp_path / "elsewhere"
    write_images(root, {"S01": {"happy": 3, "sad": 3}})
    write_images(elsewhere, {"S02": {"happy": 3, "sad": 3}, "S03": {"happy": 3}, "S04": {"sad": 1}})
    os.symlink(elsewhere / "S02", root / "S02")  # a linked subject folder
    (root / "S03").mkdir()
    os.symlink(elsewhere / "S03" / "happy", root / "S03" / "happy")  # a linked class folder
    (root / "S03" / "sad").mkdir()
    os.symlink(elsewhere / "S04" / "sad" / "0.png", root / "S03" / "sad" / "linked.png")  # a linked file
    os.symlink(root, root / "S01" / "loop")  # a link back to the top: followed once, never forever

    ds = datasets.open_dataset(folder_config(tmp_path, root))
    # 6 real + 6 (S02) + 3 (S03 happy) + 1 (linked file): what a file manager shows.
    assert len(ds.source) == 16
    assert class_counts(ds) == {"happiness": 9, "sadness": 7}
    names = sorted(ds.fold_file["test_subject_names"][0] + ds.fold_file["test_subject_names"][1])
    assert names == ["S01", "S02", "S03"]
    assert "link loops back" in capsys.readouterr().out


# -- 3. every Pillow format, skipped files counted by reason ------------------------------------------


def test_webp_jfif_and_other_pillow_formats_are_read_and_skips_are_named(tmp_path, capsys):
    assert {".webp", ".jfif", ".tif", ".bmp", ".gif"} <= set(fb.IMAGE_EXTENSIONS)
    root = tmp_path / "raw"
    layout = {s: {"happy": 2, "sad": 2, "angry": 1, "fear": 1} for s in ("S01", "S02")}
    write_images(root, layout, ext={"happy": ".webp", "sad": ".jfif", "angry": ".gif", "fear": ".tif"})
    (root / "S01" / "happy" / "notes.txt").write_text("not an image")
    (root / "S01" / "sad" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    Image.fromarray(noise(99)).save(root / "S02" / "cover.bmp")  # not matched by the pattern
    classes = ("anger", "fear", "happiness", "sadness")

    ds = datasets.open_dataset(folder_config(tmp_path, root, class_names=classes))
    assert class_counts(ds) == {"anger": 2, "fear": 2, "happiness": 4, "sadness": 4}
    out = capsys.readouterr().out
    assert "skipped 3 file(s)" in out
    assert "1 not an image: S01/happy/notes.txt" in out
    assert "1 unreadable: S01/sad/broken.jpg" in out
    assert "1 did not match the pattern: S02/cover.bmp" in out


# -- 4. a declared class with no images; chance per fold ------------------------------------------


@pytest.mark.parametrize("how", ["empty folder", "no file names it"])
def test_declared_class_without_images_is_a_clear_error(tmp_path, how):
    root = tmp_path / "raw"
    write_images(root, {"S01": {"happy": 2, "sad": 2}, "S02": {"happy": 2, "sad": 2}})
    if how == "empty folder":
        (root / "S01" / "fear").mkdir()
    config = folder_config(tmp_path, root, class_names=("fear", "happiness", "sadness"))
    with pytest.raises(DataError) as info:
        datasets.open_dataset(config)
    message = str(info.value)
    assert "'fear'" in message and "have no images" in message
    assert "Remove them from --config.data.class_names" in message
    assert "('happiness','sadness')" in message  # the fix, ready to paste
    assert not (tmp_path / "tfds" / "image_folder").exists() or not any(
        (tmp_path / "tfds" / "image_folder").rglob("*.array_record*"))  # refused before writing


def test_chance_counts_only_the_classes_the_test_fold_holds(tmp_path):
    # 4 classes, the fold's test set holds 2 of them: chance 1/2, not 1/4.
    matrix = np.zeros((4, 4), int)
    matrix[0, 0], matrix[0, 1], matrix[2, 2], matrix[2, 3] = 3, 1, 2, 2
    assert E.chance_accuracy(matrix) == 0.5
    assert E.chance_accuracy(np.eye(4, dtype=int)) == 0.25
    with pytest.raises(ValueError, match="no example"):
        E.chance_accuracy(np.zeros((3, 3), int))

    from idfer_jax.train import crossval, evaluate

    results = {
        "method": "baseline", "dataset": "image_folder/32px", "protocol": "subject_kfold", "fold": 0,
        "num_folds": 2, "checkpoint_step": 4, "num_test_images": 8, "num_test_subjects": 1,
        "accuracy": 0.625, "mean_class_accuracy": 0.625, "confusion_matrix": matrix.tolist(),
        "class_names": ["anger", "fear", "happiness", "sadness"], "identity_leakage": {},
        "pose_leakage": {},
    }
    evaluate.write_outputs(str(tmp_path / "run"), results)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| 0.6250 | 0.6250 | 0.5000 |" in report  # accuracy, mean class accuracy, chance
    assert crossval._fold_row(results)["chance"] == 0.5


# -- 5. manifest with a byte-order mark; invisible differences in labels ----------------------------


def test_manifest_with_bom_and_invisible_label_differences(tmp_path):
    root = tmp_path / "raw"
    write_images(root, {"S01": {"a": 3}, "S02": {"a": 3}})
    values = [" Happy\u200b", "ＨＡＰＰＹ", "sad\u00a0", "\ufeffSadness", "HA", "happiness "]
    rows = ["\ufeffPath , Expression,\u200bSubject"]  # the BOM a spreadsheet writes, plus stray spaces
    for i, value in enumerate(values):
        subject = "S01" if i < 3 else "S02"
        rows.append(f"{subject}/a/{i % 3}.png,{value},{subject} ")
    # Saved as a spreadsheet program does: UTF-8 with a byte-order mark (the header's own \ufeff is a
    # second, invisible one inside the cell).
    (root / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8-sig")
    ds = datasets.open_dataset(folder_config(tmp_path, root, pattern="", manifest="labels.csv"))
    assert class_counts(ds) == {"happiness": 4, "sadness": 2}
    names = sorted(ds.fold_file["test_subject_names"][0] + ds.fold_file["test_subject_names"][1])
    assert names == ["S01", "S02"]

    assert fb.label_key("\ufeff Happy\u200b") == fb.label_key("ＨＡＰＰＹ") == "happy"
    assert fb.canonical_expression("\ufeffSU\u200d ") == "surprise"
    assert datasets.parse_class_map("\ufeff1 : surprise\u200b, 2:fear") == {"1": "surprise", "2": "fear"}


def test_manifest_listing_an_image_twice_names_it(tmp_path):
    root = tmp_path / "raw"
    write_images(root, {"S01": {"a": 2}, "S02": {"a": 2}})
    rows = ["path,expression,subject", "S01/a/0.png,happy,S01", "S01/a/1.png,sad,S01",
            "S02/a/0.png,happy,S02", "./S01/a/0.png,sad,S02", "S02/a/1.png,sad,S02"]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"labels.csv lists ./S01/a/0.png more than once; keep one row per"):
        datasets.open_dataset(folder_config(tmp_path, root, pattern="", manifest="labels.csv"))


@pytest.mark.parametrize("mode", ["16-bit grey", "float grey", "transparent RGBA", "half-opaque RGBA"])
def test_image_modes_are_stored_as_a_viewer_shows_them(tmp_path, mode):
    path = tmp_path / ("image.tif" if mode == "float grey" else "image.png")
    if mode == "16-bit grey":  # 1000 / 65535: nearly black, not stretched to white
        Image.fromarray(np.full((4, 4), 1000, np.uint16)).save(path)
        expected = round(1000 / 257)
    elif mode == "float grey":  # 0.5 in [0, 1]: mid grey
        Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(path)
        expected = 128
    elif mode == "transparent RGBA":  # hidden colour black, fully transparent: the white page shows
        Image.fromarray(np.zeros((4, 4, 4), np.uint8), "RGBA").save(path)
        expected = 255
    else:  # black at alpha 128 over white
        rgba = np.zeros((4, 4, 4), np.uint8)
        rgba[..., 3] = 128
        Image.fromarray(rgba, "RGBA").save(path)
        expected = 127
    pixels = np.asarray(fb.to_rgb(fb.read_image(path)))
    assert pixels.shape == (4, 4, 3)
    np.testing.assert_allclose(pixels, expected, atol=1)


def test_image_folder_size_in_the_config_name_must_match_image_size(tmp_path):
    root = tmp_path / "raw"
    write_images(root, {"S01": {"a": 1}})
    with pytest.raises(DataError, match=r"data.config='64px' names 64 px but config.data.image_size=32"):
        datasets.open_dataset(folder_config(tmp_path, root, config="64px"))


# -- 6. class_map reaches image_folder labels ------------------------------------------------------


def test_class_map_renames_raf_db_numbers_of_an_image_folder(tmp_path):
    root = tmp_path / "raw"
    per_label = {"1": 1, "2": 2, "3": 1, "4": 3, "5": 1, "6": 2, "7": 1}
    write_images(root, {"S01": per_label, "S02": per_label, "S03": per_label})
    canonical = ("neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise")
    config = folder_config(tmp_path, root, class_names=canonical, class_map=RAF_DB_MAP, num_folds=3)
    ds = datasets.open_dataset(config)
    assert ds.spec.class_names == canonical
    assert class_counts(ds) == {"neutral": 3, "anger": 6, "disgust": 3, "fear": 6, "happiness": 9,
                                "sadness": 3, "surprise": 3}
    assert len(ds.train_indices) + len(ds.test_indices) == 33

    # A label mapped to '' is left out (and counted), the others still reach their classes.
    config = folder_config(tmp_path, root, class_names=("happiness", "anger"), class_map="4:happy,6:angry,"
                           "1:,2:,3:,5:,7:")
    assert class_counts(datasets.open_dataset(config)) == {"happiness": 9, "anger": 6}

    # class_names written before the mapping: the error says that class_names come after class_map.
    config = folder_config(tmp_path, root, class_names=tuple("1234567"), class_map=RAF_DB_MAP)
    with pytest.raises(DataError, match=r"'1' \(class_map turns it into 'surprise'\) x3.*after class_map"):
        datasets.open_dataset(config)


def test_class_names_before_class_map_on_a_benchmark_says_why(tmp_path):
    with pytest.raises(DataError) as info:
        datasets.class_lookup(tuple("123"), tuple("123"), {"1": "surprise", "2": "fear", "3": "anger"},
                              "raf_db/48px")
    message = str(info.value)
    assert "after class_map: surprise, fear, anger" in message
    assert "class_names names the classes after class_map" in message


# -- 7. preparation says what it read, and nothing else ----------------------------------------------


def test_preparation_summary_counts_and_no_tfds_noise(tmp_path, capsys, caplog, monkeypatch):
    root = tmp_path / "raw"
    write_images(root, {"S01": {"happy": 3, "sad": 2}, "S02": {"happy": 3, "sad": 2}})
    (root / "S01" / "Thumbs.db").write_bytes(b"\0")

    class NoFace:  # an aligner that finds no face: the summary counts and names those images
        def align(self, image):
            return None

    monkeypatch.setattr(fb.FaceBuilder, "_aligner", lambda self: NoFace())
    caplog.set_level(logging.INFO)
    ds = datasets.open_dataset(folder_config(tmp_path, root))
    ds.source[0]  # decoding a record is where TFDS recommends OpenCV
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("Prepared image_folder/32px_") and str(root) in lines[0]
    assert "  train: 10 images (happiness 6, sadness 4)" in lines
    assert "    1 not an image: S01/Thumbs.db" in lines
    assert any(line.startswith("  alignment found no face in 10 image(s)") for line in lines)
    assert sum(line.startswith("Prepared ") for line in lines) == 1
    assert "Downloading and preparing" not in out and "Unknown size" not in out
    shown = out + err + "\n".join(r.getMessage() for r in caplog.records)
    for noise_line in ("Using custom data configuration", "dataset_info.json", "OpenCV is not installed"):
        assert noise_line not in shown

    # A second open reuses the prepared data and prints nothing.
    datasets.open_dataset(folder_config(tmp_path, root))
    assert "Prepared" not in capsys.readouterr().out


def test_tfds_noise_filter_keeps_the_users_own_warnings(caplog):
    caplog.set_level(logging.WARNING)
    from absl import logging as absl_logging

    absl_logging.warning("Using custom data configuration: mine")  # the user's own, same words
    assert any("mine" in r.getMessage() for r in caplog.records)


# -- 8. a large genuine photo ------------------------------------------------------------------------


def test_image_over_max_image_pixels_says_raise_the_setting_or_downscale(tmp_path):
    path = tmp_path / "big.png"
    Image.fromarray(noise(1, 20)).save(path)
    with pytest.raises(fb.ImageTooLargeError) as info:
        fb.read_image(path, max_pixels=100)
    message = str(info.value)
    assert "20x20 = 400 pixels" in message and "--config.data.max_image_pixels=400" in message
    assert "downscale" in message and "Replace" not in message and "original" not in message
    assert fb.read_image(path, max_pixels=0).size == (20, 20)  # 0 = no limit
    assert fb.read_image(path, max_pixels=None).size == (20, 20)
    assert Image.MAX_IMAGE_PIXELS == int(1024 * 1024 * 1024 // 4 // 3)  # Pillow's own limit restored
    # Beyond Pillow's own bomb limit (which refuses ~179 MP photos) the setting decides.
    assert config_defaults.data().max_image_pixels == fb.DEFAULT_MAX_IMAGE_PIXELS >= 200_000_000


def test_max_image_pixels_setting_reaches_preparation(tmp_path):
    root = tmp_path / "raw"
    write_images(root, {"S01": {"happy": 1, "sad": 1}, "S02": {"happy": 1, "sad": 1}})
    with pytest.raises(DataError, match=r"more than config.data.max_image_pixels=100\b.*downscale"):
        datasets.open_dataset(folder_config(tmp_path, root, max_image_pixels=100))
    with pytest.raises(DataError, match="must be a number of pixels >= 0"):
        datasets.open_dataset(folder_config(tmp_path, root, max_image_pixels=-1))
    assert len(datasets.open_dataset(folder_config(tmp_path, root, max_image_pixels=0)).source) == 4
