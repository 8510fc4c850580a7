"""vae.kl against the worked examples, identities, scipy and Monte-Carlo estimates."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.stats

from vae import kl

jax.config.update("jax_enable_x64", False)


# --- Worked examples (issue 2) -----------------------------------------------------------------


def test_dog_or_panda_poor_network_costs_1_737_bits():
    assert float(kl.kl_divergence([1.0, 0.0], [0.3, 0.7], unit="bits")) == pytest.approx(1.737, abs=5e-4)


def test_dog_or_panda_better_network_costs_0_152_bits():
    assert float(kl.kl_divergence([1.0, 0.0], [0.9, 0.1], unit="bits")) == pytest.approx(0.152, abs=5e-4)


def test_forest_kl_is_asymmetric():
    p, q = [0.6, 0.3, 0.1], [0.5, 0.4, 0.1]
    forward, reverse = float(kl.kl_divergence(p, q)), float(kl.kl_divergence(q, p))
    assert forward == pytest.approx(0.0231, abs=5e-5)
    assert reverse == pytest.approx(0.0239, abs=5e-5)
    assert forward != pytest.approx(reverse, abs=1e-4)


def test_cross_entropy_is_entropy_plus_kl():
    p, q = np.array([0.6, 0.3, 0.1]), np.array([0.5, 0.4, 0.1])
    for unit in ("nats", "bits"):
        lhs = float(kl.cross_entropy(p, q, unit=unit))
        rhs = float(kl.entropy(p, unit=unit)) + float(kl.kl_divergence(p, q, unit=unit))
        assert lhs == pytest.approx(rhs, rel=1e-6)
    assert float(kl.cross_entropy(p, q)) == pytest.approx(-np.sum(p * np.log(q)), rel=1e-6)


@pytest.mark.parametrize("p", [[1.0, 0.0], [0.6, 0.3, 0.1], [0.25] * 4])
def test_kl_of_a_distribution_with_itself_is_zero(p):
    assert float(kl.kl_divergence(p, p)) == 0.0


def test_entropy_from_certainty_to_a_fair_die():
    assert float(kl.entropy([1.0, 0, 0, 0, 0, 0])) == 0.0
    assert float(kl.entropy(np.full(6, 1 / 6))) == pytest.approx(math.log(6), rel=1e-6)
    assert float(kl.entropy(np.full(6, 1 / 6), unit="bits")) == pytest.approx(math.log2(6), rel=1e-6)


def test_zero_log_zero_is_zero_and_missing_support_is_infinite():
    # P puts no mass where Q does: that term contributes 0, not nan.
    assert math.isfinite(float(kl.kl_divergence([1.0, 0.0], [0.5, 0.5])))
    assert float(kl.kl_divergence([1.0, 0.0], [0.5, 0.5])) == pytest.approx(math.log(2), rel=1e-6)
    # Q puts no mass where P does: infinitely surprising.
    assert float(kl.kl_divergence([0.5, 0.5], [1.0, 0.0])) == math.inf
    assert float(kl.cross_entropy([0.5, 0.5], [1.0, 0.0])) == math.inf


def test_discrete_matches_scipy_on_random_distributions():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p, q = rng.dirichlet(np.ones(7)), rng.dirichlet(np.ones(7))
        assert float(kl.kl_divergence(p, q)) == pytest.approx(scipy.stats.entropy(p, q), rel=1e-5)
        assert float(kl.entropy(p, unit="bits")) == pytest.approx(scipy.stats.entropy(p, base=2), rel=1e-5)


def test_batched_distributions_give_one_value_each():
    p = np.array([[1.0, 0.0], [0.6, 0.4]])
    q = np.array([[0.3, 0.7], [0.6, 0.4]])
    np.testing.assert_allclose(kl.kl_divergence(p, q, unit="bits"), [math.log2(1 / 0.3), 0.0], rtol=1e-6)


@pytest.mark.parametrize(
    "p, q, message",
    [
        ([0.5, 0.5], [0.2, 0.3, 0.5], "same shape"),
        ([0.7, 0.7], [0.5, 0.5], "sum to 1"),
        ([1.5, -0.5], [0.5, 0.5], "negative"),
        ([0.5, np.nan], [0.5, 0.5], "non-finite"),
        (1.0, 1.0, "scalar"),
    ],
)
def test_invalid_distributions_are_rejected_with_a_clear_error(p, q, message):
    with pytest.raises(ValueError, match=message):
        kl.kl_divergence(p, q)


def test_unknown_unit_is_rejected():
    with pytest.raises(ValueError, match="unit"):
        kl.entropy([0.5, 0.5], unit="hartleys")


def test_discrete_kl_works_under_jit():
    value = jax.jit(lambda p, q: kl.kl_divergence(p, q, unit="bits"))(
        jnp.array([1.0, 0.0]), jnp.array([0.3, 0.7]))
    assert float(value) == pytest.approx(1.737, abs=5e-4)


# --- Gaussians ----------------------------------------------------------------------------------


def test_standard_normal_kl_closed_form_by_hand():
    # mean 1, variance e: 0.5 * (1 + e - 1 - 1) = 0.5 * (e - 1)
    assert float(kl.standard_normal_kl_per_dim(1.0, 1.0)) == pytest.approx(0.5 * (math.e - 1), rel=1e-6)
    assert float(kl.standard_normal_kl_per_dim(jnp.zeros(5), jnp.zeros(5)).sum()) == 0.0


def test_standard_normal_kl_is_precise_for_nearly_collapsed_dimensions():
    log_var = jnp.float32(1e-4)  # σ² − 1 − log σ² ≈ (log σ²)² / 2 = 5e-9
    exact = 0.5 * (math.expm1(1e-4) - 1e-4)
    naive = 0.5 * float(jnp.exp(log_var) - 1.0 - log_var)  # cancels in float32
    assert float(kl.standard_normal_kl_per_dim(0.0, log_var)) == pytest.approx(exact, rel=1e-2)
    assert abs(naive - exact) > 0.1 * exact


def test_general_gaussian_kl_reduces_to_the_standard_normal_case():
    rng = np.random.default_rng(1)
    mean, log_var = rng.normal(size=(3, 8)), rng.normal(size=(3, 8))
    np.testing.assert_allclose(
        kl.gaussian_kl(mean, log_var, np.zeros(8), np.zeros(8)),
        kl.standard_normal_kl_per_dim(mean, log_var).sum(-1), rtol=1e-5)


def test_gaussian_kl_is_zero_iff_equal_and_asymmetric():
    assert float(kl.gaussian_kl(jnp.ones(3), jnp.ones(3), jnp.ones(3), jnp.ones(3))) == 0.0
    zero, one = jnp.zeros(1), jnp.ones(1)
    forward = float(kl.gaussian_kl(zero, zero, one, one))
    reverse = float(kl.gaussian_kl(one, one, zero, zero))
    assert forward > 0 and reverse > 0 and forward != pytest.approx(reverse, rel=1e-3)


def test_gaussian_kl_matches_numerical_integration_with_scipy():
    m_p, lv_p, m_q, lv_q = 0.3, math.log(0.5), -1.0, math.log(2.0)
    p = scipy.stats.norm(m_p, math.exp(0.5 * lv_p))
    q = scipy.stats.norm(m_q, math.exp(0.5 * lv_q))
    integral, _ = scipy.integrate.quad(lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), -20, 20)
    assert float(kl.gaussian_kl_per_dim(m_p, lv_p, m_q, lv_q)) == pytest.approx(integral, rel=1e-5)


def test_gaussian_density_matches_scipy():
    mean, log_var = np.array([0.5, -2.0]), np.array([0.3, -1.2])
    scale = np.exp(0.5 * log_var)
    x = np.array([0.1, -1.5])
    expected_logp = scipy.stats.norm(mean, scale).logpdf(x).sum()
    assert float(kl.gaussian_log_density(x, mean, log_var)) == pytest.approx(expected_logp, rel=1e-5)


def test_gaussian_closed_form_agrees_with_monte_carlo():
    key = jax.random.key(0)
    m_p, lv_p = jnp.array([0.5, -1.0, 2.0]), jnp.array([0.2, -0.5, 1.0])
    m_q, lv_q = jnp.array([0.0, 0.5, 1.0]), jnp.array([0.0, 0.3, -0.2])
    estimate, std_error = kl.monte_carlo_kl(
        key,
        lambda k, n: kl.sample_gaussian(k, m_p, lv_p, n),
        lambda x: kl.gaussian_log_density(x, m_p, lv_p),
        lambda x: kl.gaussian_log_density(x, m_q, lv_q),
        num_samples=200_000,
    )
    exact = float(kl.gaussian_kl(m_p, lv_p, m_q, lv_q))
    assert abs(float(estimate) - exact) < 4 * float(std_error)
    assert float(std_error) < 0.01 * exact


def test_discrete_monte_carlo_agrees_with_exact():
    p, q = jnp.array([0.6, 0.3, 0.1]), jnp.array([0.5, 0.4, 0.1])
    estimate, std_error = kl.monte_carlo_kl(
        jax.random.key(1),
        lambda k, n: jax.random.categorical(k, jnp.log(p), shape=(n,)),
        lambda i: jnp.log(p)[i],
        lambda i: jnp.log(q)[i],
        num_samples=400_000,
    )
    assert abs(float(estimate) - float(kl.kl_divergence(p, q))) < 4 * float(std_error)
