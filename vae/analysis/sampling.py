"""What a trained VAE generates: prior samples, reconstructions, interpolations, traversals, manifolds.

Each function takes images N x H x W x C in [0, 1] and returns the likelihood's means (what
the decoder output predicts for every pixel, in [0, 1]), or with `draw_key` a draw x ~ p(x|z) of
every image (for an 8-bit likelihood, a picture as the model would store it; for the Bernoulli
one, a binarised image), as a numpy array of images N x H x W x C (grey or colour), ready for
`plotting.save_image_grid`. A decoder of several stages (`model.decoder_stages`) gives both stage
by stage, through its likelihood (`vae.model.stages`): a draw from the pixels the earlier stages
drew, a mean picture from their means.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtri

from vae.model.vae import VAE


def _means(model: VAE, out_BxP: jax.Array, draw_key: jax.Array | None = None) -> np.ndarray:
    pixels = (model.likelihood.mean(out_BxP) if draw_key is None
              else model.likelihood.sample(draw_key, out_BxP))
    return np.asarray(pixels).reshape(-1, *model.image_shape)


def _flat(x: np.ndarray) -> jax.Array:
    return jnp.asarray(x, jnp.float32).reshape(x.shape[0], -1)


def prior_samples(model: VAE, key: jax.Array, num: int, temperature: float = 1.0,
                  draw_key: jax.Array | None = None) -> np.ndarray:
    """num images decoded from codes z ~ p(z), the prior's spread scaled by `temperature`."""
    return _means(model, model.sample(key, num, temperature), draw_key)


def reconstructions(model: VAE, x: np.ndarray, draw_key: jax.Array | None = None) -> np.ndarray:
    """Rows of pairs: each test image followed by its reconstruction from the posterior mean."""
    recon = _means(model, model.reconstruct(_flat(x)), draw_key)
    pairs = np.stack([np.asarray(x, np.float32), recon], axis=1)  # N x 2 x H x W x C
    return pairs.reshape(-1, *x.shape[1:])


def interpolations(model: VAE, x_a: np.ndarray, x_b: np.ndarray, steps: int,
                   draw_key: jax.Array | None = None) -> np.ndarray:
    """For each pair (a, b), `steps` images decoded along the straight line between their means."""
    mean_a, _ = model.encode(_flat(x_a))
    mean_b, _ = model.encode(_flat(x_b))
    t = jnp.linspace(0.0, 1.0, steps)[None, :, None]
    z = (1 - t) * mean_a[:, None] + t * mean_b[:, None]  # pairs x steps x Z
    return _means(model, model.decode(z.reshape(-1, z.shape[-1])), draw_key)


def traversal(model: VAE, x: np.ndarray, dims: np.ndarray, steps: int, extent: float = 3.0,
              draw_key: jax.Array | None = None) -> np.ndarray:
    """One row per latent dimension in `dims`: that coordinate swept over ±extent prior standard
    deviations (the prior's std is 1) around the posterior mean of the single image x, the other
    coordinates held at the mean. Posterior std is far smaller and would show almost nothing."""
    mean, _ = model.encode(_flat(x[None]))
    offsets = jnp.linspace(-extent, extent, steps)
    dims = jnp.asarray(dims)
    z = jnp.tile(mean[0], (len(dims), steps, 1))
    z = z.at[jnp.arange(len(dims))[:, None], jnp.arange(steps)[None, :], dims[:, None]].add(offsets[None, :])
    return _means(model, model.decode(z.reshape(-1, z.shape[-1])), draw_key)


def manifold(model: VAE, steps: int, draw_key: jax.Array | None = None) -> np.ndarray:
    """A 2-D latent space decoded over a steps x steps grid of prior quantiles (row-major)."""
    if model.latent_dim != 2:
        raise ValueError(f"manifold mode needs a 2-D latent space; this model has {model.latent_dim}")
    quantiles = ndtri(jnp.linspace(0.5 / steps, 1 - 0.5 / steps, steps))
    z1, z0 = jnp.meshgrid(-quantiles, quantiles, indexing="ij")  # z1 decreases down the rows
    z = jnp.stack([z0.ravel(), z1.ravel()], axis=-1)
    return _means(model, model.decode(z), draw_key)
