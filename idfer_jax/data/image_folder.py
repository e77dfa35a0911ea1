"""Your own images as a TFDS dataset: labels from each file's path (a regex) or from a CSV manifest.

    idfer train --config=configs/baseline_image_folder.py --workdir=DIR \
        --config.data.manual_dir=/data/my_faces \
        --config.data.pattern='(?P<subject>[^/]+)/(?P<expression>[a-z]+)_\\d+\\.jpg' \
        --config.data.class_names="('anger','happiness','neutral')"

The folder is read as a file manager shows it: links to folders and files are followed (a link that loops
back is followed once), every format Pillow reads counts as an image (`.jpg`, `.png`, `.webp`, `.jfif`,
`.tif`, `.bmp`, the first frame of a `.gif`, ...), and a phone photo stored sideways with an EXIF orientation
tag is turned upright.

Path labels: `pattern` is a Python regex with named groups, matched (`re.fullmatch`) against each image's
path relative to `manual_dir`, with `/` separators. The `expression` group is required; `subject`,
`sequence`, `yaw`, `pitch`, `roll` and `split` (values `train` / `test`) are optional. A pattern that
matches nothing is an error.

Manifest labels: `manifest` is a CSV file (absolute, or relative to `manual_dir`; UTF-8, with or without the
byte-order mark spreadsheet programs write) with a header row and the columns `path` (relative to
`manual_dir`) and `expression`, plus any of the optional names above.

Preparing the folder prints what it read: images per split and class, and every file left out, by reason
(not an image, unreadable, did not match the pattern, broken link, class dropped by class_map), plus the
faces alignment could not find.

Classes are the user's `class_names`, in the order given. Each expression value first goes through
`class_map` (e.g. RAF-DB's numbers: `--config.data.class_map=1:surprise,2:fear,...`; `x:` drops the
files of label x), then matches its class ignoring case and invisible differences (surrounding spaces,
byte-order marks, zero-width characters, Unicode compatibility forms), or through the common
abbreviations (`HA` -> `happiness`) when the classes use the canonical names of `face_builder.EXPRESSIONS`
(use those to mix your data with the benchmarks). `class_names` may select a subset, as on the
benchmarks: an image whose label matches no class is skipped, and the preparation summary lists every such
label with its count (so a typo shows there, once, when the folder is prepared); a folder where no label
matches is an error naming its labels. A declared class with no image is an error too (it would train an
output that is never right, and make chance look lower than it is).

The prepared dataset's config name carries a digest of the settings and of the folder's file list, so
changing the pattern, the classes or the images prepares a fresh copy instead of reusing a stale one.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import re
from collections.abc import Iterable

from etils import epath

from idfer_jax.data import face_builder as fb
from idfer_jax.data.errors import DataError

OPTIONAL_FIELDS = ("subject", "sequence", "yaw", "pitch", "roll", "split")
POSE_FIELDS = ("yaw", "pitch", "roll")


@dataclasses.dataclass(eq=False)
class ImageFolderConfig(fb.FaceConfig):
    root: str = ""
    pattern: str = ""
    manifest: str = ""
    class_names: tuple[str, ...] = ()
    class_map: tuple[tuple[str, str], ...] = ()  # applied to the labels before they meet class_names
    every_class: bool = True  # every declared class must have images (not for a cross-dataset test set)
    pose_keys: tuple[str, ...] = ()
    has_splits: bool = False


MANIFEST_FIELDS = ("path", "expression", *OPTIONAL_FIELDS)


def _manifest_field(header: str) -> str:
    """A manifest column name as the field it names: '\ufeffPath ' -> 'path' (unknown names kept)."""
    key = fb.label_key(header)
    return key if key in MANIFEST_FIELDS else fb.clean_text(header)


def _read_manifest(config) -> tuple[list[str], list[list[str]]]:
    return fb.read_csv(_manifest_path(config), header_key=_manifest_field)


def _fields(config: ImageFolderConfig) -> tuple[str, ...]:
    if config.pattern:
        return tuple(re.compile(config.pattern).groupindex)
    return tuple(_read_manifest(config)[0])


def _manifest_path(config) -> str:
    return config.manifest if os.path.isabs(config.manifest) else os.path.join(config.root, config.manifest)


def _folder_digest(root: str) -> str:
    """Changes when a file under `root` is added, removed or modified."""
    h = hashlib.sha1()
    for dirpath, filenames in fb.walk_files(root):  # through links, as the builder reads the folder
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                stat = os.stat(path)
            except OSError:  # a broken link: its presence still counts
                stat = os.lstat(path)
            h.update(f"{os.path.relpath(path, root)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()


def builder_kwargs_from_config(data_config) -> dict:
    """The `ImageFolderConfig` described by `config.data` (a DataError says what is missing)."""
    root = data_config.get("manual_dir") or ""
    pattern, manifest = data_config.get("pattern") or "", data_config.get("manifest") or ""
    if not root or not os.path.isdir(root):
        raise DataError(
            f"image_folder needs --config.data.manual_dir=the folder of your images (got {root!r}, "
            "which is not a directory)."
        )
    if bool(pattern) == bool(manifest):
        raise DataError(
            "image_folder needs exactly one of --config.data.pattern (a regex with named groups over "
            "each file's path) or --config.data.manifest (a CSV with path and expression columns)."
        )
    class_names = tuple(data_config.get("class_names") or ())
    if not class_names:
        raise DataError(
            "image_folder needs the class list: --config.data.class_names=\"('anger','happiness',...)\" "
            "(the order you give is the order of the classifier's outputs)."
        )
    if pattern:
        try:
            groups = re.compile(pattern).groupindex
        except re.error as e:
            raise DataError(f"config.data.pattern {pattern!r} is not a valid regex: {e}.") from e
        if "expression" not in groups:
            raise DataError(
                f"config.data.pattern {pattern!r} has no named group 'expression': write it as "
                "(?P<expression>...) around the part of the path that names the expression."
            )
        unknown = sorted(set(groups) - {"expression", *OPTIONAL_FIELDS})
        if unknown:
            raise DataError(
                f"config.data.pattern has unknown named groups {unknown}; allowed: expression, "
                f"{', '.join(OPTIONAL_FIELDS)} (use (?:...) for groups that are not labels)."
            )
    from idfer_jax.data.datasets import parse_class_map  # (datasets imports this module lazily)

    class_map = tuple(parse_class_map(data_config.get("class_map")).items())
    size, aligned = int(data_config.image_size), "aligned" in (data_config.get("config") or "")
    named = re.search(r"(\d+)px", data_config.get("config") or "")
    if named and int(named.group(1)) != size:
        raise DataError(
            f"config.data.config={data_config.config!r} names {named.group(1)} px but "
            f"config.data.image_size={size}; an image_folder is prepared at data.image_size. Set both to "
            f"one size, e.g. --config.data.config={data_config.config} "
            f"--config.data.image_size={named.group(1)}."
        )
    config = ImageFolderConfig(name="pending", root=os.path.abspath(root), pattern=pattern,
                               manifest=manifest, class_names=class_names, class_map=class_map,
                               image_size=size, aligned=aligned,
                               every_class=not data_config.get("is_test_set", False))
    if manifest and not os.path.isfile(_manifest_path(config)):
        raise DataError(f"Manifest {_manifest_path(config)} does not exist.")
    fields = _fields(config)
    if manifest and not {"path", "expression"} <= set(fields):
        raise DataError(
            f"Manifest {_manifest_path(config)} needs the header columns 'path' and 'expression' "
            f"(it has {', '.join(fields) or 'none'})."
        )
    settings = repr((config.root, pattern, manifest, class_names, size, aligned)
                    + ((class_map,) if class_map else ()))
    digest = hashlib.sha1((settings + _folder_digest(config.root)).encode()).hexdigest()[:12]
    config = dataclasses.replace(
        config,
        name=f"{fb.config_name(size, aligned)}_{digest}",
        description=f"Images under {config.root}, {'pattern' if pattern else 'manifest'} labels.",
        pose_keys=tuple(k for k in POSE_FIELDS if k in fields),
        has_splits="split" in fields,
    )
    return {"config": config, "max_image_pixels": max_image_pixels(data_config)}


def max_image_pixels(data_config) -> int | None:
    """config.data.max_image_pixels as a limit for `face_builder.read_image` (0 = none)."""
    value = data_config.get("max_image_pixels", fb.DEFAULT_MAX_IMAGE_PIXELS)
    if value is None or int(value) < 0:
        raise DataError(
            f"config.data.max_image_pixels={value!r} must be a number of pixels >= 0 (0 = no limit)."
        )
    return int(value) or None


class ImageFolder(fb.FaceBuilder):
    """A user's own face images with labels from their paths or a CSV manifest (see the module doc)."""

    BUILDER_CONFIG_CLASS = ImageFolderConfig
    BUILDER_CONFIGS = []
    SKIP_UNREADABLE = True  # named in the preparation summary instead
    DESCRIPTION = __doc__
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Point --config.data.manual_dir at the folder of your images and give --config.data.pattern "
        "or --config.data.manifest (see idfer_jax/data/image_folder.py)."
    )

    def __init__(self, *, config: ImageFolderConfig | None = None, **kwargs):
        if not isinstance(config, ImageFolderConfig):
            raise DataError(
                "image_folder is configured from config.data (manual_dir, pattern or manifest, "
                "class_names); open it with idfer_jax.data.datasets.load_builder(config.data)."
            )
        super().__init__(config=config, **kwargs)

    @property
    def CLASS_NAMES(self) -> tuple[str, ...]:  # noqa: N802 (the base class's attribute name)
        return self.builder_config.class_names

    @property
    def POSE_KEYS(self) -> tuple[str, ...]:  # noqa: N802
        return self.builder_config.pose_keys

    def find_root(self, dl_manager) -> epath.Path:
        del dl_manager
        return epath.Path(self.builder_config.root)

    def splits(self, root) -> tuple[str, ...]:
        return ("train", "test") if self.builder_config.has_splits else ("train",)

    def _class_of(self, value: str, where: str) -> str | None:
        """The declared class of a label value (after class_map); None if class_map drops it or
        class_names does not select it."""
        names = self.CLASS_NAMES
        mapped = value
        mapping = {fb.label_key(src): dst for src, dst in self.builder_config.class_map}
        if fb.label_key(value) in mapping:
            mapped = mapping[fb.label_key(value)]
            if not fb.clean_text(mapped):
                return None
        by_key = {fb.label_key(n): n for n in names}
        if fb.label_key(mapped) in by_key:
            return by_key[fb.label_key(mapped)]
        try:
            canonical = fb.canonical_expression(mapped)
        except ValueError:
            canonical = None
        if canonical in names:
            return canonical
        # class_names selects a subset, as on the benchmark builders: the caller skips the image and the
        # preparation summary names the label, so a typo in a label or in class_names is seen.
        del where
        return None

    def _skip(self, reason: str, path: str) -> None:
        report = getattr(self, "preparation", None)
        if report is not None:
            report.skip(reason, path)

    def _labelled(self, root: epath.Path) -> Iterable[tuple[str, dict]]:
        """(relative path, label fields) of every labelled image."""
        cfg = self.builder_config
        if cfg.manifest:
            header, rows = _read_manifest(cfg)
            seen: set[str] = set()
            for row in rows:
                fields = {k: v.strip() for k, v in zip(header, row, strict=False) if v.strip()}
                path = fb.clean_path(fields.get("path", ""))
                if not path:
                    continue
                key = os.path.normpath(path)
                if key in seen:
                    # One image is one example: a second row would give it two labels (or count it twice).
                    raise DataError(
                        f"Manifest {_manifest_path(cfg)} lists {path} more than once; keep one row per image."
                    )
                seen.add(key)
                yield path, fields
            return
        pattern = re.compile(cfg.pattern)
        for path in fb.image_files(root, skipped=self._skip):
            relative = os.path.relpath(os.fspath(path), os.fspath(root)).replace(os.sep, "/")
            match = pattern.fullmatch(relative)
            if match is None:
                self._skip(fb.UNMATCHED, os.fspath(path))
                continue
            yield relative, {k: v for k, v in match.groupdict().items() if v is not None}

    def _dropped_by_map(self) -> set[str]:
        return {fb.label_key(src) for src, dst in self.builder_config.class_map if not fb.clean_text(dst)}

    def list_examples(self, root: epath.Path, split: str):
        count = 0
        unselected: collections.Counter = collections.Counter()
        for relative, fields in self._labelled(root):
            if self.builder_config.has_splits:
                value = fb.label_key(fields.get("split", "train"))
                if value not in ("train", "test"):
                    raise DataError(f"{relative}: split {fields['split']!r} must be 'train' or 'test'.")
                if value != split:
                    continue
            path = root / relative
            if not path.exists():
                raise DataError(f"{relative} (listed in the manifest) does not exist under {root}.")
            if "expression" not in fields:
                raise DataError(f"{relative}: no expression label (an empty cell in the manifest?).")
            try:
                pose = {k: float(fb.clean_text(fields[k])) for k in self.POSE_KEYS}
            except (KeyError, ValueError) as e:
                raise DataError(f"{relative}: pose {self.POSE_KEYS} missing or not a number ({e}).") from e
            expression = self._class_of(fields["expression"], relative)
            if expression is None:
                if fb.label_key(fields["expression"]) in self._dropped_by_map():
                    self._skip(fb.CLASS_DROPPED, os.fspath(path))
                else:
                    label = fb.clean_text(fields["expression"])
                    mapping = {fb.label_key(s): d for s, d in self.builder_config.class_map}
                    if fb.label_key(label) in mapping:
                        label = f"{label!r} (class_map turns it into {mapping[fb.label_key(label)]!r})"
                    else:
                        label = repr(label)
                    unselected[label] += 1
                    self._skip(f"{fb.NOT_SELECTED} {label}", os.fspath(path))
                continue
            count += 1
            subject, sequence = fields.get("subject"), fields.get("sequence")
            yield fb.FaceExample(
                key=relative, expression=expression,
                subject=fb.clean_text(subject) if subject else None,
                sequence=fb.clean_text(sequence) if sequence else None, pose=pose, path=path,
            )
        if not count and unselected:
            labels = ", ".join(f"{k} x{n}" for k, n in unselected.most_common(12))
            raise DataError(
                f"No image under {root} has one of the classes {', '.join(self.CLASS_NAMES)} (split "
                f"{split!r}); its labels are {labels}. Name them in --config.data.class_names, or map them "
                "onto class names with --config.data.class_map='label:class,...' (test set: "
                "--config.data.test.class_map); class_names names the classes after class_map."
            )
        if not count:
            what = f"pattern {self.builder_config.pattern!r}" if self.builder_config.pattern else "manifest"
            raise DataError(
                f"No image under {root} is labelled by the {what} (split {split!r}). The pattern is matched "
                "against each path relative to manual_dir with '/' separators, e.g. 'S01/happy_3.png'."
            )

    def check_classes(self, examples, root) -> None:
        """Every declared class must have images: an empty one would train an output that is never right."""
        present = {e.expression for e in examples}
        empty = [c for c in self.CLASS_NAMES if c not in present]
        if empty and self.builder_config.every_class:
            names = ", ".join(repr(c) for c in empty)
            kept = ",".join(f"'{c}'" for c in self.CLASS_NAMES if c in present)
            raise DataError(
                f"Declared class(es) {names} have no images under {root} (an empty folder, or no file's "
                f"label names them). Remove them from --config.data.class_names (e.g. "
                f"--config.data.class_names=\"({kept})\"), or add their images."
            )
