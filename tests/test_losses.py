"""Tests for idfer_jax.losses: gradient reversal, loss terms and combinators (their gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from idfer_jax import losses
from idfer_jax.losses import (
    ConstrainedUncertaintyWeighting,
    LossRatioWeighting,
    UncertaintyWeighting,
    WeightedSum,
    dann_lambda,
    gradient_reversal,
    make_combinator,
)


def _f(x):
    # Non-linear, so the reversed gradient depends on x and a sign or scale error cannot hide.
    return jnp.sum(jnp.sin(x) * x**2)


# --- gradient reversal --------------------------------------------------------------------------


def test_gradient_reversal_forward_is_identity():
    x = jnp.linspace(-2.0, 2.0, 7)
    np.testing.assert_array_equal(gradient_reversal(x, 0.7), x)
    tree = {"a": x, "b": (x * 2,)}
    out = gradient_reversal(tree, jnp.float32(3.0))
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(tree)
    np.testing.assert_array_equal(out["b"][0], x * 2)


def test_gradient_reversal_scales_gradient_by_minus_lambda_under_jit_without_retracing():
    x = jnp.linspace(-1.5, 2.5, 5)
    plain = jax.grad(_f)(x)
    traces = []

    @jax.jit
    def reversed_grad(x, lam):
        traces.append(None)  # runs once per trace, not per call
        return jax.grad(lambda y: _f(gradient_reversal(y, lam)))(x)

    for lam in (0.25, 1.0, 3.0):
        np.testing.assert_allclose(
            reversed_grad(x, jnp.float32(lam)), -lam * plain, rtol=1e-6, atol=1e-6
        )
    assert len(traces) == 1, "lam must be a traced argument: changing it must not retrace"


def test_gradient_reversal_follows_dann_schedule_inside_jit():
    x = jnp.array([0.3, -1.2])

    @jax.jit
    def step_grad(x, progress):
        return jax.grad(lambda y: _f(gradient_reversal(y, dann_lambda(progress))))(x)

    for p in (0.0, 0.1, 0.5):
        expected = -float(dann_lambda(p)) * jax.grad(_f)(x)
        np.testing.assert_allclose(step_grad(x, jnp.float32(p)), expected, rtol=1e-6, atol=1e-7)


def test_gradient_reversal_on_pytree_and_lambda_gradient_is_zero():
    tree = {"a": jnp.array([0.5, 1.0]), "b": jnp.array([2.0])}

    def loss(t, lam):
        r = gradient_reversal(t, lam)
        return _f(r["a"]) + _f(r["b"])

    g_tree, g_lam = jax.grad(loss, argnums=(0, 1))(tree, jnp.float32(2.0))
    np.testing.assert_allclose(g_tree["a"], -2.0 * jax.grad(_f)(tree["a"]), rtol=1e-6)
    np.testing.assert_allclose(g_tree["b"], -2.0 * jax.grad(_f)(tree["b"]), rtol=1e-6)
    assert g_lam == 0.0


def test_gradient_reversal_keeps_bf16_cotangent_dtype():
    x = jnp.ones((3,), jnp.bfloat16)
    g = jax.grad(lambda y: jnp.sum(gradient_reversal(y, jnp.float32(0.5)).astype(jnp.float32)))(x)
    assert g.dtype == jnp.bfloat16
    np.testing.assert_allclose(g.astype(jnp.float32), -0.5)


def test_dann_lambda_schedule():
    assert float(dann_lambda(0.0)) == 0.0
    np.testing.assert_allclose(dann_lambda(1.0), 2 / (1 + np.exp(-10)) - 1, rtol=1e-6)
    assert 0.9999 <= float(dann_lambda(1.0)) < 1.0
    ps = jnp.linspace(0.0, 1.0, 101)
    values = jax.jit(dann_lambda)(ps)
    assert bool(jnp.all(jnp.diff(values) > 0)), "must be strictly increasing on [0, 1]"
    # Progress outside [0, 1] is clipped.
    assert float(dann_lambda(-0.5)) == 0.0
    assert float(dann_lambda(2.0)) == pytest.approx(float(dann_lambda(1.0)))


# --- loss terms ---------------------------------------------------------------------------------

LOGITS = jnp.array([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0], [-1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
LABELS = jnp.array([0, 2, 1, 2])


def _manual_ce(logits, labels):
    logp = logits - jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True)
    return -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]


def test_cross_entropy_matches_manual_log_softmax():
    expected = jnp.mean(_manual_ce(LOGITS, LABELS))
    np.testing.assert_allclose(losses.softmax_cross_entropy(LOGITS, LABELS), expected, rtol=1e-6)
    term = losses.cross_entropy()
    np.testing.assert_allclose(
        term({"logits": LOGITS}, {"expression": LABELS}), expected, rtol=1e-6
    )


def test_cross_entropy_label_smoothing_matches_manual():
    alpha, k = 0.2, LOGITS.shape[-1]
    logp = jax.nn.log_softmax(LOGITS)
    targets = (1 - alpha) * jax.nn.one_hot(LABELS, k) + alpha / k
    expected = jnp.mean(-jnp.sum(targets * logp, axis=-1))
    got = losses.softmax_cross_entropy(LOGITS, LABELS, label_smoothing=alpha)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert not np.isclose(got, losses.softmax_cross_entropy(LOGITS, LABELS))


def test_cross_entropy_mask_and_all_zero_mask():
    mask = jnp.array([1.0, 0.0, 1.0, 0.0])
    per_example = _manual_ce(LOGITS, LABELS)
    term = losses.cross_entropy("id_logits", "identity", mask_key="has_id")
    batch = {"identity": LABELS, "has_id": mask}
    np.testing.assert_allclose(
        term({"id_logits": LOGITS}, batch), (per_example[0] + per_example[2]) / 2, rtol=1e-6
    )

    zero = {"identity": LABELS, "has_id": jnp.zeros(4)}
    value, grad = jax.value_and_grad(lambda lg: term({"id_logits": lg}, zero))(LOGITS)
    assert float(value) == 0.0
    assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).sum()) == 0.0


def test_masked_mean_ignores_nan_in_masked_examples():
    values = jnp.array([1.0, jnp.nan, 3.0])
    assert float(losses.masked_mean(values, jnp.array([1, 0, 1]))) == 2.0


def test_regression_and_gan_terms():
    rec, image = jnp.array([1.0, 2.0, 4.0]), jnp.array([0.0, 2.0, 1.0])
    assert float(losses.l1(rec, image)) == pytest.approx(4.0 / 3)
    assert float(losses.mse(rec, image)) == pytest.approx(10.0 / 3)
    d_real, d_fake = jnp.array([1.0, 0.0]), jnp.array([0.5, -0.5])
    # 0.5 * [mean(0, 1) + mean(0.25, 0.25)] = 0.5 * (0.5 + 0.25)
    assert float(losses.lsgan_discriminator(d_real, d_fake)) == pytest.approx(0.375)
    # mean(0.25, 2.25)
    assert float(losses.lsgan_generator(d_fake)) == pytest.approx(1.25)
    # Same direction 0, orthogonal 1, opposite 2, whatever the lengths.
    a = jnp.array([[1.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    b = jnp.array([[2.0, 0.0], [0.0, 5.0], [-1.0, 0.0]])
    np.testing.assert_allclose(losses.cosine_distance(a, b), [0.0, 1.0, 2.0], atol=1e-6)


def test_named_cross_entropy_term_and_missing_key_error():
    term = losses.cross_entropy()
    value = term({"logits": LOGITS}, {"expression": LABELS})
    assert float(value) == pytest.approx(float(losses.softmax_cross_entropy(LOGITS, LABELS)))
    with pytest.raises(KeyError, match=r"expression.*has keys \['image'\]"):
        term({"logits": LOGITS}, {"image": jnp.ones(3)})


# --- combinators --------------------------------------------------------------------------------

L = {"exp": jnp.float32(1.3), "id": jnp.float32(0.4), "pose": jnp.float32(2.5)}


def _grad_wrt_losses(combinator, params, loss_values):
    return jax.grad(lambda ls: combinator(params, ls)[0])(loss_values)


def test_weighted_sum_gradient_is_weight_and_default_is_one():
    comb = WeightedSum({"exp": 2.0, "pose": 0.1})
    total, metrics = comb(comb.init(), L)
    np.testing.assert_allclose(total, 2.0 * 1.3 + 0.4 + 0.1 * 2.5, rtol=1e-6)
    grads = _grad_wrt_losses(comb, comb.init(), L)
    np.testing.assert_allclose([grads["exp"], grads["id"], grads["pose"]], [2.0, 1.0, 0.1])
    assert float(metrics["weight/id"]) == 1.0 and float(metrics["loss/pose"]) == pytest.approx(2.5)
    assert comb.init() == {}


def test_weighted_sum_rejects_weight_for_unknown_loss():
    with pytest.raises(ValueError, match="idd"):
        WeightedSum({"idd": 1.0})({}, L)


def test_uncertainty_gradient_matches_analytic_and_optimum_is_log_loss():
    comb = UncertaintyWeighting(("exp", "id", "pose"), init_log_var=0.3)
    params = comb.init()
    assert all(v.dtype == jnp.float32 and v.shape == () for v in params.values())
    total, metrics = comb(params, L)
    expected = sum(0.5 * np.exp(-0.3) * float(v) + 0.5 * 0.3 for v in L.values())
    np.testing.assert_allclose(total, expected, rtol=1e-6)
    np.testing.assert_allclose(metrics["weight/id"], 0.5 * np.exp(-0.3), rtol=1e-6)

    g_params = jax.grad(lambda p: comb(p, L)[0])(params)
    for name, loss in L.items():
        analytic = -0.5 * np.exp(-0.3) * float(loss) + 0.5
        np.testing.assert_allclose(g_params[name], analytic, rtol=1e-5)
    g_losses = _grad_wrt_losses(comb, params, L)
    np.testing.assert_allclose(g_losses["pose"], 0.5 * np.exp(-0.3), rtol=1e-6)

    # At s_i = log L_i the gradient vanishes ...
    at_opt = {n: jnp.log(v) for n, v in L.items()}
    g_opt = jax.grad(lambda p: comb(p, L)[0])(at_opt)
    for v in g_opt.values():
        assert abs(float(v)) < 1e-6
    # ... and an optimizer started elsewhere finds it.
    opt = optax.adam(0.05)

    def step(carry, _):
        p, state = carry
        g = jax.grad(lambda q: comb(q, L)[0])(p)
        updates, state = opt.update(g, state, p)
        return (optax.apply_updates(p, updates), state), None

    (p_final, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=600)
    for name, loss in L.items():
        np.testing.assert_allclose(p_final[name], np.log(float(loss)), atol=2e-2)


def test_uncertainty_rejects_mismatched_names():
    comb = UncertaintyWeighting(["exp", "id"])
    with pytest.raises(ValueError, match="missing \\['id'\\]"):
        comb(comb.init(), {"exp": L["exp"]})
    with pytest.raises(ValueError, match="unexpected \\['pose'\\]"):
        comb(comb.init(), L)


def test_constrained_uncertainty_floors_the_weight():
    comb = ConstrainedUncertaintyWeighting(("exp", "id"), min_weight=0.1)
    losses2 = {"exp": L["exp"], "id": L["id"]}
    # exp: 0.5 * e^-3 = 0.025 < 0.1 -> floored; id: 0.5 * e^0 = 0.5 -> Kendall weight.
    params = {"exp": jnp.float32(3.0), "id": jnp.float32(0.0)}
    _, metrics = comb(params, losses2)
    np.testing.assert_allclose(metrics["weight/exp"], 0.1, rtol=1e-6)
    np.testing.assert_allclose(metrics["weight/id"], 0.5, rtol=1e-6)
    g_losses = _grad_wrt_losses(comb, params, losses2)
    np.testing.assert_allclose([g_losses["exp"], g_losses["id"]], [0.1, 0.5], rtol=1e-6)
    g_params = jax.grad(lambda p: comb(p, losses2)[0])(params)
    # On the floor only the regulariser acts, pulling s back towards the floor.
    np.testing.assert_allclose(g_params["exp"], 0.5, rtol=1e-6)
    np.testing.assert_allclose(g_params["id"], -0.5 * float(L["id"]) + 0.5, rtol=1e-6)


def test_loss_ratio_gradient_uses_stopped_ratio():
    comb = LossRatioWeighting("exp", ["id"])
    losses2 = {"exp": L["exp"], "id": L["id"]}
    ratio = 1.3 / (1.3 + 0.4)
    total, metrics = comb({}, losses2)
    np.testing.assert_allclose(total, 1.3 + ratio * 0.4, rtol=1e-6)
    np.testing.assert_allclose(metrics["weight/id"], ratio, rtol=1e-6)
    g = _grad_wrt_losses(comb, {}, losses2)
    # Without the stop-gradient these would be 1 + d(ratio)/dL_p * L_s and a ratio-derivative term.
    np.testing.assert_allclose(g["exp"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(g["id"], ratio, rtol=1e-6)
    # Both zero: no NaN.
    zero_total, zero_metrics = comb({}, {"exp": jnp.float32(0.0), "id": jnp.float32(0.0)})
    assert float(zero_total) == 0.0 and np.isfinite(float(zero_metrics["weight/id"]))


def test_combinators_work_under_jit():
    comb = UncertaintyWeighting(("exp", "id", "pose"))
    total, metrics = jax.jit(comb)(comb.init(), L)
    assert np.isfinite(float(total)) and set(metrics) >= {"loss/exp", "weight/pose"}


def test_make_combinator_policies_and_errors():
    names = ["exp", "id"]
    assert isinstance(make_combinator("constant", names), WeightedSum)
    assert make_combinator("constant", names) == WeightedSum()
    ws = make_combinator("weighted_sum", names, weights={"id": 0.5})
    assert ws.weights == {"id": 0.5}
    unc = make_combinator("uncertainty", names)
    assert isinstance(unc, UncertaintyWeighting) and set(unc.init()) == set(names)
    con = make_combinator("constrained", names, min_weight=0.2)
    assert isinstance(con, ConstrainedUncertaintyWeighting) and con.min_weight == 0.2
    lr = make_combinator("loss_ratio", names)
    assert lr.primary == "exp" and lr.secondary == ("id",)
    with pytest.raises(ValueError, match="constant.*uncertainty.*loss_ratio"):
        make_combinator("kendall", names)
    with pytest.raises(ValueError, match="min_weight"):
        make_combinator("uncertainty", names, min_weight=0.1)
    with pytest.raises(ValueError, match="not among the losses"):
        make_combinator("weighted_sum", names, weights={"pose": 1.0})


def test_weighting_params_are_excluded_from_weight_decay():
    from idfer_jax.train.optim import decay_mask

    comb = UncertaintyWeighting(("exp", "id"), init_log_var=1.0)
    params = {"backbone": {"kernel": jnp.ones((2, 2))}, losses.WEIGHTING_PARAM_KEY: comb.init()}
    mask = decay_mask(params)
    assert mask == {"backbone": {"kernel": True}, "loss_weights": {"exp": False, "id": False}}
    tx = optax.adamw(learning_rate=0.1, weight_decay=0.5, mask=decay_mask)
    zero_grads = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    assert float(new["backbone"]["kernel"][0, 0]) < 1.0  # decayed
    assert float(new["loss_weights"]["exp"]) == 1.0  # untouched
    assert losses.is_weighting_param(("loss_weights", "exp"))
    assert not losses.is_weighting_param(("backbone", "kernel"))
