"""The shared shape of every face-dataset builder: features, configs, manual data, image preparation.

A benchmark builder only says where its images are and what their labels are (`list_examples`); this
module turns that into TFDS records of one fixed layout, so the input pipeline, the protocols and
cross-dataset runs treat every dataset alike:

- `image`: uint8 RGB, `image_size` x `image_size` (grey datasets are stored as RGB so that models,
  cross-dataset runs and the RGB face-recognition network see one format);
- `expression`: a `ClassLabel` over the dataset's classes, named with the canonical vocabulary of
  `EXPRESSIONS` (so "happy", "HA" and "Happiness" are all `happiness`) and listed in its order;
- `subject` (int64, -1 where the dataset has no subject ids) and `subject_name` (the dataset's own id);
- `sequence` (int64, -1 where none): frames of one recording share it, so identity probes can split by
  sequence (CK+'s 3 peak frames of one sequence are near-copies);
- `file_name`: the source file relative to the dataset folder (or a row id), to trace any record back;
- `face_found` (bool): whether face alignment found a face (always true for unaligned configs);
- pose keys (`yaw`, ... in degrees) where the dataset has them.

Configs are named `<size>px` (resize, after the dataset's fixed crop box if it has one) or
`aligned_<size>px` (detect + 5-point similarity alignment, `idfer_jax.data.alignment`, optional extra
`[align]`). Any size parses, e.g. `--config.data.config=aligned_160px`; the listed ones are just the common
ones.

Raw data is never downloaded: the user obtains the archive under the dataset's licence and puts it (or its
extracted folder) in the manual directory; `find_root` accepts either and says exactly what it looked for
when neither is there.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import io
import logging as std_logging
import os
import re
import threading
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image, ImageFile, ImageOps

from idfer_jax.data.errors import DataError, ManualDataError

# Canonical expression names, in the order every builder lists its classes.
EXPRESSIONS = (
    "neutral", "anger", "contempt", "disgust", "fear", "happiness", "sadness", "surprise",
)
_ALIASES = {
    "ne": "neutral", "neu": "neutral", "neutral": "neutral",
    "an": "anger", "ang": "anger", "anger": "anger", "angry": "anger",
    "co": "contempt", "contempt": "contempt", "contemptuous": "contempt",
    "di": "disgust", "dis": "disgust", "disgust": "disgust", "disgusted": "disgust",
    "fe": "fear", "af": "fear", "fea": "fear", "fear": "fear", "fearful": "fear", "afraid": "fear",
    "scared": "fear",
    "ha": "happiness", "hap": "happiness", "happy": "happiness", "happiness": "happiness",
    "joy": "happiness",
    "sa": "sadness", "sad": "sadness", "sadness": "sadness",
    "su": "surprise", "sur": "surprise", "surprise": "surprise", "surprised": "surprise",
}


def _image_extensions() -> tuple[str, ...]:
    """Every file extension Pillow decodes pixels from (`.webp`, `.jfif`, `.tif`, `.heic` with a plugin...).

    Taken from Pillow's own registry, so a format Pillow learns is read too; formats Pillow only
    identifies (stubs such as HDF5 or WMF, and the header-only MPEG plugin) are left out, so that a video
    is never listed as a frame.
    """
    Image.init()
    out = []
    for extension, fmt in Image.registered_extensions().items():
        factory = Image.OPEN.get(fmt, (None,))[0]
        if factory is None or fmt == "MPEG":
            continue
        if isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile):
            continue
        out.append(extension.lower())
    _image_extensions.registered = len(Image.registered_extensions())
    return tuple(sorted(set(out)))


IMAGE_EXTENSIONS = _image_extensions()
DEFAULT_MAX_IMAGE_PIXELS = 500_000_000  # config.data.max_image_pixels: 1.5 GB as decoded RGB

# Characters that change a label without changing how it looks: byte-order mark, zero-width space /
# joiners, word joiner, soft hyphen, Mongolian vowel separator.
_INVISIBLE = dict.fromkeys(map(ord, "\ufeff\u200b\u200c\u200d\u2060\u00ad\u180e"), None)


def clean_text(text: str) -> str:
    """`text` as it looks: NFKC-normalised, invisible characters (BOM, zero-width) removed, stripped.

    Spreadsheet programs save CSV files with a byte-order mark and copied labels carry non-breaking or
    zero-width spaces; every header and label a user wrote goes through here before it is compared.
    """
    return unicodedata.normalize("NFKC", text).translate(_INVISIBLE).strip()


def label_key(text: str) -> str:
    """The key two labels are matched by: `clean_text`, case-folded ('\ufeffHappy ' == 'happy')."""
    return clean_text(text).casefold()


def clean_path(text: str) -> str:
    """A path typed into a CSV cell: surrounding whitespace and invisible characters removed (no NFKC:
    file names are compared byte for byte by the file system)."""
    return text.translate(_INVISIBLE).strip()


def read_csv(path, *, header_key: Callable[[str], str] = clean_text) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a CSV file; the header names pass through `header_key` (BOM and spaces gone).

    Read as UTF-8 with an optional byte-order mark (what spreadsheet programs write); empty rows are
    dropped. The header is [] for an empty file.
    """
    text = epath.Path(path).read_bytes().decode("utf-8-sig", errors="replace")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [header_key(h) for h in next(reader, [])]
    return header, [row for row in reader if row]


def canonical_expression(name: str) -> str:
    """'Happy', 'HA', 'happiness' -> 'happiness'. Raises ValueError for an unknown name."""
    key = label_key(name)
    if key not in _ALIASES:
        raise ValueError(
            f"Unknown expression name {name!r}; known: {', '.join(EXPRESSIONS)} (and common "
            "abbreviations such as HA, SU, AN)."
        )
    return _ALIASES[key]


def ordered(names: Iterable[str]) -> tuple[str, ...]:
    """Canonical names in the order of `EXPRESSIONS`."""
    names = set(names)
    return tuple(n for n in EXPRESSIONS if n in names)


# ----------------------------------------------------------------------------------------------
# Configs


@dataclasses.dataclass(eq=False)
class FaceConfig(tfds.core.BuilderConfig):
    """Output size and whether faces are detected and aligned."""

    image_size: int = 64
    aligned: bool = False

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}.")


CONFIG_NAME = re.compile(r"^(aligned_)?(\d+)px$")


def config_name(image_size: int, aligned: bool) -> str:
    return f"{'aligned_' if aligned else ''}{image_size}px"


def face_config(name: str) -> FaceConfig:
    """'aligned_112px' -> FaceConfig(image_size=112, aligned=True)."""
    match = CONFIG_NAME.match(name)
    if not match:
        raise ValueError(
            f"Config name {name!r} is not of the form '<size>px' or 'aligned_<size>px' "
            "(e.g. '64px', 'aligned_112px')."
        )
    aligned, size = bool(match.group(1)), int(match.group(2))
    mode = "detect, 5-point align" if aligned else "resize"
    return FaceConfig(
        name=name, image_size=size, aligned=aligned, description=f"{size}x{size} RGB ({mode})."
    )


def face_configs(sizes: Sequence[int]) -> list[FaceConfig]:
    return [face_config(config_name(s, a)) for a in (False, True) for s in sizes]


# ----------------------------------------------------------------------------------------------
# Examples and images


@dataclasses.dataclass
class FaceExample:
    """One image as a builder lists it, before reading."""

    key: str  # unique within the dataset; also stored as `file_name`
    expression: str  # canonical name
    subject: str | None = None
    sequence: str | None = None  # recording id, unique within the subject
    pose: dict[str, float] = dataclasses.field(default_factory=dict)
    path: Any = None  # image file (str or epath.Path)...
    load: Callable[[], Any] | None = None  # ...or a function returning an image / HxW(xC) uint8 array


class UnreadableImageError(ManualDataError):
    """An image file Pillow cannot decode (truncated, or not an image despite its extension)."""


class ImageTooLargeError(DataError):
    """An image with more pixels than `config.data.max_image_pixels` allows."""


_PIXEL_LIMIT_LOCK = threading.Lock()


def read_image(path, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Opens an image file fully, upright, as an image viewer shows it.

    The EXIF orientation (phone photos are often stored sideways with a tag saying so) is applied, and a
    GIF or multi-page TIFF gives its first frame. `max_pixels` (config.data.max_image_pixels; 0 or None
    = no limit) replaces Pillow's decompression-bomb limit: a larger image raises `ImageTooLargeError`
    saying how to raise it. An unreadable file raises `UnreadableImageError` naming it.
    """
    path = epath.Path(path)
    try:
        with path.open("rb") as f:
            with _PIXEL_LIMIT_LOCK, warnings.catch_warnings():
                # Pillow's own limit (~179 megapixels) is replaced by `max_pixels`, checked below.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
                try:
                    image = Image.open(f)
                    width, height = image.size
                    if max_pixels and width * height > max_pixels:
                        raise ImageTooLargeError(
                            f"Image {path} has {width}x{height} = {width * height:,} pixels, more than "
                            f"config.data.max_image_pixels={max_pixels:,}. If the photo is genuine, raise "
                            f"the limit with --config.data.max_image_pixels={width * height} (or 0 for no "
                            "limit; decoding it needs about "
                            f"{width * height * 3 / 2**30:.1f} GiB of memory), or downscale the file."
                        )
                    image.load()
                finally:
                    Image.MAX_IMAGE_PIXELS = saved
    except ImageTooLargeError:
        raise
    except Exception as e:  # PIL raises several types for truncated or non-image files
        raise UnreadableImageError(
            f"Cannot read image {path}: {e}. Replace it with the original file from the dataset "
            "archive (or delete it), then run the same command again; nothing was written."
        ) from e
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception:  # a malformed EXIF block: the pixels are fine, keep them as stored
        pass
    return image


def to_rgb(image) -> Image.Image:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.asarray(image, np.uint8))
    if image.mode in ("P", "PA"):  # palette images (e.g. JAFFE's TIFFs): resolve the palette first
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grey (PNG, TIFF; Pillow may open it as 32-bit 'I'): 65535 is white, as a viewer shows it,
        # never stretched to each image's own maximum.
        array = np.asarray(image, np.float64)
        image = Image.fromarray(np.clip(np.rint(array / 257.0), 0, 255).astype(np.uint8))
    elif image.mode == "F":
        # Floating-point grey: [0, 1] is the usual convention for such files, otherwise 0..255.
        array = np.asarray(image, np.float64)
        scale = 255.0 if np.nanmax(array, initial=0.0) <= 1.0 else 1.0
        image = Image.fromarray(np.clip(np.rint(np.nan_to_num(array) * scale), 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "La", "RGBa"):
        # Transparent pixels as a viewer on a white page shows them [choice], not their hidden colour.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def crop_fraction(image: Image.Image, box: tuple[float, float, float, float]) -> Image.Image:
    """Crops (top, left, bottom, right) given as fractions of the height and width."""
    w, h = image.size
    top, left, bottom, right = box
    return image.crop((round(left * w), round(top * h), round(right * w), round(bottom * h)))


def center_square_resize(image: Image.Image, size: int) -> Image.Image:
    """The largest centred square, resized to size x size (no aspect-ratio distortion)."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != size:
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return image


# ----------------------------------------------------------------------------------------------
# Builder


def manual_instructions(
    *, archives: Sequence[str], obtain: str, folder: str, layout: str
) -> str:
    """MANUAL_DOWNLOAD_INSTRUCTIONS in the one format every builder uses."""
    return (
        f"Obtain {' and '.join(archives)} from {obtain}. Put the archive(s), or the extracted "
        f"folder `{folder}/`, in the manual directory: `--config.data.manual_dir=DIR` (or TFDS's "
        f"default <data_dir>/downloads/manual). Expected layout after extraction:\n{layout}"
    )


class FaceBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the face builders. Subclasses set the class attributes and `list_examples`."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIG_CLASS = FaceConfig
    BUILDER_CONFIGS = face_configs((48, 64, 96, 112))

    CLASS_NAMES: tuple[str, ...] = ()  # canonical names, in `EXPRESSIONS` order
    POSE_KEYS: tuple[str, ...] = ()
    SPLITS: tuple[str, ...] = ("train",)
    HAS_SUBJECTS = True
    # (top, left, bottom, right) fractions cropped before resizing in unaligned configs: for datasets
    # whose images are wider than the face (None = the image is already a face crop).
    CROP_BOX: tuple[float, float, float, float] | None = None
    # A benchmark's unreadable file stops preparation (its protocol needs every image); a user's own
    # folder skips it, and the preparation summary names it.
    SKIP_UNREADABLE = False
    # Paths relative to the dataset folder whose presence identifies it (all must exist).
    ROOT_MARKERS: tuple[str, ...] = ()
    ARCHIVES: tuple[str, ...] = ()  # archive file names a user may have put in the manual dir
    FOLDER = ""  # the dataset folder's name after extraction
    DESCRIPTION = ""
    HOMEPAGE = ""
    CITATION = ""

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS 4.9.x computes this with `importlib_resources`, which it declares only for Python < 3.9.
        import inspect

        return epath.Path(inspect.getfile(cls))

    def __init__(self, *, config: str | FaceConfig | None = None,
                 max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, **kwargs):
        if isinstance(config, str) and config not in self.builder_configs:
            config = face_config(config)
        self.max_image_pixels = max_image_pixels
        with quiet_tfds():
            super().__init__(config=config, **kwargs)

    # -- what subclasses provide -------------------------------------------------------------

    def list_examples(self, root: epath.Path, split: str) -> Iterable[FaceExample]:
        raise NotImplementedError

    # -- TFDS --------------------------------------------------------------------------------

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        features = {
            "image": tfds.features.Image(shape=(size, size, 3)),
            "expression": tfds.features.ClassLabel(names=self.CLASS_NAMES),
            "subject": tfds.features.Scalar(np.int64, doc="Subject index; -1 if unknown."),
            "subject_name": tfds.features.Text(doc="The dataset's own subject id; '' if unknown."),
            "sequence": tfds.features.Scalar(np.int64, doc="Recording index; -1 if none."),
            "file_name": tfds.features.Text(doc="Source file relative to the dataset folder."),
            "face_found": tfds.features.Scalar(np.bool_, doc="Alignment found a face."),
        }
        for k in self.POSE_KEYS:
            features[k] = tfds.features.Scalar(np.float32, doc=f"{k} in degrees.")
        return self.dataset_info_from_configs(
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("image", "expression"),
            homepage=self.HOMEPAGE or None,
            citation=self.CITATION or None,
        )

    def splits(self, root: epath.Path) -> tuple[str, ...]:
        """The splits to write; builders whose splits depend on the data override this."""
        del root
        return self.SPLITS

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        self.preparation = Preparation()
        root = self.find_root(dl_manager)
        self.preparation.root = os.fspath(root)
        listed = {split: list(self.list_examples(root, split)) for split in self.splits(root)}
        for split, examples in listed.items():
            if not examples:
                raise ManualDataError(
                    f"No labelled images for split {split!r} of {self.name} under {root}.\n"
                    f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
                )
        everything = [e for examples in listed.values() for e in examples]
        self.check_classes(everything, root)
        subjects = sorted({e.subject for e in everything if e.subject is not None})
        sequences = sorted({(e.subject, e.sequence) for e in everything if e.sequence is not None},
                           key=str)
        ids = {"subject": {s: i for i, s in enumerate(subjects)},
               "sequence": {s: i for i, s in enumerate(sequences)}}
        aligner = self._aligner()
        return {split: self._generate_examples(examples, ids, aligner, split)
                for split, examples in listed.items()}

    def check_classes(self, examples: Sequence[FaceExample], root: epath.Path) -> None:
        """Called with every listed example before anything is written; builders of a user's own
        folder check here that every declared class has images."""
        del examples, root

    def _generate_examples(self, examples, ids, aligner, split: str = "train",
                           ) -> Iterator[tuple[str, dict]]:
        report = getattr(self, "preparation", None) or Preparation()
        for ex in examples:
            try:
                image, found = self.prepare(ex, aligner)
            except UnreadableImageError:
                if not self.SKIP_UNREADABLE:
                    raise
                report.skip(UNREADABLE, os.fspath(ex.path) if ex.path is not None else ex.key)
                continue
            report.count(split, ex.expression)
            if aligner is not None and not found:
                report.no_face.append(ex.key)
            record = {
                "image": image,
                "expression": ex.expression,
                "subject": ids["subject"].get(ex.subject, -1),
                "subject_name": ex.subject or "",
                "sequence": (ids["sequence"].get((ex.subject, ex.sequence), -1)
                             if ex.sequence is not None else -1),
                "file_name": ex.key,
                "face_found": found,
            }
            for k in self.POSE_KEYS:
                record[k] = np.float32(ex.pose[k])
            yield ex.key, record

    # -- what preparation says -----------------------------------------------------------------

    def download_and_prepare(self, *args, **kwargs):
        with quiet_tfds():
            return super().download_and_prepare(*args, **kwargs)

    def _log_download_bytes(self) -> None:
        """TFDS prints sizes it does not know ('Unknown size') here; `_log_download_done` says more."""

    def _log_download_done(self) -> None:
        report = getattr(self, "preparation", None)
        if report is None:
            return super()._log_download_done()
        print(report.summary(f"{self.name}/{self.builder_config.name}", os.fspath(self.data_dir)),
              flush=True)

    # -- helpers -----------------------------------------------------------------------------

    def _aligner(self):
        if not self.builder_config.aligned:
            return None
        from idfer_jax.data import alignment

        return alignment.FaceAligner(self.builder_config.image_size)

    def prepare(self, ex: FaceExample, aligner=None) -> tuple[np.ndarray, bool]:
        """The example's image as uint8 RGB at the config's size, and whether a face was found."""
        max_pixels = getattr(self, "max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS)
        image = to_rgb(ex.load() if ex.load is not None else read_image(ex.path, max_pixels))
        size = self.builder_config.image_size
        if aligner is not None:
            aligned = aligner.align(np.asarray(image))
            if aligned is not None:
                return aligned, True
            # Keep the record (dropping it would silently change the protocol); `face_found` says
            # that this one is only resized, and the preparation summary counts and names them.
        if self.CROP_BOX is not None:
            image = crop_fraction(image, self.CROP_BOX)
        return np.asarray(center_square_resize(image, size)), aligner is None

    def find_root(self, dl_manager: tfds.download.DownloadManager) -> epath.Path:
        """The dataset folder in the manual directory, extracting an archive there if needed."""
        try:
            manual = epath.Path(dl_manager.manual_dir)
        except AssertionError as e:
            raise ManualDataError(
                f"The manual download of {self.name} is missing: {str(e).splitlines()[0]}\n"
                f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
            ) from e
        candidates = [manual, manual / self.FOLDER, manual / self.name, manual / self.name / self.FOLDER]
        for candidate in candidates:
            if self.is_root(candidate):
                return candidate
        # Archives and copies often add a folder or two on top (`KDEF_and_AKDEF/KDEF`, `<top>/data`).
        found = self.search(manual)
        if found is not None:
            return found
        looked = [f"{manual} and its subfolders (2 levels)"]
        for archive in self.ARCHIVES:
            path = manual / archive
            if path.exists():
                extracted = epath.Path(dl_manager.extract(path))
                found = self.search(extracted)
                if found is not None:
                    return found
                looked.append(f"{path} (extracted to {extracted})")
        wanted = ", ".join(self.ROOT_MARKERS) or f"the {self.FOLDER or self.name} folder"
        raise ManualDataError(
            f"Cannot find the {self.name} data. Looked for {wanted} in: "
            f"{'; '.join(looked)}.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
        )

    def is_root(self, path: epath.Path) -> bool:
        return path.is_dir() and all((path / m).exists() for m in self.ROOT_MARKERS)

    def search(self, place: epath.Path, depth: int = 2) -> epath.Path | None:
        """`place` or its first subfolder, up to `depth` levels down, that `is_root`."""
        return find_folder(place, self.is_root, depth)


def find_folder(place: epath.Path, accept: Callable[[epath.Path], bool], depth: int = 2,
                ) -> epath.Path | None:
    """`place` or its first subfolder (sorted, depth first), up to `depth` levels down, that `accept`s.

    Archives and copies of a dataset often add a top folder or two; hidden and `__MACOSX` folders are
    skipped.
    """
    if not place.is_dir():
        return None
    if accept(place):
        return place
    if depth > 0:
        for child in sorted(place.iterdir()):
            if child.is_dir() and not child.name.startswith((".", "__MACOSX")):
                found = find_folder(child, accept, depth - 1)
                if found is not None:
                    return found
    return None


def find_child(place: epath.Path, name: str, depth: int = 2,
               accept: Callable[[epath.Path], bool] | None = None) -> epath.Path | None:
    """`place/name`, or `place/*/name`, ... up to `depth` levels down (the first that `accept`s, if given)."""
    accept = accept or (lambda path: path.exists())
    parent = find_folder(place, lambda p: accept(p / name), depth)
    return None if parent is None else parent / name


# Why a file under a dataset folder was not read (the keys of `Preparation.skipped`).
NOT_AN_IMAGE = "not an image"
UNREADABLE = "unreadable"
UNMATCHED = "did not match the pattern"
BROKEN_LINK = "broken link"
LINK_LOOP = "folder link loops back (followed once)"
UNREADABLE_FOLDER = "folder cannot be read"
CLASS_DROPPED = "class dropped by class_map"
NOT_SELECTED = "label not in class_names:"


def walk_files(folder, skipped: Callable[[str, str], None] | None = None,
               ) -> Iterator[tuple[str, list[str]]]:
    """(folder, sorted file names) of `folder` and every subfolder, as a file manager shows them.

    Symbolic links to folders are followed (a dataset assembled from links reads like a copy); a link
    back to a folder being walked is not followed again (no endless loop) and is reported through
    `skipped(reason, path)`, like folders that cannot be read. Hidden folders are skipped.
    """
    skipped = skipped or (lambda reason, path: None)
    top = os.fspath(folder)
    chains = {top: frozenset()}

    def on_error(error: OSError) -> None:
        skipped(UNREADABLE_FOLDER, error.filename or str(error))

    for dirpath, dirnames, filenames in os.walk(top, onerror=on_error, followlinks=True):
        chain = chains.pop(dirpath, frozenset()) | {os.path.realpath(dirpath)}
        keep = []
        for name in sorted(dirnames):
            child = os.path.join(dirpath, name)
            if name.startswith("."):
                continue
            if os.path.realpath(child) in chain:
                skipped(LINK_LOOP, child)
                continue
            chains[child] = chain
            keep.append(name)
        dirnames[:] = keep
        yield dirpath, sorted(filenames)


def is_image_name(name: str) -> bool:
    """Whether Pillow reads files of this name's extension (see `IMAGE_EXTENSIONS`; a plugin registered
    later, such as pillow-heif, counts too)."""
    global IMAGE_EXTENSIONS
    if len(Image.registered_extensions()) != _image_extensions.registered:
        IMAGE_EXTENSIONS = _image_extensions()
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def image_files(folder: epath.Path, skipped: Callable[[str, str], None] | None = None,
                ) -> list[epath.Path]:
    """Image files under `folder` (recursively, following folder links), sorted, hidden files skipped.

    Every other file (and every broken link) is reported through `skipped(reason, path)` if given.
    """
    skipped = skipped or (lambda reason, path: None)
    out = []
    for dirpath, filenames in walk_files(folder, skipped):
        for name in filenames:
            if name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            if not is_image_name(name):
                skipped(NOT_AN_IMAGE, path)
            elif not os.path.exists(path):
                skipped(BROKEN_LINK, path)
            else:
                out.append(epath.Path(path))
    return out


# ----------------------------------------------------------------------------------------------
# What preparation says


@dataclasses.dataclass
class Preparation:
    """What preparing a dataset read: images per split and class, skipped files, faces not found."""

    root: str = ""
    counts: dict[str, collections.Counter] = dataclasses.field(default_factory=dict)
    skipped: dict[str, dict[str, None]] = dataclasses.field(default_factory=dict)  # reason -> paths
    no_face: list[str] = dataclasses.field(default_factory=list)

    def count(self, split: str, expression: str) -> None:
        self.counts.setdefault(split, collections.Counter())[expression] += 1

    def skip(self, reason: str, path: str) -> None:
        self.skipped.setdefault(reason, {})[os.fspath(path)] = None

    def _relative(self, path: str) -> str:
        if self.root and path.startswith(self.root + os.sep):
            return path[len(self.root) + 1:]
        return path

    def _names(self, paths: Sequence[str], shown: int = 3) -> str:
        names = [self._relative(p) for p in paths]
        more = f", ... {len(names) - shown} more" if len(names) > shown else ""
        return ", ".join(names[:shown]) + more

    def summary(self, dataset: str, where: str) -> str:
        """A few lines for the user: counts per split and class, then anything left out."""
        lines = [f"Prepared {dataset} from {self.root or '(generated)'} into {where}:"]
        for split, counter in self.counts.items():
            classes = ", ".join(f"{c} {n}" for c, n in sorted(counter.items(), key=_class_order))
            lines.append(f"  {split}: {sum(counter.values())} images ({classes})")
        if self.skipped:
            total = sum(len(paths) for paths in self.skipped.values())
            lines.append(f"  skipped {total} file(s):")
            for reason, paths in self.skipped.items():
                lines.append(f"    {len(paths)} {reason}: {self._names(list(paths))}")
        if self.no_face:
            lines.append(f"  alignment found no face in {len(self.no_face)} image(s), kept centre-cropped "
                         f"(face_found=False): {self._names(self.no_face)}")
        return "\n".join(lines)


def _class_order(item: tuple[str, int]) -> tuple[int, str]:
    name = item[0]
    return (EXPRESSIONS.index(name) if name in EXPRESSIONS else len(EXPRESSIONS), name)


# TFDS messages that say nothing a user can act on: a custom builder config dumped as a warning, a fresh
# data folder with no metadata yet, OpenCV recommended for decoding (Pillow decodes the same pixels).
_TFDS_NOISE = ("Using custom data configuration", "Variant folder", "OpenCV is not installed")


class _TfdsNoiseFilter(std_logging.Filter):
    """Drops the `_TFDS_NOISE` warnings of tensorflow_datasets; every other record passes."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        if f"{os.sep}tensorflow_datasets{os.sep}" not in (record.pathname or ""):
            return True
        message = record.msg if isinstance(record.msg, str) else ""
        return not message.startswith(_TFDS_NOISE)


_NOISE_FILTER = _TfdsNoiseFilter()
# absl's logger: TFDS logs through absl.logging. The filter only touches records from TFDS's own files.
std_logging.getLogger("absl").addFilter(_NOISE_FILTER)


@contextlib.contextmanager
def quiet_tfds():
    """Kept for the places TFDS is driven from (builder construction and preparation): the noise filter
    is in place (again, should a user's logging setup have replaced the absl logger's filters)."""
    logger = std_logging.getLogger("absl")
    if _NOISE_FILTER not in logger.filters:
        logger.addFilter(_NOISE_FILTER)
    yield

