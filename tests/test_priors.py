"""Priors and the hierarchical KL against independent computations: the VampPrior's density
against a direct mixture sum (and scipy), its KL estimate's mean against the exact KL where the
mixture has one component, and the HVAE's KL terms against Monte Carlo."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from tests.conftest import tiny_config
from vae import kl
from vae.model import build, priors


def toy_encoder(scale=1.0):
    """A fixed linear encoder D=6 -> Z=3, so component parameters are easy to write down."""
    w = jax.random.normal(jax.random.key(11), (6, 6)) * scale

    def encode(x):
        h = x @ w
        return h[:, :3], 0.5 * jnp.tanh(h[:, 3:])

    return encode


def test_vampprior_density_is_the_mixture_of_the_encoder_posteriors():
    prior = priors.VampPrior(5, 6, init_mean=0.3, init_std=0.4, rngs=nnx.Rngs(0))
    encode = toy_encoder()
    z = jax.random.normal(jax.random.key(1), (8, 3)) * 2.0
    means, log_vars = encode(jnp.clip(prior.pseudo_inputs[...], 0, 1))
    # Direct: average the K component densities, each a product of 1-D normals (scipy).
    densities = np.zeros(8)
    for m, lv in zip(np.asarray(means), np.asarray(log_vars)):
        densities += np.prod(stats.norm.pdf(np.asarray(z), m, np.exp(0.5 * lv)), axis=-1) / 5
    np.testing.assert_allclose(prior.log_prob(z, encode), np.log(densities), rtol=1e-5, atol=1e-5)


def test_vampprior_pseudo_inputs_are_clipped_to_pixel_range():
    prior = priors.VampPrior(4, 6, init_mean=0.5, init_std=3.0, rngs=nnx.Rngs(0))
    inputs = prior.inputs()
    assert float(inputs.min()) == 0.0 and float(inputs.max()) == 1.0


def test_vampprior_kl_estimate_is_unbiased_for_one_component():
    """With K = 1 the prior is one Gaussian, so E_q[log q − log p] is the exact Gaussian KL."""
    prior = priors.VampPrior(1, 6, init_mean=0.5, init_std=0.2, rngs=nnx.Rngs(0))
    encode = toy_encoder(0.5)
    mean, log_var = jnp.array([[0.3, -0.2, 0.8]]), jnp.array([[-0.5, 0.1, -1.0]])
    n = 200_000

    @nnx.jit
    def estimates_and_exact(prior):
        z = kl.sample_gaussian(jax.random.key(2), mean, log_var, n)[:, 0]
        means, log_vars = jnp.broadcast_to(mean, (n, 3)), jnp.broadcast_to(log_var, (n, 3))
        estimates, per_dim = prior.kl(means, log_vars, z, encode)
        prior_mean, prior_log_var = prior.components(encode)
        return estimates, per_dim, kl.gaussian_kl(mean, log_var, prior_mean, prior_log_var)[0]

    estimates, per_dim, exact = estimates_and_exact(prior)
    assert per_dim is None
    exact = float(exact)
    std_error = float(jnp.std(estimates)) / math.sqrt(n)
    assert abs(float(jnp.mean(estimates)) - exact) < 4 * std_error


def test_vampprior_samples_come_from_the_components():
    prior = priors.VampPrior(3, 6, init_mean=0.5, init_std=0.3, rngs=nnx.Rngs(0))
    encode = toy_encoder()
    means, _ = prior.components(encode)
    cold = prior.sample(jax.random.key(0), 50, 3, temperature=0.0, encoder=encode)
    distances = jnp.min(jnp.linalg.norm(cold[:, None] - means[None], axis=-1), axis=1)
    np.testing.assert_allclose(distances, 0.0, atol=1e-6)


def test_standard_normal_prior_is_the_closed_form():
    prior = priors.StandardNormal()
    mean, log_var = jnp.array([[0.5, -1.0]]), jnp.array([[0.2, -0.3]])
    total, per_dim = prior.kl(mean, log_var, None)
    np.testing.assert_allclose(per_dim, kl.standard_normal_kl_per_dim(mean, log_var))
    np.testing.assert_allclose(total, per_dim.sum(-1))
    z = jnp.array([[0.1, 2.0]])
    np.testing.assert_allclose(prior.log_prob(z), stats.norm.logpdf(np.asarray(z)).sum(-1), rtol=1e-6)


@pytest.fixture(scope="module")
def hvae():
    config = tiny_config(model__arch="hvae", model__latent_dim=3, model__activation="gated")
    model = build.build_model(config.model, (28, 28, 1), jax.random.key(0))
    x = jax.random.bernoulli(jax.random.key(1), 0.3, (1, 784)).astype(jnp.float32)
    return model, x


def test_hvae_kl_matches_monte_carlo(hvae):
    """The closed-form-given-z2 KL, averaged over z2 ~ q(z2|x), equals the Monte Carlo estimate
    E_q[log q(z1|x,z2) + log q(z2|x) − log p(z1|z2) − log p(z2)] of the whole KL."""
    model, x = hvae
    n = 100_000

    @nnx.jit
    def both(model):
        closed = model.elbo_terms(jnp.broadcast_to(x, (n, 784)), jax.random.key(3))["kl"]
        return closed, -model.log_weights(x, jax.random.key(4), n)["log_ratio"][:, 0]

    closed, monte_carlo = both(model)
    se = math.sqrt(float(jnp.var(closed)) / n + float(jnp.var(monte_carlo)) / n)
    assert abs(float(jnp.mean(closed)) - float(jnp.mean(monte_carlo))) < 4 * se
    # The closed form given z2 has the lower variance: that is why it is used for training.
    assert float(jnp.var(closed)) < float(jnp.var(monte_carlo))


def test_hvae_log_weights_are_the_joint_over_the_posterior(hvae):
    """log_ratio = log p(z1|z2) + log p(z2) − log q(z1|x,z2) − log q(z2|x), from scratch."""
    model, x = hvae
    key = jax.random.key(5)

    @nnx.jit
    def weights_and_parts(model):  # one compiled program, not one per operation
        key_z2, key_z1 = jax.random.split(key)
        mean2, log_var2 = model.encode(x)
        z2 = kl.sample_gaussian(key_z2, mean2, log_var2, 2).reshape(2, -1)
        mean1, log_var1 = model.q_z1(jnp.broadcast_to(x, (2, 784)), z2)
        z1 = kl.sample_gaussian(key_z1, mean1, log_var1)
        return (model.log_weights(x, key, 2), (mean2, log_var2, z2, mean1, log_var1, z1, *model.p_z1(z2)),
                model.decode_both(z1, z2))

    w, (mean2, log_var2, z2, mean1, log_var1, z1, p_mean1, p_log_var1), logits = weights_and_parts(model)

    def logpdf(z, m, lv):
        return stats.norm.logpdf(np.asarray(z), np.asarray(m), np.exp(0.5 * np.asarray(lv))).sum(-1)

    expected = (logpdf(z1, p_mean1, p_log_var1) + logpdf(z2, 0.0, 0.0)
                - logpdf(z1, mean1, log_var1) - logpdf(z2, mean2, log_var2))
    np.testing.assert_allclose(w["log_ratio"][:, 0], expected, rtol=1e-4, atol=1e-3)
    p = np.asarray(jax.nn.sigmoid(logits), np.float64)
    x64 = np.asarray(x, np.float64)
    log_lik = np.sum(x64 * np.log(p) + (1 - x64) * np.log1p(-p), axis=-1)
    np.testing.assert_allclose(w["log_lik"][:, 0], log_lik, rtol=1e-4)
