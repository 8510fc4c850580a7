"""Pixel encoding: uint8 images -> the model's input, and the binarisation a Bernoulli
likelihood needs (dynamic: a fresh draw per use; static: drawn once with a fixed seed; none: the
8-bit pixels as they are, for the 8-bit likelihoods).

Imports nothing of the package but `vae.threefry`.
"""

import jax
import jax.numpy as jnp
import numpy as np

from vae import threefry

BINARIZE_MODES = ("dynamic", "static", "none")


def binarize_static(images_u8: np.ndarray, seed: int) -> np.ndarray:
    """Each pixel ~ Bernoulli(intensity / 255), drawn once from `seed`: uint8 in {0, 255}.

    The bits of `jax.random.bernoulli(jax.random.key(seed), ...)`, so the same on every machine,
    drawn in one compiled program with the fused threefry keys (`vae.threefry`): a tenth of the
    time of the eager draw for Fashion-MNIST's test split.
    """
    return np.asarray(_binarize(jnp.asarray(images_u8), seed))


@jax.jit
def _binarize(images_u8: jax.Array, seed) -> jax.Array:
    keep = jax.random.bernoulli(threefry.key(seed), images_u8.astype(jnp.float32) / 255.0)
    return keep.astype(jnp.uint8) * jnp.uint8(255)


def to_model_input(images_u8: jax.Array, key: jax.Array | None) -> jax.Array:
    """uint8 images -> float32 model input: a fresh Bernoulli draw per pixel if key, else x / 255
    (an 8-bit level v as v / 255, a binarised pixel as 0 or 1)."""
    probs = images_u8.astype(jnp.float32) * (1.0 / 255.0)
    if key is None:
        return probs
    return jax.random.bernoulli(key, probs).astype(jnp.float32)


def encode_fixed(images_u8: np.ndarray, binarize: str, seed: int) -> np.ndarray:
    """Images encoded once, as every evaluation sees them (and training with binarize='static'
    or 'none'): binarised with `seed`, uint8 in {0, 255}; or, for 'none', the 8-bit images as they
    are. The one place a new pixel encoding is added, beside `BINARIZE_MODES` and `to_model_input`."""
    if binarize not in BINARIZE_MODES:
        raise ValueError(f"data.binarize must be one of {BINARIZE_MODES}, got {binarize!r}")
    if binarize == "none":
        return images_u8
    return binarize_static(images_u8, seed)
