"""A new photo framed the way a model's training images were: its faces as model-sized crops.

With detection (the default; needs the `[align]` extra), every face dlib's HOG detector finds is warped
onto a 5-point template (`idfer_jax.data.alignment`):

- a model trained on aligned data (`aligned_<size>px`) uses the template its data was aligned with, stored
  in the checkpoint (`record['framing']['template_points']`): the same framing exactly;
- a model trained on a dataset's own crops (`<size>px`) or on the rendered synthetic faces has no
  template of its own, so faces are aligned to "default", the mean framing of the CK+48 crops measured by
  `scripts/measure_alignment.py` [choice]: the nearest framing a detector can give to tight FER crops.
  For images that already are crops framed like the training data, detection is better off
  (`detect=False`, `idfer predict --no-detect`).

Without detection, the whole image is the face: its largest centred square resized to the model's size,
which is how the face builders prepared crops without a fixed box (so `idfer predict --no-detect` on a
dataset's own crop files, CK+48's, gives the model exactly the pixels `idfer evaluate` gave it). A model
trained on a dataset whose builder first cut a fixed box out of each raw image (JAFFE, KDEF, CK+ and
Oulu-CASIA's `<size>px` configs; `record['framing']['crop_box']`) gets that box too with `dataset_crop=True`
(`idfer predict --no-detect --dataset_crop`): for that dataset's raw files, not for other crops.

Boxes are (left, top, right, bottom) in the photo's pixel coordinates with pixel centres on integers, as in
`idfer_jax.data.alignment`: the whole W x H image is (-0.5, -0.5, W - 0.5, H - 0.5).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from idfer_jax.data import face_builder as fb
from idfer_jax.data.errors import DataError

NO_TEMPLATE_FALLBACK = "default"


@dataclasses.dataclass
class Face:
    """One face of a photo: `box` (left, top, right, bottom) in the photo's pixels (float; the detector's
    box, or the centred square without detection), `crop`, uint8 RGB (S, S, 3) at the model's size, and
    `score`, the HOG detector's confidence (None without detection; below about 0.5 often not a face)."""

    box: tuple[float, float, float, float]
    crop: np.ndarray = dataclasses.field(repr=False)
    detected: bool
    score: float | None = None


class Framer:
    """`frame(image) -> list[Face]` for one model's framing (`record['framing']`) and input size."""

    def __init__(self, framing: dict, size: int, *, detect: bool = True, dataset_crop: bool = False):
        self.size, self.detect, self.framing = int(size), bool(detect), dict(framing)
        self.crop_box = framing.get("crop_box") if dataset_crop else None
        if dataset_crop and detect:
            raise ValueError("dataset_crop applies the training dataset's fixed box instead of detection; "
                             "use it with detect=False (--no-detect).")
        if dataset_crop and not self.crop_box:
            raise DataError(f"This model's training data ({framing.get('dataset')}/{framing.get('config')}) "
                            "had no fixed crop box; drop --dataset_crop.")
        self._aligner = None
        if not self.detect:
            return
        from idfer_jax.data import alignment

        if not alignment.available():
            raise DataError(
                "Finding faces needs the [align] extra (dlib and its landmark model): "
                f"{alignment.INSTALL_HINT}. For images that already are face crops, pass --no-detect "
                "(Predictor.faces(..., detect=False)).")
        points = framing.get("template_points")
        self._aligner = alignment.FaceAligner(self.size, template=NO_TEMPLATE_FALLBACK)
        if framing.get("kind") == "aligned" and points is not None:
            self._aligner.template = np.asarray(points, np.float64)
            self._aligner.template_name = str(framing.get("template", "stored"))

    @property
    def template_name(self) -> str | None:
        return None if self._aligner is None else self._aligner.template_name

    def frame(self, image) -> list[Face]:
        """The faces of `image` (uint8 RGB (H, W, 3), or anything `face_builder.to_rgb` takes), largest first;
        [] when detection finds none."""
        picture = fb.to_rgb(image)
        if self._aligner is None:
            offset = (0.0, 0.0)
            if self.crop_box is not None:
                w, h = picture.size
                top, left = round(self.crop_box[0] * h), round(self.crop_box[1] * w)
                picture, offset = fb.crop_fraction(picture, tuple(self.crop_box)), (float(left), float(top))
            w, h = picture.size
            side = min(w, h)
            left, top = (w - side) // 2 + offset[0], (h - side) // 2 + offset[1]
            crop = np.asarray(fb.center_square_resize(picture, self.size))
            return [Face((left - 0.5, top - 0.5, left + side - 0.5, top + side - 0.5), crop, False)]
        rgb = np.asarray(picture)
        if min(rgb.shape[:2]) < 2:  # a line of pixels holds no face (and dlib refuses it)
            return []
        return [Face(tuple(float(v) for v in found.box), crop, True, float(found.score))
                for found, crop in self._aligner.align_all(rgb)]
