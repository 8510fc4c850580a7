"""What a trained VAE generates: prior samples, reconstructions, interpolations, traversals, manifolds.

Each function returns Bernoulli means (pixel probabilities in [0, 1], not logits) as a numpy
array of images N x H x W x C, ready for `plotting.save_image_grid`.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtri

from vae.models import VAE


def _probs(logits: jax.Array) -> np.ndarray:
    return np.asarray(jax.nn.sigmoid(logits))


def prior_samples(model: VAE, key: jax.Array, num: int, temperature: float = 1.0) -> np.ndarray:
    """num images decoded from z ~ N(0, temperature² I)."""
    return _probs(model.sample(key, num, temperature))


def reconstructions(model: VAE, x: np.ndarray) -> np.ndarray:
    """Rows of pairs: each test image followed by its reconstruction from the posterior mean."""
    x = jnp.asarray(x, jnp.float32)
    recon = _probs(model.reconstruct(x))
    pairs = np.stack([np.asarray(x), recon], axis=1)  # N x 2 x H x W x C
    return pairs.reshape(-1, *x.shape[1:])


def interpolations(model: VAE, x_a: np.ndarray, x_b: np.ndarray, steps: int) -> np.ndarray:
    """For each pair (a, b), `steps` images decoded along the straight line between their means."""
    mean_a, _ = model.encode(jnp.asarray(x_a, jnp.float32))
    mean_b, _ = model.encode(jnp.asarray(x_b, jnp.float32))
    t = jnp.linspace(0.0, 1.0, steps)[None, :, None]
    z = (1 - t) * mean_a[:, None] + t * mean_b[:, None]  # pairs x steps x Z
    return _probs(model.decode(z.reshape(-1, z.shape[-1])))


def traversal(model: VAE, x: np.ndarray, dims: np.ndarray, steps: int, extent: float = 3.0) -> np.ndarray:
    """One row per latent dimension in `dims`: that coordinate swept over ±extent prior standard
    deviations (the prior's std is 1) around the posterior mean of the single image x, the other
    coordinates held at the mean. Posterior std is far smaller and would show almost nothing."""
    mean, _ = model.encode(jnp.asarray(x, jnp.float32)[None])
    offsets = jnp.linspace(-extent, extent, steps)
    dims = jnp.asarray(dims)
    z = jnp.tile(mean[0], (len(dims), steps, 1))
    z = z.at[jnp.arange(len(dims))[:, None], jnp.arange(steps)[None, :], dims[:, None]].add(offsets[None, :])
    return _probs(model.decode(z.reshape(-1, z.shape[-1])))


def manifold(model: VAE, steps: int) -> np.ndarray:
    """A 2-D latent space decoded over a steps x steps grid of prior quantiles (row-major)."""
    if model.latent_dim != 2:
        raise ValueError(f"manifold mode needs a 2-D latent space; this model has {model.latent_dim}")
    quantiles = ndtri(jnp.linspace(0.5 / steps, 1 - 0.5 / steps, steps))
    z1, z0 = jnp.meshgrid(-quantiles, quantiles, indexing="ij")  # z1 decreases down the rows
    z = jnp.stack([z0.ravel(), z1.ravel()], axis=-1)
    return _probs(model.decode(z))
