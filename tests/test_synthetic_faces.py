"""Tests of the procedural face renderer and its TFDS builder (smoke config, well under a minute)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow_datasets as tfds

from idfer_jax.data import synthetic_faces as sf

SMOKE = sf.SyntheticFacesConfig(name='test_smoke', resolution=32, num_subjects=24,
                                samples_per_expression=4)


def _first_of(config: sf.SyntheticFacesConfig, subject: int, expression: int) -> int:
    per_subject = len(sf.EXPRESSIONS) * config.samples_per_expression
    return subject * per_subject + expression * config.samples_per_expression


@pytest.mark.parametrize('resolution', [32, 64])
def test_render_is_deterministic_uint8_rgb(resolution: int) -> None:
    factors = sf.sample_example_factors(SMOKE, 37)
    image = sf.render(factors, resolution)
    assert image.shape == (resolution, resolution, 3)
    assert image.dtype == np.uint8
    again = sf.render(sf.sample_example_factors(SMOKE, 37), resolution)
    assert image.tobytes() == again.tobytes()
    # A face, not a flat image.
    assert image.std() > 10


def test_factors_are_deterministic_and_cover_every_expression() -> None:
    assert sf.sample_example_factors(SMOKE, 5) == sf.sample_example_factors(SMOKE, 5)
    other_seed = dataclasses.replace(SMOKE, seed=1)
    assert sf.sample_example_factors(SMOKE, 5)['yaw'] != sf.sample_example_factors(
        other_seed, 5)['yaw']
    factors = [sf.sample_example_factors(SMOKE, i) for i in range(SMOKE.num_examples)]
    counts = np.zeros((SMOKE.num_subjects, len(sf.EXPRESSIONS)), int)
    for f in factors:
        counts[f['subject'], f['expression']] += 1
        if f['expression'] == 0:
            assert f['intensity'] == 0.0
        else:
            assert 0.5 <= f['intensity'] <= 1.0
    assert (counts == SMOKE.samples_per_expression).all()
    # Identity is a property of the subject, not of the example.
    assert factors[0]['identity'] == factors[27]['identity'] != factors[28]['identity']
    with pytest.raises(IndexError):
        sf.sample_example_factors(SMOKE, SMOKE.num_examples)


def test_neutral_render_is_the_same_face_without_expression() -> None:
    surprise = sf.sample_example_factors(SMOKE, _first_of(SMOKE, 3, 6))
    image = sf.render(surprise, 64)
    neutral = sf.render(surprise, 64, neutral=True)
    assert np.abs(image.astype(int) - neutral).mean() > 0.5
    as_neutral = sf.render({**surprise, 'expression': 0}, 64)
    np.testing.assert_array_equal(neutral, as_neutral)

    calm = sf.sample_example_factors(SMOKE, _first_of(SMOKE, 3, 0))
    np.testing.assert_array_equal(sf.render(calm, 64, neutral=True), sf.render(calm, 64))


def test_every_expression_changes_the_face() -> None:
    base = sf.sample_example_factors(SMOKE, _first_of(SMOKE, 1, 0))
    images = [sf.render({**base, 'expression': e, 'intensity': 0.5}, 64)
              for e in range(len(sf.EXPRESSIONS))]
    for a in range(len(images)):
        for b in range(a + 1, len(images)):
            assert np.abs(images[a].astype(int) - images[b]).sum() > 0, (a, b)


def test_counterfactual_is_the_same_face_with_another_expression() -> None:
    happy = sf.sample_example_factors(SMOKE, _first_of(SMOKE, 2, 4))
    surprised = sf.counterfactual_factors(happy, 6, 0.9)
    for key in ('subject', 'yaw', 'pitch', 'roll', 'background_a', 'noise_seed', 'light_azimuth', 'identity'):
        assert surprised[key] == happy[key], key
    a, b = sf.render(happy, 64).astype(int), sf.render(surprised, 64).astype(int)
    changed = np.abs(a - b).max(-1) > 8
    assert changed.mean() > 0.01  # the expression shows
    # ... only where a face changes expression: the top (hair) and the sides (background) are untouched
    # (a dropped jaw reaches the bottom rows).
    border = np.zeros((64, 64), bool)
    border[:10] = border[:, :6] = border[:, -6:] = True
    assert not changed[border].any()
    # Neutral is intensity 0 whatever is asked, i.e. the stored neutral render.
    np.testing.assert_array_equal(sf.render(sf.counterfactual_factors(happy, 0, 0.7), 64),
                                  sf.render(happy, 64, neutral=True))
    with pytest.raises(ValueError, match='expression'):
        sf.counterfactual_factors(happy, 7, 0.5)


def test_counterfactual_targets_are_other_expressions_drawn_evenly() -> None:
    targets = [sf.sample_counterfactual_target(SMOKE, i) for i in range(SMOKE.num_examples)]
    own = [sf.sample_example_factors(SMOKE, i)['expression'] for i in range(SMOKE.num_examples)]
    assert all(t != o for (t, _), o in zip(targets, own, strict=True))
    counts = np.bincount([t for t, _ in targets], minlength=7)
    assert counts.min() > 0.6 * counts.mean(), counts
    assert all((a == 0) == (t == 0) for t, a in targets)
    assert targets == [sf.sample_counterfactual_target(SMOKE, i) for i in range(SMOKE.num_examples)]


def test_yaw_rotates_the_head_in_3d() -> None:
    # Every texture and part of a subject is mirror-symmetric, so with symmetric light, background
    # and framing, yaw -40 must be the mirror image of yaw +40 while differing from it.
    factors = {**sf.sample_example_factors(SMOKE, _first_of(SMOKE, 2, 0)),
               'pitch': 0.0, 'roll': 0.0, 'gaze_x': 0.0, 'light_azimuth': 0.0,
               'background_angle': 90.0, 'noise_std': 0.0, 'shift_x': 0.0}
    left = sf.render({**factors, 'yaw': -40.0}, 64).astype(float)
    right = sf.render({**factors, 'yaw': 40.0}, 64).astype(float)
    assert np.abs(left - right[:, ::-1]).mean() < 1.0
    assert np.abs(left - right).mean() > 8.0

    # The nose (parallax) moves with the yaw: its projection is right of centre for yaw > 0.
    front = sf.render({**factors, 'yaw': 0.0}, 64).astype(float)
    np.testing.assert_allclose(front, front[:, ::-1], atol=1.5)
    moved = np.abs(right - front).sum(-1)
    cols = np.arange(64)
    centre_of_change = (moved.sum(0) * cols).sum() / moved.sum()
    assert centre_of_change != pytest.approx(31.5, abs=0.5)


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        SMOKE.resolution = 16  # type: ignore[misc]
    assert dataclasses.replace(SMOKE, resolution=16).resolution == 16


@pytest.fixture(scope='module')
def smoke_source(smoke_data_dir: str):
    # The session fixture has prepared synthetic_faces/smoke into smoke_data_dir.
    builder = tfds.builder('synthetic_faces/smoke', data_dir=smoke_data_dir)
    assert builder.is_prepared()
    source = tfds.data_source('synthetic_faces/smoke', split='train', data_dir=smoke_data_dir)
    return builder, source


def test_builder_smoke_prepares_and_reads(smoke_source) -> None:
    builder, source = smoke_source
    assert builder.info.supervised_keys == ('image', 'expression')
    assert builder.info.features['expression'].names == list(sf.EXPRESSIONS)
    assert len(source) == 24 * 7 * 8
    examples = [source[i] for i in range(len(source))]
    ex = examples[0]
    for key in ('image', 'neutral_image', 'counterfactual_image'):
        assert ex[key].shape == (48, 48, 3) and ex[key].dtype == np.uint8
    features = builder.info.features
    assert features['intensity'].np_dtype == np.float32
    assert features['subject'].np_dtype == np.int64
    assert features['example_id'].np_dtype == np.int64
    for key in ('yaw', 'pitch', 'roll'):
        assert features[key].np_dtype == np.float32

    subjects = np.array([e['subject'] for e in examples])
    expressions = np.array([e['expression'] for e in examples])
    assert sorted({int(s) for s in subjects}) == list(range(24))
    for s in range(24):
        assert np.bincount(expressions[subjects == s], minlength=7).tolist() == [8] * 7
    assert sorted(int(e['example_id']) for e in examples) == list(range(len(examples)))
    # smoke draws a quarter of the full pose ranges and only strong expressions.
    assert max(abs(e['yaw']) for e in examples) <= 15
    assert max(abs(e['pitch']) for e in examples) <= 25 / 4
    assert max(abs(e['roll']) for e in examples) <= 15 / 4
    assert all((e['intensity'] == 0) == (e['expression'] == 0) for e in examples)
    assert min(e['intensity'] for e in examples if e['expression']) >= 0.8

    # The stored images are the renders of the stored example's factors (PNG is lossless).
    ex = next(e for e in examples if e['expression'] != 0)
    factors = sf.sample_example_factors(builder.builder_config, int(ex['example_id']))
    np.testing.assert_array_equal(ex['image'], sf.render(factors, 48))
    np.testing.assert_array_equal(ex['neutral_image'], sf.render(factors, 48, neutral=True))
    # ... and so is its stored counterfactual.
    target, intensity = sf.sample_counterfactual_target(builder.builder_config, int(ex['example_id']))
    assert ex['counterfactual_expression'] == target and ex['counterfactual_expression'] != ex['expression']
    np.testing.assert_allclose(ex['counterfactual_intensity'], intensity, rtol=1e-6)
    np.testing.assert_array_equal(ex['counterfactual_image'],
                                  sf.render(sf.counterfactual_factors(factors, target, intensity), 48))


def test_identity_is_a_strong_factor(smoke_source) -> None:
    _, source = smoke_source
    examples = [source[i] for i in range(len(source))]
    x = np.stack([e['image'] for e in examples]).reshape(len(examples), -1).astype(np.float32)
    x = (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-6)
    subjects = np.array([e['subject'] for e in examples])
    rng = np.random.default_rng(0)
    test = np.zeros(len(x), bool)
    for s in np.unique(subjects):
        idx = rng.permutation(np.flatnonzero(subjects == s))
        test[idx[: len(idx) // 2]] = True
    nearest = np.argmax(x[test] @ x[~test].T, axis=1)
    accuracy = np.mean(subjects[~test][nearest] == subjects[test])
    assert accuracy > 5 / 24, accuracy


def test_custom_config_through_tfds_builder(tmp_path) -> None:
    config = sf.SyntheticFacesConfig(name='tiny_custom', resolution=16, num_subjects=2,
                                     samples_per_expression=1, seed=3)
    builder = tfds.builder('synthetic_faces', config=config, data_dir=str(tmp_path))
    builder.download_and_prepare(file_format='array_record')
    source = builder.as_data_source('train')
    assert len(source) == 14
    assert source[0]['image'].shape == (16, 16, 3)


def test_default_config_spans_the_full_pose_ranges() -> None:
    config = sf.SyntheticFaces.builder_configs['64px']
    factors = [sf.sample_example_factors(config, i) for i in range(0, config.num_examples, 7)]
    for key, limit in (('yaw', 60), ('pitch', 25), ('roll', 15)):
        values = np.array([f[key] for f in factors])
        assert np.abs(values).max() <= limit and np.abs(values).max() > 0.9 * limit, key
    intensities = [f['intensity'] for f in factors if f['expression']]
    assert 0.5 <= min(intensities) < 0.55 and max(intensities) <= 1.0
