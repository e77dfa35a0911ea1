"""CK+48: the 48x48 grey face crops of CK+'s peak frames, in the widely shared per-expression layout.

981 images of 118 subjects: the last 3 frames of each of CK+'s 327 emotion-labelled sequences, 7 classes
(no neutral). Subject and sequence come from the file name `S<subject>_<sequence>_<frame>.png`, so the
protocol can split by subject and identity probes by sequence.
"""

from __future__ import annotations

import re

from etils import epath

from idfer_jax.data import face_builder as fb

_FILE = re.compile(r"^(S\d+)_(\d+)_(\d+)\.png$", re.IGNORECASE)
_FOLDERS = ("anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")


class CkPlus48(fb.FaceBuilder):
    """CK+48 face crops (Lucey et al. 2010), 7 expressions, subject and sequence ids."""

    CLASS_NAMES = fb.ordered(fb.canonical_expression(f) for f in _FOLDERS)
    ROOT_MARKERS = _FOLDERS
    ARCHIVES = ("CK+48.zip", "ckplus48.zip")
    FOLDER = "CK+48"
    BUILDER_CONFIGS = fb.face_configs((48, 64, 96))
    DESCRIPTION = __doc__
    HOMEPAGE = "https://www.jeffcohn.net/Resources/"
    CITATION = ("Lucey et al., The Extended Cohn-Kanade Dataset (CK+), CVPR Workshops 2010.")
    MANUAL_DOWNLOAD_INSTRUCTIONS = fb.manual_instructions(
        archives=("CK+48.zip",),
        obtain="the CK+48 crops shared by FER course material (derived from CK+, whose licence "
        "you must have accepted at https://www.jeffcohn.net/Resources/)",
        folder="CK+48",
        layout="  CK+48/<expression>/S<subject>_<sequence>_<frame>.png with <expression> in "
        + ", ".join(_FOLDERS),
    )

    def list_examples(self, root: epath.Path, split: str):
        del split
        for folder in _FOLDERS:
            expression = fb.canonical_expression(folder)
            for path in fb.image_files(root / folder):
                match = _FILE.match(path.name)
                if not match:
                    raise fb.ManualDataError(
                        f"Unexpected file name {path} in CK+48: expected S<subject>_<sequence>_"
                        "<frame>.png. Move other files out of the dataset folder."
                    )
                subject, sequence, _ = match.groups()
                yield fb.FaceExample(
                    key=f"{folder}/{path.name}", expression=expression, subject=subject.upper(),
                    sequence=sequence, path=path,
                )
