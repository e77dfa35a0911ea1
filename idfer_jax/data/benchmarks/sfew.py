"""SFEW 2.0 (Dhall et al. 2011/2015): static frames from movies (EmotiW), 7 classes, validation set as test.

Layout of the distribution (EmotiW organisers, on request), one archive per folder:

  Train/<Expression>/<movie>_<frame>.png                 (raw 720x576 movie frames)
  Val/<Expression>/...
  Train_Aligned_Faces/<Expression>/<movie>_<frame>.png   (the organisers' face crops)
  Val_Aligned_Faces/<Expression>/...

with `<Expression>` in Angry, Disgust, Fear, Happy, Neutral, Sad, Surprise (7 classes with neutral). The
labelled test set of the challenge was never released, so papers report on Val: Train -> `train`, Val ->
`test`. The aligned-faces release is read when both its folders are present [choice: it is the face crop
papers use]; otherwise the raw frames, whose faces are small and off-centre, so use the `aligned_*` configs
with them. Counts in the release: about 958 train / 436 val frames; the aligned release has fewer (faces
the organisers' detector missed). No subject ids (`subject` = -1). `file_name` is the path relative to the
dataset folder, e.g. `Train_Aligned_Faces/Angry/<file>.png`.

[Unsure: the exact archive names and whether an archive adds a top folder (folders one level down are
found, e.g. `Train/Train_Aligned_Faces/`); archives must be extracted by hand since the parts come as
separate archives.]
"""

from __future__ import annotations

import os

from etils import epath

from idfer_jax.data import face_builder as fb

_EXPRESSIONS = ("Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise")
# (train, test) folder pairs, preferred first.
LAYOUTS = (("Train_Aligned_Faces", "Val_Aligned_Faces"), ("Train", "Val"))


def _expression_folder(path: epath.Path) -> bool:
    return path.is_dir() and any((path / e).is_dir() for e in _EXPRESSIONS)


class Sfew(fb.FaceBuilder):
    """SFEW 2.0 (Dhall et al.): movie frames, 7 classes; Train -> train, Val -> test."""

    CLASS_NAMES = fb.ordered(fb.canonical_expression(e) for e in _EXPRESSIONS)
    SPLITS = ("train", "test")
    HAS_SUBJECTS = False
    ROOT_MARKERS = LAYOUTS[0]
    ARCHIVES = ()
    FOLDER = "SFEW_2"
    BUILDER_CONFIGS = fb.face_configs((64, 96, 112))
    DESCRIPTION = __doc__
    HOMEPAGE = "https://users.cecs.anu.edu.au/~few_group/AFEW.html"
    CITATION = (
        "Dhall, Goecke, Lucey, Gedeon: Static facial expression analysis in tough conditions: Data, "
        "evaluation protocol and benchmark. ICCV Workshops 2011."
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = fb.manual_instructions(
        archives=("Train_Aligned_Faces", "Val_Aligned_Faces (or Train and Val)"),
        obtain="the EmotiW / SFEW organisers (https://users.cecs.anu.edu.au/~few_group/AFEW.html, "
        "research licence)",
        folder="SFEW_2",
        layout="  SFEW_2/Train_Aligned_Faces/<Expression>/*.png and SFEW_2/Val_Aligned_Faces/<Expression>/"
        "*.png (or the raw frames SFEW_2/Train/<Expression>/*.png and SFEW_2/Val/<Expression>/*.png), with "
        f"<Expression> in {', '.join(_EXPRESSIONS)}. Extract the archives by hand.",
    )

    def folders(self, root: epath.Path) -> tuple[epath.Path, epath.Path] | None:
        """The (train, test) folders: the aligned faces when both are there, else the raw frames."""
        for names in LAYOUTS:
            found = tuple(fb.find_child(root, n, depth=1, accept=_expression_folder) for n in names)
            if all(f is not None for f in found):
                return found
        return None

    def is_root(self, path: epath.Path) -> bool:
        return self.folders(path) is not None

    def list_examples(self, root: epath.Path, split: str):
        folder = self.folders(root)[self.SPLITS.index(split)]
        for name in _EXPRESSIONS:
            expression = fb.canonical_expression(name)
            for path in fb.image_files(folder / name):
                key = os.path.relpath(path, folder.parent)  # e.g. Train_Aligned_Faces/Angry/x.png
                yield fb.FaceExample(key=key, expression=expression, path=path)
