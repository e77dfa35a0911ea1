"""What `idfer predict` reads and draws: input listing, image and video frames, all faces, annotated pictures.

The video tests write a tiny video with PyAV (the ``video`` extra) and skip without it; the multi-face tests
need the ``align`` extra and the CK+48 crops in ``../shared/data/ckplus48`` (research-only, read in place,
never copied) and skip, saying why, without either.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from PIL import Image

from idfer_jax.data import alignment
from idfer_jax.inference import annotate, inputs
from tests.conftest import SHARED_DATA

VIDEO_SKIP = "video reading needs the [video] extra (PyAV)"


def write_png(path, value=100, size=(12, 10)) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


# ------------------------------------------------------------------------------------------- listing
def test_list_inputs_walks_folders_sorted_and_reports_what_it_skips(tmp_path):
    root = tmp_path / "in"
    write_png(str(root / "b.png"))
    write_png(str(root / "a.png"))
    write_png(str(root / "sub" / "deeper" / "d.png"))
    write_png(str(root / "sub" / "c.png"))
    (root / "sub" / "clip.mp4").write_bytes(b"listed by name, not decoded here")
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"")
    (root / ".png").write_bytes(b"")  # empty stem: a hidden file
    os.symlink(tmp_path / "nowhere.png", root / "dangling.png")
    os.symlink(root, root / "sub" / "loop")  # a folder link back up: followed once, reported
    odd = tmp_path / "photo.data"  # given explicitly: read as an image whatever its name
    write_png(str(tmp_path / "tmp.png"))
    os.replace(tmp_path / "tmp.png", odd)

    given = [str(root), str(odd), str(root / "a.png"), str(tmp_path / "missing"), ""]
    files, unreadable = inputs.list_inputs(given)
    assert files == [
        str(root / "a.png"), str(root / "b.png"), str(root / "sub" / "c.png"), str(root / "sub" / "clip.mp4"),
        str(root / "sub" / "deeper" / "d.png"), str(odd),
    ]  # sorted per folder, subfolders after files, recursive; a.png given again is listed once
    reasons = {item.source: item.reason for item in unreadable}
    assert reasons == {
        str(root / "dangling.png"): inputs.BROKEN_LINK,
        str(root / "notes.txt"): inputs.NOT_MEDIA,
        str(root / "sub" / "loop"): inputs.LINK_LOOP,
        str(tmp_path / "missing"): inputs.MISSING,
        "": inputs.MISSING,
    }
    # A dangling link given explicitly; an excluded folder (e.g. the output folder inside an input folder).
    assert inputs.list_inputs([str(root / "dangling.png")])[1] == [
        inputs.Unreadable(str(root / "dangling.png"), inputs.BROKEN_LINK)
    ]
    files, _ = inputs.list_inputs([str(root)], exclude=[str(root / "sub")])
    assert files == [str(root / "a.png"), str(root / "b.png")]

    # The explicit odd name is decoded as an image.
    unreadable = []
    frames = list(inputs.iter_frames([str(odd)], unreadable=unreadable))
    assert unreadable == [] and frames[0].image.shape == (10, 12, 3)


def test_corrupt_image_is_reported_and_the_others_still_come_through(tmp_path):
    good_a, bad, good_b = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.jpg"
    write_png(str(good_a), value=10)
    bad.write_bytes(np.random.default_rng(0).bytes(2000))
    Image.fromarray(np.full((8, 20), 200, np.uint8)).save(good_b)  # grey JPEG: comes back RGB
    files, unreadable = inputs.list_inputs([str(tmp_path)])
    assert unreadable == []
    frames = list(inputs.iter_frames(files, unreadable=unreadable))
    assert [(f.source, f.frame, f.time_s) for f in frames] == [(str(good_a), 0, None), (str(good_b), 0, None)]
    assert frames[0].image.dtype == np.uint8 and frames[0].image.shape == (10, 12, 3)
    assert frames[1].image.shape == (8, 20, 3) and abs(int(frames[1].image.mean()) - 200) <= 2
    assert len(unreadable) == 1 and unreadable[0].source == str(bad)
    assert "not an image" in unreadable[0].reason and "\n" not in unreadable[0].reason


def test_pixel_limit_is_a_reason_not_an_exception(tmp_path):
    write_png(str(tmp_path / "big.png"), size=(100, 50))
    unreadable = []
    assert list(inputs.iter_frames([str(tmp_path / "big.png")], unreadable=unreadable, max_pixels=1000)) == []
    assert "100x50 pixels" in unreadable[0].reason and "too large" in unreadable[0].reason


# -------------------------------------------------------------------------------------------- videos
def frame_picture(index: int) -> np.ndarray:
    """64x64 RGB showing `index` in binary: 6 vertical stripes (lowest bit left), white for 1, black for 0.

    Survives lossy coding (solid grey levels a few steps apart do not: mpeg4 drifts them by up to 4).
    """
    bits = (index >> np.arange(6)) & 1
    stripes = np.repeat(np.where(bits == 1, 235, 16).astype(np.uint8), 64 // 6 + 1)[:64]
    return np.broadcast_to(stripes[None, :, None], (64, 64, 3)).copy()


def write_video(path, frames: int = 30, rate: int = 10) -> None:
    av = pytest.importorskip("av", reason=VIDEO_SKIP)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for index in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame_picture(index), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def which_frame(frame: inputs.Frame) -> int:
    """The index drawn by `frame_picture`, read back from the middle of each stripe."""
    middles = (np.arange(6) * (64 // 6 + 1) + 5).clip(max=63)
    bits = frame.image[32, middles].astype(np.float64).mean(axis=-1) > 125
    return int(np.sum(bits << np.arange(6)))


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_video(path)  # 3 s at 10 fps
    return str(path)


def test_video_frames_are_sampled_by_video_time(video, tmp_path):
    unreadable = []
    frames = list(inputs.iter_frames([video], fps=2, unreadable=unreadable))
    assert unreadable == []
    assert [f.frame for f in frames] == [0, 5, 10, 15, 20, 25]
    np.testing.assert_allclose([f.time_s for f in frames], [0.0, 0.5, 1.0, 1.5, 2.0, 2.5], atol=1e-6)
    assert [which_frame(f) for f in frames] == [f.frame for f in frames]  # the pixels are those frames'
    assert all(f.source == video and f.image.shape == (64, 64, 3) for f in frames)
    assert all(f.image.dtype == np.uint8 for f in frames)

    every = list(inputs.iter_frames([video], fps=0, unreadable=unreadable))
    assert [f.frame for f in every] == list(range(30)) == [which_frame(f) for f in every]
    np.testing.assert_allclose([f.time_s for f in every], np.arange(30) / 10, atol=1e-6)
    # 3 per second from 10 fps: the first frame at or after 0, 1/3, 2/3, 1, ...
    thirds = list(inputs.iter_frames([video], fps=3, unreadable=unreadable))
    assert [f.frame for f in thirds] == [0, 4, 7, 10, 14, 17, 20, 24, 27]
    # Faster than the video: every frame, once.
    assert len(list(inputs.iter_frames([video], fps=50, unreadable=unreadable))) == 30
    assert unreadable == []


def test_broken_videos_keep_their_frames_and_say_why(video, tmp_path, monkeypatch):
    av = pytest.importorskip("av", reason=VIDEO_SKIP)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(1).bytes(5000))
    unreadable = []
    assert list(inputs.iter_frames([str(garbage)], unreadable=unreadable)) == []
    reason = unreadable[0].reason
    assert reason.startswith("cannot open as a video: ") and str(tmp_path) not in reason  # no path twice

    # Matroska cut in half: the demuxer stops quietly; the declared length gives it away.
    full = tmp_path / "full.mkv"
    write_video(full)
    half = tmp_path / "half.mkv"
    half.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    unreadable = []
    frames = list(inputs.iter_frames([str(half)], fps=0, unreadable=unreadable))
    assert 0 < len(frames) < 30 and [f.frame for f in frames] == list(range(len(frames)))
    assert len(unreadable) == 1 and "3.0 s" in unreadable[0].reason and "truncated" in unreadable[0].reason

    # A decoding error midway (simulated: the 13th frame raises FFmpeg's error): 12 frames kept, reported.
    real_open = av.open

    class BreaksMidway:
        def __init__(self, *args, **kwargs):
            self._container = real_open(*args, **kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._container.close()

        def __getattr__(self, name):
            return getattr(self._container, name)

        def decode(self, *args, **kwargs):
            for index, frame in enumerate(self._container.decode(*args, **kwargs)):
                if index == 12:
                    raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")
                yield frame

    monkeypatch.setattr(av, "open", BreaksMidway)
    unreadable = []
    frames = list(inputs.iter_frames([video, str(tmp_path / "after.png")], fps=0, unreadable=unreadable))
    assert [f.frame for f in frames] == list(range(12))
    assert unreadable[0] == inputs.Unreadable(
        video, "stopped after frame 11: Invalid data found when processing input")
    assert unreadable[1].source == str(tmp_path / "after.png")  # the next file is still tried


def test_portrait_video_comes_upright(tmp_path):
    av = pytest.importorskip("av", reason=VIDEO_SKIP)
    path = tmp_path / "phone.mp4"
    picture = np.full((32, 64, 3), 16, np.uint8)
    picture[:, :8] = 235  # a white stripe along the stored frame's left edge
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        if not hasattr(stream, "set_display_rotation"):
            pytest.skip("this PyAV cannot write a display rotation")
        stream.set_display_rotation(90)  # shown turned 90 degrees counter-clockwise, as phones store portrait
        for packet in [*stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")), *stream.encode()]:
            container.mux(packet)
    unreadable = []
    [frame] = inputs.iter_frames([str(path)], unreadable=unreadable)
    assert unreadable == [] and frame.image.shape == (64, 32, 3)
    # Counter-clockwise: the stored left edge is now the bottom edge.
    assert frame.image[-8:].mean() > 200 and frame.image[:-8].mean() < 40


def test_video_without_pyav_is_unreadable_with_the_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # makes `import av` raise ImportError
    assert not inputs.video_available()
    write_png(str(tmp_path / "a.png"))
    (tmp_path / "b.MP4").write_bytes(b"never opened")
    files, unreadable = inputs.list_inputs([str(tmp_path)])
    frames = list(inputs.iter_frames(files, unreadable=unreadable))
    assert [f.source for f in frames] == [str(tmp_path / "a.png")]
    assert [u.source for u in unreadable] == [str(tmp_path / "b.MP4")]
    assert inputs.VIDEO_INSTALL_HINT in unreadable[0].reason


# ------------------------------------------------------------------------------------- every face
CKPLUS = SHARED_DATA / "ckplus48"


@pytest.fixture(scope="module")
def aligner():
    pytest.importorskip("dlib", reason='detection needs the align extra (pip install "idfer_jax[align]")')
    if not alignment.available():
        pytest.skip('the landmark model is missing (pip install "idfer_jax[align]")')
    return alignment.FaceAligner(96)


@pytest.fixture(scope="module")
def ck_faces() -> list[np.ndarray]:
    files = [CKPLUS / "happy" / "S010_006_00000013.png", CKPLUS / "surprise" / "S010_002_00000012.png"]
    if not all(path.is_file() for path in files):
        pytest.skip(f"{CKPLUS} is absent: the real-face check needs the research-only sets in ../shared/data")
    return [np.asarray(Image.open(path).convert("RGB")) for path in files]


def test_detect_finds_every_face_with_its_box(aligner, ck_faces):
    # Two 48x48 CK+ crops, upscaled to 160 px, on a grey canvas 40 px apart.
    canvas = np.full((200, 400, 3), 128, np.uint8)
    places = [(20, 20), (20, 220)]  # (top, left) of each pasted face
    for (top, left), face in zip(places, ck_faces, strict=True):
        large = Image.fromarray(face).resize((160, 160), Image.BILINEAR)
        canvas[top:top + 160, left:left + 160] = np.asarray(large)
    faces = aligner.detect(canvas)
    assert len(faces) == 2
    assert [face.area for face in faces] == sorted((face.area for face in faces), reverse=True)
    assert np.array_equal(aligner.landmarks(canvas), faces[0].landmarks)  # the largest, as before
    by_x = sorted(faces, key=lambda face: face.box[0])
    assert by_x[0].box[2] < by_x[1].box[0]  # disjoint
    for face, (top, left) in zip(by_x, places, strict=True):
        box_left, box_top, box_right, box_bottom = face.box
        # Around its face: the box centre in the pasted square, the box mostly inside it, the landmarks too.
        assert left < (box_left + box_right) / 2 < left + 160 and top < (box_top + box_bottom) / 2 < top + 160
        assert left - 20 < box_left < box_right < left + 180 and top - 20 < box_top < box_bottom < top + 180
        assert 80 < box_right - box_left < 180
        assert face.landmarks.shape == (5, 2) and face.landmarks.dtype == np.float64
        assert np.all((face.landmarks >= [left, top]) & (face.landmarks <= [left + 160, top + 160]))
        assert face.score > 0

    aligned = aligner.align_all(canvas)
    assert len(aligned) == 2
    for (face, _), detected in zip(aligned, faces, strict=True):
        assert face.box == detected.box and np.array_equal(face.landmarks, detected.landmarks)
    target = aligner.template * 96 - 0.5
    for _, crop in aligned:
        assert crop.shape == (96, 96, 3) and crop.dtype == np.uint8
        landed = aligner.landmarks(crop)  # the crop's face sits on the template
        assert landed is not None
        eyes = np.linalg.norm(target[0:2].mean(axis=0) - target[2:4].mean(axis=0))
        assert np.sqrt(np.mean(np.sum((landed - target) ** 2, axis=1))) / eyes < 0.15
    assert not np.array_equal(aligned[0][1], aligned[1][1])
    assert aligner.detect(np.full((120, 160, 3), 128, np.uint8)) == []
    assert aligner.align_all(np.full((120, 160, 3), 128, np.uint8)) == []


def test_single_face_landmarks_equal_detect_and_the_box_maps_back(aligner, ck_faces):
    face = ck_faces[0]  # 48x48: detected at 4x with a margin, mapped back
    faces = aligner.detect(face)
    assert len(faces) == 1
    np.testing.assert_array_equal(aligner.landmarks(face), faces[0].landmarks)
    np.testing.assert_array_equal(aligner.align(face), aligner.align_all(face)[0][1])
    left, top, right, bottom = faces[0].box
    assert -8 < left < top < 24 and 24 < right < 56 and 24 < bottom < 56
    # Exactly dlib's rectangle on the 4x enlarged, margined image, mapped back: its edges in pixel-corner
    # coordinates are (left, top, right + 1, bottom + 1); minus the margin, / 4, then -0.5 for pixel centres.
    enlarged = np.asarray(Image.fromarray(face).resize((192, 192), Image.BILINEAR))
    margin = round(alignment.DETECTION_MARGIN * 192)
    padded = np.pad(enlarged, ((margin, margin), (margin, margin), (0, 0)), mode="edge")
    [rect] = aligner._detector(padded, 0)
    corners = np.array([rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1], np.float64)
    np.testing.assert_allclose(faces[0].box, (corners - margin) / 4 - 0.5, atol=1e-9)
    # The same face 4x larger, detected without upsampling: the same box, 4x (pixel-centre coordinates).
    large = np.asarray(Image.fromarray(face).resize((192, 192), Image.BILINEAR))
    large_box = np.array(alignment.FaceAligner(96, upsample=0).detect(large)[0].box)
    np.testing.assert_allclose((large_box + 0.5) / 4 - 0.5, faces[0].box, atol=2.0)


# ---------------------------------------------------------------------------------------- annotate
def test_draw_faces_draws_the_box_and_label_and_nothing_far_away():
    image = np.full((200, 300, 3), 128, np.uint8)
    box = (49.5, 79.5, 149.5, 179.5)  # pixels 50..149 x 80..179
    out = annotate.draw_faces(image, [(box, "happiness 0.93")])
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.all(image == 128)  # the input is not drawn on
    changed = np.any(out != image, axis=-1)
    rows, cols = np.nonzero(changed)
    assert changed[80, 100] and changed[179, 100] and changed[120, 50] and changed[120, 149]  # the outline
    assert not changed[130, 100]  # inside the box: untouched
    assert changed[:80].any()  # the label, above the box
    assert rows.min() >= 80 - 40 and rows.max() <= 179 and cols.min() >= 50 and cols.max() <= 149 + 60
    # A box at the top edge: the label goes inside; a box outside the image is not drawn; a grey image works.
    top = annotate.draw_faces(image, [((9.5, -0.5, 99.5, 89.5), "x"), ((400.0, 0.0, 500.0, 50.0), "gone")])
    top_changed = np.nonzero(np.any(top != image, axis=-1))
    assert top_changed[1].max() <= 99 and top_changed[0].max() <= 89
    assert annotate.draw_faces(np.zeros((50, 60), np.uint8), [((0, 0, 20, 20), "")]).shape == (50, 60, 3)
    with pytest.raises(ValueError, match="uint8"):
        annotate.draw_faces(image.astype(np.float32), [])


def test_annotated_path_keeps_folders_and_never_overwrites(tmp_path):
    out = str(tmp_path / "out")
    root = str(tmp_path / "photos")
    source = os.path.join(root, "sub", "a.jpg")
    expected = os.path.join(out, "photos", "sub", "a.jpg")
    assert annotate.annotated_path(out, source, 0, image_root=root) == expected
    # Sources differing only in extension, and the frames of a video, get distinct names.
    names = {
        annotate.annotated_path(out, os.path.join(root, name), frame, image_root=root)
        for name, frame in [
            ("a.jpg", 0), ("a.png", 0), ("a.tiff", 0), ("a.mp4", 0), ("a.mp4", 5), ("a.avi", 5),
        ]
    }
    assert len(names) == 6
    assert os.path.join(out, "photos", "a.tiff.png") in names
    assert os.path.join(out, "photos", "a.mp4_frame000005.jpg") in names
    # Without a root: a relative path keeps its folders, an absolute one only its name; names are sanitised.
    assert annotate.annotated_path(out, os.path.join("pics", "x.png")) == os.path.join(out, "pics", "x.png")
    assert annotate.annotated_path(out, "/elsewhere/y.png") == os.path.join(out, "y.png")
    assert annotate.annotated_path(out, 'we:ird?\x01.png') == os.path.join(out, "we_ird__.png")
    assert annotate.annotated_path(out, os.path.join("..", "up.png")) == os.path.join(out, "up.png")
    # The output folder chosen so that the picture would land on its source: refused.
    write_png(os.path.join(root, "b.png"))
    with pytest.raises(ValueError, match="overwrite"):
        annotate.annotated_path(str(tmp_path), os.path.join(root, "b.png"), 0, image_root=root)
    with pytest.raises(ValueError, match="overwrite"):
        annotate.annotated_path(".", "b.png")
