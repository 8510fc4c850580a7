"""The likelihood component: Bernoulli against hand computations and SciPy, its fast form, its
mean and samples, and the decoder's output bias at the average image."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from vae.model import likelihoods


def test_bernoulli_log_prob_by_hand():
    logits = jnp.array([[0.0, 2.0, -1.0, 3.0]])  # one image of 4 pixels
    x = jnp.array([[1.0, 0.0, 0.0, 1.0]])
    probs = 1 / (1 + np.exp(-np.array([0.0, 2.0, -1.0, 3.0])))
    expected = math.log(probs[0]) + math.log(1 - probs[1]) + math.log(1 - probs[2]) + math.log(probs[3])
    assert float(likelihoods.Bernoulli().log_prob(logits, x)[0]) == pytest.approx(expected, rel=1e-6)


def test_bernoulli_log_prob_is_scipys_and_stable_for_extreme_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=4.0, size=(3, 50))
    x = rng.integers(0, 2, size=(3, 50)).astype(np.float64)
    expected = scipy.stats.bernoulli(1 / (1 + np.exp(-logits))).logpmf(x).sum(-1)
    got = likelihoods.Bernoulli().log_prob(jnp.asarray(logits, jnp.float32), jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    extreme = likelihoods.Bernoulli().log_prob(jnp.array([[200.0, -200.0, 200.0]]),
                                               jnp.array([[1.0, 0.0, 0.0]]))
    assert float(extreme[0]) == pytest.approx(-200.0, rel=1e-6)


def test_bernoulli_mean_and_samples():
    bernoulli = likelihoods.Bernoulli()
    logits = jnp.array([[-30.0, 0.0, 30.0]])
    np.testing.assert_allclose(bernoulli.mean(logits), [[0.0, 0.5, 1.0]], atol=1e-6)
    draws = bernoulli.sample(jax.random.key(0), jnp.broadcast_to(logits, (4000, 3)))
    assert set(np.unique(np.asarray(draws))) <= {0.0, 1.0}
    np.testing.assert_allclose(np.mean(np.asarray(draws), axis=0), [0.0, 0.5, 1.0], atol=0.03)


def test_initial_output_bias_predicts_the_pixel_means():
    bernoulli = likelihoods.Bernoulli()
    means = np.array([0.0, 0.25, 0.5, 1.0])
    bias = bernoulli.initial_output_bias(means, (4,))
    np.testing.assert_allclose(bernoulli.mean(bias), np.clip(means, 1e-3, 1 - 1e-3), rtol=1e-5)
    per_channel = bernoulli.initial_output_bias(means, (1,))  # a conv decoder's bias: one per channel
    np.testing.assert_allclose(bernoulli.mean(per_channel), [np.clip(means, 1e-3, 1 - 1e-3).mean()],
                               rtol=1e-5)


def test_every_likelihood_is_built_by_name_and_an_unknown_one_is_refused():
    assert all(likelihoods.build_likelihood(name).outputs_per_pixel >= 1 for name in likelihoods.LIKELIHOODS)
    with pytest.raises(ValueError, match="model.likelihood must be one of"):
        likelihoods.build_likelihood("gaussian")


# --- 8-bit likelihoods ---------------------------------------------------------------------------

def _mixture_params_NumPy(out, k):
    """(log weights, means, log-scales), each B x D x K, float64: the layout the decoder writes."""
    o = np.asarray(out, np.float64).reshape(out.shape[0], -1, 3 * k)
    w, mu, log_s = o[..., :k], o[..., k:2 * k], np.maximum(o[..., 2 * k:], likelihoods.MIN_LOG_SCALE)
    return w - scipy.special.logsumexp(w, axis=-1, keepdims=True), mu, log_s


def _discretized_logistic_NumPy(levels, mu, log_s):
    """log P(level) by the textbook formula: CDF differences over each bin, edges open-ended;
    float64, scipy's log-sigmoid on whichever side keeps the difference away from cancellation."""
    centre = levels * (2.0 / 255) - 1.0
    upper = np.where(levels == 255, np.inf, centre + 1.0 / 255)
    lower = np.where(levels == 0, -np.inf, centre - 1.0 / 255)
    s = np.exp(log_s)
    a, b = (upper - mu) / s, (lower - mu) / s
    # log(σ(a) − σ(b)) = log σ(a) + log1p(−exp(log σ(b) − log σ(a))), or mirrored for the right tail
    with np.errstate(divide="ignore", invalid="ignore"):
        log_sig = scipy.special.log_expit
        left = log_sig(a) + np.log1p(-np.exp(log_sig(b) - log_sig(a)))
        right = log_sig(-b) + np.log1p(-np.exp(log_sig(-a) - log_sig(-b)))
    return np.where(a + b > 0, right, left)


def _random_output(rng, batch, pixels, outputs, scale=2.0):
    return rng.normal(scale=scale, size=(batch, pixels * outputs))


@pytest.fixture
def x64():
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


@pytest.mark.parametrize("name", likelihoods.EIGHT_BIT_LIKELIHOODS)
def test_the_256_levels_sum_to_one_in_float64(x64, name):
    lik = likelihoods.build_likelihood(name, 4)
    out = _random_output(np.random.default_rng(0), 3, 10, lik.outputs_per_pixel, 3.0)
    out = jnp.asarray(out, jnp.float64)
    log_p = lik.level_log_probs(out)
    assert log_p.shape == (3, 10, 256) and log_p.dtype == jnp.float64
    np.testing.assert_allclose(np.exp(np.asarray(log_p)).sum(-1), 1.0, rtol=0, atol=1e-12)
    # log_prob picks each sub-pixel's level from the same table
    levels = np.random.default_rng(1).integers(0, 256, size=(3, 10))
    picked = np.take_along_axis(np.asarray(log_p), levels[..., None], -1)[..., 0].sum(-1)
    np.testing.assert_allclose(lik.log_prob(out, jnp.asarray(levels / 255.0)), picked, rtol=1e-12)


def test_logistic_mixture_is_a_direct_numpy_computation(x64):
    k, rng = 3, np.random.default_rng(2)
    out = _random_output(rng, 4, 7, 3 * k)
    log_w, mu, log_s = _mixture_params_NumPy(out, k)
    levels = rng.integers(0, 256, size=(4, 7))
    levels[0, :3] = [0, 255, 128]  # both edge bins and the middle
    per_component = _discretized_logistic_NumPy(levels[..., None], mu, log_s)
    expected = scipy.special.logsumexp(log_w + per_component, axis=-1).sum(-1)
    got = likelihoods.LogisticMixture(k).log_prob(jnp.asarray(out), jnp.asarray(levels / 255.0))
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    # float32, as training runs it
    got32 = likelihoods.LogisticMixture(k).log_prob(jnp.asarray(out, jnp.float32),
                                                    jnp.asarray(levels / 255.0, jnp.float32))
    np.testing.assert_allclose(got32, expected, rtol=2e-5)


def test_a_bin_whose_mass_underflows_keeps_its_exact_log_mass():
    """A narrow logistic at the black end: level 200's mass is about e^-631, 0 in float32 (whose
    smallest number is about e^-103); the log-space form still gives its log in float32, which
    the textbook form in float64 confirms, and so do the edges."""
    mu, log_s = jnp.float32(-1.0), jnp.float32(-6.0)
    levels = np.array([0, 1, 200, 255])
    got = likelihoods.discretized_logistic_log_probs(jnp.asarray(levels), mu, log_s)
    expected = _discretized_logistic_NumPy(levels, -1.0, -6.0)
    assert np.all(np.isfinite(np.asarray(got))) and float(got[2]) < -600
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    s = np.exp(-6.0)  # level 0 keeps almost everything: log σ((−1 + 1/255 + 1)/s)
    assert float(got[0]) == pytest.approx(scipy.special.log_expit((1 / 255) / s), abs=1e-6)


@pytest.mark.parametrize("name", likelihoods.EIGHT_BIT_LIKELIHOODS)
def test_gradients_are_finite_at_the_edges_and_for_extreme_scales(name):
    lik = likelihoods.build_likelihood(name, 2)
    d = 6
    x = jnp.asarray([[0, 255, 0, 255, 1, 254]], jnp.float32) / 255.0
    if name == "logistic_mixture":  # per sub-pixel: 2 logits, 2 means, 2 log-scales
        per_pixel = [[0.0, 0.0, -1.0, 1.0, -30.0, -30.0],   # level 0, scales far below the floor
                     [0.0, 0.0, -1.0, 1.0, 10.0, 10.0],     # level 255, huge scales
                     [50.0, -50.0, 1.0, 1.0, -7.0, -7.0],   # level 0 under a mass at white
                     [0.0, 0.0, -1.0, -1.0, -7.0, -7.0],    # level 255 under a mass at black
                     [0.0, 0.0, 0.9, 0.9, -7.0, 3.0],
                     [0.0, 0.0, -0.9, -0.9, -7.0, 3.0]]
        out = jnp.asarray(per_pixel, jnp.float32).reshape(1, -1)
    else:
        out = jnp.asarray(np.random.default_rng(0).normal(scale=80.0, size=(1, d * 256)), jnp.float32)
    value, grad = jax.value_and_grad(lambda o: lik.log_prob(o, x).sum())(out)
    assert np.isfinite(float(value)) and bool(jnp.all(jnp.isfinite(grad)))
    assert float(jnp.abs(grad).max()) > 0


def test_categorical_is_a_log_softmax():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 5, 256))
    levels = rng.integers(0, 256, size=(2, 5))
    log_p = scipy.special.log_softmax(logits, -1)
    expected = np.take_along_axis(log_p, levels[..., None], -1)[..., 0].sum(-1)
    got = likelihoods.Categorical().log_prob(jnp.asarray(logits.reshape(2, -1), jnp.float32),
                                             jnp.asarray(levels / 255.0, jnp.float32))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("name", likelihoods.EIGHT_BIT_LIKELIHOODS)
def test_8bit_means_and_samples_agree_with_the_level_probabilities(name):
    lik = likelihoods.build_likelihood(name, 3)
    out = jnp.asarray(_random_output(np.random.default_rng(4), 1, 4, lik.outputs_per_pixel), jnp.float32)
    probs = np.exp(np.asarray(lik.level_log_probs(out), np.float64))[0]  # 4 x 256
    exact_mean = probs @ (np.arange(256) / 255.0)
    np.testing.assert_allclose(lik.mean(out)[0], exact_mean, atol=0.5 / 255)  # within half a level
    draws = np.asarray(lik.sample(jax.random.key(0), jnp.broadcast_to(out, (20000, out.shape[1]))))
    levels = np.round(draws * 255)
    np.testing.assert_allclose(draws * 255.0, levels, atol=1e-4)  # every draw is a level
    np.testing.assert_allclose(levels.mean(0) / 255.0, exact_mean, atol=0.01)


@pytest.mark.parametrize("name", likelihoods.EIGHT_BIT_LIKELIHOODS)
def test_8bit_initial_output_bias_draws_near_the_pixel_means(name):
    lik = likelihoods.build_likelihood(name, 2)
    means = np.array([0.1, 0.3, 0.5, 0.7, 0.9, 0.5])
    bias = lik.initial_output_bias(means, (6 * lik.outputs_per_pixel,))
    np.testing.assert_allclose(lik.mean(bias[None])[0], means, atol=0.02)
    # a depth-to-space decoder's bias on a 1 x 2 colour image: 3 channels x 4 positions
    colour = np.array([0.1, 0.4, 0.7, 0.3, 0.6, 0.9])
    per_channel = lik.initial_output_bias(colour, (4 * 3 * lik.outputs_per_pixel,), channels=3)
    np.testing.assert_allclose(lik.mean(per_channel[None])[0], np.tile([0.2, 0.5, 0.8], 4), atol=0.02)
    with pytest.raises(ValueError, match="fits neither"):
        lik.initial_output_bias(means, (4 * lik.outputs_per_pixel + 1,))


@pytest.mark.parametrize("k", [1, 3, 5])
def test_the_grouped_mixture_is_the_direct_numpy_computation(x64, k):
    """The IWAE's form of the mixture (exponent and bounded factor, components on the minor
    axis) against the textbook float64 computation: edge bins, bins far in a tail, scales at the
    floor and huge; in float64 to float64 rounding, in float32 as the evaluation runs it."""
    rng = np.random.default_rng(10 + k)
    out = _random_output(rng, 3, 40, 3 * k, 3.0)
    out.reshape(3, 40, 3 * k)[0, :4, 2 * k:] = [[-30.0], [10.0], [-7.0], [4.0]]  # log-scales
    out.reshape(3, 40, 3 * k)[0, 4:8, k:2 * k] = [[-1.0], [1.0], [-3.0], [3.0]]  # means
    levels = rng.integers(0, 256, size=(3, 40))
    levels[0, :8] = [0, 255, 200, 0, 255, 0, 128, 1]
    log_w, mu, log_s = _mixture_params_NumPy(out, k)
    expected = scipy.special.logsumexp(
        log_w + _discretized_logistic_NumPy(levels[..., None], mu, log_s), axis=-1).sum(-1)
    lik = likelihoods.LogisticMixture(k)
    x = levels / 255.0
    np.testing.assert_allclose(lik.log_prob_grouped(jnp.asarray(out), jnp.asarray(x)), expected, rtol=1e-12)
    got32 = lik.log_prob_grouped(jnp.asarray(out, jnp.float32), jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(got32, expected, rtol=2e-6)
    # the far tail: level 200 under a narrow logistic at black keeps its log-mass of about −631
    tail = jnp.asarray([[0.0, -1.0, -6.0] * 4], jnp.float32)
    x_tail = jnp.asarray([[0, 1, 200, 255]], jnp.float32) / 255.0
    single = likelihoods.LogisticMixture(1)
    np.testing.assert_allclose(single.log_prob_grouped(tail, x_tail), single.log_prob(tail, x_tail),
                               rtol=1e-6)


def test_the_grouped_mixtures_fast_tiles_are_the_direct_computation(x64):
    """Where no sub-pixel of a tile is below 1e-30 (the usual case: levels near the components),
    the tile's mixture is computed as a probability; against the float64 textbook form, and the
    tile does take that path."""
    k, rng = 3, np.random.default_rng(7)
    out = _random_output(rng, 40, 30, 3 * k, 0.5)
    out.reshape(40, 30, 3 * k)[:, :, 2 * k:] -= 1.5  # log-scales about −1.5: levels near the means
    levels = rng.integers(0, 256, size=(40, 30))
    levels[0, :2] = [0, 255]
    log_w, mu, log_s = _mixture_params_NumPy(out, k)
    expected = scipy.special.logsumexp(
        log_w + _discretized_logistic_NumPy(levels[..., None], mu, log_s), axis=-1).sum(-1)
    components = np.swapaxes(out.reshape(40, 30, 3 * k), -1, -2)
    parts = [jnp.asarray(components[:, i * k:(i + 1) * k]) for i in range(3)]  # logits, means, log-scales
    probability = likelihoods._mixture_probability(jnp.asarray(levels), *parts)
    assert float(jnp.min(probability)) >= likelihoods._SMALLEST_FAST_PROBABILITY
    np.testing.assert_allclose(np.log(np.asarray(probability)).sum(-1), expected, rtol=1e-12)
    lik = likelihoods.LogisticMixture(k)
    np.testing.assert_allclose(lik.log_prob_grouped(jnp.asarray(out), jnp.asarray(levels / 255.0)), expected,
                               rtol=1e-12)
    got32 = lik.log_prob_grouped(jnp.asarray(out, jnp.float32), jnp.asarray(levels / 255.0, jnp.float32))
    np.testing.assert_allclose(got32, expected, rtol=2e-6)
