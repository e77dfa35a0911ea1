"""Oulu-CASIA NIR&VIS: the visible-light (VIS) camera under strong illumination, 80 subjects x 6 expressions.

Layout of the distribution (Zhao et al. 2011), of which only the `VL/Strong` part is used:

  OriginalImg/VL/Strong/P001/Anger/000.jpeg, 001.jpeg, ...   (also NI/ for near infrared, and Dark/ Weak/)

Subjects `P001`..`P080`, one sequence per subject and expression, folders `Anger Disgust Fear Happiness
Sadness Surprise` (6 classes, no neutral); each sequence runs from neutral to the apex. Records: the last 3
frames of each sequence by frame number (480 sequences -> 1440 records, the common protocol). `subject` is
the `P001` folder, `sequence` the expression folder (one recording per subject and expression). The
standard protocol is 10-fold subject-independent cross-validation, so the only split is `train`.

Images are 320x240 colour frames with the face in the middle; unaligned configs cut `CROP_BOX` before
resizing. [Unsure: the box is an estimate (the central ~190x190 pixels), not measured on the data; prefer the
`aligned_*` configs. Unsure too of the archive's name and of whether it adds a top folder such as
`Oulu_CASIA_NIR_VIS/`; any top folder is accepted, and both `.jpeg` and other image extensions are read.]
"""

from __future__ import annotations

import re

from etils import epath

from idfer_jax.data import face_builder as fb

_EXPRESSIONS = ("Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise")
_SUBJECT = re.compile(r"^P\d+$", re.IGNORECASE)
VIS = "VL/Strong"
PEAK_FRAMES = 3


def _frame_number(path: epath.Path) -> tuple[int, str]:
    digits = re.findall(r"\d+", path.stem)
    return (int(digits[-1]) if digits else -1, path.name)


class OuluCasia(fb.FaceBuilder):
    """Oulu-CASIA (Zhao et al. 2011), VIS strong light: last 3 frames of 480 sequences, 6 expressions."""

    CLASS_NAMES = fb.ordered(fb.canonical_expression(e) for e in _EXPRESSIONS)
    CROP_BOX = (0.1, 0.2, 0.9, 0.8)
    ROOT_MARKERS = (VIS,)
    ARCHIVES = ("OriginalImg.zip", "Oulu_CASIA_NIR_VIS.zip", "Oulu-CASIA.zip", "OriginalImg.rar")
    FOLDER = "OriginalImg"
    BUILDER_CONFIGS = fb.face_configs((48, 64, 96, 112))
    DESCRIPTION = __doc__
    HOMEPAGE = "https://www.oulu.fi/cmvs"  # [unsure: the database page has moved over the years]
    CITATION = (
        "Zhao, Huang, Taini, Li, Pietikainen: Facial expression recognition from near-infrared videos. "
        "Image and Vision Computing 29(9), 2011."
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = fb.manual_instructions(
        archives=("OriginalImg.zip",),
        obtain="the University of Oulu (Oulu-CASIA NIR&VIS facial expression database, licence agreement "
        "for non-commercial research)",
        folder="OriginalImg",
        layout="  OriginalImg/VL/Strong/P<subject:3>/<Expression>/<frame:3>.jpeg, e.g. "
        "OriginalImg/VL/Strong/P001/Anger/000.jpeg, with <Expression> in " + ", ".join(_EXPRESSIONS)
        + " (rar archives must be extracted first)",
    )

    def is_root(self, path: epath.Path) -> bool:
        # Also a folder that holds OriginalImg/ (an archive's top folder, or the manual dir itself).
        return super().is_root(path) or super().is_root(path / self.FOLDER)

    def list_examples(self, root: epath.Path, split: str):
        del split
        base = root if super().is_root(root) else root / self.FOLDER
        vis = base / VIS
        for subject in sorted(p for p in vis.iterdir() if p.is_dir() and _SUBJECT.match(p.name)):
            for folder in sorted(p for p in subject.iterdir() if p.is_dir()):
                try:
                    expression = fb.canonical_expression(folder.name)
                except ValueError as e:
                    raise fb.ManualDataError(
                        f"Unexpected folder {folder} in Oulu-CASIA: expected one of "
                        f"{', '.join(_EXPRESSIONS)}. Move other folders out of the dataset folder."
                    ) from e
                frames = sorted(fb.image_files(folder), key=_frame_number)
                for path in frames[-PEAK_FRAMES:]:
                    yield fb.FaceExample(
                        key=f"{VIS}/{subject.name}/{folder.name}/{path.name}", expression=expression,
                        subject=subject.name.upper(), sequence=folder.name, path=path,
                    )
