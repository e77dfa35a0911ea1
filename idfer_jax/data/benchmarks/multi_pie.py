"""CMU Multi-PIE (Gross et al. 2010): 337 subjects, 4 sessions, 13 head-height views, posed expressions.

Layout of the distribution (CMU, licence agreement; delivered on a disk as `Multi-Pie/data/...`):

  Multi-Pie/data/session01/multiview/001/01/05_1/001_01_01_051_07.png
            data/session<SS>/multiview/<subject>/<recording>/<camera>/<subject>_<SS>_<recording>_<cam>_<flash>.png

(`<cam>` is the camera folder without its underscore, `05_1` -> `051`; `<flash>` 00-19 is the illumination;
640x480 colour images). The `highres/` folders of each session are not read.

Expressions come from (session, recording): session 1: 01 neutral, 02 smile; session 2: 01 neutral,
02 surprise, 03 squint; session 3: 01 neutral, 02 smile, 03 disgust; session 4: 01 neutral, 02 neutral,
03 scream. Smile -> happiness; squint and scream have no class in the canonical vocabulary
(`face_builder.EXPRESSIONS`) and are skipped [choice] -- 4 classes: neutral, disgust, happiness, surprise.
`subject` is the subject folder (`001`), `sequence` `<session>_<recording>` (`01_02`): the 13 views of one
recording share it. No official split: the only split is `train` (subject-independent folds later).

Views: the 13 cameras at head height (`CAMERA_YAW`), yaw in degrees: 11_0 -90, 12_0 -75, 09_0 -60, 08_0 -45,
13_0 -30, 14_0 -15, 05_1 0, 05_0 +15, 04_1 +30, 19_0 +45, 20_0 +60, 01_0 +75, 24_0 +90 (the camera table
used across the Multi-PIE literature). The elevated cameras 08_1 and 19_1 (15 degrees above head height) are
skipped [choice]. Sign convention: positive yaw = the face turned toward the image's right (the subject's
right cheek seen). Illumination [choice]: flash 07 only (`FLASHES`, a class attribute; a subclass may list
more, e.g. all 20), so 13 records per recording.

Images are full frames with the head near the centre; unaligned configs take the central square (no fixed
crop box, since the head's place varies with the view) -- prefer the `aligned_*` configs for frontal and
near-frontal views (profile views rarely align: `face_found` says which were only resized).

[Unsure: (1) the sign of yaw -- the camera table is the common one and Idiap's bob.db.multipie calls 24_0
"right profile" and 11_0 "left profile", which gives the convention above, but it was not checked against
the images here; flip `CAMERA_YAW`'s signs if the images show otherwise; (2) the top folder name (any
folder holding `data/session0*` is found, up to two levels below the manual directory).]
"""

from __future__ import annotations

import re

from etils import epath

from idfer_jax.data import face_builder as fb

# (session, recording) -> canonical expression; None = no canonical class (squint, scream): skipped.
RECORDINGS: dict[tuple[str, str], str | None] = {
    ("01", "01"): "neutral", ("01", "02"): "happiness",
    ("02", "01"): "neutral", ("02", "02"): "surprise", ("02", "03"): None,  # squint
    ("03", "01"): "neutral", ("03", "02"): "happiness", ("03", "03"): "disgust",
    ("04", "01"): "neutral", ("04", "02"): "neutral", ("04", "03"): None,  # scream
}
CAMERA_YAW = {
    "11_0": -90.0, "12_0": -75.0, "09_0": -60.0, "08_0": -45.0, "13_0": -30.0, "14_0": -15.0,
    "05_1": 0.0,
    "05_0": 15.0, "04_1": 30.0, "19_0": 45.0, "20_0": 60.0, "01_0": 75.0, "24_0": 90.0,
}
_SESSION = re.compile(r"^session(\d{2})$")


def _is_data_parent(path: epath.Path) -> bool:
    data = path / "data"
    return data.is_dir() and any(_SESSION.match(p.name) for p in data.iterdir() if p.is_dir())


class MultiPie(fb.FaceBuilder):
    """CMU Multi-PIE (Gross et al. 2010): 13 yaw views, 4 expression classes, flash 07."""

    CLASS_NAMES = fb.ordered(e for e in RECORDINGS.values() if e is not None)
    POSE_KEYS = ("yaw",)
    CAMERA_YAW = CAMERA_YAW
    FLASHES: tuple[str, ...] = ("07",)
    ROOT_MARKERS = ("data/session01",)
    ARCHIVES = ()
    FOLDER = "Multi-Pie"
    BUILDER_CONFIGS = fb.face_configs((64, 96, 112))
    DESCRIPTION = __doc__
    HOMEPAGE = "https://www.cs.cmu.edu/afs/cs/project/PIE/MultiPie/Multi-Pie/Home.html"
    CITATION = "Gross, Matthews, Cohn, Kanade, Baker: Multi-PIE. Image and Vision Computing 28(5), 2010."
    MANUAL_DOWNLOAD_INSTRUCTIONS = fb.manual_instructions(
        archives=("the Multi-PIE distribution",),
        obtain="Carnegie Mellon University (https://www.cs.cmu.edu/afs/cs/project/PIE/MultiPie/Multi-Pie/"
        "Home.html, licence agreement)",
        folder="Multi-Pie",
        layout="  Multi-Pie/data/session<SS>/multiview/<subject>/<recording>/<camera>/"
        "<subject>_<SS>_<recording>_<cam>_<flash>.png, e.g. "
        "Multi-Pie/data/session01/multiview/001/01/05_1/001_01_01_051_07.png",
    )

    def is_root(self, path: epath.Path) -> bool:
        return path.is_dir() and _is_data_parent(path)

    def list_examples(self, root: epath.Path, split: str):
        del split
        data = root / "data"
        flashes = sorted(self.FLASHES)
        for session in sorted(p for p in data.iterdir() if _SESSION.match(p.name)):
            ss = _SESSION.match(session.name).group(1)
            multiview = session / "multiview"
            if not multiview.is_dir():
                continue
            for subject in sorted(p for p in multiview.iterdir() if p.is_dir()):
                for recording in sorted(p for p in subject.iterdir() if p.is_dir()):
                    key = (ss, recording.name)
                    if key not in RECORDINGS:
                        raise fb.ManualDataError(
                            f"Unexpected recording folder {recording}: Multi-PIE session {ss} has "
                            f"recordings {', '.join(r for s, r in RECORDINGS if s == ss) or 'none'}. "
                            "Move other folders out of the dataset folder."
                        )
                    expression = RECORDINGS[key]
                    if expression is None:
                        continue  # squint, scream
                    yield from self._views(root, recording, subject.name, ss, expression, flashes)

    def _views(self, root, recording, subject, ss, expression, flashes):
        for camera, yaw in self.CAMERA_YAW.items():
            for flash in flashes:
                name = f"{subject}_{ss}_{recording.name}_{camera.replace('_', '')}_{flash}.png"
                path = recording / camera / name
                if path.exists():  # the odd image missing from the release is left out
                    yield fb.FaceExample(
                        key=str(path.relative_to(root)), expression=expression, subject=subject,
                        sequence=f"{ss}_{recording.name}", pose={"yaw": yaw}, path=path,
                    )
