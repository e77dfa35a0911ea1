"""The measures that say whether a generator worked (`evaluation.generation`)."""

from __future__ import annotations

import numpy as np
import pytest

from idfer_jax.evaluation import generation as G


def test_face_region_is_a_central_ellipse_without_the_corners():
    mask = G.face_region(64, 48)
    assert mask.shape == (64, 48) and set(np.unique(mask)) == {0.0, 1.0}
    assert mask[34, 24] == 1 and mask[0, 0] == 0 and mask[-1, -1] == 0 and mask[34, 0] == 0
    assert 0.3 < mask.mean() < 0.6


def test_face_l1_reads_the_face_region_only():
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(G.face_l1(a, a), 0.0)
    b = a.copy()
    outside = G.face_region(32, 32) == 0
    b[:, outside] = -a[:, outside]  # a background change costs nothing
    np.testing.assert_allclose(G.face_l1(a, b), 0.0)
    c = a + 0.5 * G.face_region(32, 32)[None, :, :, None]
    np.testing.assert_allclose(G.face_l1(a, c), 0.5, rtol=1e-5)


def test_identity_references_separate_same_and_other_subjects():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 16))
    subjects = np.repeat(np.arange(5), 4)
    embeddings = centres[subjects] + 0.1 * rng.normal(size=(20, 16))
    refs = G.identity_references(embeddings, subjects)
    assert refs["identity_cosine_same_subject"] > 0.9
    assert refs["identity_cosine_other_subject"] < 0.5
    np.testing.assert_allclose(G.cosine(embeddings, embeddings), 1.0)


def test_the_reader_learns_a_readable_expression_and_rejects_bad_input():
    # Class k: a bright bar across rows 4k..4k+2 (the reader flips images: a mirror keeps the class).
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200)
    images = rng.uniform(-1, -0.5, (200, 16, 16, 1)).astype(np.float32)
    for i, k in enumerate(labels):
        images[i, 4 * k + 1:4 * k + 3, 3:13] = 1.0
    read = G.train_reader(images[:150], labels[:150], 4, steps=150, batch_size=32)
    assert np.mean(read(images[150:]) == labels[150:]) > 0.9
    with pytest.raises(ValueError, match="reader_steps"):
        G.train_reader(images, labels, 4, steps=0)


def test_crossval_rows_carry_the_generators_measures():
    from idfer_jax.train.crossval import _fold_row

    results = {"fold": 0, "accuracy": 0.5, "mean_class_accuracy": 0.5, "chance": 0.25,
               "confusion_matrix": [[1, 0], [0, 1]], "num_test_images": 2, "num_test_subjects": 1,
               "transfer": {"read_as_target": 0.4, "face_l1_to_counterfactual": 0.01,
                            "face_l1_copy_input": 0.02},
               "neutralisation": {"neutral_distance_ratio": 0.7}}
    row = _fold_row(results)
    assert row["transfer read as target"] == 0.4 and row["copy-input face L1"] == 0.02
    assert row["neutral distance ratio"] == 0.7 and "reader on true counterfactuals" not in row


def test_a_counterfactual_outside_the_runs_classes_or_merged_onto_its_own_is_unpaired():
    from idfer_jax.data import pipeline

    partners = pipeline.Partners(None, {}, np.zeros(0, int), "counterfactual", neutral_class=0,
                                 has_counterfactual=True)
    image, other = np.zeros((4, 4, 3), np.uint8), np.ones((4, 4, 3), np.uint8)
    rng = np.random.default_rng(0)
    for stored, paired in ((3, 1.0), (-1, 0.0), (2, 0.0)):  # another class, left out, merged (own = 2)
        record = {"image": image, "expression": 2, "counterfactual_image": other,
                  "counterfactual_expression": stored, "_record": 0}
        partner = partners.random_map(record, rng)["_partner"]
        assert partner["mask"] == paired
        assert partner["expression"] == (stored if paired else 2)
        assert (partner["image"] is other) == bool(paired)


def test_reader_steps_below_one_is_refused_when_the_config_is_loaded():
    from idfer_jax import api
    from idfer_jax.configuration import ConfigError, validate
    from tests import helpers

    config = api.load_config(helpers.smoke("fersnet"))
    config.eval.reader_steps = 0
    with pytest.raises(ConfigError, match="eval.reader_steps"):
        validate(config)
