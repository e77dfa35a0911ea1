"""FER2013 (Goodfellow et al. 2013) and FERPlus (Barsoum et al. 2016): 35,887 grey 48x48 faces from the web.

FER2013 layout (Kaggle "Challenges in Representation Learning: Facial Expression Recognition Challenge";
`fer2013.tar.gz` extracts to `fer2013/fer2013.csv`):

  fer2013.csv   columns `emotion,pixels,Usage`, one row per image:
                emotion 0 angry, 1 disgust, 2 fear, 3 happy, 4 sad, 5 surprise, 6 neutral;
                pixels  2304 space-separated ints 0-255 (a 48x48 grey image, row-major);
                Usage   Training (28,709) / PublicTest (3,589) / PrivateTest (3,589).

The competition's later download names the same table `icml_face_data.csv` (columns `emotion, Usage,
pixels`, with a space after each comma in the header); either file is accepted.

Splits: Training -> `train`, PublicTest -> `validation`, PrivateTest -> `test` (the split papers report
on). `file_name` is the row id `fer2013.csv:<row>` (row 0 = first data row). No subject ids (`subject` is
-1): the official protocol is the given split.

FERPlus (`Ferplus`, TFDS name `ferplus`) re-labels the same images with the votes of 10 taggers, from
Microsoft's `fer2013new.csv` (https://github.com/microsoft/FERPlus), one row per row of `fer2013.csv`, in
the same order: columns `Usage, Image name, neutral, happiness, surprise, sadness, anger, disgust, fear,
contempt, unknown, NF`. Rows with an empty `Image name` are images FERPlus removed and are skipped; the
image name (`fer0000000.png`, ...) is the record's `file_name`. Label [choice: `LABEL_MODE = "majority"`,
the FERPlus paper's majority-vote scheme as its reference code implements it]: votes of a single tagger are
removed as outliers, then the emotion with more than half of the remaining votes is the label; rows without
such a majority (ties included), or whose majority is `unknown` or `NF` (not a face), are dropped.
`LABEL_MODE = "plurality"` (a subclass attribute) instead takes the most-voted of the 10 columns, dropping
ties and unknown / NF. 8 classes, contempt included (7-class runs leave it out with
`config.data.class_names`).

[Unsure: the Kaggle archive names (`fer2013.tar.gz`, the competition's zip) vary between downloads; any
folder holding `fer2013.csv` or `icml_face_data.csv` is found. `fer2013new.csv` is looked for next to the
FER2013 table, in the manual directory, and in its `FERPlus/` or `FERPlus-master/` subfolder.]
"""

from __future__ import annotations

import numpy as np
from etils import epath

from idfer_jax.data import face_builder as fb

TABLES = ("fer2013.csv", "icml_face_data.csv")
FERPLUS_TABLE = "fer2013new.csv"
_EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
_USAGE = {"Training": "train", "PublicTest": "validation", "PrivateTest": "test"}
_VOTES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
          "unknown", "NF")
_SIZE = 48


def _read_table(path: epath.Path) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts, header names stripped (icml_face_data.csv has ' Usage', ' pixels')."""
    header, rows = fb.read_csv(path)  # byte-order mark and stray spaces in the header removed
    if not header:
        raise fb.ManualDataError(f"{path} is empty. Replace it with the file from the download.")
    return [dict(zip(header, (v.strip() for v in row), strict=False)) for row in rows]


def _check_columns(path: epath.Path, rows: list[dict], columns: tuple[str, ...]) -> None:
    if rows and not set(columns) <= set(rows[0]):
        raise fb.ManualDataError(
            f"{path} lacks the column(s) {', '.join(sorted(set(columns) - set(rows[0])))} (it has "
            f"{', '.join(rows[0])}). Replace it with the original file from the download."
        )


def _pixels(text: str, path: epath.Path, row: int) -> np.ndarray:
    values = np.fromstring(text, dtype=np.int64, sep=" ")  # fast C parse of the text
    if values.size != _SIZE * _SIZE or values.min(initial=0) < 0 or values.max(initial=0) > 255:
        raise fb.ManualDataError(
            f"Row {row} of {path} does not hold {_SIZE * _SIZE} pixel values 0-255 (found {values.size}). "
            "Replace the file with the original from the download."
        )
    return values.astype(np.uint8).reshape(_SIZE, _SIZE)


def _constant(array: np.ndarray):
    return lambda: array


def _split_of(usage: str, path: epath.Path, row: int) -> str:
    if usage not in _USAGE:
        raise fb.ManualDataError(
            f"Row {row} of {path} has Usage {usage!r}; expected one of {', '.join(_USAGE)}. "
            "Replace the file with the original from the download."
        )
    return _USAGE[usage]


class Fer2013(fb.FaceBuilder):
    """FER2013 (Goodfellow et al. 2013): 35,887 grey 48x48 web faces, 7 classes, official 3-way split."""

    CLASS_NAMES = fb.ordered(fb.canonical_expression(e) for e in _EMOTIONS)
    SPLITS = ("train", "validation", "test")
    HAS_SUBJECTS = False
    ROOT_MARKERS = ("fer2013.csv",)
    ARCHIVES = (
        "fer2013.tar.gz", "fer2013.zip",
        "challenges-in-representation-learning-facial-expression-recognition-challenge.zip",
    )
    FOLDER = "fer2013"
    BUILDER_CONFIGS = fb.face_configs((48, 64))
    DESCRIPTION = __doc__
    HOMEPAGE = ("https://www.kaggle.com/c/challenges-in-representation-learning-facial-expression-"
                "recognition-challenge")
    CITATION = (
        "Goodfellow et al.: Challenges in representation learning: A report on three machine learning "
        "contests. ICONIP 2013."
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = fb.manual_instructions(
        archives=("fer2013.tar.gz",),
        obtain="the Kaggle competition 'Challenges in Representation Learning: Facial Expression "
        "Recognition Challenge' (accept its rules first)",
        folder="fer2013",
        layout="  fer2013/fer2013.csv with columns emotion,pixels,Usage (or the same table as "
        "icml_face_data.csv)",
    )

    _rows: dict[str, list] | None = None

    def table(self, root: epath.Path) -> epath.Path:
        return next(root / t for t in TABLES if (root / t).exists())

    def is_root(self, path: epath.Path) -> bool:
        return path.is_dir() and any((path / t).exists() for t in TABLES)

    def read_rows(self, root: epath.Path) -> list[tuple[str, str, str, np.ndarray]]:
        """(split, expression, key, 48x48 uint8 image) of every row of the FER2013 table, in file order."""
        path = self.table(root)
        rows = _read_table(path)
        _check_columns(path, rows, ("emotion", "pixels", "Usage"))
        out = []
        for i, row in enumerate(rows):
            code = row["emotion"]
            if not code.isdigit() or int(code) >= len(_EMOTIONS):
                raise fb.ManualDataError(
                    f"Row {i} of {path} has emotion {code!r}; expected 0-6. Replace the file with the "
                    "original from the download."
                )
            expression = fb.canonical_expression(_EMOTIONS[int(code)])
            out.append((_split_of(row["Usage"], path, i), expression, f"{path.name}:{i}",
                        _pixels(row["pixels"], path, i)))
        return out

    def examples(self, root: epath.Path) -> dict[str, list[fb.FaceExample]]:
        by_split: dict[str, list[fb.FaceExample]] = {s: [] for s in self.SPLITS}
        for split, expression, key, image in self.read_rows(root):
            by_split[split].append(fb.FaceExample(key=key, expression=expression, load=_constant(image)))
        return by_split

    def list_examples(self, root: epath.Path, split: str):
        if self._rows is None:  # the table is read once for all three splits
            self._rows = self.examples(root)
        return self._rows[split]


class Ferplus(Fer2013):
    """FERPlus (Barsoum et al. 2016): FER2013 images with 10-tagger votes, majority label, 8 classes."""

    CLASS_NAMES = fb.ordered(fb.canonical_expression(e) for e in _VOTES[:8])
    LABEL_MODE = "majority"  # or "plurality"
    ROOT_MARKERS = ("fer2013.csv", FERPLUS_TABLE)
    HOMEPAGE = "https://github.com/microsoft/FERPlus"
    CITATION = (
        "Barsoum, Zhang, Canton Ferrer, Zhang: Training deep networks for facial expression recognition "
        "with crowd-sourced label distribution. ICMI 2016."
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = fb.manual_instructions(
        archives=("fer2013.tar.gz", FERPLUS_TABLE),
        obtain="the Kaggle competition 'Challenges in Representation Learning: Facial Expression "
        "Recognition Challenge' (fer2013.tar.gz) and https://github.com/microsoft/FERPlus (fer2013new.csv)",
        folder="fer2013",
        layout="  fer2013/fer2013.csv (columns emotion,pixels,Usage) and fer2013new.csv (columns Usage, "
        "Image name, neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF) "
        "next to it, or in the manual directory (also accepted in its FERPlus/ or FERPlus-master/)",
    )

    _votes_path: epath.Path | None = None

    def find_root(self, dl_manager) -> epath.Path:
        root = super().find_root(dl_manager)
        manual = epath.Path(dl_manager.manual_dir)
        places = [root, manual, manual / "FERPlus", manual / "FERPlus-master", manual / "ferplus",
                  root.parent]
        found = next((p / FERPLUS_TABLE for p in places if (p / FERPLUS_TABLE).exists()), None)
        if found is None:
            raise fb.ManualDataError(
                f"Found the FER2013 table in {root} but not {FERPLUS_TABLE}; looked in "
                f"{'; '.join(str(p) for p in places)}.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
        self._votes_path = found
        return root

    def label(self, votes: np.ndarray) -> str | None:
        """The canonical class of one row's 10 vote counts, or None when the row is dropped."""
        if self.LABEL_MODE == "majority":
            votes = np.where(votes <= 1, 0.0, votes)  # a single tagger's vote is an outlier
            total = votes.sum()
            if total <= 0 or votes.max() <= 0.5 * total:
                return None
            best = int(np.argmax(votes))
        elif self.LABEL_MODE == "plurality":
            best = int(np.argmax(votes))
            if votes.max() <= 0 or (votes == votes.max()).sum() > 1:
                return None
        else:
            raise ValueError(f"LABEL_MODE must be 'majority' or 'plurality', got {self.LABEL_MODE!r}.")
        return fb.canonical_expression(_VOTES[best]) if best < 8 else None

    def examples(self, root: epath.Path) -> dict[str, list[fb.FaceExample]]:
        images = self.read_rows(root)
        path = self._votes_path or root / FERPLUS_TABLE
        rows = _read_table(path)
        _check_columns(path, rows, ("Usage", "Image name", *_VOTES))
        if len(rows) != len(images):
            raise fb.ManualDataError(
                f"{path} has {len(rows)} rows but the FER2013 table has {len(images)}; they must match row "
                "for row. Use the original fer2013.csv and fer2013new.csv."
            )
        by_split: dict[str, list[fb.FaceExample]] = {s: [] for s in self.SPLITS}
        for i, (row, (split, _, _, image)) in enumerate(zip(rows, images, strict=True)):
            if _split_of(row["Usage"], path, i) != split:
                raise fb.ManualDataError(
                    f"Row {i} of {path} has Usage {row['Usage']} but the FER2013 table says otherwise; the "
                    "two files must match row for row. Use the original fer2013.csv and fer2013new.csv."
                )
            if not row["Image name"]:
                continue  # removed by FERPlus
            try:
                votes = np.array([float(row[v] or 0) for v in _VOTES])
            except ValueError as e:
                raise fb.ManualDataError(
                    f"Row {i} of {path} has a vote count that is not a number ({e}). Replace the file with "
                    "the original from the FERPlus repository."
                ) from e
            expression = self.label(votes)
            if expression is not None:
                by_split[split].append(fb.FaceExample(key=row["Image name"], expression=expression,
                                                      load=_constant(image)))
        return by_split
