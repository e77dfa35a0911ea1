"""Fold files round-trip on every builder that has subjects: replaying a run's own `folds.json` with
`--config.data.fold_file` gives exactly the folds the run had (the same held-out subjects and records).

Each builder reads a tiny fixture laid out like the real distribution (random noise, no real faces), from
the writers of the builders' own tests.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from idfer_jax import config_defaults
from idfer_jax.data import datasets
from tests.test_benchmarks_lab import write_ck_plus, write_image, write_kdef, write_mmi, write_oulu_casia
from tests.test_benchmarks_wild import _bu3dfe_tree, _pie


def write_ck_plus48(root: pathlib.Path) -> pathlib.Path:
    folder = root / "CK+48"
    for i, subject in enumerate(("S005", "S010", "S022", "S037")):
        for expression in ("anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"):
            write_image(folder / expression / f"{subject}_{i + 1:03d}_00000010.png", (48, 48))
    return root


def write_jaffe(root: pathlib.Path) -> pathlib.Path:
    folder = root / "jaffe"
    index = 1
    for subject in ("KA", "KL", "KM", "NA"):
        for code in ("NE", "AN", "DI", "FE", "HA", "SA", "SU"):
            write_image(folder / f"{subject}.{code}1.{index}.tiff", (64, 64))
            index += 1
    return root


def write_multi_pie(root: pathlib.Path) -> pathlib.Path:
    for subject in ("001", "002", "003"):
        for session, recording in (("01", "01"), ("01", "02")):
            _pie(root / "Multi-Pie", subject, session, recording, "05_1", "07")
    return root


def write_bu3dfe(root: pathlib.Path) -> pathlib.Path:
    _bu3dfe_tree(root)
    return root


# builder name, builder config, fixture writer of the manual folder
BUILDERS = [
    ("ck_plus48", "48px", write_ck_plus48),
    ("jaffe", "64px", write_jaffe),
    ("ck_plus", "48px", lambda root: write_ck_plus(root / "CK+").parent),
    ("oulu_casia", "48px", lambda root: (write_oulu_casia(root / "Oulu-CASIA"), root)[1]),
    ("mmi", "48px", lambda root: (write_mmi(root / "MMI"), root)[1]),
    ("kdef", "64px", lambda root: (write_kdef(root), root)[1]),
    ("bu3dfe", "64px", write_bu3dfe),
    ("multi_pie", "64px", write_multi_pie),
]


@pytest.mark.parametrize("name,builder_config,write", BUILDERS, ids=[b[0] for b in BUILDERS])
def test_replaying_a_runs_own_fold_file_gives_the_same_folds(tmp_path, name, builder_config, write):
    manual = write(tmp_path / "manual")
    size = int(builder_config.removesuffix("px"))
    data_config = config_defaults.data(
        name=name, config=builder_config, image_size=size, data_dir=str(tmp_path / "tfds"),
        manual_dir=str(manual), protocol="kfold", num_folds=2, class_names=(),
    )
    for fold in range(2):
        data_config.fold = fold
        run = datasets.open_dataset(data_config)
        names = run.fold_file["test_subject_names"]
        flat = [n for f in names for n in f]
        assert all(flat) and len(set(flat)) == len(flat), names  # every subject named, once
        path = tmp_path / f"folds_{fold}.json"
        datasets.write_fold_file(run, str(path))
        replay_config = data_config.copy_and_resolve_references()
        replay_config.fold_file = str(path)
        replay_config.split_seed = 7  # a fold file overrides the seed: the split must still be the same
        replay = datasets.open_dataset(replay_config)
        assert len(run.test_indices) and len(run.train_indices)
        np.testing.assert_array_equal(replay.test_indices, run.test_indices)
        np.testing.assert_array_equal(replay.train_indices, run.train_indices)
        assert json.loads(path.read_text())["test_subject_names"] == replay.fold_file["test_subject_names"]
