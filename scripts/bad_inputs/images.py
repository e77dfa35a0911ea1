"""Bad-input cases of kind 'images' for scripts/check_bad_inputs.py: a user's own folder trained with
`idfer train` on `image_folder` (tiny generated images: 3 subjects, 16x16, 48 px config)."""

from __future__ import annotations

import json
import os
import re

import numpy as np

from scripts.bad_inputs import Case

PATTERN = r"(?P<subject>[^/]+)/(?P<expression>[^/]+)/[^/]+"
SUBJECTS = ("S01", "S02", "S03")
RAF_DB_MAP = "1:surprise,2:fear,3:disgust,4:happiness,5:sadness,6:anger,7:neutral"
NOISE = ("Using custom data configuration", "dataset_info.json", "OpenCV is not installed")


def write_images(root, classes: dict[str, int], ext: dict[str, str] | None = None, subjects=SUBJECTS):
    """root/<subject>/<class>/<i><ext>: `classes[c]` images of class folder c per subject."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for subject in subjects:
        for name, count in classes.items():
            folder = root / subject / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}{(ext or {}).get(name, '.png')}")
    return root


def folder_run(ctx, root, class_names: tuple[str, ...], *extra: str) -> list[str]:
    names = "(" + ",".join(f"'{c}'" for c in class_names) + ",)"
    return ["train", *ctx.smoke(
        str(ctx.tmp / "run"),
        "--config.data.name=image_folder", f"--config.data.manual_dir={root}",
        "--config.data.config=48px", "--config.data.image_size=48",
        f"--config.data.data_dir={ctx.tmp / 'tfds'}", f"--config.data.class_names={names}",
        "--config.data.num_folds=3", "--config.train.batch_size=8", "--config.eval.batch_size=8",
        *extra,
        *([] if any(e.startswith("--config.data.manifest") for e in extra)
          else [f"--config.data.pattern={PATTERN}"]))]


def expect_summary(counts: dict[str, int], total: int | None = None):
    """A check: the run printed the preparation summary with these class counts, and no TFDS noise."""
    def check(ctx, proc) -> str | None:
        out = proc.stdout or ""
        summary = re.search(r"^  train: (\d+) images \((.*)\)$", out, re.M)
        if not summary or not out.count("Prepared image_folder/"):
            return "no preparation summary on stdout"
        got = dict((c, int(n)) for c, n in (p.rsplit(" ", 1) for p in summary.group(2).split(", ")))
        if got != counts:
            return f"class counts {got}, expected {counts}"
        noise = [n for n in NOISE if n in out + (proc.stderr or "")]
        if noise:
            return f"TFDS noise printed: {noise}"
        folds = ctx.tmp / "run" / "folds.json"
        if not folds.exists():
            return "no folds.json"
        fold = json.loads(folds.read_text())
        if fold["num_train"] + fold["num_test"] != (total or sum(counts.values())):
            return f"folds.json holds {fold['num_train']} + {fold['num_test']} images"
        return None
    return check


def empty_class(ctx):
    root = write_images(ctx.tmp / "faces", {"happy": 4, "sad": 4})
    (root / "S01" / "fear").mkdir()
    return folder_run(ctx, root, ("fear", "happiness", "sadness"))


def raf_db_numbers(ctx):
    root = write_images(ctx.tmp / "faces", {str(i): 1 + (i == 4) for i in range(1, 8)})
    return folder_run(ctx, root, ("neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise"),
                      f"--config.data.class_map={RAF_DB_MAP}")


def raf_db_numbers_as_class_names(ctx):
    root = write_images(ctx.tmp / "faces", {str(i): 1 for i in range(1, 8)})
    return folder_run(ctx, root, tuple("1234567"), f"--config.data.class_map={RAF_DB_MAP}")


def too_many_pixels(ctx):
    root = write_images(ctx.tmp / "faces", {"happy": 2, "sad": 2})
    return folder_run(ctx, root, ("happiness", "sadness"), "--config.data.max_image_pixels=100")


def folder_as_a_file_manager_shows_it(ctx):
    """.webp and .jfif classes, a phone JPEG with EXIF orientation 6, a linked subject folder, junk."""
    from PIL import Image

    root = write_images(ctx.tmp / "faces", {"happy": 3, "sad": 3}, ext={"happy": ".webp", "sad": ".jfif"},
                        subjects=SUBJECTS[:2])
    write_images(ctx.tmp / "elsewhere", {"happy": 3, "sad": 3}, subjects=SUBJECTS[2:])
    os.symlink(ctx.tmp / "elsewhere" / SUBJECTS[2], root / SUBJECTS[2])
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (32, 16), "white").save(root / "S01" / "happy" / "phone.jpg", exif=exif)
    (root / "S01" / "sad" / "notes.txt").write_text("not an image")
    return folder_run(ctx, root, ("happiness", "sadness"))


def manifest_with_bom(ctx):
    root = write_images(ctx.tmp / "faces", {"a": 4})
    rows = ["Path , Expression,Subject"]
    for s in SUBJECTS:
        rows += [f"{s}/a/0.png, Happy\u200b,{s}", f"{s}/a/1.png,happy,{s}", f"{s}/a/2.png,SAD ,{s}",
                 f"{s}/a/3.png,Sadness,{s}"]
    (root / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8-sig")
    return folder_run(ctx, root, ("happiness", "sadness"), "--config.data.manifest=labels.csv")


CASES: list[Case] = [
    Case("image_folder: a declared class with an empty folder", empty_class, expect="'fear' have no images"),
    Case("image_folder: RAF-DB labels 1..7 renamed by class_map", raf_db_numbers, exit_code=0,
         check=expect_summary({"neutral": 3, "anger": 3, "disgust": 3, "fear": 3, "happiness": 6,
                               "sadness": 3, "surprise": 3})),
    Case("image_folder: class_names 1..7 with a class_map to names", raf_db_numbers_as_class_names,
         expect="class_map turns it into 'surprise'"),
    Case("image_folder: photo over data.max_image_pixels", too_many_pixels,
         expect="raise the limit with --config.data.max_image_pixels"),
    Case("image_folder: .webp/.jfif classes, EXIF-rotated JPEG, linked subject folder, a .txt",
         folder_as_a_file_manager_shows_it, exit_code=0,
         check=expect_summary({"happiness": 10, "sadness": 9})),
    Case("image_folder: manifest CSV with a UTF-8 BOM and invisible label differences", manifest_with_bom,
         exit_code=0, check=expect_summary({"happiness": 6, "sadness": 6})),
]
