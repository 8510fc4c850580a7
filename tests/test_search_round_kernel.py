"""The compiled CPU kernel of the coder's search rounds under a logistic mixture
(vae/native/search_round.py, search_round.cc) against the XLA path it stands in for: the same
integers and the same float64 probabilities, bit for bit, so a file coded with it decodes without it
and the other way round."""

import functools

import constriction
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae.coding import fixed_point, pixel_code
from vae.native import build, search_round

MIXTURE = "logistic_mixture"


def _parameters(rng, n, k):
    """Fixed-point mixture parameters as rounding makes them, with the extremes in the first rows:
    weights of 0 and of the whole 2^16, means at both clips, the smallest and largest scales (whose
    arguments leave the table's range and are clipped)."""
    weights = rng.multinomial(1 << fixed_point.WEIGHT_BITS, np.ones(k) / k, size=n).astype(np.int64)
    means = rng.integers(-32 * 256, 287 * 256, (n, k)).astype(np.int64)
    scales = rng.integers(0, len(fixed_point.INVERSE_SCALE_TABLE), (n, k))
    lowest, highest = -fixed_point.MEAN_MARGIN * fixed_point.MEAN_STEPS, \
        (fixed_point.LEVELS - 1 + fixed_point.MEAN_MARGIN) * fixed_point.MEAN_STEPS
    means[:4, 0] = [lowest, highest, 0, 255 * 256]
    scales[:4, 0] = [0, len(fixed_point.INVERSE_SCALE_TABLE) - 1, 0, len(fixed_point.INVERSE_SCALE_TABLE) - 1]
    weights[4] = 0
    weights[4, 0] = (1 << fixed_point.WEIGHT_BITS) + 1
    inverse_scales = fixed_point.INVERSE_SCALE_TABLE[scales].astype(np.int64)
    return tuple(jnp.asarray(a) for a in (weights, means, inverse_scales))


def _without_kernel(function):
    """`function` run with the XLA path: its programs traced and lowered afresh with the kernel off."""
    @functools.wraps(function)
    def run(*args, **kwargs):
        jax.clear_caches()
        available = search_round.kernel_available
        search_round.kernel_available = lambda: False
        try:
            return function(*args, **kwargs)
        finally:
            search_round.kernel_available = available
            jax.clear_caches()
    return run


def _levels(parameters, symbols):
    with jax.enable_x64(True):
        rounds, bits = jax.jit(functools.partial(fixed_point.level_probabilities, MIXTURE))(parameters, symbols)
        return [np.asarray(r) for r in rounds], np.asarray(bits)


def test_the_kernel_is_in_use_wherever_a_compiler_is():
    assert search_round.kernel_available() == (build.compiler_command() is not None)
    with jax.enable_x64(True):
        parameters = _parameters(np.random.default_rng(0), 8, 2)
        text = jax.jit(functools.partial(fixed_point.first_round, MIXTURE), static_argnums=(1, 2)).lower(
            parameters, 64, 4).as_text()
    assert ("vae_mixture_round" in text) == search_round.kernel_available()


@pytest.mark.parametrize("k", [1, 2, 5, 10])
def test_every_round_is_the_xla_paths_bit_for_bit(k):
    """Each round's probabilities (float64, compared as bits) and each level's bits, for every level
    of sub-pixels with extreme parameters: the kernel's and XLA's."""
    with jax.enable_x64(True):
        parameters = _parameters(np.random.default_rng(k), 600, k)
        symbols = jnp.asarray(np.random.default_rng(k + 1).integers(0, 256, 600).astype(np.int64))
        symbols = symbols.at[:256].set(jnp.arange(256))
        rounds, bits = _levels(parameters, symbols)
        xla_rounds, xla_bits = _without_kernel(_levels)(parameters, symbols)
    assert len(rounds) == len(fixed_point.rounds(fixed_point.LEVELS)) == 4
    for got, want in zip(rounds, xla_rounds):
        np.testing.assert_array_equal(got.view(np.int64), want.view(np.int64))
    np.testing.assert_array_equal(bits, xla_bits)
    assert np.all(np.isfinite(bits)) and np.all(bits > 0)


def test_the_rounds_multiply_to_each_levels_mass_under_the_counts():
    """The kernel's rounds are a search: the probabilities of a level's parts multiply to its counts
    over the total, which `mixture_cdf` gives directly."""
    with jax.enable_x64(True):
        parameters = _parameters(np.random.default_rng(3), 40, 3)
        symbols = jnp.asarray(np.arange(40) * 6, jnp.int64)
        rounds, _ = _levels(parameters, symbols)
        parts = fixed_point.parts_of(np.asarray(symbols), fixed_point.LEVELS)
        product = np.prod([r[np.arange(40), p] for r, p in zip(rounds, parts)], axis=0)
        edges = jnp.stack([symbols, symbols + 1], axis=-1)
        counts = np.asarray(fixed_point.mixture_cdf(parameters, edges), np.float64)
        counts[:, 1] = np.where(np.asarray(symbols) == 255, np.asarray(fixed_point.mixture_total(parameters)),
                                counts[:, 1])
        counts[:, 0] = np.where(np.asarray(symbols) == 0, 0, counts[:, 0])
        total = np.asarray(fixed_point.mixture_total(parameters), np.float64)
    np.testing.assert_allclose(product, (counts[:, 1] - counts[:, 0]) / total, rtol=1e-12)


def test_more_components_than_the_kernel_holds_take_the_xla_path():
    k = search_round.MAX_COMPONENTS + 1
    with jax.enable_x64(True):
        parameters = _parameters(np.random.default_rng(7), 30, k)
        text = jax.jit(functools.partial(fixed_point.first_round, MIXTURE), static_argnums=(1, 2)).lower(
            parameters, 64, 4).as_text()
        symbols = jnp.asarray(np.arange(30) * 8, jnp.int64)
        rounds, bits = _levels(parameters, symbols)
        xla_rounds, xla_bits = _without_kernel(_levels)(parameters, symbols)
    assert "vae_mixture_round" not in text
    for got, want in zip(rounds, xla_rounds):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(bits, xla_bits)


def test_symbols_pushed_with_the_kernel_pop_without_it_and_the_other_way():
    """A block pushed with the kernel's rounds pops the same symbols with XLA's search, and the
    other way round: a file's bytes do not depend on whether either side built it."""
    rng = np.random.default_rng(11)
    rows, d = 3, 64
    with jax.enable_x64(True):
        parameters = _parameters(rng, rows * d, 5)
    symbols = rng.integers(0, 256, (rows, d)).astype(np.int32)
    code = pixel_code.PixelCode(MIXTURE, d, rows)

    def push():
        coder = constriction.stream.stack.AnsCoder()
        with jax.enable_x64(True):
            rounds, _ = _levels(parameters, jnp.asarray(symbols.reshape(-1), jnp.int64))
        code.push(coder, symbols, rounds)
        return coder.get_compressed()

    def pop(words):
        pixel_code._compiled.cache_clear()
        with jax.enable_x64(True):
            probabilities, state = jax.jit(functools.partial(fixed_point.first_round, MIXTURE),
                                           static_argnums=(1, 2))(parameters, 64, 4)
        return code.pop(constriction.stream.stack.AnsCoder(words), rows, (parameters, probabilities, state))

    with_kernel = push()
    without_kernel = _without_kernel(push)()
    np.testing.assert_array_equal(with_kernel, without_kernel)
    np.testing.assert_array_equal(_without_kernel(pop)(with_kernel), symbols)
    np.testing.assert_array_equal(pop(without_kernel), symbols)
