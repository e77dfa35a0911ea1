"""Optional face alignment: detect faces, find 5 landmarks, warp them onto a canonical template.

Needs the ``align`` extra (``pip install "idfer_jax[align]"``): `dlib-bin` (a prebuilt dlib wheel) for dlib's
HOG frontal face detector, and `face-recognition-models`, whose wheel ships dlib's 5-point landmark model
``shape_predictor_5_face_landmarks.dat``. Nothing is downloaded at run time.

The 5-point model marks, in this order (image left/right for an upright frontal face):

    0: outer corner of the eye on the image's right (the subject's left eye)
    1: inner corner of that eye
    2: outer corner of the eye on the image's left (the subject's right eye)
    3: inner corner of that eye
    4: bottom of the nose (where the septum meets the upper lip)

`FaceAligner.align` fits a similarity transform (rotation, uniform scale, translation; no shear, no
reflection) from the template to the landmarks by least squares and warps with bilinear interpolation,
replicating the border where the crop reaches past the image.

Coordinates: a landmark ``(x, y)`` is in pixels with pixel centres on integers (the top-left pixel's centre is
``(0, 0)``). A face box ``(left, top, right, bottom)`` (`DetectedFace.box`) is in the same coordinates and
gives the box's outer *edges*: a box covering exactly the whole ``W`` x ``H`` image is
``(-0.5, -0.5, W - 0.5, H - 0.5)``. Template points live in the unit square of the output crop, ``(0, 0)``
its top-left *corner* and ``(1, 1)`` its bottom-right corner, so template point ``t`` lands at pixel
``t * output_size - 0.5``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import numpy as np

from idfer_jax.data.errors import DataError

INSTALL_HINT = 'pip install "idfer_jax[align]"'
MODEL_FILE = "shape_predictor_5_face_landmarks.dat"

# dlib's own 5-point template (dlib/image_transforms/interpolation.h, `get_face_chip_details`), in the unit
# square spanned by dlib's mean face shape (eyebrows to lower lip). Landmark order as in the module docstring.
DLIB_MEAN_FACE_5 = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ]
)


def _padded(points: np.ndarray, padding: float) -> np.ndarray:
    """dlib's padding: the square grows by `padding` of its side on every side (`get_face_chip`)."""
    return (points + padding) / (1.0 + 2.0 * padding)


# Canonical templates, (5, 2) x, y in the output's unit square.
#   "default": the FER framing of CK+ style crops: eyes 41% down the crop, eye centres 37% of the width apart,
#     forehead at the top edge, chin at the bottom edge. The numbers are the mean of this aligner's landmarks
#     over the 981 CK+48 crops of `shared/data/ckplus48` (printed by `scripts/measure_alignment.py`, see
#     docs/results/alignment.md), made left-right symmetric and rounded to 3 decimals. Our choice: aligned
#     faces from other sets then match the CK+48 crops, the framing of common FER crops.
#   "loose": our choice, "default" shrunk by 0.8 about the crop's centre: the same face with a margin, the
#     whole chin and the top of the head in the crop (for random-crop augmentation or a pose-robust crop).
#   "dlib": what `dlib.get_face_chip(image, shape, size)` produces (its default padding 0.25): eyes 31% down,
#     about the scale of "default", less forehead and more chin and neck; the crop dlib's face-recognition
#     models take.
_DEFAULT = np.array(
    [
        [0.757, 0.410],
        [0.609, 0.412],
        [0.243, 0.410],
        [0.391, 0.412],
        [0.500, 0.667],
    ]
)
TEMPLATES: dict[str, np.ndarray] = {
    "default": _DEFAULT,
    "loose": 0.5 + 0.8 * (_DEFAULT - 0.5),
    "dlib": _padded(DLIB_MEAN_FACE_5, 0.25),
}

# HOG's sliding window is 80x80: a face must be at least about 80 px to be found. Small images are doubled
# until their shorter side reaches this many pixels, so a face filling half of the image is still found.
MIN_DETECTION_SIDE = 160
MAX_AUTO_UPSAMPLE = 3
# FER crops are tight: the face touches the border, and HOG then misses some faces (6 of the 981 CK+48 crops
# at 4x without a margin, none with it). Detection runs on the image with this fraction of its shorter side
# added on every side, replicating the border pixels.
DETECTION_MARGIN = 0.125


def fit_similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) taking `source` points to `target`.

    Closed form (Umeyama 1991 restricted to 2-D, written with complex numbers): with centred points
    ``s``, ``t`` as complex numbers, the best ``c = scale * exp(i * angle)`` is
    ``sum(conj(s) * t) / sum(|s|^2)``. Returns the 2x3 matrix ``M`` with ``target ~= M @ [x, y, 1]``.
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if source.shape != target.shape or source.ndim != 2 or source.shape[1] != 2 or len(source) < 2:
        raise ValueError(f"need two (N, 2) point sets, N >= 2; got {source.shape} and {target.shape}")
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    s = (source[:, 0] - source_mean[0]) + 1j * (source[:, 1] - source_mean[1])
    t = (target[:, 0] - target_mean[0]) + 1j * (target[:, 1] - target_mean[1])
    denominator = float(np.sum(np.abs(s) ** 2))
    if denominator == 0.0:
        raise ValueError("the source points all coincide")
    c = np.sum(np.conj(s) * t) / denominator
    a, b = float(c.real), float(c.imag)
    linear = np.array([[a, -b], [b, a]])
    translation = target_mean - linear @ source_mean
    return np.concatenate([linear, translation[:, None]], axis=1)


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Applies a 2x3 affine `matrix` to (N, 2) `points`."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """A ``size`` x ``size`` crop whose pixel ``(x, y)`` is `image` bilinearly sampled at ``M @ (x, y, 1)``.

    `matrix` (``M``) maps output pixel coordinates to input pixel coordinates (pixel centres on integers);
    samples outside the image take the nearest border pixel's value.
    """
    height, width = image.shape[:2]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    source_x = matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2]
    source_y = matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2]
    source_x = np.clip(source_x, 0.0, width - 1.0)
    source_y = np.clip(source_y, 0.0, height - 1.0)
    x0 = np.minimum(np.floor(source_x).astype(np.int64), width - 2) if width > 1 else np.zeros_like(xs, int)
    y0 = np.minimum(np.floor(source_y).astype(np.int64), height - 2) if height > 1 else np.zeros_like(ys, int)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    fx = (source_x - x0)[..., None]
    fy = (source_y - y0)[..., None]
    pixels = image.astype(np.float32)
    top = pixels[y0, x0] * (1.0 - fx) + pixels[y0, x1] * fx
    bottom = pixels[y1, x0] * (1.0 - fx) + pixels[y1, x1] * fx
    out = top * (1.0 - fy) + bottom * fy
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def model_path() -> str | None:
    """Path of the 5-point landmark model in the installed `face-recognition-models` wheel, or None.

    Found from the package's location without importing it: its ``__init__`` imports ``pkg_resources``,
    which recent setuptools no longer ship.
    """
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for directory in spec.submodule_search_locations:
        path = os.path.join(directory, "models", MODEL_FILE)
        if os.path.isfile(path):
            return path
    return None


def available() -> bool:
    """Whether the ``align`` extra is installed (dlib imports and the landmark model file is there)."""
    try:
        import dlib  # noqa: F401
    except ImportError:
        return False
    return model_path() is not None


def auto_upsample(height: int, width: int) -> int:
    """How many times to double an image of this size before detection (see `MIN_DETECTION_SIDE`)."""
    side, times = min(height, width), 0
    while side * 2**times < MIN_DETECTION_SIDE and times < MAX_AUTO_UPSAMPLE:
        times += 1
    return times


def _as_rgb_uint8(image) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise DataError(f"FaceAligner needs a uint8 image; got dtype {image.dtype} (convert with PIL first)")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    elif image.ndim == 3 and image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    elif image.ndim == 3 and image.shape[-1] == 4:
        image = image[..., :3]
    if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 2:
        raise DataError(f"FaceAligner needs an HxWx3 RGB (or HxW grey) image; got shape {image.shape}")
    return np.ascontiguousarray(image)


@dataclasses.dataclass(frozen=True, eq=False)  # eq would compare arrays, which has no truth value
class DetectedFace:
    """One face found by `FaceAligner.detect`, in the coordinates of the image it was given.

    Attributes:
      box: (left, top, right, bottom) float pixels, the edges of dlib's detection rectangle mapped back
        through the upsampling and the detection margin (module docstring: pixel centres on integers, so the
        whole image is ``(-0.5, -0.5, W - 0.5, H - 0.5)``). Not clipped: a face at the border may have a box
        reaching past the image.
      landmarks: (5, 2) float64 x, y of the 5 landmarks (order in the module docstring).
      score: the HOG detector's confidence (SVM margin; > 0 for every detection at dlib's default threshold,
        larger is surer). Not a probability and not comparable across detectors.
    """

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    score: float

    @property
    def area(self) -> float:
        """Box area in square pixels (of the given image)."""
        left, top, right, bottom = self.box
        return (right - left) * (bottom - top)


class FaceAligner:
    """Detects faces in an RGB image and warps them onto a canonical 5-point template.

    `align` / `landmarks` take the largest face; `detect` / `align_all` give every face, largest first.

    Args:
      output_size: side of the square uint8 crop `align` returns.
      template: a key of `TEMPLATES`: "default" (CK+ style FER framing), "loose" (the same with a margin) or
        "dlib" (`dlib.get_face_chip`'s framing).
      upsample: how many times the image is doubled (bilinear) before detection and landmarking; None picks
        it from the image size (`auto_upsample`: 48x48 crops are doubled twice, 256x256 images not at all).
        Landmarks are found on the enlarged image too, which makes them sub-pixel on small images. Detection
        and landmarks run with a replicated border around the image (`DETECTION_MARGIN`) for tight crops.
    """

    def __init__(self, output_size: int, *, template: str = "default", upsample: int | None = None):
        if int(output_size) < 2:
            raise DataError(f"FaceAligner output_size must be at least 2 pixels; got {output_size}")
        if template not in TEMPLATES:
            raise DataError(f"unknown alignment template {template!r}; choose one of {sorted(TEMPLATES)}")
        if upsample is not None and int(upsample) < 0:
            raise DataError(f"FaceAligner upsample must be None or >= 0; got {upsample}")
        try:
            import dlib
        except ImportError as error:
            raise DataError(
                f"face alignment needs dlib and its landmark model: {INSTALL_HINT} "
                f"(installs dlib-bin and face-recognition-models; import failed: {error})"
            ) from error
        path = model_path()
        if path is None:
            raise DataError(
                f"face alignment needs dlib's 5-point landmark model ({MODEL_FILE}), shipped by the "
                f"face-recognition-models package, which is not installed: {INSTALL_HINT}"
            )
        self.output_size = int(output_size)
        self.template_name = template
        self.template = TEMPLATES[template].copy()
        self.upsample = None if upsample is None else int(upsample)
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(path)

    def __repr__(self) -> str:
        return (
            f"FaceAligner(output_size={self.output_size}, template={self.template_name!r}, "
            f"upsample={self.upsample})"
        )

    def _detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Every face in an RGB uint8 image (from `_as_rgb_uint8`), largest first; ties keep dlib's order."""
        height, width = image.shape[:2]
        times = auto_upsample(height, width) if self.upsample is None else self.upsample
        scale = 2**times
        if scale > 1:
            from PIL import Image

            enlarged = Image.fromarray(image).resize((width * scale, height * scale), Image.BILINEAR)
            image = np.asarray(enlarged)
        margin = int(round(DETECTION_MARGIN * min(image.shape[:2])))
        if margin:
            image = np.pad(image, ((margin, margin), (margin, margin), (0, 0)), mode="edge")

        def back(values: np.ndarray) -> np.ndarray:
            # Back to the original image's pixel-centre coordinates (PIL's resize aligns pixel corners).
            return (values - margin + 0.5) / scale - 0.5

        # `run` is what calling the detector does (threshold 0), plus the scores.
        rects, scores, _ = self._detector.run(image, 0, 0.0)
        faces = []
        for rect, score in zip(rects, scores, strict=True):
            shape = self._predictor(image, rect)
            parts = range(shape.num_parts)
            points = np.array([[shape.part(i).x, shape.part(i).y] for i in parts], np.float64)
            # dlib's rectangle holds inclusive pixel indices: its edges are half a pixel further out.
            left, right = back(np.array([rect.left() - 0.5, rect.right() + 0.5]))
            top, bottom = back(np.array([rect.top() - 0.5, rect.bottom() + 0.5]))
            faces.append(DetectedFace(
                box=(float(left), float(top), float(right), float(bottom)), landmarks=back(points),
                score=float(score),
            ))
        # Python's sort is stable, also reversed: equal areas keep dlib's order, as `max` picked before.
        faces.sort(key=lambda face: face.area, reverse=True)
        return faces

    def detect(self, image) -> list[DetectedFace]:
        """Every face dlib's HOG detector finds in `image`, largest box first (empty list when none).

        `image`: uint8 HxWx3 RGB, HxW grey or HxWx4 (alpha ignored). Boxes and landmarks are in its pixel
        coordinates (module docstring). Found on the image upsampled and with a margin, as `landmarks`.
        """
        return self._detect(_as_rgb_uint8(image))

    def landmarks(self, image) -> np.ndarray | None:
        """(5, 2) float64 x, y of the largest face's landmarks (order in the module docstring), or None."""
        faces = self._detect(_as_rgb_uint8(image))
        return faces[0].landmarks if faces else None

    def transform(self, points: np.ndarray) -> np.ndarray:
        """The 2x3 matrix taking output-crop pixel coordinates to image coordinates for these landmarks."""
        target = self.template * self.output_size - 0.5
        return fit_similarity(target, points)

    def align(self, image: np.ndarray) -> np.ndarray | None:
        """uint8 (output_size, output_size, 3) crop of the largest face aligned to the template, or None."""
        image = _as_rgb_uint8(image)
        points = self.landmarks(image)
        if points is None:
            return None
        return warp_affine(image, self.transform(points), self.output_size)

    def align_all(self, image) -> list[tuple[DetectedFace, np.ndarray]]:
        """Every face (`detect`), largest first, with its aligned uint8 (output_size, output_size, 3) crop.

        Each crop is the one `align` would give were that face the largest (same template and warp).
        """
        image = _as_rgb_uint8(image)
        return [
            (face, warp_affine(image, self.transform(face.landmarks), self.output_size))
            for face in self._detect(image)
        ]
