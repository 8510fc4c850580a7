"""The two-level hierarchical VAE (the published "HVAE"), with the interface of `vae.VAE`.

Imports nothing of the package but `vae.kl`.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vae import kl
from vae.model import objectives


class HierarchicalVAE(nnx.Module):
    """Two stochastic layers (Tomczak & Welling, 2018, the "HVAE"):

        q(z1, z2 | x) = q(z2 | x) q(z1 | x, z2),   p(x, z1, z2) = p(x | z1, z2) p(z1 | z2) p(z2),

    every conditional a diagonal Gaussian (x's the likelihood), p(z2) the model's prior. The KL term
    is KL(q(z2|x) ‖ p(z2)) + KL(q(z1|x, z2) ‖ p(z1|z2)) at one sample z2: the second is between two
    diagonal Gaussians and exact given z2 (`kl.gaussian_kl_per_dim`), the first exact for N(0, I).
    The latent code for pictures (encode, decode, interpolations) is z2; decoding z2 takes z1 as
    the mean of p(z1 | z2).
    """

    def __init__(self, q_z2: nnx.Module, q_z1: nnx.Module, p_z1: nnx.Module, p_x: nnx.Module,
                 prior: nnx.Module, likelihood: nnx.Module, latent_dim: int, image_shape: Sequence[int]):
        self.q_z2 = q_z2  # x -> (mean, log_var) of z2
        self.q_z1 = q_z1  # (x, z2) -> (mean, log_var) of z1
        self.p_z1 = p_z1  # z2 -> (mean, log_var) of z1
        self.p_x = p_x  # (z1, z2) -> the decoder output of x
        self.prior = prior
        self.likelihood = likelihood
        self.latent_dim = latent_dim
        self.image_shape = tuple(image_shape)

    @property
    def latent_dims(self) -> tuple[int, int]:
        """The size of each latent layer, z1 first."""
        return (self.latent_dim, self.latent_dim)

    def encode(self, x_BxD: jax.Array) -> tuple[jax.Array, jax.Array]:
        """q(z2 | x): mean and log-variance of the top latent, each B x Z."""
        return self.q_z2(x_BxD)

    def decode_both(self, z1_BxZ, z2_BxZ) -> jax.Array:
        """The decoder output of p(x | z1, z2), B x P."""
        return self.p_x(z1_BxZ, z2_BxZ)

    def decode(self, z2_BxZ: jax.Array) -> jax.Array:
        """The decoder output of x from the top latent, with z1 at the mean of p(z1 | z2)."""
        return self.decode_both(self.p_z1(z2_BxZ)[0], z2_BxZ)

    def q_z1_from_features(self, x_features, z2):
        """q(z1 | x, z2) from x's features (the x-branch of q(z1|x, z2), computed once per image and
        repeated across samples of z2): mean and log-variance."""
        return self.q_z1.head(self.q_z1.body.join(x_features, z2))

    def activity_of_z1(self, x_features, mean2):
        """What z1's active units are measured on (Burda et al.'s Cov_x(E_q[u | x]) > threshold),
        with z2 at its posterior mean (so z1's activity is not z2's noise): z1's posterior mean
        less its prior mean given the same z2, in the prior's standard deviations. E_q[z1 | x, z2]
        moves with x through p(z1 | z2) even where q(z1 | x, z2) = p(z1 | z2), carrying nothing
        about x beyond z2; measured from the prior's mean it is 0 there. The top layer keeps
        Burda et al.'s measure, its posterior mean (its prior does not depend on x)."""
        prior_mean1, prior_log_var1 = self.p_z1(mean2)
        return (self.q_z1_from_features(x_features, mean2)[0] - prior_mean1) * jnp.exp(-0.5 * prior_log_var1)

    def elbo_terms(self, x_BxD: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
        """rec, kl (B); kl_per_layer (B x 2: z1's KL, z2's); kl_per_dim (B x 2Z: z1's units then z2's,
        factorised priors); mean (B x 2Z: what active units are measured on, `activity_of_z1` then
        z2's posterior mean)."""
        key_z2, key_z1 = jax.random.split(key)
        mean2, log_var2 = self.encode(x_BxD)
        z2 = kl.sample_gaussian(key_z2, mean2, log_var2)
        x_features = self.q_z1.body.a(x_BxD)
        mean1, log_var1 = self.q_z1_from_features(x_features, z2)
        z1 = kl.sample_gaussian(key_z1, mean1, log_var1)
        prior_mean1, prior_log_var1 = self.p_z1(z2)
        kl1_per_dim = kl.gaussian_kl_per_dim(mean1, log_var1, prior_mean1, prior_log_var1)
        kl2_B, kl2_per_dim = self.prior.kl(mean2, log_var2, z2, self.encode)
        kl1_B = jnp.sum(kl1_per_dim, axis=-1)
        terms = {
            "rec": -self.likelihood.log_prob(self.decode_both(z1, z2), x_BxD),
            "kl": kl1_B + kl2_B,
            "kl_per_layer": jnp.stack([kl1_B, kl2_B], axis=-1),  # z1, z2
            "mean": jnp.concatenate([self.activity_of_z1(x_features, mean2), mean2], axis=-1),
        }
        if kl2_per_dim is not None:
            terms["kl_per_dim"] = jnp.concatenate([kl1_per_dim, kl2_per_dim], axis=-1)
        return terms

    def log_weights(self, x_BxD: jax.Array, key: jax.Array, num_samples: int) -> dict[str, jax.Array]:
        """log p(x|z1,z2) and log p(z1|z2) + log p(z2) − log q(z1|x,z2) − log q(z2|x): each K x B."""
        key_z2, key_z1 = jax.random.split(key)
        k, b = num_samples, x_BxD.shape[0]
        mean2, log_var2 = self.encode(x_BxD)
        z2_KxBxZ = kl.sample_gaussian(key_z2, mean2, log_var2, num_samples)
        z2 = z2_KxBxZ.reshape(k * b, -1)
        x_features = jnp.tile(self.q_z1.body.a(x_BxD), (k, 1))  # rows in z2's order: sample-major
        mean1, log_var1 = self.q_z1_from_features(x_features, z2)
        z1 = kl.sample_gaussian(key_z1, mean1, log_var1)
        log_q = (kl.gaussian_log_density(z1, mean1, log_var1).reshape(k, b)
                 + kl.gaussian_log_density(z2_KxBxZ, mean2, log_var2))
        log_p = kl.gaussian_log_density(z1, *self.p_z1(z2)) + self.prior.log_prob(z2, self.encode)
        out_KxBxP = self.decode_both(z1, z2).reshape(k, b, -1)
        return {"log_lik": self.likelihood.log_prob(out_KxBxP, x_BxD[None]),
                "log_ratio": log_p.reshape(k, b) - log_q}

    def iwae_log_weights(self, x_BxD: jax.Array, keys_CxB: jax.Array) -> jax.Array:
        """log p(x, z1, z2) − log q(z1, z2 | x), C x B, one draw per key (`log_weights` per draw)."""
        return objectives.log_weights_by_key(self, x_BxD, keys_CxB)

    def reconstruct(self, x_BxD: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """The decoder output of x from posterior samples of z2 and z1, or from their means if key is None."""
        mean2, log_var2 = self.encode(x_BxD)
        if key is None:
            return self.decode_both(self.q_z1(x_BxD, mean2)[0], mean2)
        key_z2, key_z1 = jax.random.split(key)
        z2 = kl.sample_gaussian(key_z2, mean2, log_var2)
        return self.decode_both(kl.sample_gaussian(key_z1, *self.q_z1(x_BxD, z2)), z2)

    def sample(self, key: jax.Array, num_samples: int, temperature: float = 1.0) -> jax.Array:
        """The decoder output of z2 ~ p(z2), z1 ~ p(z1 | z2), both spreads scaled by `temperature`."""
        key_z2, key_z1 = jax.random.split(key)
        z2 = self.prior.sample(key_z2, num_samples, self.latent_dim, temperature, self.encode)
        mean1, log_var1 = self.p_z1(z2)
        z1 = mean1 + temperature * jnp.exp(0.5 * log_var1) * jax.random.normal(key_z1, mean1.shape)
        return self.decode_both(z1, z2)

    @property
    def output_bias(self) -> nnx.Param:
        return self.p_x.output_bias
