"""Priors p(z) over a VAE's (top) latent: the standard normal, and the VampPrior.

Each prior gives log p(z), samples, and the KL term of the ELBO for a diagonal-Gaussian
posterior q(z|x) = N(mean, diag exp(log_var)) and one sample z from it:

- `StandardNormal`: KL(q ‖ N(0, I)) in closed form, per dimension (`vae.kl`); z is not used.
  A factorised prior also offers `log_prob_per_dim` (the KL split's marginals, `kl_split`).
- `VampPrior` (Tomczak & Welling, 2018): p(z) = (1/K) Σ_k q(z | u_k), the mixture of the
  encoder's posteriors at K learned pseudo-inputs u_k. Its KL has no closed form, so the KL term
  is the single-sample estimate log q(z|x) − log p(z) at the posterior sample z: unbiased, and
  it has no per-dimension split (the mixture does not factorise over dimensions).

Priors that need the encoder (the VampPrior) take it as an argument: a function from flat
inputs B x D to (mean, log_var). The prior holds only its own parameters. Imports nothing of
the package but `vae.kl`.
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from vae import kl

PRIORS = ("standard_normal", "vampprior")
Encoder = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


class StandardNormal(nnx.Module):
    """p(z) = N(0, I): the default, with the closed-form KL."""

    def log_prob(self, z_NxZ: jax.Array, encoder: Encoder | None = None) -> jax.Array:
        return kl.gaussian_log_density(z_NxZ, 0.0, 0.0)

    def log_prob_per_dim(self, z_NxZ: jax.Array) -> jax.Array:
        """log N(z_j; 0, 1) of each dimension (N x Z): the factors of a factorised prior."""
        return -0.5 * (kl.LOG_2PI + jnp.square(z_NxZ))

    def kl(self, mean_BxZ, log_var_BxZ, z_BxZ, encoder: Encoder | None = None):
        """(KL per example B, KL per dimension B x Z), both exact."""
        per_dim = kl.standard_normal_kl_per_dim(mean_BxZ, log_var_BxZ)
        return jnp.sum(per_dim, axis=-1), per_dim

    def sample(self, key: jax.Array, num: int, latent_dim: int, temperature: float = 1.0,
               encoder: Encoder | None = None) -> jax.Array:
        """z ~ N(0, temperature² I)."""
        return temperature * jax.random.normal(key, (num, latent_dim))


class VampPrior(nnx.Module):
    """p(z) = (1/K) Σ_k q(z | u_k) over K learned pseudo-inputs u_k ∈ [0, 1]^D."""

    def __init__(self, num_components: int, input_dim: int, *, init_mean: float, init_std: float,
                 rngs: nnx.Rngs):
        noise = jax.random.normal(rngs.params(), (num_components, input_dim))
        self.pseudo_inputs = nnx.Param(init_mean + init_std * noise)

    def inputs(self) -> jax.Array:
        """The pseudo-inputs as the encoder sees them: K x D, clipped to [0, 1] like pixels."""
        return jnp.clip(self.pseudo_inputs[...], 0.0, 1.0)

    def components(self, encoder: Encoder) -> tuple[jax.Array, jax.Array]:
        """Means and log-variances (K x Z each) of the mixture's components q(z | u_k)."""
        return encoder(self.inputs())

    def log_prob(self, z_NxZ: jax.Array, encoder: Encoder) -> jax.Array:
        """log (1/K) Σ_k N(z; m_k, diag v_k) for each of N points.

        The quadratic form is expanded into two matmuls (N x Z by Z x K), so memory is N x K
        rather than N x K x Z; `tests/test_priors.py` checks it against the direct sum.
        """
        mean_KxZ, log_var_KxZ = self.components(encoder)
        precision_KxZ = jnp.exp(-log_var_KxZ)
        const_K = -0.5 * jnp.sum(kl.LOG_2PI + log_var_KxZ + jnp.square(mean_KxZ) * precision_KxZ, axis=-1)
        log_comp_NxK = (const_K
                        - 0.5 * jnp.square(z_NxZ) @ precision_KxZ.T
                        + z_NxZ @ (mean_KxZ * precision_KxZ).T)
        return jax.nn.logsumexp(log_comp_NxK, axis=-1) - math.log(mean_KxZ.shape[0])

    def kl(self, mean_BxZ, log_var_BxZ, z_BxZ, encoder: Encoder):
        """(single-sample KL estimate log q(z|x) − log p(z) per example B, None)."""
        estimate = kl.gaussian_log_density(z_BxZ, mean_BxZ, log_var_BxZ) - self.log_prob(z_BxZ, encoder)
        return estimate, None

    def sample(self, key: jax.Array, num: int, latent_dim: int, temperature: float = 1.0,
               encoder: Encoder | None = None) -> jax.Array:
        """A uniformly chosen component per sample, then z ~ N(m_k, temperature² v_k)."""
        mean_KxZ, log_var_KxZ = self.components(encoder)
        pick_key, noise_key = jax.random.split(key)
        k = jax.random.randint(pick_key, (num,), 0, mean_KxZ.shape[0])
        eps = jax.random.normal(noise_key, (num, latent_dim))
        return mean_KxZ[k] + temperature * jnp.exp(0.5 * log_var_KxZ[k]) * eps


def build_prior(model_config, input_dim: int, rngs: nnx.Rngs) -> nnx.Module:
    if model_config.prior not in PRIORS:
        raise ValueError(f"model.prior must be one of {PRIORS}, got {model_config.prior!r}")
    if model_config.prior == "vampprior":
        return VampPrior(model_config.num_pseudo_inputs, input_dim,
                         init_mean=model_config.pseudo_input_mean,
                         init_std=model_config.pseudo_input_std, rngs=rngs)
    return StandardNormal()
