"""JAX's default random numbers (threefry2x32), computed as straight-line XLA code: same bits, faster on CPU.

On CPU, `jax.random` lowers each threefry hash as a five-iteration `while` loop (to keep compile
times short), so every random draw is about twenty small XLA kernels, each writing its state to
memory. Here the same hash is written out in `jax.numpy` (as JAX itself lowers it on GPU), and
XLA fuses a whole draw, with what consumes it, into one loop. Keys made with `key(seed)` give
exactly the bits of `jax.random.key(seed)` for every `jax.random` function (split, fold_in,
bits, uniform, normal, bernoulli, permutation, ...): `tests/test_threefry.py` checks them against
JAX's own implementation, so a JAX release that changed its algorithm would be caught there.

Used for every key of a run (`vae.train.state.root_key`) and for the binarisation drawn once
(`vae.data.pixels`, where the fused draw is several times faster than `jax.random`'s: docs/speed.md).
At the package's root, beside `kl`, because both layers that draw keys use it; imports nothing of
the package.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import random as jex_random

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotate_left(x: jax.Array, bits: int) -> jax.Array:
    return (x << np.uint32(bits)) | (x >> np.uint32(32 - bits))


def threefry2x32(k1: jax.Array, k2: jax.Array, x0: jax.Array, x1: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The Threefry-2x32 block cipher with 20 rounds (Salmon et al., 2011) of counters (x0, x1)
    under key (k1, k2), all uint32; the rounds and key schedule of `jax.random`'s threefry."""
    schedule = (k1, k2, k1 ^ k2 ^ _PARITY)
    x0, x1 = x0 + schedule[0], x1 + schedule[1]
    for block in range(5):
        for rotation in _ROTATIONS[block % 2]:
            x0 = x0 + x1
            x1 = x0 ^ _rotate_left(x1, rotation)
        x0 = x0 + schedule[(block + 1) % 3]
        x1 = x1 + schedule[(block + 2) % 3] + np.uint32(block + 1)
    return x0, x1


def _counters(shape) -> tuple[jax.Array, jax.Array]:
    """Each element's row-major index as a 64-bit counter split into (high, low) uint32 words."""
    size = int(np.prod(shape, dtype=np.int64))
    if size >= 2**32:
        raise NotImplementedError(f"at most 2**32 random values per draw, asked for {size}")
    low = jax.lax.iota(np.uint32, size).reshape(shape)
    return jnp.zeros(shape, np.uint32), low


def _seed(seed: jax.Array) -> jax.Array:
    return jex_random.threefry_prng_impl.seed(seed)


def _split(key: jax.Array, shape) -> jax.Array:
    bits1, bits2 = threefry2x32(key[0], key[1], *_counters(shape))
    return jnp.stack([bits1, bits2], axis=bits1.ndim)


def _fold_in(key: jax.Array, data: jax.Array) -> jax.Array:
    bits1, bits2 = threefry2x32(key[0], key[1], jnp.zeros((1,), np.uint32),
                                jnp.asarray(data, np.uint32).reshape(1))
    return jnp.concatenate([bits1, bits2])


def _random_bits(key: jax.Array, bit_width: int, shape) -> jax.Array:
    bits1, bits2 = threefry2x32(key[0], key[1], *_counters(shape))
    if bit_width == 64:
        return (bits1.astype(np.uint64) << np.uint64(32)) | bits2.astype(np.uint64)
    bits = bits1 ^ bits2
    return bits if bit_width == 32 else bits.astype(np.dtype(f"uint{bit_width}"))


# Each as one program where a key is split, folded or drawn from outside a compiled function (JAX
# runs these primitives op by op there: a program of its own for each of a hash's operations);
# inlined into any program that calls them, as JAX's own threefry is.
FUSED_THREEFRY = jex_random.define_prng_impl(
    key_shape=(2,), seed=_seed, split=jax.jit(_split, static_argnums=1, inline=True),
    random_bits=jax.jit(_random_bits, static_argnums=(1, 2), inline=True),
    fold_in=jax.jit(_fold_in, inline=True), name="threefry2x32_fused", tag="fry_fused")


def key(seed: int | jax.Array) -> jax.Array:
    """A typed PRNG key whose draws equal `jax.random.key(seed)`'s, bit for bit."""
    return jax.random.key(seed, impl=FUSED_THREEFRY)
