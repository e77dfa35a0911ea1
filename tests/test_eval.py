"""Tests of idfer_jax.evaluation: metrics, leakage probes, plots and reports."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from idfer_jax.evaluation import metrics, plots, probes, report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------------


def test_confusion_matrix_hand_example_with_mask():
    labels = np.array([0, 0, 1, 2, 2, 2, -1])  # last example is padding with a junk label
    preds = np.array([0, 1, 1, 2, 0, 2, 5])
    mask = np.array([1, 1, 1, 1, 1, 0, 0])  # drops one correct "2" and the padding
    expected = np.array(
        [
            [1, 1, 0],
            [0, 1, 0],
            [1, 0, 1],
        ]
    )
    got = metrics.confusion_matrix(labels, preds, 3, mask=mask)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.int64
    # Without the mask the junk padding label must be reported, not silently counted.
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        metrics.confusion_matrix(labels, preds, 3)


def test_confusion_matrix_validates_inputs():
    with pytest.raises(ValueError, match="same length"):
        metrics.confusion_matrix([0, 1], [0], 2)
    with pytest.raises(ValueError, match="argmax"):
        metrics.confusion_matrix([0, 1], np.zeros((2, 3)), 3)
    with pytest.raises(ValueError, match="predictions must lie"):
        metrics.confusion_matrix([0, 1], [0, 2], 2)
    with pytest.raises(ValueError, match="0/1"):
        metrics.confusion_matrix([0, 1], [0, 1], 2, mask=[0.5, 1.0])


def test_accumulator_over_padded_batches_equals_one_shot():
    rng = np.random.default_rng(0)
    n, k, batch = 53, 4, 16
    labels = rng.integers(0, k, n)
    preds = np.where(rng.random(n) < 0.6, labels, rng.integers(0, k, n))
    acc = metrics.ConfusionAccumulator(k)
    for start in range(0, n, batch):  # last batch is padded with -1 labels and mask 0
        lab = np.full(batch, -1)
        prd = np.zeros(batch, dtype=int)
        msk = np.zeros(batch)
        m = min(batch, n - start)
        lab[:m], prd[:m], msk[:m] = labels[start : start + m], preds[start : start + m], 1
        acc.update(lab, prd, mask=msk)
    one_shot = metrics.confusion_matrix(labels, preds, k)
    np.testing.assert_array_equal(acc.matrix, one_shot)
    assert acc.count == n
    assert acc.accuracy == pytest.approx(np.mean(labels == preds))
    recall = [np.mean(preds[labels == c] == c) for c in range(k)]
    np.testing.assert_allclose(acc.per_class_recall, recall)
    assert acc.mean_class_accuracy == pytest.approx(np.mean(recall))


def test_accumulator_known_accuracies_and_empty_error():
    acc = metrics.ConfusionAccumulator(3)
    with pytest.raises(ValueError, match="empty"):
        _ = acc.accuracy
    # 8 of class 0 (all right), 2 of class 1 (one right), class 2 absent.
    acc.update([0] * 8 + [1, 1], [0] * 8 + [1, 0])
    assert acc.accuracy == pytest.approx(0.9)
    assert acc.mean_class_accuracy == pytest.approx(0.75)  # absent class 2 not averaged in
    assert math.isnan(acc.per_class_recall[2])
    acc.reset()
    assert acc.count == 0


def test_masked_accuracy_and_mean_std():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 9.0]])
    labels = np.array([0, 0, 0, 1])
    assert metrics.masked_accuracy(logits, labels, np.array([1, 1, 1, 0])) == pytest.approx(2 / 3)
    assert metrics.masked_accuracy(logits, labels, None) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="masked out"):
        metrics.masked_accuracy(logits, labels, np.zeros(4))
    mean, std = metrics.mean_and_std([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0) and std == pytest.approx(math.sqrt(2 / 3))  # ddof=0
    assert metrics.mean_and_std([0.7]) == (pytest.approx(0.7), 0.0)
    with pytest.raises(ValueError):
        metrics.mean_and_std([])


# --------------------------------------------------------------------------------------------------
# within-subject split
# --------------------------------------------------------------------------------------------------


def test_split_within_subjects_by_image():
    rng = np.random.default_rng(1)
    subjects = np.concatenate([rng.integers(0, 10, 200), [99]])  # subject 99 has one image
    train, test = probes.split_within_subjects(subjects, seed=3)
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(201))
    for s in np.unique(subjects):
        if np.sum(subjects == s) >= 2:
            assert s in subjects[train] and s in subjects[test]
    assert 200 in train  # the single-image subject is train-only
    again = probes.split_within_subjects(subjects, seed=3)
    np.testing.assert_array_equal(again[0], train)
    np.testing.assert_array_equal(again[1], test)
    other = probes.split_within_subjects(subjects, seed=4)
    assert not np.array_equal(other[0], train)


def test_split_within_subjects_keeps_groups_together():
    # 6 subjects x 4 sequences x 3 near-identical frames; sequence numbers restart per subject
    # (as CK+'s 001, 002, ...), so a group is a (subject, sequence) pair.
    subjects = np.repeat(np.arange(6), 12)
    groups = np.tile(np.repeat(np.arange(4), 3), 6)
    train, test = probes.split_within_subjects(subjects, groups=groups, seed=0)
    assert np.intersect1d(train, test).size == 0
    pairs_train = set(zip(subjects[train], groups[train], strict=True))
    pairs_test = set(zip(subjects[test], groups[test], strict=True))
    assert pairs_train.isdisjoint(pairs_test)
    assert set(subjects[train]) == set(subjects[test]) == set(range(6))
    # A subject with one group is train-only even if that group has many images.
    subjects2 = np.concatenate([subjects, [7, 7, 7]])
    groups2 = np.concatenate([groups, [0, 0, 0]])
    train2, test2 = probes.split_within_subjects(subjects2, groups=groups2, seed=0)
    assert 7 not in subjects2[test2]
    with pytest.raises(ValueError, match="No subject has 2 or more groups"):
        probes.split_within_subjects([1, 1, 2], groups=[5, 5, 6])
    with pytest.raises(ValueError, match="No subject has 2 or more images"):
        probes.split_within_subjects([1, 2, 3])


# --------------------------------------------------------------------------------------------------
# identity probes
# --------------------------------------------------------------------------------------------------

NUM_SUBJECTS = 20


@pytest.fixture(scope="module")
def subject_data():
    rng = np.random.default_rng(0)
    subjects = np.repeat(np.arange(NUM_SUBJECTS) * 7 + 100, 20)  # arbitrary ids, re-indexed
    one_hot = np.eye(NUM_SUBJECTS)[(subjects - 100) // 7]
    informative = np.concatenate([one_hot, np.zeros((subjects.size, 12))], axis=1)
    # Class means are sqrt(2) apart and the noise is 0.1 per dim: near-perfectly separable.
    informative += 0.1 * rng.normal(size=informative.shape)
    noise = rng.normal(size=informative.shape)
    return subjects, informative, noise


def test_identity_leakage_detects_identity(subject_data):
    subjects, informative, _ = subject_data
    result = probes.identity_leakage(informative, subjects, seed=0)
    assert result["num_subjects"] == NUM_SUBJECTS
    assert result["chance"] == pytest.approx(1 / NUM_SUBJECTS)
    assert result["num_train"] + result["num_test"] == subjects.size
    assert result["linear_acc"] > 0.95
    assert result["mlp_acc"] > 0.95


def test_identity_leakage_near_chance_on_noise(subject_data):
    subjects, _, noise = subject_data
    result = probes.identity_leakage(noise, subjects, seed=0)
    assert result["linear_acc"] < 3 * result["chance"]
    assert result["mlp_acc"] < 3 * result["chance"]


def test_probes_standardise_with_train_statistics():
    # Features on a huge scale with a large offset: without standardisation the optimisers would
    # diverge or stall; with it the (linearly separable) task is solved.
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 300)
    x = 1e4 * (np.eye(3)[y] + 0.1 * rng.normal(size=(300, 3))) + 5e5
    args = (x[:150], y[:150], x[150:], y[150:])
    assert probes.linear_probe_accuracy(*args) > 0.95
    assert probes.mlp_probe_accuracy(*args, hidden=16, steps=200) > 0.95


# --------------------------------------------------------------------------------------------------
# ridge / pose leakage
# --------------------------------------------------------------------------------------------------


def test_ridge_r2_linear_and_independent_targets():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 16))
    w = rng.normal(size=16)
    y = x @ w + 0.05 * rng.normal(size=400)
    assert probes.ridge_r2(x[:200], y[:200], x[200:], y[200:]) > 0.95
    y_indep = rng.normal(size=400)
    assert probes.ridge_r2(x[:200], y_indep[:200], x[200:], y_indep[200:]) < 0.1


@pytest.mark.parametrize("dim", [5, 60])  # fewer and more features than training examples
def test_ridge_r2_matches_closed_form_for_a_fixed_alpha(dim):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(60, dim)) * 3 + 1
    y = x @ rng.normal(size=dim) + rng.normal(size=60)
    xtr, ytr, xte, yte = x[:40], y[:40], x[40:], y[40:]
    mean, std = xtr.mean(0), xtr.std(0)
    z = (xtr - mean) / std
    coef = np.linalg.solve(z.T @ z + 10.0 * np.eye(dim), z.T @ (ytr - ytr.mean()))
    pred = ((xte - mean) / std) @ coef + ytr.mean()
    expected = 1 - np.sum((yte - pred) ** 2) / np.sum((yte - yte.mean()) ** 2)
    assert probes.ridge_r2(xtr, ytr, xte, yte, alphas=(10.0,)) == pytest.approx(expected)
    fit = probes.fit_ridge(xtr, ytr, alphas=(10.0,))
    np.testing.assert_allclose(fit.coef, coef, rtol=1e-6, atol=1e-9)


def test_ridge_alpha_selected_on_train_side_only(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 20))
    y = x @ rng.normal(size=20) + 3.0 * rng.normal(size=300)
    xtr, ytr, xte, yte = x[:150], y[:150], x[150:], y[150:]

    seen = []
    real_select = probes.select_ridge_alpha

    def spy(x_arg, y_arg, **kwargs):
        seen.append((np.asarray(x_arg).copy(), np.asarray(y_arg).copy()))
        alpha = real_select(x_arg, y_arg, **kwargs)
        seen.append(alpha)
        return alpha

    from idfer_jax.evaluation import ridge

    monkeypatch.setattr(ridge, "select_ridge_alpha", spy)  # where ridge_r2 looks it up
    probes.ridge_r2(xtr, ytr, xte, yte)
    (x_seen, y_seen), alpha_plain = seen
    np.testing.assert_array_equal(x_seen, xtr)
    np.testing.assert_array_equal(y_seen, ytr)

    # A shifted, rescaled, scrambled test side changes R^2 but must not change the chosen alpha.
    seen.clear()
    r2_shifted = probes.ridge_r2(xtr, ytr, 5 * xte + 3, yte[::-1] * 10 + 100)
    assert seen[1] == alpha_plain
    assert r2_shifted < 0  # nonsense test data is scored as such, R^2 may be negative

    # And the selection is meaningful: noisy targets want more shrinkage than clean ones.
    y_clean = x @ rng.normal(size=20) + 0.01 * rng.normal(size=300)
    assert real_select(xtr, ytr, alphas=(0.1, 1000.0)) >= real_select(
        xtr, y_clean[:150], alphas=(0.1, 1000.0)
    )


def test_pose_leakage_keys_and_values(subject_data):
    subjects, _, noise = subject_data
    rng = np.random.default_rng(3)
    yaw = noise[:, :5] @ rng.normal(size=5)
    pitch = rng.normal(size=subjects.size)
    pitch[:10] = np.nan  # unknown pose values are skipped
    result = probes.pose_leakage(noise, subjects, {"yaw": yaw, "pitch": pitch}, seed=0)
    assert set(result) == {"yaw_r2", "pitch_r2"}
    assert result["yaw_r2"] > 0.95
    assert result["pitch_r2"] < 0.1
    constant = probes.pose_leakage(noise, subjects, {"roll": np.zeros(subjects.size)})
    assert math.isnan(constant["roll_r2"])


# --------------------------------------------------------------------------------------------------
# plots and reports
# --------------------------------------------------------------------------------------------------


def test_plots_write_png(tmp_path: Path):
    matrix = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 0]])
    names = ["neutral", "happiness", "surprise"]
    for normalize in (True, False):
        out = plots.plot_confusion_matrix(
            matrix, names, tmp_path / f"cm_{normalize}.png", normalize=normalize, title="fold 1"
        )
        data = Path(out).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    with pytest.raises(ValueError, match="class names"):
        plots.plot_confusion_matrix(matrix, names[:2], tmp_path / "bad.png")
    bars = plots.plot_leakage_bars(
        {
            "baseline": {"linear_acc": 0.6, "mlp_acc": 0.7, "chance": 0.05},
            "adversarial": {"linear_acc": 0.2, "mlp_acc": 0.3, "chance": 0.05},
        },
        tmp_path / "sub" / "leak.png",
    )
    assert Path(bars).read_bytes().startswith(PNG_SIGNATURE)


def test_markdown_table():
    rows = [{"method": "baseline", "acc": 0.91234, "folds": 10}, {"method": "a|b", "acc": None}]
    table = report.markdown_table(rows)
    assert table.splitlines() == [
        "| method | acc | folds |",
        "| --- | ---: | ---: |",
        "| baseline | 0.9123 | 10 |",
        "| a\\|b |  |  |",
    ]
    assert report.markdown_table(rows, columns=["acc"], floatfmt=".1f").splitlines()[2] == ("| 0.9 |")
    assert report.markdown_table([{"x": np.float32(0.5)}]).endswith("| 0.5000 |")


def test_csv_outputs(tmp_path: Path):
    rows = [{"fold": 1, "acc": np.float64(0.8125)}, {"fold": 2, "acc": 0.75, "note": "ok"}]
    path = report.write_csv(rows, tmp_path / "folds.csv")
    with open(path, newline="", encoding="utf-8") as f:
        assert list(csv.reader(f)) == [
            ["fold", "acc", "note"],
            ["1", "0.8125", ""],
            ["2", "0.75", "ok"],
        ]
    path = report.write_confusion_csv(np.array([[3, 1], [0, 4]]), ["anger", "joy"], tmp_path / "c.csv")
    with open(path, newline="", encoding="utf-8") as f:
        assert list(csv.reader(f)) == [
            ["true\\predicted", "anger", "joy"],
            ["anger", "3", "1"],
            ["joy", "0", "4"],
        ]


def test_write_report_and_format_leakage(tmp_path: Path):
    identity = {
        "linear_acc": 0.4,
        "mlp_acc": 0.55,
        "chance": 0.05,
        "num_subjects": 20,
        "num_train": 300,
        "num_test": 300,
    }
    block = report.format_leakage(identity, {"yaw_r2": 0.12, "pitch_r2": float("nan")})
    assert "| linear | 0.4000 | 0.0500 |" in block
    assert "| MLP | 0.5500 | 0.0500 |" in block
    assert "lower is better" in block
    assert "| yaw | 0.1200 |" in block and "| pitch | n/a |" in block
    assert "0 = no linear information, 1 = fully decodable" in block
    assert "not measured" in report.format_leakage(identity, {})

    path = report.write_report(
        tmp_path / "r" / "report.md",
        title="FER résumé",
        sections=[("Accuracy", "0.91 +- 0.02\n"), ("Leakage", block)],
    )
    text = Path(path).read_text(encoding="utf-8")
    assert text.startswith("# FER résumé\n\n## Accuracy\n\n0.91 +- 0.02\n\n## Leakage\n\n")
    assert text.endswith(block + "\n")
    again = report.write_report(
        tmp_path / "r2.md", title="FER résumé", sections=[("Accuracy", "0.91 +- 0.02\n"), ("Leakage", block)]
    )
    assert Path(again).read_bytes() == Path(path).read_bytes()


def test_a_feature_that_barely_varies_in_training_cannot_wreck_a_probe():
    # A ReLU unit that fired weakly on one training image and strongly on one test image: z-scored
    # with its tiny train std it would sit hundreds of deviations out and dominate the probe.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8))
    y = x @ rng.normal(size=8)
    dead = np.zeros((400, 1))
    dead[3] = 1e-4
    dead[300] = 5.0
    x = np.concatenate([x, dead], axis=1)
    assert probes.ridge_r2(x[:200], y[:200], x[200:], y[200:]) > 0.95
    x_train, x_test = probes.standardize(x[:200], x[200:])
    assert np.all(x_train[:, -1] == 0) and np.all(x_test[:, -1] == 0)
    assert np.isfinite(x_test).all()
