"""JAFFE: 213 posed images of 10 Japanese women, 7 expressions including neutral (Lyons et al. 1998).

Files are named `<subject>.<expression><repeat>.<index>.tiff` (e.g. `KA.AN1.39.tiff`); the 256x256 grey
palette TIFFs show the head and shoulders, so unaligned configs crop the fixed face box `CROP_BOX`
[choice: measured on the 10 subjects, it keeps brows to chin] before resizing. The standard protocol is
leave-one-subject-out (10 folds). Every subject has neutral images, the real neutral targets of IPD-FER.
"""

from __future__ import annotations

import re

from etils import epath

from idfer_jax.data import face_builder as fb

_FILE = re.compile(r"^([A-Z]{2})\.([A-Z]{2})(\d+)\.(\d+)\.tiff?$", re.IGNORECASE)
_CODES = ("NE", "AN", "DI", "FE", "HA", "SA", "SU")


class Jaffe(fb.FaceBuilder):
    """JAFFE (Lyons et al. 1998): 10 subjects, 7 expressions, grey 256x256 originals."""

    CLASS_NAMES = fb.ordered(fb.canonical_expression(c) for c in _CODES)
    CROP_BOX = (0.22, 0.2, 0.9, 0.8)
    ROOT_MARKERS = ()
    ARCHIVES = ("jaffedbase.zip", "jaffe.zip")
    FOLDER = "jaffe"
    BUILDER_CONFIGS = fb.face_configs((64, 96, 112))
    DESCRIPTION = __doc__
    HOMEPAGE = "https://zenodo.org/record/3451524"
    CITATION = "Lyons, Akamatsu, Kamachi, Gyoba: Coding facial expressions with Gabor wavelets. FG 1998."
    MANUAL_DOWNLOAD_INSTRUCTIONS = fb.manual_instructions(
        archives=("jaffedbase.zip",),
        obtain="https://zenodo.org/record/3451524 (request access; non-commercial research only)",
        folder="jaffe",
        layout="  jaffe/<subject>.<expression><repeat>.<index>.tiff, e.g. jaffe/KA.AN1.39.tiff "
        "(the folder may be named jaffedbase)",
    )

    def is_root(self, path: epath.Path) -> bool:
        return path.is_dir() and any(_FILE.match(p.name) for p in path.iterdir())

    def list_examples(self, root: epath.Path, split: str):
        del split
        for path in sorted(root.iterdir()):
            match = _FILE.match(path.name)
            if not match:
                continue  # the archive also holds a README and rating tables
            subject, code, _, _ = match.groups()
            yield fb.FaceExample(
                key=path.name, expression=fb.canonical_expression(code), subject=subject.upper(),
                path=path,
            )
