"""ELBO pieces against hand computations; warm-up, free bits, and the importance-weighted bound."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.conftest import tiny_config
from vae import kl
from vae.model import build, objectives


def test_kl_weight_warms_up_linearly():
    assert float(objectives.kl_weight(jnp.int32(0), 2.0, 100)) == 0.0
    assert float(objectives.kl_weight(jnp.int32(25), 2.0, 100)) == pytest.approx(0.5)
    assert float(objectives.kl_weight(jnp.int32(500), 2.0, 100)) == pytest.approx(2.0)
    assert float(objectives.kl_weight(jnp.int32(0), 2.0, 0)) == pytest.approx(2.0)


def test_free_bits_floors_each_dimension_on_the_batch_mean():
    kl_per_dim = jnp.array([[0.1, 2.0, 0.0], [0.3, 4.0, 0.0]])  # batch means: 0.2, 3.0, 0.0
    assert float(objectives.free_bits_kl(kl_per_dim, 0.0)) == pytest.approx(3.2)
    assert float(objectives.free_bits_kl(kl_per_dim, 0.5)) == pytest.approx(0.5 + 3.0 + 0.5)
    # Below the floor there is no gradient from the KL term.
    grad = jax.grad(lambda k: objectives.free_bits_kl(k, 0.5))(kl_per_dim)
    np.testing.assert_allclose(grad[:, 0], 0.0)
    np.testing.assert_allclose(grad[:, 1], 0.5)


@pytest.fixture(scope="module")
def model_and_x():
    config = tiny_config()
    model = build.build_model(config.model, (28, 28, 1), jax.random.key(0))
    x = jax.random.bernoulli(jax.random.key(1), 0.3, (6, 784)).astype(jnp.float32)
    return model, x


def test_training_loss_is_rec_plus_beta_kl(model_and_x):
    model, x = model_and_x
    key = jax.random.key(2)

    @nnx.jit  # one compiled program, not one per operation
    def direct_and_loss(model):
        out, mean, log_var, _ = model(x, key)
        rec = -model.likelihood.log_prob(out, x)
        kl_sum = kl.standard_normal_kl_per_dim(mean, log_var).sum(-1)
        return rec, kl_sum, objectives.training_loss(model, x, key, jnp.float32(3.0))

    rec, kl_sum, (loss, aux) = direct_and_loss(model)
    assert float(aux["rec"]) == pytest.approx(float(rec.mean()), rel=1e-6)
    assert float(aux["kl"]) == pytest.approx(float(kl_sum.mean()), rel=1e-6)
    assert float(aux["elbo"]) == pytest.approx(float((rec + kl_sum).mean()), rel=1e-6)
    assert float(loss) == pytest.approx(float(rec.mean() + 3.0 * kl_sum.mean()), rel=1e-6)


def test_iwae_with_one_sample_is_the_elbo_within_monte_carlo_error(model_and_x):
    model, x = model_and_x
    graphdef, params = nnx.split(model)

    @jax.jit
    def both(key):
        m = nnx.merge(graphdef, params)
        iwae_key, elbo_key = jax.random.split(key)
        terms = m.elbo_terms(x, elbo_key)
        elbo = -(terms["rec"] + terms["kl"])
        return objectives.iwae_log_likelihood(m, x, iwae_key, 1), elbo

    iwae_1, elbo = jax.vmap(both)(jax.random.split(jax.random.key(3), 2000))
    # Same expectation: E_q[log p(x|z) + log p(z) - log q(z|x)] = E_q[log p(x|z)] - KL.
    difference = iwae_1 - elbo
    std_error = difference.std(0) / math.sqrt(difference.shape[0])
    assert bool(jnp.all(jnp.abs(difference.mean(0)) < 4 * std_error))


def test_iwae_tightens_with_more_samples(model_and_x):
    model, x = model_and_x
    bounds = {k: float(objectives.iwae_log_likelihood(model, x, jax.random.key(5), k, chunk_size=32).mean())
              for k in (1, 10, 100, 1000)}
    assert bounds[1] < bounds[10] < bounds[100] < bounds[1000]


def test_iwae_chunks_with_a_remainder_use_exactly_k_samples(model_and_x):
    model, x = model_and_x
    key = jax.random.key(7)

    @nnx.jit
    def direct_and_estimate(model):
        # k = 15 in chunks of 10: samples 15 ... 19 of the second chunk are drawn and left out.
        keys = objectives.sample_keys(key, jnp.arange(x.shape[0]), jnp.arange(15))
        log_w = objectives.log_weights_by_key(model, x, keys)
        return (jax.nn.logsumexp(log_w, axis=0) - math.log(15),
                objectives.iwae_log_likelihood(model, x, key, 15, chunk_size=10))

    direct, estimate = direct_and_estimate(model)
    np.testing.assert_allclose(estimate, direct, rtol=1e-5)


@pytest.mark.parametrize("arch,prior", [("mlp", "standard_normal"), ("hvae", "standard_normal"),
                                        ("mlp", "vampprior"), ("hvae", "vampprior"),
                                        ("ladder", "standard_normal"), ("ladder", "vampprior")])
def test_iwae_objective_with_one_sample_is_the_elbo(arch, prior):
    """k = 1: the IWAE objective's expectation is the negative ELBO, for every model and prior
    (the ELBO objective uses closed-form KLs where they exist, the IWAE one Monte Carlo)."""
    config = tiny_config(model__arch=arch, model__prior=prior, model__num_pseudo_inputs=5,
                         model__num_layers=3)
    model = build.build_model(config.model, (28, 28, 1), jax.random.key(0))
    x = jax.random.bernoulli(jax.random.key(1), 0.3, (2, 784)).astype(jnp.float32)
    graphdef, params = nnx.split(model)

    @jax.jit
    def both(key):
        m = nnx.merge(graphdef, params)
        elbo_key, iwae_key = jax.random.split(key)
        beta = jnp.float32(1.0)
        return (objectives.training_loss(m, x, elbo_key, beta)[0],
                objectives.training_loss(m, x, iwae_key, beta, objective="iwae", num_samples=1)[0])

    elbo, iwae = jax.vmap(both)(jax.random.split(jax.random.key(3), 4000))
    difference = iwae - elbo
    assert abs(float(difference.mean())) < 4 * float(difference.std()) / math.sqrt(difference.shape[0])


def test_iwae_objective_is_the_negative_bound_and_tighter_than_the_elbo(model_and_x):
    model, x = model_and_x
    key = jax.random.key(8)
    loss, aux = nnx.jit(lambda m: objectives.training_loss(m, x, key, jnp.float32(1.0), objective="iwae",
                                                           num_samples=50))(model)
    w = nnx.jit(lambda m: m.log_weights(x, key, 50))(model)
    log_w = w["log_lik"] + w["log_ratio"]
    expected = -jnp.mean(jax.nn.logsumexp(log_w, axis=0) - math.log(50))
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert float(aux["iwae"]) == pytest.approx(float(expected), rel=1e-6)
    assert float(loss) < float(aux["elbo"])  # the k = 50 bound is tighter than the average ELBO


def test_iwae_objective_weights_the_kl_part_by_beta(model_and_x):
    model, x = model_and_x
    key = jax.random.key(9)
    loss, _ = nnx.jit(lambda m: objectives.training_loss(m, x, key, jnp.float32(0.25), objective="iwae",
                                                         num_samples=7))(model)
    w = nnx.jit(lambda m: m.log_weights(x, key, 7))(model)
    log_w = w["log_lik"] + 0.25 * w["log_ratio"]
    assert float(loss) == pytest.approx(float(-jnp.mean(jax.nn.logsumexp(log_w, 0) - math.log(7))), rel=1e-6)
