"""AffectNet, manually annotated part (Mollahosseini, Hasani, Mahoor 2017): web images, 8 expressions.

Layout of the distribution (the authors send it on request; images and file lists come as separate
archives, to be extracted side by side):

  Manually_Annotated_Images/<dir>/<file>.jpg        e.g. Manually_Annotated_Images/689/737db248...ca.jpg
  Manually_Annotated_file_lists/training.csv        (also accepted next to Manually_Annotated_Images/)
  Manually_Annotated_file_lists/validation.csv

The CSV columns are `subDirectory_filePath, face_x, face_y, face_width, face_height, facial_landmarks,
expression, valence, arousal`; `face_*` is the face box in pixels (top-left corner, size). Expression codes:
0 neutral, 1 happy, 2 sad, 3 surprise, 4 fear, 5 disgust, 6 anger, 7 contempt, 8 none, 9 uncertain,
10 no-face. Records: codes 0-7 only (8 classes, contempt included; 7-class runs leave contempt out later
with `config.data.class_names`). Each image is cut to its CSV face box (clipped to the image) before
resizing or aligning. Splits: training.csv -> `train` (about 287,650 images with codes 0-7), validation.csv
-> `test` (4,000; AffectNet's test set is not public, so papers report on validation). No subject ids
(`subject` = -1). `file_name` is `Manually_Annotated_Images/<dir>/<file>`.

Also read: the re-packaged copy found on Kaggle and elsewhere (faces already cropped to 224x224):

  train_set/images/<n>.jpg, train_set/annotations/<n>_exp.npy  (also _val, _aro, _lnd, unused)
  val_set/images/<n>.jpg,   val_set/annotations/<n>_exp.npy

`<n>_exp.npy` holds the expression code as a one-element array (a string or a number); codes 0-7 are kept
as above, val_set -> `test` (3,999 images in the copies seen), no cropping.

[Unsure: (1) whether validation.csv has a header row -- copies differ, so a first row that is not the
header is read as data with the columns in the order above; (2) the archive names (the images come as a
multi-part `Manually_Annotated.part*.rar` / `Manually_Annotated_compressed.zip` in different copies), so
archives must be extracted by hand; folders up to two levels below the manual directory are found; (3) the
re-packaged layout's file names, written from memory of common copies.]
"""

from __future__ import annotations

import csv
import functools
import itertools
import os

import numpy as np
from etils import epath

from idfer_jax.data import face_builder as fb

IMAGES = "Manually_Annotated_Images"
LISTS = "Manually_Annotated_file_lists"
TABLES = {"train": "training.csv", "test": "validation.csv"}
KAGGLE = {"train": "train_set", "test": "val_set"}
_COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
            "expression", "valence", "arousal")
_CODES = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")


def load_face(path: epath.Path, box: tuple[float, float, float, float]):
    """The image at `path` cut to the (x, y, width, height) face box, clipped to the image."""
    image = fb.read_image(path)
    x, y, w, h = box
    left, top = max(0, round(x)), max(0, round(y))
    right, bottom = min(image.width, round(x + w)), min(image.height, round(y + h))
    if right - left < 2 or bottom - top < 2:  # a box outside the image: keep the whole image
        return image
    return image.crop((left, top, right, bottom))


def load_code(path: epath.Path) -> int:
    """The expression code of a re-packaged copy's `<n>_exp.npy`."""
    try:
        with path.open("rb") as f:
            value = np.load(f, allow_pickle=False)
        return int(float(np.asarray(value).reshape(-1)[0]))
    except Exception as e:
        raise fb.ManualDataError(
            f"Cannot read the expression code in {path}: {e}. Replace it with the original file."
        ) from e


class Affectnet(fb.FaceBuilder):
    """AffectNet manually annotated (Mollahosseini et al. 2017): 8 expressions, validation set as test."""

    CLASS_NAMES = fb.ordered(fb.canonical_expression(c) for c in _CODES)
    SPLITS = ("train", "test")
    HAS_SUBJECTS = False
    ROOT_MARKERS = (IMAGES, "training.csv", "validation.csv")
    ARCHIVES = ()
    FOLDER = "AffectNet"
    BUILDER_CONFIGS = fb.face_configs((64, 112, 224))
    DESCRIPTION = __doc__
    HOMEPAGE = "http://mohammadmahoor.com/affectnet/"
    CITATION = (
        "Mollahosseini, Hasani, Mahoor: AffectNet: A database for facial expression, valence, and arousal "
        "computing in the wild. IEEE Transactions on Affective Computing 10(1), 2019."
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = fb.manual_instructions(
        archives=(f"{IMAGES} (the Manually_Annotated archive)", f"{LISTS} (training.csv, validation.csv)"),
        obtain="the AffectNet authors (http://mohammadmahoor.com/affectnet/, academic licence agreement)",
        folder="AffectNet",
        layout=f"  AffectNet/{IMAGES}/<dir>/<file>.jpg\n"
        f"  AffectNet/{LISTS}/training.csv and validation.csv (or both CSVs next to {IMAGES}/), columns "
        + ", ".join(_COLUMNS) + "\nExtract the archives by hand. Also accepted: the re-packaged copy "
        "train_set/images/<n>.jpg + train_set/annotations/<n>_exp.npy and val_set/... .",
    )

    def locate(self, path: epath.Path) -> dict[str, epath.Path] | None:
        """Where the parts are under `path`: images folder + CSVs, or the re-packaged sets; None if absent."""
        if not path.is_dir():
            return None
        images = fb.find_child(path, IMAGES)
        if images is not None and images.is_dir():
            tables = {}
            for split, name in TABLES.items():
                near = (images.parent / name, images.parent / LISTS / name)
                found = next((p for p in near if p.exists()), None) or fb.find_child(path, name)
                if found is None:
                    break
                tables[split] = found
            else:
                return {"images": images, **tables}
        sets = {s: fb.find_child(path, name, depth=1) for s, name in KAGGLE.items()}
        if all(p is not None and (p / "images").is_dir() and (p / "annotations").is_dir()
               for p in sets.values()):
            return {f"{s}_set": p for s, p in sets.items()}
        return None

    def is_root(self, path: epath.Path) -> bool:
        return self.locate(path) is not None

    def list_examples(self, root: epath.Path, split: str):
        parts = self.locate(root)
        if f"{split}_set" in parts:
            yield from self._list_repackaged(root, parts[f"{split}_set"])
            return
        images, table = parts["images"], parts[split]
        missing: list[str] = []
        # Streamed: training.csv is ~400k rows with landmarks. (epath's open() takes no `newline`.)
        with open(os.fspath(table), newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            first = next(reader, [])
            if first and fb.clean_text(first[0]) == _COLUMNS[0]:
                header = [fb.clean_text(h) for h in first]
                if not set(_COLUMNS) <= set(header):
                    raise fb.ManualDataError(
                        f"{table} lacks the column(s) {', '.join(sorted(set(_COLUMNS) - set(header)))}. "
                        "Replace it with the original file list from the AffectNet download."
                    )
                rows = reader
            else:  # no header row: the columns in the documented order
                header = list(_COLUMNS)
                rows = itertools.chain([first], reader)
            for number, values in enumerate(rows, 1):
                example = self._row_example(images, table, header, number, values, missing)
                if example is not None:
                    yield example
        if missing:
            raise fb.ManualDataError(
                f"{len(missing)} image(s) listed in {table} with expression codes 0-7 are missing under "
                f"{images} (e.g. {', '.join(missing[:3])}). Extract the complete {IMAGES} archive."
            )

    def _row_example(self, images, table, header, number, values, missing) -> fb.FaceExample | None:
        if not values:
            return None
        row = dict(zip(header, (v.strip() for v in values), strict=False))
        try:
            code = int(float(row["expression"]))
            box = tuple(float(row[k]) for k in ("face_x", "face_y", "face_width", "face_height"))
        except (KeyError, ValueError) as e:
            raise fb.ManualDataError(
                f"Row {number} of {table} cannot be read ({e!r}); expected the columns "
                f"{', '.join(_COLUMNS)}. Replace it with the original file list."
            ) from e
        if not 0 <= code < len(_CODES):
            return None  # 8 none, 9 uncertain, 10 no-face
        relative = row["subDirectory_filePath"].replace("\\", "/")
        path = images / relative
        if not os.path.exists(path):
            missing.append(relative)
            return None
        return fb.FaceExample(
            key=f"{IMAGES}/{relative}", expression=fb.canonical_expression(_CODES[code]),
            load=functools.partial(load_face, path, box),
        )

    def _list_repackaged(self, root: epath.Path, folder: epath.Path):
        annotations = folder / "annotations"
        numbered = [p for p in fb.image_files(folder / "images") if p.stem.isdigit()]
        for path in sorted(numbered, key=lambda p: int(p.stem)):
            label = annotations / f"{path.stem}_exp.npy"
            if not label.exists():
                raise fb.ManualDataError(
                    f"{path} has no expression file {label}. Use the complete re-packaged copy."
                )
            code = load_code(label)
            if 0 <= code < len(_CODES):
                key = os.path.relpath(path, folder.parent)  # e.g. train_set/images/0.jpg
                yield fb.FaceExample(key=key, expression=fb.canonical_expression(_CODES[code]), path=path)
