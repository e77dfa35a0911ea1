"""Leakage of every declared code (`Method.codes`), the verification-style identity leakage, the
expression probe, the validation block and Halawa et al.'s swap figure."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from idfer_jax.evaluation import probes
from tests.conftest import REPO

# --------------------------------------------------------------------------------------------------
# verification AUC and expression probe, on arrays
# --------------------------------------------------------------------------------------------------


def _subjects(num_subjects=20, per_subject=20):
    return np.repeat(np.arange(num_subjects), per_subject)


def test_roc_auc_is_the_probability_a_positive_outscores_a_negative_ties_half():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 60).astype(float)  # many ties
    positive = rng.random(60) < 0.4
    pos, neg = scores[positive], scores[~positive]
    brute = np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :]))
    assert probes.roc_auc(scores, positive) == pytest.approx(brute)
    assert np.isnan(probes.roc_auc(scores, np.ones(60, bool)))


def test_verification_auc_is_one_for_a_subject_code_and_one_half_for_noise():
    rng = np.random.default_rng(0)
    subjects = _subjects()
    identity_code = np.eye(20)[subjects] + 0.1 * rng.normal(size=(subjects.size, 20))
    noise = rng.normal(size=(subjects.size, 20))
    assert probes.verification_auc(identity_code, subjects) > 0.99
    # 400 images: 3,800 same-subject pairs against 76,000 others; the AUC of noise is 0.5 +- ~0.01.
    assert abs(probes.verification_auc(noise, subjects) - 0.5) < 0.03


def test_verification_auc_leaves_out_pairs_of_the_same_sequence():
    """Codes that match only within a sequence (near-duplicate frames) but not across a subject's
    sequences: counting same-sequence pairs would call it identity; leaving them out gives ~0.5."""
    rng = np.random.default_rng(1)
    num_subjects, sequences, frames = 50, 3, 4
    subjects = np.repeat(np.arange(num_subjects), sequences * frames)
    groups = np.tile(np.repeat(np.arange(sequences), frames), num_subjects)
    centres = rng.normal(size=(num_subjects * sequences, 16))
    codes = np.repeat(centres, frames, axis=0) + 0.05 * rng.normal(size=(subjects.size, 16))
    # 27% of the same-subject pairs are same-sequence near-duplicates: AUC ~0.64 when they count.
    assert probes.verification_auc(codes, subjects) > 0.58
    # Left out, what remains are 150 independent pairs of sequence centres: 0.5 +- ~0.025.
    assert abs(probes.verification_auc(codes, subjects, groups=groups) - 0.5) < 0.07


def test_verification_auc_subsamples_large_sets_deterministically():
    rng = np.random.default_rng(2)
    subjects = _subjects(10, 30)
    codes = np.eye(10)[subjects] + 0.5 * rng.normal(size=(subjects.size, 10))
    first = probes.verification_auc(codes, subjects, max_images=100, seed=3)
    assert first == probes.verification_auc(codes, subjects, max_images=100, seed=3)
    everything = probes.verification_auc(codes, subjects)
    assert first != everything  # another set of pairs, measuring the same thing
    assert abs(first - everything) < 0.05


def test_expression_probe_finds_expression_only_in_a_code_that_holds_it():
    rng = np.random.default_rng(0)
    subjects = _subjects(10, 28)
    expressions = np.tile(np.arange(7), 40)
    with_expression = np.eye(7)[expressions] + 0.2 * rng.normal(size=(subjects.size, 7))
    without = np.eye(10)[subjects] + 0.2 * rng.normal(size=(subjects.size, 10))  # identity only
    found = probes.expression_leakage(with_expression, subjects, expressions, seed=0)
    absent = probes.expression_leakage(without, subjects, expressions, seed=0)
    assert found["chance"] == pytest.approx(1 / 7, abs=0.05)  # balanced classes: majority share ~1/7
    assert found["linear_acc"] > 0.95 and found["mlp_acc"] > 0.95
    assert absent["linear_acc"] < absent["chance"] + 0.15
    assert absent["mlp_acc"] < absent["chance"] + 0.15


def test_code_leakage_returns_the_flat_keys_of_the_parts_asked_for():
    rng = np.random.default_rng(0)
    subjects = _subjects(6, 14)
    expressions = np.tile(np.arange(7), 12)
    codes = rng.normal(size=(subjects.size, 8))
    yaw = rng.uniform(-30, 30, subjects.size)
    everything = probes.code_leakage(codes, subjects, expressions=expressions, poses={"yaw": yaw})
    assert set(everything) == {"identity_linear", "identity_mlp", "identity_chance", "verification_auc",
                               "yaw_r2", "expression_linear", "expression_mlp", "expression_chance"}
    assert set(probes.code_leakage(codes, subjects, parts=("verification",))) == {"verification_auc"}
    single = probes.code_leakage(codes, np.zeros_like(subjects), parts=("verification",))
    assert "verification_skipped" in single
    with pytest.raises(ValueError, match="Unknown parts"):
        probes.code_leakage(codes, subjects, parts=("colour",))


# --------------------------------------------------------------------------------------------------
# `idfer evaluate` on a 2-step Halawa run: every code, the swap figure, validation subjects, crossval rows
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def halawa_evaluated(tmp_path_factory, smoke_data_dir):
    """Halawa et al.'s smoke config trained 2 steps, evaluated with 3 training subjects set aside as
    validation subjects (as `Dataset.validation_indices` does)."""
    from idfer_jax import api
    from idfer_jax.data import pipeline

    config = api.load_config(str(REPO / "configs" / "halawa_synthetic.py") + ":smoke")
    config.data.data_dir = smoke_data_dir
    config.train.update(num_steps=2, checkpoint_every=2, log_every=1, async_checkpoints=False)
    workdir = str(tmp_path_factory.mktemp("halawa") / "run")
    api.train(config, workdir)

    original = pipeline.open_dataset

    def with_validation(data_config):
        dataset = original(data_config)
        subjects = dataset.labels["subject"][dataset.train_indices]
        dataset.validation_indices = dataset.train_indices[np.isin(subjects, np.unique(subjects)[:3])]
        return dataset

    patch = pytest.MonkeyPatch()
    patch.setattr(pipeline, "open_dataset", with_validation)
    try:
        results = api.evaluate(config, workdir)
    finally:
        patch.undo()
    return results, workdir


CODE_KEYS = {"identity_linear", "identity_mlp", "identity_chance", "verification_auc", "expression_linear",
             "expression_mlp", "expression_chance"}


@pytest.mark.slow
def test_evaluate_probes_every_code_halawa_declares(halawa_evaluated):
    results, workdir = halawa_evaluated
    assert set(results["codes"]) == {"features", "nuisance_features"}
    for code, values in results["codes"].items():
        assert CODE_KEYS <= set(values), (code, values)
        assert 0.0 <= values["verification_auc"] <= 1.0
        assert 0.0 < values["expression_chance"] <= 1.0
    features = results["codes"]["features"]
    # `features` repeats the top-level numbers (kept for whoever reads them) rather than probing twice.
    assert features["identity_mlp"] == results["identity_leakage"]["mlp_acc"]
    assert results["verification_auc"] == features["verification_auc"]
    if results["pose_leakage"]:
        assert features["yaw_r2"] == results["pose_leakage"]["yaw_r2"]
        assert "yaw_r2" in results["codes"]["nuisance_features"]
    saved = json.load(open(os.path.join(workdir, "eval_results.json")))
    assert set(saved["codes"]) == set(results["codes"])
    report = open(os.path.join(workdir, "report.md")).read()
    assert "Leakage of every code" in report and "`nuisance_features`" in report
    assert "Identity verification AUC" in report


@pytest.mark.slow
def test_evaluate_draws_the_swap_figure(halawa_evaluated):
    results, workdir = halawa_evaluated
    assert results["swap_figure"] == "swap.png"
    with open(os.path.join(workdir, "swap.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "![swapped codes](swap.png)" in open(os.path.join(workdir, "report.md")).read()


@pytest.mark.slow
def test_evaluate_reports_the_validation_subjects(halawa_evaluated):
    results, workdir = halawa_evaluated
    validation = results["validation"]
    assert validation["num_subjects"] == 3 and validation["num_images"] > 0
    assert {"accuracy", "identity_linear", "identity_mlp", "identity_chance", "verification_auc"} <= set(
        validation)
    assert validation["identity_chance"] == pytest.approx(1 / 3)
    assert "Validation subjects" in open(os.path.join(workdir, "report.md")).read()


@pytest.mark.slow
def test_crossval_rows_and_compare_table_carry_the_new_numbers(halawa_evaluated):
    from idfer_jax import evaluation as E
    from idfer_jax.train import crossval

    results, _ = halawa_evaluated
    row = crossval._fold_row(results)
    for column in ("identity verification AUC", "nuisance_features: identity probe (MLP)",
                   "nuisance_features: expression probe (MLP)", "nuisance_features: verification AUC",
                   "validation accuracy", "validation identity probe (MLP)"):
        assert isinstance(row[column], float), column
    summary = crossval.summarise([results, {**results, "fold": 1}])
    assert summary["mean_std"]["nuisance_features: verification AUC"]["std"] == 0.0
    table = E.comparison_table([summary], names=["halawa"])
    assert "verification AUC" in table.splitlines()[0]


def test_a_method_without_codes_is_read_as_features_only_and_a_bad_code_is_a_config_error():
    import jax
    import jax.numpy as jnp

    from idfer_jax import methods
    from idfer_jax.configuration import ConfigError
    from idfer_jax.train import evaluate as evaluate_lib
    from tests.helpers import fake_spec, smoke, tiny_config

    spec = fake_spec()
    method = methods.build(tiny_config(smoke("baseline")), spec)
    assert method.codes == ("features",)
    halawa = methods.build(tiny_config(smoke("halawa")), spec)
    assert halawa.codes == ("features", "nuisance_features") and "swap" in halawa.evaluations
    assert "decode" in halawa.generators
    no_decoder = methods.build(tiny_config(smoke("halawa"), reconstruction_weight=0.0), spec)
    assert "swap" not in no_decoder.evaluations
    assert methods.build(tiny_config(smoke("idennet")), spec).codes == ("features", "identity_features")

    class FakeTrainer:
        class dataset:  # noqa: N801
            spec = fake_spec()

    variables = jax.eval_shape(halawa.init, jax.random.PRNGKey(0),
                               {"image": jnp.zeros((2, 32, 32, 3)), "expression": jnp.zeros(2, jnp.int32)})
    FakeTrainer.method = halawa
    evaluate_lib.check_codes(FakeTrainer, variables)  # both codes are (N, D)
    # The decoder on a face's own two codes is its reconstruction (the swap figure's diagonal).
    real = halawa.init(jax.random.PRNGKey(0), {"image": jnp.zeros((2, 32, 32, 3))})
    images = jax.random.uniform(jax.random.PRNGKey(1), (2, 32, 32, 3), minval=-1.0, maxval=1.0)
    outputs = halawa.apply(real, images)
    decoded = halawa.generators["decode"](real, outputs["features"], outputs["nuisance_features"])
    np.testing.assert_allclose(decoded, outputs["reconstruction"], atol=1e-5)
    ipdfer = methods.build(tiny_config(smoke("ipdfer")), fake_spec())
    assert ipdfer.codes == ("features", "pose_features", "identity_features")
    FakeTrainer.method = ipdfer
    evaluate_lib.check_codes(FakeTrainer, jax.eval_shape(ipdfer.init, jax.random.PRNGKey(0),
                                                         {"image": jnp.zeros((2, 32, 32, 3))}))
    import dataclasses

    FakeTrainer.method = dataclasses.replace(halawa, codes=("features", "reconstruction"))
    with pytest.raises(ConfigError, match="reconstruction"):
        evaluate_lib.check_codes(FakeTrainer, variables)
