"""The coder's fixed-point numbers (vae.coding.fixed_point): tables that are the exactly rounded
values, counts that follow the model's distributions, rounds that add up to each level's mass,
and parameters that last-bit differences in the model's float64 outputs do not change."""

import decimal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from vae.coding import fixed_point


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def test_tables_are_the_exactly_rounded_values():
    ctx = decimal.Context(prec=50)
    rng = np.random.default_rng(0)
    offset = fixed_point.TABLE_RANGE * fixed_point.TABLE_STEPS
    for i in rng.integers(0, len(fixed_point.SIGMOID_TABLE), 200):
        u = ctx.divide(int(i) - offset, fixed_point.TABLE_STEPS)
        exact = ctx.divide(1 << 24, 1 + ctx.exp(-u))
        assert int(fixed_point.SIGMOID_TABLE[i]) == int(exact.to_integral_value(decimal.ROUND_HALF_EVEN))
    for i in rng.integers(0, len(fixed_point.EXP_TABLE), 200):
        exact = ctx.multiply(1 << 24, ctx.exp(ctx.divide(-int(i), fixed_point.TABLE_STEPS)))
        assert int(fixed_point.EXP_TABLE[i]) == int(exact.to_integral_value(decimal.ROUND_HALF_EVEN))
    assert np.all(np.diff(fixed_point.SIGMOID_TABLE) >= 0) and np.all(np.diff(fixed_point.EXP_TABLE) <= 0)
    assert fixed_point.SIGMOID_TABLE[0] == 0 and fixed_point.SIGMOID_TABLE[-1] == 1 << 24
    scales = np.exp(fixed_point.MIN_LOG_SCALE + np.arange(len(fixed_point.INVERSE_SCALE_TABLE))
                    / fixed_point.LOG_SCALE_STEPS) * 127.5
    assert np.abs(fixed_point.INVERSE_SCALE_TABLE - 2.0**30 / scales).max() <= 0.5 + 1e-6


def _mixture(rng, n=3000, k=5):
    logits = rng.normal(scale=2.0, size=(n, k))
    means = rng.uniform(-1.3, 1.3, size=(n, k))
    log_scales = rng.uniform(-7.0, 1.0, size=(n, k))
    log_scales[:20] = -7.0  # the narrowest the likelihood allows
    return logits, means, log_scales


def _float64_level_masses(logits, means, log_scales):
    edges = (np.arange(1, 256) - 0.5) / 127.5 - 1.0
    cdf = np.sum(scipy.special.softmax(logits, -1)[:, None, :] * scipy.special.expit(
        (edges[None, :, None] - means[:, None, :]) / np.exp(log_scales)[:, None, :]), axis=-1)
    return np.diff(np.concatenate([np.zeros((len(cdf), 1)), cdf, np.ones((len(cdf), 1))], axis=1), axis=1)


def _integer_cdf(family, parameters, n):
    cdf, total, levels = fixed_point.CDF[family]
    inner = np.asarray(cdf(parameters, jnp.broadcast_to(jnp.arange(1, levels), (n, levels - 1))))
    return np.concatenate([np.zeros((n, 1), np.int64), inner, np.asarray(total(parameters))[:, None]], axis=1)


def test_mixture_counts_follow_the_float64_distribution():
    """Every level gets at least the floor; the counts' distribution is the mixture's to a KL of
    about 1e-6 nats per sub-pixel (what rounding the model to integers costs)."""
    logits, means, log_scales = _mixture(np.random.default_rng(1))
    parameters, _ = fixed_point.ROUNDING["logistic_mixture"](*map(jnp.asarray, (logits, means, log_scales)))
    counts = np.diff(_integer_cdf("logistic_mixture", parameters, len(logits)), axis=1)
    assert counts.min() >= fixed_point.MIXTURE_FLOOR and counts.sum(1).max() < 2**53
    p = _float64_level_masses(logits, means, log_scales)
    q = counts / counts.sum(1, keepdims=True)
    kl = np.sum(p * (np.log(np.maximum(p, 1e-300)) - np.log(q)), axis=1)
    assert kl.mean() < 5e-6 and kl.max() < 1e-4


def test_categorical_and_bernoulli_counts_follow_their_distributions():
    rng = np.random.default_rng(2)
    logits = rng.normal(scale=3.0, size=(500, 256))
    (cumulative,), _ = fixed_point.ROUNDING["categorical"](jnp.asarray(logits))
    counts = np.diff(np.asarray(cumulative), axis=1)
    p, q = scipy.special.softmax(logits, -1), counts / counts.sum(1, keepdims=True)
    assert counts.min() >= 1 and np.sum(p * np.log(p / q), axis=1).max() < 1e-5
    bernoulli_logits = rng.normal(scale=6.0, size=2000)
    (on,), _ = fixed_point.ROUNDING["bernoulli"](jnp.asarray(bernoulli_logits))
    np.testing.assert_allclose(np.asarray(on) / 2**24, scipy.special.expit(bernoulli_logits), atol=3e-6)
    (extreme,), _ = fixed_point.ROUNDING["bernoulli"](jnp.asarray([-100.0, 100.0]))
    assert np.asarray(extreme).tolist() == [1, 2**24 - 1]  # both values keep a count


@pytest.mark.parametrize("round_bits", [1, 3, 8])
def test_the_rounds_multiply_to_each_levels_mass(monkeypatch, round_bits):
    """Coding a level round by round costs exactly its counts' share of the total (the rounds'
    probabilities of its parts multiply to it), whatever the bits per round; the parts are the
    level's digits."""
    monkeypatch.setattr(fixed_point, "ROUND_BITS", round_bits)
    rng = np.random.default_rng(3)
    logits, means, log_scales = _mixture(rng, n=400)
    parameters, _ = fixed_point.ROUNDING["logistic_mixture"](*map(jnp.asarray, (logits, means, log_scales)))
    cdf = _integer_cdf("logistic_mixture", parameters, 400)
    symbols = rng.integers(0, 256, 400)
    symbols[:2] = [0, 255]
    rounds, bits = fixed_point.level_probabilities("logistic_mixture", parameters, jnp.asarray(symbols))
    parts = fixed_point.parts_of(symbols, 256)
    ideal = 0.0
    for probabilities, part in zip(rounds, parts):
        ideal = ideal - np.log2(np.take_along_axis(np.asarray(probabilities), part[:, None], 1)[:, 0])
    mass = np.take_along_axis(cdf, symbols[:, None] + 1, 1) - np.take_along_axis(cdf, symbols[:, None], 1)
    direct = np.log2(cdf[:, -1]) - np.log2(mass[:, 0])
    np.testing.assert_allclose(ideal, direct, atol=1e-9)
    np.testing.assert_allclose(bits, direct, rtol=1e-6, atol=1e-6)  # the figures' float32 bits
    steps = [step for step, _ in fixed_point.rounds(256)]
    np.testing.assert_array_equal(sum(part * step for part, step in zip(parts, steps)), symbols)


def test_last_bit_differences_in_the_model_outputs_change_no_integer():
    """What another CPU's float64 model gives differs in the last bits (here: each output moved
    by up to 4 units in its last place): the rounded parameters are the same integers."""
    rng = np.random.default_rng(4)

    def jittered(x):
        return np.nextafter(x, np.where(rng.uniform(size=x.shape) < 0.5, -np.inf, np.inf)) * (
            1 + rng.integers(-3, 4, size=x.shape) * np.finfo(np.float64).eps)

    logits, means, log_scales = _mixture(rng)
    cases = {"logistic_mixture": (logits, means, log_scales),
             "categorical": (rng.normal(scale=3.0, size=(200, 256)),),
             "bernoulli": (rng.normal(scale=6.0, size=5000),)}
    for family, outputs in cases.items():
        exact, _ = fixed_point.ROUNDING[family](*map(jnp.asarray, outputs))
        moved, _ = fixed_point.ROUNDING[family](*(jnp.asarray(jittered(o)) for o in outputs))
        for a, b in zip(exact, moved):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=family)


def test_the_normal_cdf_table_is_the_exactly_rounded_values():
    """The latents' table (`latent_code.py`): round(2^32 Φ(t / 256)), checked in `decimal` with a series
    of its own (not the table's code) at random entries and where rounding is closest to a tie."""
    ctx = decimal.Context(prec=60)

    def exact_phi(u):  # Φ(u) = (1 + erf(u / √2)) / 2, erf by its Taylor series, enough digits for |u| <= 8
        x = ctx.divide(u, ctx.sqrt(decimal.Decimal(2)))
        term, total, n = x, x, 0
        while abs(term) > decimal.Decimal(10) ** -50:
            n += 1
            term = ctx.divide(ctx.multiply(-term, ctx.multiply(x, x)) * (2 * n - 1), n * (2 * n + 1))
            total += term
        pi = decimal.Decimal("3.14159265358979323846264338327950288419716939937510582097494")
        return (1 + ctx.divide(2 * total, ctx.sqrt(pi))) / 2

    table = fixed_point.PHI_TABLE
    offset = fixed_point.PHI_RANGE * fixed_point.PHI_STEPS
    floats = (2.0**32) * scipy.special.ndtr((np.arange(len(table)) - offset) / fixed_point.PHI_STEPS)
    closest = np.argsort(np.abs(floats - np.floor(floats) - 0.5))[:20]
    rng = np.random.default_rng(5)
    for i in [*rng.integers(0, len(table), 150), *closest, 0, offset, len(table) - 1]:
        u = ctx.divide(int(i) - offset, fixed_point.PHI_STEPS)
        expected = ctx.multiply(1 << 32, exact_phi(u)).to_integral_value(decimal.ROUND_HALF_EVEN)
        assert int(table[i]) == int(expected), i
    assert np.all(np.diff(table) >= 0) and table[0] == 0 and table[offset] == 2**31 and table[-1] == 2**32
    np.testing.assert_array_equal(table[:offset] + table[-2:offset:-1], 2**32)  # Φ(-u) = 1 - Φ(u)


@pytest.mark.parametrize("family", ["bernoulli", "logistic_mixture", "categorical"])
def test_each_rounding_gives_its_distance_to_a_rounding_boundary(family):
    """Outputs exactly halfway between two steps of their grid have margin 0; on a grid offset by
    0.3 of a step they round to round(x / step + 0.3), 0.3 of a step from the boundary (a value
    exactly on a step, 0.2)."""
    rng = np.random.default_rng(6)
    if family == "bernoulli":
        outputs = ((rng.integers(-1000, 1000, 300) + 0.5) / 2**16,)
    elif family == "logistic_mixture":  # the means and log-scales halfway (the weights anywhere)
        outputs = (rng.normal(size=(300, 3)), (rng.integers(-200, 200, (300, 3)) + 0.5) / 256 / 127.5 - 1,
                   (rng.integers(0, 2000, (300, 3)) + 0.5) / 256 + fixed_point.MIN_LOG_SCALE)
    else:  # 255 logits halfway below the largest, which is on a step
        outputs = (-(rng.integers(1, 5000, (300, 256)) + 0.5) / 2**10,)
        outputs[0][:, 0] = 0.0
    _, margins = fixed_point.ROUNDING[family](*map(jnp.asarray, outputs))
    assert float(np.max(margins)) < 1e-9
    parameters, shifted = fixed_point.ROUNDING[family](*map(jnp.asarray, outputs), offset=0.3)
    shifted = np.asarray(shifted)
    if family == "logistic_mixture":
        assert np.all(shifted <= 0.3 + 1e-9) and np.mean(np.abs(shifted - 0.3) < 1e-9) > 0.05  # weights: less
    else:
        np.testing.assert_allclose(shifted, 0.3 if family == "bernoulli" else 0.2, atol=1e-9)
    if family == "bernoulli":  # the rounded logit is round(x · 2^16 + 0.3), through the sigmoid table
        steps = np.round(outputs[0] * 2**16 + 0.3).astype(np.int64)
        expected = np.asarray(fixed_point.sigmoid(jnp.asarray(steps)))
        np.testing.assert_array_equal(np.asarray(parameters[0]), np.clip(expected, 1, 2**24 - 1))
