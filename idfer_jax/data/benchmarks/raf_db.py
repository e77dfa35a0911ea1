"""RAF-DB basic (Li, Deng, Du 2017): 15,339 web faces, 7 classes, official train / test split.

Layout of the `basic` part of the distribution (the authors send it on request):

  basic/EmoLabel/list_patition_label.txt   (sic) lines `train_00001.jpg 5`, `test_0001.jpg 1`
  basic/Image/aligned/train_00001_aligned.jpg, test_0001_aligned.jpg, ...  (100x100 RGB, aligned)
  basic/Image/original/train_00001.jpg, ...                               (not used)

Labels: 1 surprise, 2 fear, 3 disgust, 4 happiness, 5 sadness, 6 anger, 7 neutral. The split is the file
name's prefix: `train_` -> `train` (12,271 images), `test_` -> `test` (3,068). Only the aligned images are
read [choice: they are what papers train on; the originals would need a face detector]. No subject ids
(`subject` = -1). `file_name` is `Image/aligned/<name>_aligned.jpg`.

[Unsure: some copies ship `Image/aligned.zip` unextracted; it must be extracted in place first (the error
says so).]
"""

from __future__ import annotations

import re

from etils import epath

from idfer_jax.data import face_builder as fb

LABELS = "EmoLabel/list_patition_label.txt"
ALIGNED = "Image/aligned"
_CODES = {1: "surprise", 2: "fear", 3: "disgust", 4: "happiness", 5: "sadness", 6: "anger", 7: "neutral"}
_LINE = re.compile(r"^(train|test)_(\d+)\.jpg\s+(\d+)$")


class RafDb(fb.FaceBuilder):
    """RAF-DB basic (Li et al. 2017): aligned 100x100 faces, 7 classes, official train / test split."""

    CLASS_NAMES = fb.ordered(_CODES.values())
    SPLITS = ("train", "test")
    HAS_SUBJECTS = False
    ROOT_MARKERS = (LABELS, ALIGNED)
    ARCHIVES = ("basic.zip",)
    FOLDER = "basic"
    BUILDER_CONFIGS = fb.face_configs((64, 100, 112))
    DESCRIPTION = __doc__
    HOMEPAGE = "http://www.whdeng.cn/raf/model1.html"
    CITATION = (
        "Li, Deng, Du: Reliable crowdsourcing and deep locality-preserving learning for expression "
        "recognition in the wild. CVPR 2017."
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = fb.manual_instructions(
        archives=("basic.zip",),
        obtain="the RAF-DB authors (http://www.whdeng.cn/raf/model1.html, research agreement)",
        folder="basic",
        layout=f"  basic/{LABELS} (lines 'train_00001.jpg 5', labels 1-7)\n"
        f"  basic/{ALIGNED}/train_00001_aligned.jpg, ... (extract Image/aligned.zip in place if your copy "
        "has it)",
    )

    _labels: dict[str, list[tuple[str, str]]] | None = None

    def find_root(self, dl_manager) -> epath.Path:
        try:
            return super().find_root(dl_manager)
        except fb.ManualDataError as error:
            try:
                manual = epath.Path(dl_manager.manual_dir)
            except AssertionError:
                raise error from None
            for place in (manual, manual / self.FOLDER):
                if (place / LABELS).exists() and (place / "Image" / "aligned.zip").exists():
                    raise fb.ManualDataError(
                        f"{place / 'Image' / 'aligned.zip'} is not extracted: extract it so that the images "
                        f"are in {place / ALIGNED}/, then run the same command again."
                    ) from error
            raise

    def read_labels(self, root: epath.Path) -> dict[str, list[tuple[str, str]]]:
        """{split: [(image name, canonical expression)]} from the partition file."""
        path = root / LABELS
        out: dict[str, list[tuple[str, str]]] = {s: [] for s in self.SPLITS}
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            match = _LINE.match(line.strip())
            if not match or int(match.group(3)) not in _CODES:
                raise fb.ManualDataError(
                    f"Line {number} of {path} is {line.strip()!r}; expected '<train|test>_<number>.jpg "
                    "<label 1-7>'. Replace the file with the original from the RAF-DB download."
                )
            split, index, code = match.groups()
            out[split].append((f"{split}_{index}", _CODES[int(code)]))
        return out

    def list_examples(self, root: epath.Path, split: str):
        if self._labels is None:
            self._labels = self.read_labels(root)
        missing = []
        for stem, expression in self._labels[split]:
            path = root / ALIGNED / f"{stem}_aligned.jpg"
            if not path.exists():
                missing.append(path.name)
                continue
            yield fb.FaceExample(key=f"{ALIGNED}/{path.name}", expression=expression, path=path)
        if missing:
            raise fb.ManualDataError(
                f"{len(missing)} aligned image(s) listed in {root / LABELS} are missing from "
                f"{root / ALIGNED} (e.g. {', '.join(missing[:3])}). Extract the complete Image/aligned "
                "folder from the RAF-DB download."
            )
