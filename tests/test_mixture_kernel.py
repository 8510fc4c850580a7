"""The compiled CPU kernel of the logistic mixture's log p(x|z) (vae/model/mixture_kernel.py) against
the textbook float64 computation and the XLA path it stands in for."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from test_likelihoods import _discretized_logistic_NumPy, _mixture_params_NumPy

from vae.model import likelihoods, mixture_kernel


def _textbook(out, levels, k):
    log_w, mu, log_s = _mixture_params_NumPy(out, k)
    return scipy.special.logsumexp(log_w + _discretized_logistic_NumPy(levels[..., None], mu, log_s),
                                   axis=-1).sum(-1)


def _case(rng, rows, pixels, k):
    """Decoder outputs as training meets them (components near their levels) with the hard cases
    in the first row: both edge bins, log-scales under the floor and huge, and far tails whose
    probability is under 1e-30 (the exact form's pixels)."""
    out = rng.normal(scale=0.5, size=(rows, pixels, 3 * k))
    out[:, :, 2 * k:] -= 2.0
    levels = rng.integers(0, 256, size=(rows, pixels))
    hard = min(pixels, 6)
    out[0, :hard, 2 * k:] = np.array([-30.0, 10.0, -7.0, -6.0, -6.0, 4.0])[:hard, None]
    out[0, :hard, k:2 * k] = np.array([0.2, 0.0, 0.9, -1.0, 1.0, -3.0])[:hard, None]
    levels[0, :hard] = [0, 255, 3, 200, 0, 255][:hard]
    return out.reshape(rows, -1), levels


def test_the_kernel_is_in_use_wherever_a_compiler_is():
    """So the suite tests the kernel, not only its fallback, on every machine that can build it."""
    assert mixture_kernel.compiled() == (mixture_kernel.compiler() is not None)


@pytest.mark.skipif(not mixture_kernel.compiled(), reason="no C++ compiler: the XLA path runs")
@pytest.mark.parametrize("k, pixels", [(1, 1), (2, 15), (3, 16), (5, 17), (5, 784), (10, 40)])
def test_the_kernel_is_the_textbook_mixture(k, pixels):
    """Every row's log p(x|z) within float32 rounding of the float64 formula, partial vectors of
    pixels (D not a multiple of 16) and the far-tail pixels included; and the XLA path's number."""
    out, levels = _case(np.random.default_rng(k * 100 + pixels), 7, pixels, k)
    expected = _textbook(out, levels, k)
    assert np.isfinite(expected).all() and expected[0] < -100  # the far tails are in
    out32, levels32 = jnp.asarray(out, jnp.float32), jnp.asarray(levels, jnp.int32)
    lik = likelihoods.LogisticMixture(k)
    kernel = jax.jit(lambda o, lv: mixture_kernel.log_prob(o, lv, k, lik._tiled_log_prob))(out32, levels32)
    xla = jax.jit(lik._tiled_log_prob)(out32, levels32)
    np.testing.assert_allclose(kernel, expected, rtol=2e-6, atol=1e-4)
    np.testing.assert_allclose(kernel, xla, rtol=2e-6, atol=1e-4)


@pytest.mark.skipif(not mixture_kernel.compiled(), reason="no C++ compiler: the XLA path runs")
def test_rows_read_their_image_modulo_the_images():
    """The IWAE's C draws x B images against x_BxD[None] (each image read once), the plain B x P
    against B x D, and a broadcast the kernel does not take (one image per draw) all agree with
    the direct `log_prob`, and the thread-shared rows give the same numbers every call."""
    k, rng = 5, np.random.default_rng(3)
    out, levels = _case(rng, 4 * 6, 30, k)
    out_CxBxP = jnp.asarray(out.reshape(4, 6, -1), jnp.float32)
    x_BxD = jnp.asarray(levels[:6] / 255.0, jnp.float32)
    lik = likelihoods.LogisticMixture(k)
    grouped = jax.jit(lambda o, x: lik.log_prob_grouped(o, x[None]))
    got = grouped(out_CxBxP, x_BxD)
    assert got.shape == (4, 6)
    np.testing.assert_allclose(got, lik.log_prob(out_CxBxP, x_BxD[None]), rtol=2e-6, atol=1e-4)
    np.testing.assert_array_equal(got, grouped(out_CxBxP, x_BxD))
    np.testing.assert_allclose(lik.log_prob_grouped(out_CxBxP[0], x_BxD), got[0], rtol=1e-6)
    x_Cx1xD = jnp.asarray(levels[:4, None] / 255.0, jnp.float32)
    np.testing.assert_allclose(lik.log_prob_grouped(out_CxBxP, x_Cx1xD), lik.log_prob(out_CxBxP, x_Cx1xD),
                               rtol=2e-6, atol=1e-4)
    vmapped = jax.vmap(lik.log_prob_grouped, (0, None))(out_CxBxP, x_BxD)
    np.testing.assert_allclose(vmapped, got, rtol=1e-6)


def test_without_the_kernel_the_xla_path_gives_the_same_numbers(monkeypatch):
    """VAE_NATIVE=0 (or no compiler) leaves the XLA path: the same log p(x|z) to float rounding."""
    k = 3
    out, levels = _case(np.random.default_rng(5), 5, 20, k)
    out32, x = jnp.asarray(out, jnp.float32), jnp.asarray(levels / 255.0, jnp.float32)
    lik = likelihoods.LogisticMixture(k)
    with_kernel = lik.log_prob_grouped(out32, x)
    monkeypatch.setenv("VAE_NATIVE", "0")
    mixture_kernel.compiled.cache_clear()
    try:
        assert not mixture_kernel.compiled()
        without = jax.jit(lik.log_prob_grouped)(out32, x)
    finally:
        monkeypatch.delenv("VAE_NATIVE")
        mixture_kernel.compiled.cache_clear()
    np.testing.assert_allclose(without, with_kernel, rtol=2e-6, atol=1e-4)
    np.testing.assert_allclose(without, _textbook(out, levels, k), rtol=2e-6, atol=1e-4)
