"""KDEF: 4900 posed portraits of 70 actors, 7 expressions x 5 head views x 2 sessions (Lundqvist et al. 1998).

Layout of the distribution (`KDEF_and_AKDEF.zip` -> `KDEF_and_AKDEF/KDEF/`; AKDEF, the averaged faces, is
ignored):

  KDEF/AF01/AF01AFFL.JPG

The folder is session (A, B) + gender (F, M) + actor number (01-35); the file name is the folder name +
a 2-letter expression code (AF afraid, AN angry, DI disgusted, HA happy, NE neutral, SA sad, SU surprised)
+ a view code (FL full left profile, HL half left, S straight -- one letter, e.g. `AF01AFS.JPG` --, HR half
right, FR full right) + `.JPG`. Labels are read from the file name (not the folder), so a file filed in the
wrong folder keeps its own labels; files whose name does not follow the pattern are skipped with a warning.

Records: all 4900 images, 7 classes with neutral, and `yaw` in degrees. `subject` is gender + number (`F01`),
so the two sessions of one actor share a subject and subject-independent folds keep them together;
`sequence` is the session letter (`A` / `B`), so identity probes can split by session.

Yaw convention: positive = the face turned towards the image's right (the nose points to the image's
right). KDEF names views after the side of the face that is shown: "full left profile" shows the actor's
LEFT cheek. The actor faces the camera, so their left is the image's right; to show the left cheek they turn
their head to their own right, i.e. towards the image's LEFT. So FL = -90, HL = -45, S = 0, HR = +45,
FR = +90. [Unsure: this rests on KDEF's naming being from the actor's point of view (as its documentation
reads), not checked on the images; if an FL image shows the nose pointing to the image's right, flip the
sign of `_YAW`.] The task brief said "left profile shown, i.e. turned to the image's right"; the reasoning
above gives the opposite direction for the same view, with the same FL = -90 mapping.

Images are 562x762 colour portraits (head, neck, shoulders); unaligned configs cut the square `CROP_BOX`
(about 400x400 pixels around the head) before resizing. [Unsure: an estimate, not measured on the data; in
profile views the face is off-centre in it. Prefer the `aligned_*` configs for frontal work; detection
fails on many full profiles, which are then only cropped and resized (`face_found` = false).]
"""

from __future__ import annotations

import re

from absl import logging
from etils import epath

from idfer_jax.data import face_builder as fb

_CODES = ("AF", "AN", "DI", "HA", "NE", "SA", "SU")
_YAW = {"FL": -90.0, "HL": -45.0, "S": 0.0, "HR": 45.0, "FR": 90.0}
_PERSON = re.compile(r"^[AB][FM]\d{2}$", re.IGNORECASE)
_FILE = re.compile(
    r"^([AB])([FM])(\d{2})(" + "|".join(_CODES) + r")(FL|HL|HR|FR|S)\.jpe?g$", re.IGNORECASE
)
_PLACES = ("", "KDEF", "KDEF_and_AKDEF/KDEF")


class Kdef(fb.FaceBuilder):
    """KDEF (Lundqvist, Flykt, Ohman 1998): 70 actors, 7 expressions, 5 views (yaw -90..+90), 2 sessions."""

    CLASS_NAMES = fb.ordered(fb.canonical_expression(c) for c in _CODES)
    POSE_KEYS = ("yaw",)
    CROP_BOX = (0.24, 0.145, 0.765, 0.855)
    ROOT_MARKERS = ("actor folders such as AF01/",)  # only named in the not-found message: see is_root
    ARCHIVES = ("KDEF_and_AKDEF.zip", "KDEF.zip")
    FOLDER = "KDEF"
    BUILDER_CONFIGS = fb.face_configs((48, 64, 96, 112))
    DESCRIPTION = __doc__
    HOMEPAGE = "https://www.kdef.se/"
    CITATION = (
        "Lundqvist, Flykt, Ohman: The Karolinska Directed Emotional Faces - KDEF. CD ROM from Department "
        "of Clinical Neuroscience, Psychology section, Karolinska Institutet, 1998."
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = fb.manual_instructions(
        archives=("KDEF_and_AKDEF.zip",),
        obtain="https://www.kdef.se/ (free for non-commercial research; accept the terms of use)",
        folder="KDEF",
        layout="  KDEF/<session><gender><id>/<session><gender><id><expression><view>.JPG, e.g. "
        "KDEF/AF01/AF01AFFL.JPG and KDEF/AF01/AF01AFS.JPG, with <session> A|B, <gender> F|M, <id> 01-35, "
        f"<expression> in {', '.join(_CODES)}, <view> in FL, HL, S, HR, FR (the folder may sit inside "
        "KDEF_and_AKDEF/)",
    )

    @staticmethod
    def actors_dir(path: epath.Path) -> epath.Path | None:
        """The folder holding the actor folders: `path`, `path/KDEF` or `path/KDEF_and_AKDEF/KDEF`."""
        for place in _PLACES:
            candidate = path / place if place else path
            if candidate.is_dir() and any(
                p.is_dir() and _PERSON.match(p.name) for p in candidate.iterdir()
            ):
                return candidate
        return None

    def is_root(self, path: epath.Path) -> bool:
        return path.is_dir() and self.actors_dir(path) is not None

    def list_examples(self, root: epath.Path, split: str):
        del split
        folder = self.actors_dir(root)
        skipped = []
        for person in sorted(p for p in folder.iterdir() if p.is_dir() and _PERSON.match(p.name)):
            for path in fb.image_files(person):
                match = _FILE.match(path.name)
                if not match:
                    skipped.append(f"{person.name}/{path.name}")
                    continue
                session, gender, number, code, view = (g.upper() for g in match.groups())
                yield fb.FaceExample(
                    key=f"{person.name}/{path.name}", expression=fb.canonical_expression(code),
                    subject=f"{gender}{number}", sequence=session, pose={"yaw": _YAW[view]}, path=path,
                )
        if skipped:
            logging.warning(
                "KDEF: skipped %d image(s) whose names do not follow <session><gender><id><expression>"
                "<view>.JPG: %s", len(skipped), ", ".join(skipped[:20]),
            )
