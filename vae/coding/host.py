"""The model's two functions the coder reads, computed so that decoding sees exactly the
numbers encoding saw.

Bits-back decoding recomputes every probability from what it has decoded so far: q(z|x) from
the decoded images, p(x|z) from the decoded latents. One bit of difference in one probability
and the rest of the stream decodes to garbage. Both sides therefore run the same compiled
program on the same inputs:

- in float64 (`jax.enable_x64` around every call), on the host CPU whatever accelerator the
  process has, with the parameters cast to float64 once;
- always on one batch shape: every call is padded to `block_size` rows, the padding rows zero
  on both sides, so a block of 3 images runs the same program as a block of 100;
- the inputs are exact: images are 0/1 (or 0..255) and latents integer bin indices times the
  bin width, the same float64 numbers on both sides.

On one machine and one software stack that makes the two sides bit-identical (tested). Across
machines, float64 makes a difference rare but not impossible (another CPU's vector width can
reorder a sum); the file's checksum of the images then catches it (`codec.decompress_workdir`).
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vae.model.hvae import HierarchicalVAE
from vae.model.ladder import Ladder


@dataclasses.dataclass(frozen=True)
class HostModel:
    """A model's coding functions on host arrays (float64), each call padded to `block_size` rows.

    The latents are layers from the top: one for the VAE (z), two for the HVAE (z2, then z1), L for
    the ladder (z_L, ..., z_1).
    Every function takes the upper layers' latents (b x Z each, top first) as they were coded."""

    num_layers: int
    latent_dim: int  # of the top layer
    num_pixels: int
    block_size: int
    # (layer, x_bxD, upper latents) -> q(z_layer | x, upper)'s (mean, std), b x Z each
    posterior: Callable[[int, np.ndarray, list], tuple[np.ndarray, np.ndarray]]
    # (layer >= 1, upper latents) -> p(z_layer | upper)'s (mean, std); the top layer's prior is N(0, I)
    conditional_prior: Callable[[int, list], tuple[np.ndarray, np.ndarray]]
    # (every layer's latents) -> the likelihood's coding parameters of p(x | z), b x D
    pixel_probabilities: Callable[[list], np.ndarray]
    # The size of each layer, top first, where they differ (a ladder's may); () where every layer
    # has latent_dim units. `layer_sizes` reads it.
    latent_dims: tuple[int, ...] = ()

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """The size of each layer, top first."""
        return tuple(self.latent_dims) or (self.latent_dim,) * self.num_layers

    def warm_up(self) -> None:
        """Compiles every function (the first call of each shape compiles)."""
        x = np.zeros((1, self.num_pixels))
        zs = [np.zeros((1, size)) for size in self.layer_sizes]
        for layer in range(self.num_layers):
            self.posterior(layer, x, zs[:layer])
            if layer:
                self.conditional_prior(layer, zs[:layer])
        self.pixel_probabilities(zs)


def _float64(leaf):
    array = np.asarray(leaf)
    return array.astype(np.float64) if np.issubdtype(array.dtype, np.floating) else array


def _gaussian(mean_and_log_var):
    mean, log_var = mean_and_log_var
    return mean, jnp.exp(0.5 * log_var)


def _layer_functions(model):
    """(posterior per layer, conditional prior per layer (None at the top), pixel parameters) as
    functions of the merged model: what each architecture's layers are."""
    if isinstance(model, Ladder):  # each layer's function is told the layer by how many are above it
        below = model.num_layers - 1
        return ([lambda m, x, *upper: _gaussian(m.posterior_below(x, upper))] * model.num_layers,
                [None] + [lambda m, *upper: _gaussian(m.prior_below(upper))] * below,
                lambda m, *zs: m.likelihood.coding_probabilities(m.decode_layers(zs)))
    if isinstance(model, HierarchicalVAE):
        posteriors = [lambda m, x: _gaussian(m.encode(x)), lambda m, x, z2: _gaussian(m.q_z1(x, z2))]
        priors = [None, lambda m, z2: _gaussian(m.p_z1(z2))]
        return posteriors, priors, lambda m, z2, z1: m.likelihood.coding_probabilities(m.decode_both(z1, z2))
    return ([lambda m, x: _gaussian(m.encode(x))], [None],
            lambda m, z: m.likelihood.coding_probabilities(m.decode(z)))


def host_model(model, block_size: int) -> HostModel:
    """q(z|x) per layer (mean and standard deviation), the conditional priors of the layers below the
    top (the HVAE's p(z1|z2), the ladder's p(z_l|z_>l)), and the likelihood's
    coding parameters of p(x|z) (`likelihood.coding_probabilities`), each jitted once, float64 on
    the CPU."""
    cpu = jax.devices("cpu")[0]
    graphdef, state = nnx.split(model)
    with jax.enable_x64(True):
        state64 = jax.device_put(jax.tree.map(_float64, state), cpu)

    def compiled(function):
        return jax.jit(lambda state, *rows: function(nnx.merge(graphdef, state), *rows))

    posteriors, priors, pixels = _layer_functions(model)
    posteriors = [compiled(f) for f in posteriors]
    priors = [f and compiled(f) for f in priors]
    pixels = compiled(pixels)

    def padded_call(function, *rows_bxK: np.ndarray):
        rows = rows_bxK[0].shape[0]
        if not 1 <= rows <= block_size:
            raise ValueError(f"a call codes 1 to {block_size} rows, got {rows}")
        padded = []
        for array in rows_bxK:
            full = np.zeros((block_size, array.shape[1]), np.float64)
            full[:rows] = array
            padded.append(jax.device_put(full, cpu))
        with jax.enable_x64(True):
            result = function(state64, *padded)
            return jax.tree.map(lambda a: np.asarray(a, np.float64)[:rows], result)

    return HostModel(
        num_layers=len(posteriors), latent_dim=model.latent_dim, latent_dims=tuple(model.latent_dims[::-1]),
        num_pixels=int(np.prod(model.image_shape)),
        block_size=block_size,
        posterior=lambda layer, x, upper: padded_call(posteriors[layer], x, *upper),
        conditional_prior=lambda layer, upper: padded_call(priors[layer], *upper),
        pixel_probabilities=lambda zs: padded_call(pixels, *zs))
