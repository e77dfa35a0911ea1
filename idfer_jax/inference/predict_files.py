"""`idfer predict`: a trained model on image files, folders and videos, one output row per face.

Each input is decoded (`inputs`), its faces found and framed as the model's training data was
(`faces.Framer`), the crops classified in batches (`Predictor.outputs`), and one row written per face:

    file, frame, time_s, face, left, top, right, bottom, score, predicted, p_<class> ...

`frame` is 0 and `time_s` empty for a still image; `face` numbers the faces of one frame, largest first;
the box is in the frame's pixels (float, pixel centres on integers: a whole W x H image is -0.5, -0.5,
W - 0.5, H - 0.5); `score` is the face detector's confidence (empty with --no-detect). CSV (a header,
then rows) or JSON lines (one object per face, the probabilities as `{"class": p}`). Files that cannot be
read, and frames where no face was found, are listed in the summary (and `<output>.skipped.csv` beside a
file output), never fatal. Every stage is timed
(decode, detect + align, model, write) for `docs/results/predict.md`.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np

from idfer_jax.data.errors import DataError
from idfer_jax.errors import Interrupted, UserError
from idfer_jax.inference import inputs as inputs_lib

FORMATS = ("csv", "jsonl")
STAGES = ("decode", "detect_align", "model", "write")
SKIPPED_SUFFIX = ".skipped.csv"
MAX_FPS = 1000.0  # above any camera's rate: 0 asks for every frame


class OutputError(UserError):
    """The output path cannot be used (it exists, or it is one of the inputs)."""


@dataclasses.dataclass
class Summary:
    files: int = 0
    frames: int = 0
    faces: int = 0
    unreadable: list = dataclasses.field(default_factory=list)  # inputs.Unreadable
    no_face: list = dataclasses.field(default_factory=list)  # (source, frame)
    seconds: dict = dataclasses.field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    wall_seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.frames / self.wall_seconds if self.wall_seconds > 0 else float("nan")

    def as_dict(self) -> dict:
        return {"files": self.files, "frames": self.frames, "faces": self.faces,
                "unreadable": [dataclasses.asdict(u) for u in self.unreadable],
                "no_face": [{"source": s, "frame": f} for s, f in self.no_face],
                "seconds": dict(self.seconds), "wall_seconds": self.wall_seconds,
                "images_per_second": self.images_per_second}


def check_output(output: str, files: Sequence[str]) -> None:
    """OutputError when `output` (or the list of skipped inputs written beside it) exists: nothing a user
    made is overwritten; or when it is one of the inputs or a folder."""
    if output in ("", "-"):
        return
    if os.path.isdir(output):
        raise OutputError(f"--output={output} is a folder; give a file name, e.g. "
                          f"--output={os.path.join(output, 'rows.csv')}.")
    for path in (output, output + SKIPPED_SUFFIX):
        if os.path.lexists(path):
            raise OutputError(f"{path} exists; choose another --output or remove it (idfer predict never "
                              "overwrites a file).")
    target = os.path.realpath(output)
    if any(os.path.realpath(f) == target for f in files):
        raise OutputError(f"--output={output} is one of the inputs; choose another file.")


def check_annotate(annotate: str, paths: Sequence[str]) -> None:
    """OutputError unless `annotate` is a new or empty folder that holds none of the inputs: the drawn
    images never replace a file, and a folder above an input would hide that input from the walk."""
    if not annotate:
        return
    if os.path.exists(annotate) and not os.path.isdir(annotate):
        raise OutputError(f"--annotate={annotate} is a file; give a folder for the annotated images.")
    folder = os.path.realpath(annotate)
    for path in paths:
        real = os.path.realpath(path)
        if real == folder or real.startswith(folder + os.sep):
            raise OutputError(f"--annotate={annotate} holds the input {path}; give a folder outside the "
                              "inputs.")
    if os.path.isdir(annotate) and any(os.scandir(annotate)):
        raise OutputError(f"--annotate={annotate} is not empty; give a new (or empty) folder, so that no "
                          "file in it is replaced.")
    try:
        os.makedirs(annotate, exist_ok=True)
    except OSError as e:
        raise OutputError(
            f"Cannot create --annotate={annotate}: {e.strerror or e}; give another folder.") from e


def check_fps(fps: float) -> None:
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and 0 <= fps <= MAX_FPS):
        raise ValueError(f"fps must be a number of frames per second of video between 0 (every frame) and "
                         f"{MAX_FPS}; got {fps!r}.")


class _Writer:
    def __init__(self, stream, fmt: str, class_names: Sequence[str]):
        self.stream, self.fmt, self.class_names = stream, fmt, list(class_names)
        if fmt == "csv":
            self._csv = csv.writer(stream)
            self._csv.writerow(["file", "frame", "time_s", "face", "left", "top", "right", "bottom",
                                "score", "predicted",
                                *(f"p_{c}" for c in self.class_names)])

    def row(self, source: str, frame: int, time_s, face: int, box, score, probabilities: np.ndarray) -> None:
        predicted = self.class_names[int(np.argmax(probabilities))]
        t = "" if time_s is None else f"{time_s:.3f}"
        if self.fmt == "csv":
            self._csv.writerow([source, frame, t, face, *(f"{v:.1f}" for v in box),
                                "" if score is None else f"{score:.3f}", predicted,
                                *(f"{p:.6f}" for p in probabilities)])
        else:
            self.stream.write(json.dumps({
                "file": source, "frame": frame, "time_s": None if time_s is None else round(time_s, 3),
                "face": face, "box": [round(float(v), 1) for v in box],
                "score": None if score is None else round(float(score), 3), "predicted": predicted,
                "probabilities": {c: round(float(p), 6) for c, p in zip(self.class_names, probabilities,
                                                                          strict=True)}}) + "\n")


def predict_files(predictor, paths: Sequence[str], *, output: str = "-", fmt: str = "csv",
                  annotate: str = "", batch_size: int = 64, fps: float = 1.0, detect: bool = True,
                  dataset_crop: bool = False, progress: bool = True, stream=None) -> Summary:
    """Runs `predictor` on every face of `paths` (files, folders, videos) and writes the rows to `output`
    ('-' = `stream`, default stdout). Returns the `Summary` (counts, what was skipped, seconds per stage).
    `dataset_crop` (with `detect=False`): cut the training dataset's fixed box first (`faces.Framer`).

    Everything that can be checked is checked before a row is written. Raises OutputError for an output
    or a list of skipped inputs that exists, or an annotate folder that is not new or holds an input;
    DataError when detection is asked for without the [align] extra, or when no input gave an image;
    ValueError for a bad format / batch size / fps; Interrupted on Ctrl-C (the rows so far are kept in a
    `.partial` file, never under the output's name)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}.")
    check_fps(fps)
    check_annotate(annotate, paths)
    files, unreadable = inputs_lib.list_inputs(list(paths))
    check_output(output, files)
    if not files:
        raise DataError(_nothing_to_read(paths, unreadable))
    framer = predictor._framer(detect, dataset_crop)  # before anything is written: a missing extra first
    summary = Summary(files=len(files), unreadable=unreadable)
    has_video = any(inputs_lib.is_video_name(f) for f in files)
    bar = _progress_bar(None if has_video else len(files), progress)
    start = time.perf_counter()
    partial = []
    try:
        with _open_output(output, stream, partial) as out:
            _run(predictor, files, out, fmt, annotate, batch_size, fps, framer, paths, summary, bar)
    except KeyboardInterrupt:
        kept = (f"the {summary.faces} row(s) written so far are in {partial[0]}" if partial else
                "nothing was written")
        raise Interrupted(f"Interrupted after {summary.frames} image(s)/frame(s); {kept}, and {output} was "
                          "not created. Run the command again (with another --output, or remove that file) "
                          "to predict them all.") from None
    finally:
        if bar is not None:
            bar.close()
    summary.wall_seconds = time.perf_counter() - start
    if output not in ("", "-") and (summary.unreadable or summary.no_face):
        _write_skipped(output + SKIPPED_SUFFIX, summary)
    if summary.frames == 0:
        raise DataError(_nothing_to_read(paths, summary.unreadable))
    return summary


def _nothing_to_read(paths: Sequence[str], unreadable) -> str:
    if not unreadable:
        return (f"Found no image or video file in {', '.join(map(str, paths))} (folders are searched "
                "recursively, by file extension).")
    shown = "; ".join(f"{u.source}: {u.reason}" for u in unreadable[:3])
    more = f" (and {len(unreadable) - 3} more)" if len(unreadable) > 3 else ""
    return f"No input could be read: {shown}{more}."


def _run(predictor, files, out, fmt, annotate, batch_size, fps, framer, paths, summary, bar) -> None:
    """Reads, frames and classifies every input, writing a row per face to `out` (see predict_files)."""
    writer = _Writer(out, fmt, predictor.class_names)
    pending: list[tuple] = []  # (frame, faces)
    pending_faces = 0

    def flush():
        nonlocal pending, pending_faces
        if not pending:
            return
        crops = np.stack([f.crop for _, faces in pending for f in faces])
        t = time.perf_counter()
        probabilities = predictor.predict(crops, batch_size=batch_size)
        summary.seconds["model"] += time.perf_counter() - t
        t = time.perf_counter()
        i = 0
        for frame, faces in pending:
            labels = []
            for k, face in enumerate(faces):
                writer.row(frame.source, frame.frame, frame.time_s, k, face.box, face.score, probabilities[i])
                labels.append((face.box, f"{predictor.class_names[int(probabilities[i].argmax())]} "
                                         f"{probabilities[i].max():.2f}"))
                i += 1
            if annotate:
                _annotate(annotate, frame, labels, paths)
        summary.seconds["write"] += time.perf_counter() - t
        pending, pending_faces = [], 0

    t = time.perf_counter()
    for frame in inputs_lib.iter_frames(files, fps=fps, unreadable=summary.unreadable):
        summary.seconds["decode"] += time.perf_counter() - t
        summary.frames += 1
        t = time.perf_counter()
        faces = framer.frame(frame.image)
        summary.seconds["detect_align"] += time.perf_counter() - t
        if not faces:
            summary.no_face.append((frame.source, frame.frame))
        else:
            summary.faces += len(faces)
            pending.append((frame, faces))
            pending_faces += len(faces)
            if pending_faces >= batch_size:
                flush()
        if bar is not None:
            bar.update(1)
        t = time.perf_counter()
    flush()


def _progress_bar(total, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True, leave=True, mininterval=0.5)


@contextlib.contextmanager
def _open_output(output: str, stream, partial: list):
    """The stream rows go to. A file is written under a new temporary name (`partial` gets it) and renamed
    once complete: a killed run leaves that `.partial` file, never a truncated file under the output's
    name, and never writes over an existing file."""
    if output in ("", "-"):
        yield stream if stream is not None else sys.stdout
        return
    directory = os.path.dirname(os.path.abspath(output))
    try:
        os.makedirs(directory, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=os.path.basename(output) + ".", suffix=".partial",
                                       dir=directory)
    except OSError as e:
        raise OutputError(f"Cannot write --output={output}: {e.strerror or e}; choose another file.") from e
    partial.append(tmp)
    with os.fdopen(handle, "w", newline="", encoding="utf-8") as f:
        yield f
    if os.path.lexists(output):  # made while this run was writing
        raise OutputError(f"{output} appeared while predicting; the rows are in {tmp}.")
    os.replace(tmp, output)


def _write_skipped(path: str, summary: Summary) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["file", "frame", "reason"])
    for u in summary.unreadable:
        writer.writerow([u.source, "", u.reason])
    for source, frame in summary.no_face:
        writer.writerow([source, frame, "no face found"])
    with open(path, "w", newline="", encoding="utf-8") as f:
        f.write(buffer.getvalue())


def _annotate(directory: str, frame, labels, roots: Sequence[str]) -> None:
    from PIL import Image

    from idfer_jax.inference import annotate as annotate_lib

    root = next((r for r in roots if os.path.isdir(r) and os.path.abspath(frame.source).startswith(
        os.path.abspath(r) + os.sep)), None)
    path = annotate_lib.annotated_path(directory, frame.source, frame.frame, image_root=root)
    stem, extension = os.path.splitext(path)
    n = 1
    while os.path.lexists(path):  # two inputs of one name (the folder was empty when the run started)
        n += 1
        path = f"{stem}-{n}{extension}"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(annotate_lib.draw_faces(frame.image, labels)).save(path)


def summary_lines(summary: Summary, output: str, detect: bool, framing: dict | None = None,
                  dataset_crop: bool = False) -> list[str]:
    """What `idfer predict` prints on stderr once done."""
    s = summary.seconds
    lines = [f"{summary.faces} face(s) in {summary.frames} image(s)/frame(s) of {summary.files} file(s), "
             f"{summary.images_per_second:.1f} images/s (decode {s['decode']:.1f} s, detect+align "
             f"{s['detect_align']:.1f} s, model {s['model']:.1f} s, write {s['write']:.1f} s)"
             + ("" if output in ("", "-") else f"; rows in {output}")]
    if summary.unreadable:
        shown = "; ".join(f"{u.source}: {u.reason}" for u in summary.unreadable[:3])
        more = f" (and {len(summary.unreadable) - 3} more)" if len(summary.unreadable) > 3 else ""
        lines.append(f"{len(summary.unreadable)} input(s) could not be read: {shown}{more}")
    if summary.no_face:
        shown = ", ".join(s if f == 0 else f"{s} frame {f}" for s, f in summary.no_face[:3])
        more = f" (and {len(summary.no_face) - 3} more)" if len(summary.no_face) > 3 else ""
        hint = (" If the images already are face crops, rerun with --no-detect." if detect else "")
        lines.append(f"No face found in {len(summary.no_face)} image(s)/frame(s): {shown}{more}.{hint}")
    if output not in ("", "-") and (summary.unreadable or summary.no_face):
        lines.append(f"The skipped inputs are listed in {output}{SKIPPED_SUFFIX}.")
    if framing and detect and summary.faces and framing.get("kind") != "aligned":
        lines.append(f"Note: this model was trained on {framing.get('dataset')}'s own framing, not on "
                     "aligned faces; the detected faces were aligned to the 'default' template (the CK+48 "
                     "framing). For images framed like the training images, --no-detect gives the model what "
                     "it was trained on.")
    if framing and framing.get("crop_box") and not detect and not dataset_crop:
        lines.append(f"Note: this model was trained on {framing.get('dataset')}'s fixed crop of its raw "
                     "images; for that dataset's raw files add --dataset_crop to frame them the same way.")
    return lines


__all__ = ["FORMATS", "OutputError", "Summary", "predict_files", "summary_lines", "DataError"]
