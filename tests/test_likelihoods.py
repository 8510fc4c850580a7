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
