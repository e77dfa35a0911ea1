"""MMI Facial Expression Database: posed expression sessions labelled with one of the 6 basic emotions.

Layout of a download from https://mmifacedb.eu (the web site packs the sessions one selects):

  Sessions/<session id>/session.xml      session metadata: <subject id="..."/> and, for the posed-emotion
                                         sessions, <Metatag Name="Emotion" Value="N"/>
  Sessions/<session id>/S001-001.avi     the recording (onset -> apex -> offset)
  Sessions/<session id>/S001-001.xml     FACS action-unit annotation (not used)

Emotion values: 1=anger 2=disgust 3=fear 4=happy 5=sadness 6=surprise (6 classes, no neutral). Sessions
without an emotion tag (most of the database: action-unit and spontaneous sessions), or with another value,
are skipped. `subject` is the session XML's subject id written `S<id:3>` like the media file names (else read
from an `S001-...` file name), `sequence` the session folder. Only the `train` split: folds are made by
subject elsewhere.

Frames: a session whose folder holds image files (frames extracted by the user, sorted by name; or a still-
image session) uses them. A session with only an `.avi` is decoded with `imageio` (with its ffmpeg or pyav
plugin) or `cv2` when one of them is importable; without either, preparation stops and says how to extract
the frames with ffmpeg. Records: the 3 middle frames of each sequence [our choice: MMI sessions run onset ->
apex -> offset, so the middle of the sequence approximates the apex; the database's own apex annotation is
in the FACS XML, which is not read], or all frames of a sequence shorter than 3.

[Unsure: the download's archive name (any of `ARCHIVES` is looked for, and any top folder holding
`Sessions/` is accepted); whether the Emotion metatag always sits in session.xml (every XML file of the
session folder is searched for it, session.xml first); the frame size (720x576 PAL frames for most video
sessions), hence no fixed crop box: unaligned configs take the centred square, so prefer `aligned_*`.]
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator

import numpy as np
from etils import epath

from idfer_jax.data import face_builder as fb

_EMOTIONS = {1: "anger", 2: "disgust", 3: "fear", 4: "happiness", 5: "sadness", 6: "surprise"}
_VIDEO_EXTENSIONS = (".avi", ".mp4", ".mov", ".wmv", ".mpg", ".mpeg")
_SUBJECT_IN_NAME = re.compile(r"^S(\d+)[-_]", re.IGNORECASE)
SESSIONS = "Sessions"
APEX_FRAMES = 3

FFMPEG_HINT = (
    "Extract the frames of every session next to its video, e.g. from the folder holding Sessions/:\n"
    '  for v in Sessions/*/*.avi; do ffmpeg -loglevel error -i "$v" "${v%.avi}_%04d.png"; done\n'
    "(sessions with image files use those instead of the video), or install a video reader: "
    "pip install 'imageio[ffmpeg]' or opencv-python-headless."
)


def middle(items: list, count: int = APEX_FRAMES) -> list:
    """The `count` middle items (all of them when there are fewer)."""
    start = max((len(items) - count) // 2, 0)
    return items[start:start + count]


# ----------------------------------------------------------------------------------------------
# Session metadata


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1].lower()


def _attr(element: ET.Element, name: str) -> str | None:
    for key, value in element.attrib.items():
        if _local(key) == name:
            return value
    return None


def read_session(xml_files: list[epath.Path]) -> tuple[str | None, str | None]:
    """(canonical expression or None, subject id or None) from a session's XML files."""
    expression = subject = None
    for path in xml_files:
        try:
            tree = ET.fromstring(path.read_bytes())
        except ET.ParseError as e:
            raise fb.ManualDataError(
                f"Cannot parse the MMI session file {path}: {e}. Replace it with the file from the "
                "download (or delete the session folder), then run the same command again."
            ) from e
        for element in tree.iter():
            tag = _local(element.tag)
            if tag == "subject" and subject is None and _attr(element, "id"):
                subject = _attr(element, "id").strip()
            elif (tag == "metatag" and expression is None
                  and (_attr(element, "name") or "").strip().lower() == "emotion"):
                try:
                    expression = _EMOTIONS.get(int(float(_attr(element, "value") or "")))
                except ValueError:
                    expression = None
    return expression, subject


def _subject_name(subject: str | None, files: list[epath.Path]) -> str | None:
    if subject is None:
        for path in files:
            match = _SUBJECT_IN_NAME.match(path.name)
            if match:
                subject = match.group(1)
                break
    if subject is not None and subject.isdigit():
        return f"S{int(subject):03d}"
    return subject


# ----------------------------------------------------------------------------------------------
# Video


def video_reader() -> Callable[[str], Iterator[np.ndarray]] | None:
    """A function yielding a video's frames as HxWx3 uint8 RGB, or None when no reader is importable."""
    try:
        import imageio.v3 as iio
    except ImportError:
        pass
    else:
        def read_imageio(path: str) -> Iterator[np.ndarray]:
            yield from iio.imiter(path)

        return read_imageio
    try:
        import cv2
    except ImportError:
        return None

    def read_cv2(path: str) -> Iterator[np.ndarray]:
        capture = cv2.VideoCapture(path)
        if not capture.isOpened():
            raise OSError("OpenCV cannot open it (no codec for this file?)")
        try:
            while True:
                ok, frame = capture.read()
                if not ok:
                    return
                yield frame[..., ::-1]
        finally:
            capture.release()

    return read_cv2


class _Video:
    """One session video: frame count, and the chosen frames decoded once and handed out one by one."""

    def __init__(self, path: epath.Path, read: Callable[[str], Iterator[np.ndarray]]):
        self.path, self.read = path, read
        self._kept: dict[int, np.ndarray] = {}

    def _frames(self) -> Iterator[np.ndarray]:
        try:
            yield from self.read(os.fspath(self.path))
        except fb.ManualDataError:
            raise
        except Exception as e:  # readers raise many types for broken files or missing codecs
            raise fb.ManualDataError(f"Cannot decode video {self.path}: {e}.\n{FFMPEG_HINT}") from e

    def count(self) -> int:
        return sum(1 for _ in self._frames())

    def loader(self, index: int, wanted: tuple[int, ...]) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            if index not in self._kept:
                last = max(wanted)
                for i, frame in enumerate(self._frames()):
                    if i in wanted:
                        self._kept[i] = np.asarray(frame)
                    if i >= last:
                        break
            if index not in self._kept:
                raise fb.ManualDataError(f"Video {self.path} ended before frame {index}.\n{FFMPEG_HINT}")
            return self._kept.pop(index)  # each frame is used once: free it

        return load


# ----------------------------------------------------------------------------------------------
# Builder


class Mmi(fb.FaceBuilder):
    """MMI (Pantic et al. 2005): posed sessions with an emotion label, 3 middle (apex) frames each."""

    CLASS_NAMES = fb.ordered(_EMOTIONS.values())
    ROOT_MARKERS = (SESSIONS,)
    ARCHIVES = ("MMI.zip", "mmi.zip", "Sessions.zip", "mmi-facial-expression-database.zip")
    FOLDER = "MMI"
    BUILDER_CONFIGS = fb.face_configs((48, 64, 96, 112))
    DESCRIPTION = __doc__
    HOMEPAGE = "https://mmifacedb.eu/"
    CITATION = (
        "Pantic, Valstar, Rademaker, Maat: Web-based database for facial expression analysis. ICME 2005. "
        "Valstar, Pantic: Induced disgust, happiness and surprise: an addition to the MMI facial expression "
        "database. LREC Workshop on EMOTION 2010."
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = fb.manual_instructions(
        archives=("the MMI download zip (MMI.zip)",),
        obtain="https://mmifacedb.eu (register, sign the end-user licence, select the posed-emotion "
        "sessions)",
        folder="MMI",
        layout=f"  MMI/{SESSIONS}/<session id>/session.xml with <subject id=\"...\"/> and "
        "<Metatag Name=\"Emotion\" Value=\"1-6\"/>, plus the session's video (e.g. S001-001.avi) or its "
        "frames as image files (sorted by name). A video is read with imageio or OpenCV if installed; "
        "otherwise extract the frames first:\n"
        '  for v in Sessions/*/*.avi; do ffmpeg -loglevel error -i "$v" "${v%.avi}_%04d.png"; done',
    )

    def sessions_dir(self, path: epath.Path) -> epath.Path | None:
        """`path/Sessions`, or `path` itself when it is the folder of session folders."""
        if (path / SESSIONS).is_dir():
            return path / SESSIONS
        if path.is_dir() and any((p / "session.xml").is_file() for p in path.iterdir() if p.is_dir()):
            return path
        return None

    def is_root(self, path: epath.Path) -> bool:
        return path.is_dir() and self.sessions_dir(path) is not None

    def list_examples(self, root: epath.Path, split: str):
        del split
        sessions = self.sessions_dir(root)
        read = None
        for session in sorted((p for p in sessions.iterdir() if p.is_dir()), key=_natural):
            files = sorted(p for p in session.iterdir() if p.is_file() and not p.name.startswith("."))
            xml_files = sorted((p for p in files if p.suffix.lower() == ".xml"),
                               key=lambda p: (p.name.lower() != "session.xml", p.name))
            expression, subject = read_session(xml_files)
            if expression is None:
                continue
            subject = _subject_name(subject, files)
            base = dict(expression=expression, subject=subject, sequence=session.name)
            frames = sorted(fb.image_files(session), key=_natural)
            if frames:
                for path in middle(frames):
                    yield fb.FaceExample(key=_relative(path, root), path=path, **base)
                continue
            videos = [p for p in files if p.suffix.lower() in _VIDEO_EXTENSIONS]
            if not videos:
                continue  # a labelled session without media: nothing to read
            if read is None:
                read = video_reader()
                if read is None:
                    raise fb.ManualDataError(
                        f"MMI session {session} holds only a video ({videos[0].name}) and neither "
                        f"imageio nor OpenCV is installed to read it.\n{FFMPEG_HINT}"
                    )
            video = _Video(videos[0], read)
            wanted = tuple(middle(list(range(video.count()))))
            for index in wanted:
                yield fb.FaceExample(
                    key=f"{_relative(video.path, root)}#frame{index:05d}", load=video.loader(index, wanted),
                    **base,
                )


def _natural(path: epath.Path) -> tuple:
    """Session folders in numeric order ('2' before '10')."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name))


def _relative(path: epath.Path, root: epath.Path) -> str:
    return os.path.relpath(os.fspath(path), os.fspath(root)).replace(os.sep, "/")
