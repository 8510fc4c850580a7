"""Model shapes, finiteness, the reparameterisation and determinism, for both architectures."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.conftest import tiny_config
from vae import models

IMAGE_SHAPE = (28, 28, 1)


def build(arch):
    config = tiny_config(model__arch=arch)
    return models.build_model(config.model, IMAGE_SHAPE, jax.random.key(0)), config


@pytest.mark.parametrize("arch", models.ARCHS)
def test_shapes_and_finiteness(arch):
    model, config = build(arch)
    x = jax.random.bernoulli(jax.random.key(1), 0.3, (5, 784)).astype(jnp.float32)
    mean, log_var = model.encode(x)
    assert mean.shape == log_var.shape == (5, config.model.latent_dim)
    logits, mean2, log_var2, z = model(x, jax.random.key(2))
    assert logits.shape == (5, 784)
    assert z.shape == (5, config.model.latent_dim)
    np.testing.assert_array_equal(mean, mean2)
    assert model.reconstruct(x).shape == (5, 784)
    assert model.sample(jax.random.key(3), 7).shape == (7, 784)
    assert model.image_shape == IMAGE_SHAPE
    for array in (mean, log_var, logits, z):
        assert bool(jnp.all(jnp.isfinite(array)))


def test_reparameterised_sample_is_mean_plus_scaled_noise():
    model, _ = build("mlp")
    x = jnp.ones((3, 784)) * 0.5
    key = jax.random.key(4)
    _, mean, log_var, z = model(x, key)
    eps = jax.random.normal(key, mean.shape)
    np.testing.assert_allclose(z, mean + jnp.exp(0.5 * log_var) * eps, rtol=1e-6)


def test_gradients_flow_through_the_sample():
    model, _ = build("mlp")
    x = jnp.ones((2, 784)) * 0.5
    graphdef, params = nnx.split(model)
    grads = jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p)(x, jax.random.key(0))[3]))(params)
    encoder_grad = grads["encoder"]["head"]["kernel"][...]
    assert float(jnp.abs(encoder_grad).sum()) > 0


def test_same_key_same_model_and_samples():
    a, _ = build("mlp")
    b, _ = build("mlp")
    np.testing.assert_array_equal(a.sample(jax.random.key(9), 4), b.sample(jax.random.key(9), 4))
    assert not np.array_equal(a.sample(jax.random.key(9), 4), a.sample(jax.random.key(10), 4))


def test_temperature_scales_the_prior():
    model, _ = build("mlp")
    z_cold = model.decode(jnp.zeros((1, 4)))
    np.testing.assert_allclose(model.sample(jax.random.key(0), 1, temperature=0.0), z_cold, rtol=1e-6)


def test_mlp_parameter_count_matches_the_architecture():
    config = tiny_config()
    config.model.hidden_dims, config.model.latent_dim = (400,), 20
    model = models.build_model(config.model, IMAGE_SHAPE, jax.random.key(0))
    count = sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    expected = (784 * 400 + 400) + (400 * 40 + 40) + (20 * 400 + 400) + (400 * 784 + 784)
    assert count == expected


def test_unknown_architecture_is_rejected():
    config = tiny_config(model__arch="transformer")
    with pytest.raises(ValueError, match="model.arch"):
        models.build_model(config.model, IMAGE_SHAPE, jax.random.key(0))


def test_depth_to_space_places_channel_groups_in_2x2_blocks():
    h = jnp.arange(1 * 1 * 1 * 8, dtype=jnp.float32).reshape(1, 1, 1, 8)  # one pixel, 4 x 2 channels
    out = models.depth_to_space(h)
    assert out.shape == (1, 2, 2, 2)
    np.testing.assert_array_equal(out[0, :, :, 0], [[0, 2], [4, 6]])
    np.testing.assert_array_equal(out[0, :, :, 1], [[1, 3], [5, 7]])
