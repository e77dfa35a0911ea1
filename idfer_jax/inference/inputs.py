"""What `idfer predict` reads: image files, folders of them, and video frames, as uint8 RGB arrays.

Two steps, so that the files can be counted (and the bad paths reported) before any decoding:

- `list_inputs(paths)`: the files to read, in order; each given path is a file or a folder (walked
  recursively, sorted, as `face_builder.walk_files` walks dataset folders), plus an `Unreadable` for each path
  that is missing or cannot be listed and for each file in a folder that is neither an image nor a video;
- `iter_frames(files, fps=..., unreadable=...)`: one `Frame` per image and per sampled video frame; a file
  that cannot be decoded is appended to `unreadable` with a one-line reason and skipped, never raised.

Images are read as the dataset builders read them (`face_builder.read_image` + `to_rgb`: EXIF orientation
applied, 16-bit, palette and alpha resolved, the first frame of a GIF, a pixel limit against decompression
bombs). Videos need the ``video`` extra (PyAV, ``import av``); without it each video is listed as unreadable
with `VIDEO_INSTALL_HINT`, and images are still read.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Iterator, Sequence

import numpy as np

from idfer_jax.data import face_builder

VIDEO_INSTALL_HINT = 'pip install "idfer_jax[video]"'

# Video containers read through PyAV (FFmpeg). Not .gif: Pillow reads a GIF as an image (its first frame).
VIDEO_EXTENSIONS = (
    ".3gp", ".avi", ".flv", ".m2ts", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".mts", ".ogv", ".ts",
    ".webm", ".wmv",
)

# `Unreadable.reason`s that callers may group by (other reasons carry the decoder's own message).
MISSING = "no such file or folder"
BROKEN_LINK = "broken link (its target does not exist)"
NOT_MEDIA = "not an image or video file (by its extension); skipped"
UNREADABLE_FOLDER = "folder cannot be read"
LINK_LOOP = "folder link loops back to a folder above it; not followed again"
_WALK_REASONS = {
    face_builder.BROKEN_LINK: BROKEN_LINK,
    face_builder.UNREADABLE_FOLDER: UNREADABLE_FOLDER,
    face_builder.LINK_LOOP: LINK_LOOP,
}


@dataclasses.dataclass
class Frame:
    """One image to predict on.

    Attributes:
      source: the file's path as the user gave it, or as found under a folder they gave
        (``os.path.join(folder, relative path)``).
      frame: 0 for a still image; for a video the frame's index in decoding (presentation) order, from 0.
      time_s: seconds since the video's first frame (its presentation time minus the first frame's); None
        for a still image.
      image: uint8 (H, W, 3) RGB.
    """

    source: str
    frame: int
    time_s: float | None
    image: np.ndarray


@dataclasses.dataclass
class Unreadable:
    """A path that gave no frames (or, for a video that broke midway, not all of them), and why."""

    source: str
    reason: str  # one line for the user


def video_available() -> bool:
    """Whether PyAV (the ``video`` extra) imports."""
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def is_video_name(name: str) -> bool:
    """Whether the file name has a video extension (`VIDEO_EXTENSIONS`, any case)."""
    return os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def _key(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


def list_inputs(paths: Sequence[str], *, exclude: Sequence[str] = ()) -> tuple[list[str], list[Unreadable]]:
    """The image and video files to read for `paths`, and the paths that gave none.

    Each path is a file or a folder. A folder is walked recursively as `face_builder.walk_files` walks it
    (files of each folder in sorted name order, then its subfolders in sorted order; folder links followed
    once; hidden files and folders skipped); image files (`face_builder.is_image_name`) and video files
    (`VIDEO_EXTENSIONS`) in it are taken, any other file is reported with `NOT_MEDIA`. A file given
    explicitly is always taken, whatever its name (it is tried as an image unless its name says video).
    A path that does not exist is reported (`MISSING`, or `BROKEN_LINK` for a dangling link); nothing raises.

    A file reached twice (given twice, or also inside a given folder) is listed once, where first reached.
    Files under a folder in `exclude` (e.g. the output folder, when it lies inside an input folder) are left
    out silently.
    """
    files: list[str] = []
    unreadable: list[Unreadable] = []
    seen: set[str] = set()
    excluded = tuple(_key(folder) + os.sep for folder in exclude)

    def take(path: str) -> None:
        key = _key(path)
        if key in seen or (key + os.sep).startswith(excluded):
            return
        seen.add(key)
        files.append(path)

    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            def skipped(reason: str, where: str) -> None:
                unreadable.append(Unreadable(where, _WALK_REASONS.get(reason, reason)))

            for dirpath, names in face_builder.walk_files(path, skipped):
                for name in names:
                    if name.startswith("."):
                        continue
                    child = os.path.join(dirpath, name)
                    if not (face_builder.is_image_name(name) or is_video_name(name)):
                        unreadable.append(Unreadable(child, NOT_MEDIA))
                    elif not os.path.exists(child):
                        unreadable.append(Unreadable(child, BROKEN_LINK))
                    else:
                        take(child)
        elif os.path.exists(path):
            take(path)
        elif path and os.path.lexists(path):
            unreadable.append(Unreadable(path, BROKEN_LINK))
        else:
            unreadable.append(Unreadable(path, MISSING))
    return files, unreadable


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def image_reason(error: Exception) -> str:
    """A one-line reason for a `read_image` failure, without the dataset advice of its message."""
    if isinstance(error, face_builder.ImageTooLargeError):
        size = re.search(r"has (\d+)x(\d+) = ", str(error))
        shape = f"{size[1]}x{size[2]} pixels, " if size else ""
        return f"image too large ({shape}over the pixel limit); downscale it or raise the limit"
    cause = error.__cause__ or error
    if isinstance(cause, PermissionError):
        return "permission denied"
    if isinstance(cause, IsADirectoryError):
        return "is a folder, not a file"
    if type(cause).__name__ == "UnidentifiedImageError":
        return "not an image Pillow can decode (unknown format or corrupt file)"
    if isinstance(cause, OSError) and cause.strerror:
        return f"cannot read: {cause.strerror}"
    return f"cannot decode as an image: {_one_line(cause)}"


def _read_still(path: str, max_pixels: int | None, unreadable: list[Unreadable]) -> Frame | None:
    try:
        image = face_builder.to_rgb(face_builder.read_image(path, max_pixels=max_pixels))
        array = np.asarray(image, np.uint8)
    except Exception as error:  # a bad file is reported, never raised
        unreadable.append(Unreadable(path, image_reason(error)))
        return None
    return Frame(source=path, frame=0, time_s=None, image=array)


def _upright(frame) -> np.ndarray:
    """uint8 (H, W, 3) RGB of a decoded frame as a player shows it.

    Phones store portrait video sideways with a display rotation (`VideoFrame.rotation`, degrees
    counter-clockwise; PyAV >= 14): applied in quarter turns, like EXIF orientation for photos.
    """
    array = frame.to_ndarray(format="rgb24")
    turns = round((getattr(frame, "rotation", 0) or 0) / 90) % 4
    return np.ascontiguousarray(np.rot90(array, turns)) if turns else array


def _read_video(path: str, fps: float, max_pixels: int | None, unreadable: list[Unreadable],
                ) -> Iterator[Frame]:
    """Frames of one video: the first, then the first at or after each k / `fps` s (all if fps <= 0)."""
    import av

    index = -1
    try:
        with av.open(path) as container:
            if not container.streams.video:
                unreadable.append(Unreadable(path, "no video stream in the file"))
                return
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame-parallel decoding; the decoded frames are the same
            width, height = stream.codec_context.width, stream.codec_context.height
            if max_pixels and width * height > max_pixels:
                unreadable.append(Unreadable(
                    path, f"video frames too large ({width}x{height} pixels, over the pixel limit)"))
                return
            rate = float(stream.average_rate) if stream.average_rate else None
            start, time_s = None, 0.0
            next_k = 0  # the next sample time is next_k / fps
            for index, frame in enumerate(container.decode(stream)):
                if frame.time is not None:
                    if start is None:
                        start = frame.time
                    time_s = float(frame.time - start)
                else:  # no timestamp (rare raw streams): the nominal frame rate, else the index
                    time_s = index / rate if rate else float(index)
                if fps > 0:
                    # 1e-6 s: timestamps are rationals, k / fps is a float; 0.5 s must not become 0.4999999.
                    if time_s < next_k / fps - 1e-6:
                        continue
                    next_k = max(next_k + 1, math.floor(time_s * fps + 1e-6) + 1)
                yield Frame(source=path, frame=index, time_s=time_s, image=_upright(frame))
            # Some demuxers (Matroska, AVI) end a truncated file quietly: compare with the declared length,
            # the video stream's own where the container says it (an audio track may run longer).
            if stream.duration and stream.time_base:
                declared = float(stream.duration * stream.time_base)
            else:
                declared = container.duration / 1e6 if container.duration else None  # av.time_base: us
            if index < 0:
                unreadable.append(Unreadable(path, "the video has no frames that decode"))
            elif declared and declared - time_s > max(1.0, 0.1 * declared):
                unreadable.append(Unreadable(
                    path, f"ended at {time_s:.1f} s of the {declared:.1f} s its header declares "
                    "(truncated file?); the frames before that are kept"))
    except Exception as error:  # FFmpeg's errors, a truncated file, ...: keep the frames so far, say why
        message = getattr(error, "strerror", None) or _one_line(error)  # FFmpegError: without the path
        where = f"stopped after frame {index}: " if index >= 0 else "cannot open as a video: "
        unreadable.append(Unreadable(path, where + message))


def iter_frames(
    files: Sequence[str],
    *,
    fps: float = 1.0,
    unreadable: list[Unreadable],
    max_pixels: int | None = face_builder.DEFAULT_MAX_IMAGE_PIXELS,
) -> Iterator[Frame]:
    """`Frame`s of `files` (from `list_inputs`) in order: one per image, the sampled frames of each video.

    Args:
      files: image or video paths; a name with a video extension (`VIDEO_EXTENSIONS`) is read as a video,
        any other as an image.
      fps: video frames sampled per second of video time: the first frame (t = 0), then the first frame at
        or after each k / fps seconds; 0 or less takes every frame. A video slower than `fps` gives every
        frame. Still images are unaffected.
      unreadable: a file that cannot be decoded is appended here with a one-line reason and skipped. A video
        without PyAV installed is appended with `VIDEO_INSTALL_HINT`; a video that breaks midway keeps the
        frames before the break and is appended too.
      max_pixels: per image (and per video frame) pixel limit against decompression bombs; 0 or None = none.

    Yields frames lazily: a long video is never held in memory whole.
    """
    have_video: bool | None = None
    for path in files:
        path = os.fspath(path)
        if is_video_name(path):
            if have_video is None:
                have_video = video_available()
            if not have_video:
                unreadable.append(Unreadable(path, f"reading videos needs PyAV: {VIDEO_INSTALL_HINT}"))
                continue
            yield from _read_video(path, fps, max_pixels, unreadable)
        else:
            frame = _read_still(path, max_pixels, unreadable)
            if frame is not None:
                yield frame
