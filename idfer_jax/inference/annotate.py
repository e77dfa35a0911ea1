"""Pictures of predictions: face boxes with their labels drawn on the image, and where to save them.

Boxes are ``(left, top, right, bottom)`` float pixels in the convention of `idfer_jax.data.alignment`
(`DetectedFace.box`): pixel centres on integers, the box's outer edges, so ``(-0.5, -0.5, W - 0.5, H - 0.5)``
is the whole image. The drawn outline lies just inside those edges; the label sits above the box (inside
its top when there is no room above).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Box = tuple[float, float, float, float]

# Box colours, one per face in turn (distinct for the colour-blind: Okabe & Ito 2008's palette).
COLOURS = (
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0),
    (204, 121, 167),
)
# Formats the annotated images are written in: a source already in one of them keeps its name.
OUTPUT_EXTENSIONS = (".png", ".jpg", ".jpeg")
VIDEO_FRAME_EXTENSION = ".jpg"


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()  # the fixed 11 px bitmap font


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    # Black on light colours, white on dark ones (ITU-R BT.601 luma).
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def draw_faces(image: np.ndarray, faces: Sequence[tuple[Box, str]]) -> np.ndarray:
    """A copy of `image` with each face's box outlined and its label written above it.

    Args:
      image: uint8 (H, W, 3) RGB (an (H, W) grey image is drawn in colour on its RGB version).
      faces: (box, label) pairs; box as in the module docstring (clipped to the image for drawing; a box
        wholly outside the image is not drawn), label one line of text ("" for no label).

    Returns uint8 (H, W, 3) RGB. The line width and text size grow with the image (2 px lines and 16 px
    text at 640x480). The label has a filled background in the box's colour, so it reads on any picture.
    """
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"draw_faces needs a uint8 image; got dtype {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"draw_faces needs an (H, W, 3) RGB image; got shape {array.shape}")
    height, width = array.shape[:2]
    canvas = Image.fromarray(array.copy())
    draw = ImageDraw.Draw(canvas)
    side = min(height, width)
    line = max(1, round(side / 240))
    font = _font(max(10, round(side / 30)))
    for number, (box, label) in enumerate(faces):
        colour = COLOURS[number % len(COLOURS)]
        left, top, right, bottom = (float(value) for value in box)
        # Edges to the inclusive pixels whose centres they enclose (PIL's rectangle is inclusive).
        x0, y0 = max(0, round(left + 0.5)), max(0, round(top + 0.5))
        x1, y1 = min(width - 1, round(right - 0.5)), min(height - 1, round(bottom - 0.5))
        if x1 < x0 or y1 < y0:
            continue
        width_px = min(line, 1 + (x1 - x0) // 2, 1 + (y1 - y0) // 2)  # a tiny box stays an outline
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=width_px)
        label = " ".join(str(label).split())
        if not label:
            continue
        text_left, text_top, text_right, text_bottom = draw.textbbox((0, 0), label, font=font)
        pad = max(1, line)
        label_w = text_right - text_left + 2 * pad
        label_h = text_bottom - text_top + 2 * pad
        lx = min(x0, max(0, width - label_w))
        ly = y0 - label_h if y0 - label_h >= 0 else y0  # above the box, else inside its top
        draw.rectangle((lx, ly, lx + label_w - 1, ly + label_h - 1), fill=colour)
        draw.text((lx + pad - text_left, ly + pad - text_top), label, fill=_text_colour(colour), font=font)
    return np.asarray(canvas)


_UNSAFE = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')


def _safe(part: str) -> str:
    """A path component any file system accepts: control and reserved characters replaced by "_"."""
    part = _UNSAFE.sub("_", part).rstrip(" .")  # Windows drops trailing dots and spaces
    return part if part not in ("", ".", "..") else "_"


def _relative_parts(source: str, image_root: str | None) -> list[str]:
    """The source's path under the output folder, as components (see `annotated_path`)."""
    if image_root is not None:
        root = os.path.abspath(image_root)
        relative = os.path.relpath(os.path.abspath(source), root)
        if relative != os.curdir and not relative.startswith(os.pardir + os.sep) and relative != os.pardir:
            name = os.path.basename(root) or "root"
            return [name, *relative.split(os.sep)]
    normal = os.path.normpath(source)
    parts = normal.split(os.sep)
    if not os.path.isabs(normal) and not os.path.splitdrive(normal)[0] and parts[0] != os.pardir:
        return parts
    return [os.path.basename(normal)]


def annotated_path(out_dir: str, source: str, frame: int | None = 0, image_root: str | None = None) -> str:
    """Where the annotated picture of `source` (frame `frame` of a video) is written under `out_dir`.

    The source's folders are kept: with `image_root` (the folder the user gave that `source` was found in)
    the path is ``out_dir/<root's name>/<path under the root>``; without it, a relative source keeps its
    path as given (``photos/a.jpg`` -> ``out_dir/photos/a.jpg``) and any other source (absolute, or above
    the working folder) keeps only its file name. Components are sanitised for any file system.

    Names: a still image (`frame` None or 0 and not a video name) keeps its file name if it is a .png /
    .jpg / .jpeg (written in that format), else gets ``.png`` appended (``scan.tiff`` -> ``scan.tiff.png``),
    so two sources differing only in extension never share an output. A video frame is
    ``<file name>_frame000123.jpg`` (``clip.mp4_frame000123.jpg``; 6 digits, more when needed).

    Raises ValueError if the result is the source itself (out_dir is the input folder's parent or the
    folder itself): an input is never overwritten. Creates nothing.
    """
    from idfer_jax.inference.inputs import is_video_name

    parts = [_safe(part) for part in _relative_parts(os.fspath(source), image_root) if part]
    name = parts[-1]
    if is_video_name(name) or (frame or 0) > 0:
        name = f"{name}_frame{int(frame or 0):06d}{VIDEO_FRAME_EXTENSION}"
    elif os.path.splitext(name)[1].lower() not in OUTPUT_EXTENSIONS:
        name = name + ".png"
    path = os.path.join(os.fspath(out_dir), *parts[:-1], name)
    if os.path.normcase(os.path.realpath(path)) == os.path.normcase(os.path.realpath(source)):
        raise ValueError(
            f"the annotated picture of {source} would overwrite it ({path}); choose an output folder "
            "outside the input folders"
        )
    return path
