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


@dataclasses.dataclass(frozen=True)
class HostModel:
    """A model's coding functions on host arrays (float64), each call padded to `block_size` rows."""

    posterior: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # x_bxD -> (mean, std), b x Z
    pixel_probabilities: Callable[[np.ndarray], np.ndarray]  # z_bxZ -> the likelihood's coding parameters
    latent_dim: int
    num_pixels: int
    block_size: int


def _float64(leaf):
    array = np.asarray(leaf)
    return array.astype(np.float64) if np.issubdtype(array.dtype, np.floating) else array


def host_model(model, block_size: int) -> HostModel:
    """The posterior q(z|x) (mean and standard deviation) and the likelihood's coding parameters
    of p(x|z) (`likelihood.coding_probabilities`), jitted once each, float64 on the CPU."""
    cpu = jax.devices("cpu")[0]
    graphdef, state = nnx.split(model)
    with jax.enable_x64(True):
        state64 = jax.device_put(jax.tree.map(_float64, state), cpu)

    @jax.jit
    def posterior(state, x_BxD):
        mean_BxZ, log_var_BxZ = nnx.merge(graphdef, state).encode(x_BxD)
        return mean_BxZ, jnp.exp(0.5 * log_var_BxZ)

    @jax.jit
    def pixel_probabilities(state, z_BxZ):
        decoded = nnx.merge(graphdef, state)
        return decoded.likelihood.coding_probabilities(decoded.decode(z_BxZ))

    def padded_call(function, rows_bxK: np.ndarray):
        rows = rows_bxK.shape[0]
        if not 1 <= rows <= block_size:
            raise ValueError(f"a call codes 1 to {block_size} rows, got {rows}")
        padded = np.zeros((block_size, rows_bxK.shape[1]), np.float64)
        padded[:rows] = rows_bxK
        with jax.enable_x64(True):
            result = function(state64, jax.device_put(padded, cpu))
            return jax.tree.map(lambda a: np.asarray(a, np.float64)[:rows], result)

    return HostModel(posterior=lambda x: padded_call(posterior, x),
                     pixel_probabilities=lambda z: padded_call(pixel_probabilities, z),
                     latent_dim=model.latent_dim, num_pixels=int(np.prod(model.image_shape)),
                     block_size=block_size)
