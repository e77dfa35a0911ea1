"""CK+ (extended Cohn-Kanade), raw release: full frames of 593 posed sequences, 327 with an emotion label.

Layout of the official distribution (two archives, usually extracted side by side into one `CK+` folder):

- `extended-cohn-kanade-images.zip` -> `cohn-kanade-images/S005/001/S005_001_00000011.png` (every frame of
  every sequence, neutral onset to peak);
- `Emotion_labels.zip` -> `Emotion/S005/001/S005_001_00000011_emotion.txt`: one float in scientific notation
  (`   3.0000000e+00`), 0=neutral 1=anger 2=contempt 3=disgust 4=fear 5=happy 6=sadness 7=surprise, named
  after the sequence's last (peak) frame. Only 327 of the 593 sequences (118 of 123 subjects) have one;
  the others have an empty folder or none and are skipped.

Records (the common CK+ protocol): the last 3 frames of each labelled sequence with the sequence's label
(ending at the frame the label file names, which is the last frame in the real data) and the FIRST frame
of the sequence as `neutral` -- 327 x 4 = 1308 records. A sequence of fewer than 4 frames gives no neutral
record (its first frame would be one of its peak frames). The neutral frame shares the sequence id of its
peak frames (one recording), so identity probes split by sequence keep them together.

Classes: all 8 (neutral, anger, contempt, disgust, fear, happiness, sadness, surprise). The usual protocols
pick a subset later through the run's class selection (`config.data.class_names`): 7 classes = the 6 basic
expressions + contempt (no neutral), 6 classes = without contempt and neutral, or 7 = basic + neutral.
`subject` is the CK+ id (`S005`), `sequence` the sequence folder (`001`); 10-fold subject-independent
cross-validation is the standard protocol, so the only split is `train`.

Images: 640x490 (a few 640x480 / 720x480), mostly 8-bit grey, some sequences RGB; all are stored as RGB.
The frames are full video frames with the face in the middle, so unaligned configs cut the fixed box
`CROP_BOX` before resizing. [Unsure: the box is an estimate of where CK+ faces sit (about the central
333x333 pixels of a 640x490 frame), not measured on the data; it keeps the face for most subjects but not
tightly.] Prefer the `aligned_*` configs for CK+ (they detect and align each face).
"""

from __future__ import annotations

import re

from etils import epath

from idfer_jax.data import face_builder as fb

IMAGES = "cohn-kanade-images"
LABELS = "Emotion"
_CODES = ("neutral", "anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")
_FRAME = re.compile(r"^(S\d+)_(\d+)_(\d+)\.png$", re.IGNORECASE)
_LABEL = re.compile(r"^(S\d+)_(\d+)_(\d+)_emotion\.txt$", re.IGNORECASE)
PEAK_FRAMES = 3


def read_label(path: epath.Path) -> str:
    """The canonical expression of one `*_emotion.txt` file."""
    text = path.read_text().strip()
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value != int(value) or not 0 <= value < len(_CODES):
        raise fb.ManualDataError(
            f"Cannot read the CK+ emotion label {path}: expected one number 0-7 (e.g. '3.0000000e+00'), "
            f"found {text[:40]!r}. Replace it with the file from Emotion_labels.zip."
        )
    return fb.canonical_expression(_CODES[int(value)])


class CkPlus(fb.FaceBuilder):
    """CK+ raw frames (Lucey et al. 2010): last 3 frames + first frame (neutral) of 327 labelled sequences."""

    CLASS_NAMES = fb.ordered(fb.canonical_expression(c) for c in _CODES)
    CROP_BOX = (0.16, 0.24, 0.84, 0.76)
    ROOT_MARKERS = (IMAGES, LABELS)
    ARCHIVES = ("extended-cohn-kanade-images.zip", "Emotion_labels.zip")
    FOLDER = "CK+"
    BUILDER_CONFIGS = fb.face_configs((48, 64, 96, 112))
    DESCRIPTION = __doc__
    HOMEPAGE = "https://www.jeffcohn.net/Resources/"
    CITATION = (
        "Lucey, Cohn, Kanade, Saragih, Ambadar, Matthews: The Extended Cohn-Kanade Dataset (CK+): A complete "
        "dataset for action unit and emotion-specified expression. CVPR Workshops 2010."
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = fb.manual_instructions(
        archives=ARCHIVES,
        obtain="the CK+ authors (https://www.jeffcohn.net/Resources/, non-commercial research agreement)",
        folder="CK+",
        layout=f"  CK+/{IMAGES}/S<subject>/<sequence>/S<subject>_<sequence>_<frame:8>.png\n"
        f"  CK+/{LABELS}/S<subject>/<sequence>/S<subject>_<sequence>_<frame:8>_emotion.txt\n"
        "e.g. CK+/cohn-kanade-images/S005/001/S005_001_00000011.png and "
        "CK+/Emotion/S005/001/S005_001_00000011_emotion.txt. The two archives may also be left "
        "unextracted side by side, or extracted into different folders of the manual directory.",
    )

    _labels_dir: epath.Path | None = None

    def find_root(self, dl_manager) -> epath.Path:
        """A folder holding both parts; else the two parts found (or extracted from their archives) apart.

        The base class wants one folder with every marker, but CK+ ships images and labels as two archives
        that extract to two folders; `_labels_dir` remembers where the labels are when they are apart.
        """
        try:
            root = super().find_root(dl_manager)
            self._labels_dir = root / LABELS
            return root
        except fb.ManualDataError as error:
            try:
                manual = epath.Path(dl_manager.manual_dir)
            except AssertionError:  # no manual directory at all: the base class's message says so
                raise error from None
            places = [manual]
            for archive in self.ARCHIVES:
                if (manual / archive).exists():
                    places.append(epath.Path(dl_manager.extract(manual / archive)))
            def first(name):
                found = (fb.find_child(q, name, accept=lambda p: p.is_dir()) for q in places)
                return next((p for p in found if p is not None), None)

            images, labels = first(IMAGES), first(LABELS)
            if images is None or labels is None:
                missing = " and ".join(
                    f"{name}/ (from {archive})"
                    for name, archive, found in ((IMAGES, self.ARCHIVES[0], images),
                                                 (LABELS, self.ARCHIVES[1], labels))
                    if found is None
                )
                raise fb.ManualDataError(
                    f"Cannot find {missing} of ck_plus in {manual}.\n{error}"
                ) from error
            self._labels_dir = labels
            return images.parent

    def list_examples(self, root: epath.Path, split: str):
        del split
        images = root / IMAGES
        labels = self._labels_dir or root / LABELS
        for label_file in _label_files(labels):
            subject, sequence, last = _LABEL.match(label_file.name).groups()
            expression = read_label(label_file)
            folder = images / label_file.parent.parent.name / label_file.parent.name
            frames = [p for p in fb.image_files(folder) if _FRAME.match(p.name)]
            frames.sort(key=lambda p: int(_FRAME.match(p.name).group(3)))
            frames = [p for p in frames if int(_FRAME.match(p.name).group(3)) <= int(last)]
            if not frames:
                raise fb.ManualDataError(
                    f"CK+ label {label_file} has no frames in {folder}: the images archive "
                    f"({self.ARCHIVES[0]}) is incomplete or extracted elsewhere. Re-extract it so that "
                    f"{IMAGES}/{subject}/{sequence}/ holds the sequence's PNG frames."
                )
            chosen = [(p, expression) for p in frames[-PEAK_FRAMES:]]
            if len(frames) > PEAK_FRAMES:
                chosen.insert(0, (frames[0], "neutral"))
            for path, label in chosen:
                yield fb.FaceExample(
                    key=f"{IMAGES}/{folder.parent.name}/{folder.name}/{path.name}", expression=label,
                    subject=subject.upper(), sequence=sequence, path=path,
                )


def _label_files(labels: epath.Path) -> list[epath.Path]:
    """Every `Emotion/S*/<seq>/*_emotion.txt`, sorted; hidden files (macOS `._*`) skipped."""
    out = []
    for subject in sorted(labels.iterdir()):
        if not subject.is_dir() or subject.name.startswith("."):
            continue
        for sequence in sorted(subject.iterdir()):
            if sequence.is_dir():
                out.extend(sorted(p for p in sequence.iterdir() if _LABEL.match(p.name)))
    return out
