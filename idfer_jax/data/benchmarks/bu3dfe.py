"""BU-3DFE (Yin et al. 2006), 2-D frontal images: 100 subjects, 6 expressions x 4 intensities + neutral.

Layout of the distribution (Binghamton University, licence agreement), one folder per subject:

  BU-3DFE/F0001/F0001_AN01WH_F2D.bmp ... F0001_AN04WH_F2D.bmp, F0001_NE00WH_F2D.bmp, ...
  BU-3DFE/M0001/...                     (F0001-F0056 female, M0001-M0044 male)

File name: `<subject>_<expression><intensity><race>_<kind>.<ext>`, expression AN DI FE HA SA SU with
intensity 01 (low) - 04 (peak), NE00 for the one neutral scan; race WH, BL, AE, AM, IN or LA. Only the
`F2D.bmp` files (the frontal 2-D texture image of each scan) are read; the 3-D models (`F3D.wrl`,
`RAW.wrl`), their textures (`F3D.bmp`) and landmarks (`.bnd`, `.pse`) are ignored. 100 x (24 + 1) = 2500
images, 7 classes with neutral.

Intensities [choice]: the `<size>px` configs keep all 4 intensities; `<size>px_i34` keeps 3 and 4 and
`<size>px_i4` only the peak (4) -- the subsets most papers use (e.g. `--config.data.config=64px_i4`; any
digits 1-4 parse, and `aligned_` prefixes work as usual). The neutral image is kept in every variant (6-class
runs leave it out with `config.data.class_names`). `subject` is the folder id (`F0001`), `sequence` the
expression code (`AN`), so the intensities of one expression share a sequence. The standard protocol is
subject-independent 10-fold cross-validation, so the only split is `train`.

Views: only the frontal images, so there is no pose feature (POSE_KEYS = ()). Renders at other yaws made
from the 3-D models are not part of the distribution and are not read [choice]; a subclass can widen
`FILE_PATTERN` and set POSE_KEYS to add them.

[Unsure: the size and framing of the F2D images (about 512x512 with the head filling most of the frame in
the copies described in papers), so no fixed crop box is applied -- prefer the `aligned_*` configs; the
archive name (`BU-3DFE.zip`), and whether an archive adds a top folder (folders up to two levels below the
manual directory are found).]
"""

from __future__ import annotations

import dataclasses
import re

from etils import epath

from idfer_jax.data import face_builder as fb

_SUBJECT = re.compile(r"^[FM]\d{4}$", re.IGNORECASE)
_CODES = ("NE", "AN", "DI", "FE", "HA", "SA", "SU")
_CONFIG = re.compile(r"^(aligned_)?(\d+)px(?:_i([1-4]+))?$")
ALL_INTENSITIES = (1, 2, 3, 4)


@dataclasses.dataclass(eq=False)
class Bu3dfeConfig(fb.FaceConfig):
    """A face config that also says which expression intensities (1-4) to keep; neutral is always kept."""

    intensities: tuple[int, ...] = ALL_INTENSITIES


def bu3dfe_config(name: str) -> Bu3dfeConfig:
    """'64px' (all intensities), '64px_i34', 'aligned_112px_i4' -> Bu3dfeConfig."""
    match = _CONFIG.match(name)
    if not match:
        raise ValueError(
            f"Config name {name!r} is not of the form '<size>px[_i<intensities>]' or "
            "'aligned_<size>px[_i<intensities>]' (e.g. '64px', '64px_i34', 'aligned_112px_i4')."
        )
    base = fb.face_config(name[: match.end(2) + 2])
    intensities = tuple(sorted({int(d) for d in match.group(3)})) if match.group(3) else ALL_INTENSITIES
    kept = "all intensities" if intensities == ALL_INTENSITIES else "intensity " + "+".join(
        str(i) for i in intensities)
    return Bu3dfeConfig(name=name, image_size=base.image_size, aligned=base.aligned,
                        description=f"{base.description[:-1]}; {kept} + neutral.", intensities=intensities)


class Bu3dfe(fb.FaceBuilder):
    """BU-3DFE (Yin et al. 2006) frontal 2-D images: 100 subjects, 7 classes, intensity subsets as configs."""

    CLASS_NAMES = fb.ordered(fb.canonical_expression(c) for c in _CODES)
    BUILDER_CONFIG_CLASS = Bu3dfeConfig
    BUILDER_CONFIGS = [bu3dfe_config(f"{prefix}{size}px{suffix}") for prefix in ("", "aligned_")
                       for size in (64, 96, 112) for suffix in ("", "_i34", "_i4")]
    ROOT_MARKERS = ("F0001",)
    ARCHIVES = ("BU-3DFE.zip",)
    FOLDER = "BU-3DFE"
    # <subject>_<expression><intensity><race>_F2D.bmp
    FILE_PATTERN = re.compile(r"^([FM]\d{4})_(NE|AN|DI|FE|HA|SA|SU)(\d{2})([A-Z]{2})_F2D\.bmp$",
                              re.IGNORECASE)
    DESCRIPTION = __doc__
    HOMEPAGE = "https://www.cs.binghamton.edu/~lijun/Research/3DFE/3DFE_Analysis.html"
    CITATION = (
        "Yin, Wei, Sun, Wang, Rosato: A 3D facial expression database for facial behavior research. "
        "FG 2006."
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = fb.manual_instructions(
        archives=("BU-3DFE.zip",),
        obtain="Binghamton University (https://www.cs.binghamton.edu/~lijun/Research/3DFE/"
        "3DFE_Analysis.html, licence agreement)",
        folder="BU-3DFE",
        layout="  BU-3DFE/<subject>/<subject>_<expression><intensity><race>_F2D.bmp, e.g. "
        "BU-3DFE/F0001/F0001_AN04WH_F2D.bmp and BU-3DFE/F0001/F0001_NE00WH_F2D.bmp, subjects F0001-F0056 "
        "and M0001-M0044 (other files in the subject folders are ignored)",
    )

    def __init__(self, *, config: str | fb.FaceConfig | None = None, **kwargs):
        if isinstance(config, str) and config not in self.builder_configs:
            config = bu3dfe_config(config)
        super().__init__(config=config, **kwargs)

    def is_root(self, path: epath.Path) -> bool:
        return path.is_dir() and any(c.is_dir() and _SUBJECT.match(c.name) for c in path.iterdir())

    def list_examples(self, root: epath.Path, split: str):
        del split
        keep = set(getattr(self.builder_config, "intensities", ALL_INTENSITIES))
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and _SUBJECT.match(p.name)):
            for path in sorted(folder.iterdir()):
                match = self.FILE_PATTERN.match(path.name)
                if not match:
                    continue  # 3-D models, textures, landmarks
                subject, code, intensity, _ = match.groups()
                code, intensity = code.upper(), int(intensity)
                if (code == "NE") != (intensity == 0) or intensity > 4:
                    raise fb.ManualDataError(
                        f"Unexpected intensity in {path}: expected NE00 for neutral and 01-04 for the "
                        "other expressions. Move other files out of the dataset folder."
                    )
                if code != "NE" and intensity not in keep:
                    continue
                yield fb.FaceExample(
                    key=f"{folder.name}/{path.name}", expression=fb.canonical_expression(code),
                    subject=subject.upper(), sequence=code, path=path,
                )
