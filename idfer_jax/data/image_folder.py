"""Your own images as a TFDS dataset: labels from each file's path (a regex) or from a CSV manifest.

    idfer train --config=configs/baseline_image_folder.py --workdir=DIR \
        --config.data.manual_dir=/data/my_faces \
        --config.data.pattern='(?P<subject>[^/]+)/(?P<expression>[a-z]+)_\\d+\\.jpg' \
        --config.data.class_names="('anger','happiness','neutral')"

Path labels: `pattern` is a Python regex with named groups, matched (`re.fullmatch`) against each image's
path relative to `manual_dir`, with `/` separators. The `expression` group is required; `subject`,
`sequence`, `yaw`, `pitch`, `roll` and `split` (values `train` / `test`) are optional. Files the pattern
does not match are skipped and counted in the build log; a pattern that matches nothing is an error.

Manifest labels: `manifest` is a CSV file (absolute, or relative to `manual_dir`) with a header row and the
columns `path` (relative to `manual_dir`) and `expression`, plus any of the optional names above.

Classes are the user's `class_names`, in the order given; an expression value matches its class exactly,
ignoring case, or through the common abbreviations (`HA` -> `happiness`) when the classes use the canonical
names of `face_builder.EXPRESSIONS` (use those to mix your data with the benchmarks). A value that matches
no class is an error naming the file, so a typo never silently drops data.

The prepared dataset's config name carries a digest of the settings and of the folder's file list, so
changing the pattern, the classes or the images prepares a fresh copy instead of reusing a stale one.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
import re
from collections.abc import Iterable

from absl import logging
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
    pose_keys: tuple[str, ...] = ()
    has_splits: bool = False


def _fields(config: ImageFolderConfig) -> tuple[str, ...]:
    if config.pattern:
        return tuple(re.compile(config.pattern).groupindex)
    with open(_manifest_path(config), newline="") as f:
        return tuple(next(csv.reader(f), ()))


def _manifest_path(config) -> str:
    return config.manifest if os.path.isabs(config.manifest) else os.path.join(config.root, config.manifest)


def _folder_digest(root: str) -> str:
    """Changes when a file under `root` is added, removed or modified."""
    h = hashlib.sha1()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            stat = os.stat(os.path.join(dirpath, name))
            h.update(f"{os.path.relpath(os.path.join(dirpath, name), root)}|{stat.st_size}|"
                     f"{stat.st_mtime_ns}\n".encode())
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
    size, aligned = int(data_config.image_size), "aligned" in (data_config.get("config") or "")
    config = ImageFolderConfig(name="pending", root=os.path.abspath(root), pattern=pattern,
                               manifest=manifest, class_names=class_names, image_size=size,
                               aligned=aligned)
    if manifest and not os.path.isfile(_manifest_path(config)):
        raise DataError(f"Manifest {_manifest_path(config)} does not exist.")
    fields = _fields(config)
    if manifest and not {"path", "expression"} <= set(fields):
        raise DataError(
            f"Manifest {_manifest_path(config)} needs the header columns 'path' and 'expression' "
            f"(it has {', '.join(fields) or 'none'})."
        )
    settings = repr((config.root, pattern, manifest, class_names, size, aligned))
    digest = hashlib.sha1((settings + _folder_digest(config.root)).encode()).hexdigest()[:12]
    config = dataclasses.replace(
        config,
        name=f"{fb.config_name(size, aligned)}_{digest}",
        description=f"Images under {config.root}, {'pattern' if pattern else 'manifest'} labels.",
        pose_keys=tuple(k for k in POSE_FIELDS if k in fields),
        has_splits="split" in fields,
    )
    return {"config": config}


class ImageFolder(fb.FaceBuilder):
    """A user's own face images with labels from their paths or a CSV manifest (see the module doc)."""

    BUILDER_CONFIG_CLASS = ImageFolderConfig
    BUILDER_CONFIGS = []
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

    def _class_of(self, value: str, where: str) -> str:
        names = self.CLASS_NAMES
        if value in names:
            return value
        lowered = {n.lower(): n for n in names}
        if value.lower() in lowered:
            return lowered[value.lower()]
        try:
            canonical = fb.canonical_expression(value)
        except ValueError:
            canonical = None
        if canonical in names:
            return canonical
        raise DataError(
            f"{where}: expression {value!r} is none of the declared classes {', '.join(names)}. Add it to "
            "--config.data.class_names, or move the file out of the folder."
        )

    def _labelled(self, root: epath.Path) -> Iterable[tuple[str, dict]]:
        """(relative path, label fields) of every labelled image."""
        cfg = self.builder_config
        if cfg.manifest:
            with open(_manifest_path(cfg), newline="") as f:
                for row in csv.DictReader(f):
                    yield row["path"], {k: v for k, v in row.items() if v not in (None, "")}
            return
        pattern = re.compile(cfg.pattern)
        unmatched = 0
        for path in fb.image_files(root):
            relative = os.path.relpath(os.fspath(path), os.fspath(root)).replace(os.sep, "/")
            match = pattern.fullmatch(relative)
            if match is None:
                unmatched += 1
                continue
            yield relative, {k: v for k, v in match.groupdict().items() if v is not None}
        if unmatched:
            logging.warning("image_folder: %d image files under %s do not match the pattern and are "
                            "left out.", unmatched, root)

    def list_examples(self, root: epath.Path, split: str):
        count = 0
        for relative, fields in self._labelled(root):
            if self.builder_config.has_splits:
                value = fields.get("split", "train").lower()
                if value not in ("train", "test"):
                    raise DataError(f"{relative}: split {value!r} must be 'train' or 'test'.")
                if value != split:
                    continue
            path = root / relative
            if not path.exists():
                raise DataError(f"{relative} (listed in the manifest) does not exist under {root}.")
            try:
                pose = {k: float(fields[k]) for k in self.POSE_KEYS}
            except (KeyError, ValueError) as e:
                raise DataError(f"{relative}: pose {self.POSE_KEYS} missing or not a number ({e}).") from e
            count += 1
            yield fb.FaceExample(
                key=relative, expression=self._class_of(fields["expression"], relative),
                subject=fields.get("subject"), sequence=fields.get("sequence"), pose=pose, path=path,
            )
        if not count:
            what = f"pattern {self.builder_config.pattern!r}" if self.builder_config.pattern else "manifest"
            raise DataError(
                f"No image under {root} is labelled by the {what} (split {split!r}). The pattern is matched "
                "against each path relative to manual_dir with '/' separators, e.g. 'S01/happy_3.png'."
            )
