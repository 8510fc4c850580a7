"""The one-level VAE: q(z|x) a diagonal Gaussian from an encoder network, a prior p(z)
(`priors`), p(x|z) the likelihood (`likelihoods`) of the decoder's output.

Images are flat vectors x_BxD in [0, 1] (D = H·W·C). Flat vectors keep the MLP's matmuls and the
likelihood free of layout copies; convolutional networks reshape to H x W x C inside. Modules
hold only parameters: every random key is passed in explicitly.

Every model (this one and `hvae.HierarchicalVAE`) offers the interface the objectives, the
training step and the analysis use:
- `elbo_terms(x, key)`: per-example reconstruction NLL and KL for one posterior sample (closed
  forms where they exist), the KL per dimension when the prior factorises, and posterior means;
  a model of several latent layers also the KL of each layer (`kl_per_layer`, z_1 first);
- `log_weights(x, key, k)`: log p(x|z) and log p(z) − log q(z|x) for k posterior samples, the
  pieces of the importance-weighted bound;
- `iwae_log_weights(x, keys_CxB)`: log p(x, z) − log q(z|x) for one draw per key, the IWAE
  evaluation's hot loop;
- `encode`, `decode`, `sample`, `reconstruct` over the (top) latent code, and `likelihood`, whose
  `mean` turns a decoder output into a picture; `latent_dim` (the top layer's size) and
  `latent_dims` (every layer's, z_1 first).
"""

from collections.abc import Sequence

import jax
from flax import nnx

from vae import kl


class VAE(nnx.Module):
    """q(z|x) = N(mean(x), diag exp(log_var(x))), a prior p(z), p(x|z) = likelihood(decoder(z))."""

    def __init__(self, encoder: nnx.Module, decoder: nnx.Module, prior: nnx.Module, likelihood: nnx.Module,
                 latent_dim: int, image_shape: Sequence[int]):
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior
        self.likelihood = likelihood
        self.latent_dim = latent_dim
        self.image_shape = tuple(image_shape)  # (H, W, C) of the flattened inputs

    @property
    def latent_dims(self) -> tuple[int]:
        """The size of each latent layer: one."""
        return (self.latent_dim,)

    def encode(self, x_BxD: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Posterior mean and log-variance, each B x Z."""
        return self.encoder(x_BxD)

    def decode(self, z_BxZ: jax.Array) -> jax.Array:
        """The decoder output, B x P: what the likelihood reads."""
        return self.decoder(z_BxZ)

    def __call__(self, x_BxD: jax.Array, key: jax.Array):
        """One reparameterised pass: (decoder output, mean, log_var, z)."""
        mean_BxZ, log_var_BxZ = self.encode(x_BxD)
        z_BxZ = kl.sample_gaussian(key, mean_BxZ, log_var_BxZ)
        return self.decode(z_BxZ), mean_BxZ, log_var_BxZ, z_BxZ

    def elbo_terms(self, x_BxD: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
        """rec (B), kl (B), kl_per_dim (B x Z, factorised priors only), mean (B x Z); one sample."""
        out_BxP, mean_BxZ, log_var_BxZ, z_BxZ = self(x_BxD, key)
        kl_B, kl_per_dim = self.prior.kl(mean_BxZ, log_var_BxZ, z_BxZ, self.encode)
        terms = {"rec": -self.likelihood.log_prob(out_BxP, x_BxD), "kl": kl_B, "mean": mean_BxZ}
        return terms if kl_per_dim is None else terms | {"kl_per_dim": kl_per_dim}

    def log_weights(self, x_BxD: jax.Array, key: jax.Array, num_samples: int) -> dict[str, jax.Array]:
        """log p(x|z) and log p(z) − log q(z|x) for num_samples draws z ~ q(z|x): each K x B."""
        mean_BxZ, log_var_BxZ = self.encode(x_BxD)
        z_KxBxZ = kl.sample_gaussian(key, mean_BxZ, log_var_BxZ, num_samples)
        k, b, z_dim = z_KxBxZ.shape
        z_NxZ = z_KxBxZ.reshape(k * b, z_dim)
        out_KxBxP = self.decode(z_NxZ).reshape(k, b, -1)
        log_pz = self.prior.log_prob(z_NxZ, self.encode).reshape(k, b)
        return {"log_lik": self.likelihood.log_prob(out_KxBxP, x_BxD[None]),
                "log_ratio": log_pz - kl.gaussian_log_density(z_KxBxZ, mean_BxZ, log_var_BxZ)}

    def iwae_log_weights(self, x_BxD: jax.Array, keys_CxB: jax.Array) -> jax.Array:
        """log p(x, z) − log q(z|x), C x B, one draw per key: each draw is `log_weights(x_i, key, 1)`'s,
        with the encoder run once per image rather than once per draw and the likelihood's
        `log_prob_grouped`. Equal to the generic `objectives.log_weights_by_key` up to float
        rounding (tested)."""
        mean_BxZ, log_var_BxZ = self.encode(x_BxD)
        draw = jax.vmap(jax.vmap(kl.sample_gaussian), (0, None, None))
        z_CxBxZ = draw(keys_CxB, mean_BxZ, log_var_BxZ)
        c, b, z_dim = z_CxBxZ.shape
        z_NxZ = z_CxBxZ.reshape(c * b, z_dim)
        out_CxBxP = self.decode(z_NxZ).reshape(c, b, -1)
        log_lik = self.likelihood.log_prob_grouped(out_CxBxP, x_BxD[None])
        log_pz = self.prior.log_prob(z_NxZ, self.encode).reshape(c, b)
        return log_lik + (log_pz - kl.gaussian_log_density(z_CxBxZ, mean_BxZ, log_var_BxZ))

    def reconstruct(self, x_BxD: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """The decoder output of x from a posterior sample, or from the posterior mean if key is None."""
        mean_BxZ, log_var_BxZ = self.encode(x_BxD)
        z_BxZ = mean_BxZ if key is None else kl.sample_gaussian(key, mean_BxZ, log_var_BxZ)
        return self.decode(z_BxZ)

    def sample(self, key: jax.Array, num_samples: int, temperature: float = 1.0) -> jax.Array:
        """The decoder output of codes z ~ p(z), the prior's spread scaled by `temperature`."""
        z = self.prior.sample(key, num_samples, self.latent_dim, temperature, self.encode)
        return self.decode(z)

    @property
    def output_bias(self) -> nnx.Param:
        return self.decoder.output_bias
