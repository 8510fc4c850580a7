"""The importance-weighted evaluation: pinned to the previous implementation's numbers, the same
for every batch size, chunk size, device count and loop, and the VAE's fast path equal to the
generic one for every decoder and prior."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import tiny_config
from vae import threefry
from vae.analysis import iwae
from vae.model import build, likelihoods, objectives

CASES = {
    "mlp_relu": {},
    "mlp_gated": {"model__activation": "gated", "model__hidden_dims": (32, 16),
                  "model__kernel_init": "he_normal", "model__log_var_clip": (-6.0, 2.0)},
    "mlp_vampprior": {"model__prior": "vampprior", "model__num_pseudo_inputs": 5},
    "hvae": {"model__arch": "hvae", "model__hidden_dims": (32, 16)},
    "hvae_vampprior": {"model__arch": "hvae", "model__hidden_dims": (32, 16), "model__prior": "vampprior",
                       "model__num_pseudo_inputs": 5},
    "conv": {"model__arch": "conv"},
}
# log p(x) bounds (k = 24) of the three images below under each model, computed with the previous
# implementation (commit 5ecedb7: `objectives.iwae_log_likelihood(model, x[i:i+1],
# fold_in(key, i), 24, chunk_size=1)`, i.e. one image per batch and one sample per chunk, where
# its draws are the ones the current implementation makes for every batch and chunk size). The two
# HVAE rows were recomputed with that same code (`previous_iwae_log_likelihood` below) after the
# HVAE was rebuilt from its four networks (vae/model/networks.py), which changed its initial parameters.
PREVIOUS = {
    "mlp_relu": [-547.4548, -548.4844, -551.541],
    "mlp_gated": [-551.945, -547.4453, -549.7073],
    "mlp_vampprior": [-559.2836, -549.7864, -556.3912],
    "hvae": [-552.1094, -544.8096, -549.838],
    "hvae_vampprior": [-548.3563, -548.561, -547.761],
    "conv": [-539.5989, -541.6891, -541.548],
}
K = 24
KEY = threefry.key(42)  # draws jax.random.key(42)'s bits (tests/test_threefry.py), compiles faster


def model_of(case: str):
    config = tiny_config(**CASES[case])
    return build.build_model(config.model, (28, 28, 1), jax.random.key(0))


def images_u8(n: int = 3) -> np.ndarray:
    return np.asarray(jax.random.bernoulli(jax.random.key(1), 0.3, (n, 784))).astype(np.uint8) * 255


def previous_iwae_log_likelihood(model, x_BxD, key, num_samples, chunk_size=100):
    """The previous implementation, kept verbatim: per-chunk keys fold_in(key, chunk)."""
    chunk = min(chunk_size, num_samples)
    num_chunks = -(-num_samples // chunk)

    def accumulate(running_lse_B, chunk_index):
        w = model.log_weights(x_BxD, jax.random.fold_in(key, chunk_index), chunk)
        log_w_CxB = w["log_lik"] + w["log_ratio"]
        sample_index = chunk_index * chunk + jnp.arange(chunk)
        log_w_CxB = jnp.where((sample_index < num_samples)[:, None], log_w_CxB, -jnp.inf)
        chunk_lse_B = jax.nn.logsumexp(log_w_CxB, axis=0)
        return jnp.logaddexp(running_lse_B, chunk_lse_B), None

    init_B = jnp.full(x_BxD.shape[:1], -jnp.inf, dtype=jnp.float32)
    lse_B, _ = jax.lax.scan(accumulate, init_B, jnp.arange(num_chunks))
    return lse_B - math.log(num_samples)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_previous_implementations_numbers(case):
    estimate = iwae.iwae_log_likelihoods(model_of(case), images_u8(), KEY, K, progress=False)
    np.testing.assert_allclose(estimate, PREVIOUS[case], rtol=2e-6)


@pytest.mark.parametrize("case", ["mlp_gated", "hvae_vampprior"])
def test_the_kept_previous_code_at_batch_1_and_chunk_1(case):
    """Recomputes the pinned numbers with the previous code itself, so they do not rest on constants."""
    model = model_of(case)
    x = jnp.asarray(images_u8(), jnp.float32) / 255.0
    keys = jax.vmap(jax.random.fold_in, (None, 0))(KEY, jnp.arange(3))
    one_image = jax.jit(jax.vmap(
        lambda x_D, key: previous_iwae_log_likelihood(model, x_D[None], key, K, chunk_size=1)[0]))
    np.testing.assert_allclose(one_image(x, keys), PREVIOUS[case], rtol=2e-6)


@pytest.mark.parametrize("case,loops", [("mlp_gated", ("scan", "steps")), ("hvae_vampprior", ("scan",)),
                                        ("conv", ("steps",))])
def test_independent_of_batch_chunk_devices_and_loop(case, loops):
    model = model_of(case)
    images = images_u8(7)
    default = iwae.iwae_log_likelihoods(model, images, KEY, K, progress=False)
    shapes = [(8, 24, 4), (2, 7, 1), (4, 5, 2)]  # (batch, chunk, devices): 7 images, k = 24 = 3·7 + 3
    for (batch_size, chunk_size, num_devices), loop in zip(shapes, loops * 3):
        estimate = iwae.iwae_log_likelihoods(model, images, KEY, K, batch_size=batch_size,
                                                   chunk_size=chunk_size, loop=loop,
                                                   devices=jax.devices()[:num_devices], progress=False)
        np.testing.assert_allclose(estimate, default, rtol=2e-6, err_msg=f"batch {batch_size}, chunk "
                                   f"{chunk_size}, {num_devices} devices, {loop}")
    # An image's bound depends on its index in the set, not on the other images.
    np.testing.assert_allclose(iwae.iwae_log_likelihoods(model, images[:3], KEY, K, progress=False),
                               default[:3], rtol=2e-6)


@pytest.mark.parametrize("case", ["mlp_relu", "mlp_gated", "mlp_vampprior", "conv"])
def test_the_vae_fast_path_equals_the_models_own_log_weights(case):
    model = model_of(case)
    x = jnp.asarray(images_u8(5), jnp.float32) / 255.0
    keys = objectives.sample_keys(KEY, jnp.arange(5), jnp.arange(9))
    fast = jax.jit(lambda m, x, k: m.iwae_log_weights(x, k))(model, x, keys)
    generic = jax.jit(objectives.log_weights_by_key)(model, x, keys)
    assert fast.shape == (9, 5)
    np.testing.assert_allclose(fast, generic, rtol=2e-6)


@pytest.mark.parametrize("likelihood", likelihoods.EIGHT_BIT_LIKELIHOODS)
def test_the_8_bit_fast_path_gives_the_generic_paths_estimate(likelihood):
    """The IWAE evaluation of an 8-bit model (the mixture's grouped form, chunked, batched) is
    the estimate the model's own log-likelihood gives draw by draw, up to float32 rounding."""
    config = tiny_config(model__likelihood=likelihood, model__mixture_components=3, data__binarize="none")
    model = build.build_model(config.model, (28, 28, 1), jax.random.key(0))
    images = np.random.default_rng(2).integers(0, 256, size=(5, 28, 28, 1)).astype(np.uint8)
    images[0, :14] = 0  # a run of black, as Fashion-MNIST's background
    estimate = iwae.iwae_log_likelihoods(model, images, KEY, K, batch_size=4, chunk_size=7, progress=False)
    x = jnp.asarray(images.reshape(5, -1), jnp.float32) / 255.0
    keys = objectives.sample_keys(KEY, jnp.arange(5), jnp.arange(K))
    log_w = jax.jit(objectives.log_weights_by_key)(model, x, keys)
    expected = jax.nn.logsumexp(log_w, axis=0) - math.log(K)
    np.testing.assert_allclose(estimate, expected, rtol=2e-6)


def test_the_hierarchical_vae_takes_the_generic_path_one_draw_per_key():
    model = model_of("hvae")
    x = jnp.asarray(images_u8(2), jnp.float32) / 255.0
    keys = objectives.sample_keys(KEY, jnp.array([5, 9]), jnp.array([0, 3]))
    log_w = jax.jit(lambda m, x, k: m.iwae_log_weights(x, k))(model, x, keys)
    key = jax.random.fold_in(jax.random.fold_in(KEY, 9), 3)  # image 9, sample 3
    w = jax.jit(model.log_weights, static_argnums=2)(x[1:2], key, 1)
    np.testing.assert_allclose(log_w[1, 1], (w["log_lik"] + w["log_ratio"])[0, 0], rtol=1e-6)


@pytest.mark.parametrize("num_pixels", [784, 3072, 7, 2])
def test_grouped_bernoulli_likelihood_is_the_softplus_form(num_pixels):
    logits = 6.0 * jax.random.normal(jax.random.key(0), (5, num_pixels))
    logits = logits.at[0, :2].set(jnp.array([90.0, -90.0]))  # saturated pixels
    binary = jax.random.bernoulli(jax.random.key(1), 0.4, logits.shape).astype(jnp.float32)
    grey = jax.random.uniform(jax.random.key(2), logits.shape)
    for x in (binary, grey):
        grouped = likelihoods.Bernoulli().log_prob_grouped(logits, x)
        l64, x64 = np.asarray(logits, np.float64), np.asarray(x, np.float64)
        exact = np.sum(x64 * l64 - np.logaddexp(0.0, l64), axis=-1)
        np.testing.assert_allclose(grouped, exact, rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(grouped, likelihoods.Bernoulli().log_prob(logits, x),
                                   rtol=1e-6, atol=1e-5)
