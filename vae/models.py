"""Flax NNX VAEs: the one-level VAE and the two-level hierarchical VAE, each with MLP or
convolutional networks (`vae.networks`).

Images are flat vectors x_BxD in [0, 1] (D = H·W·C); decoders give Bernoulli logits B x D. Flat
vectors keep the MLP's matmuls and the likelihood free of layout copies; the convolutional
modules reshape to H x W x C inside. Posteriors are diagonal Gaussians (mean, log-variance);
the prior over the (top) latent is N(0, I) or a VampPrior (`vae.priors`). Modules hold only
parameters: every random key is passed in explicitly.

Both models offer the same interface, which the objectives and evaluation use:
- `elbo_terms(x, key)`: per-example reconstruction NLL and KL for one posterior sample (closed
  forms where they exist), the KL per dimension when the prior factorises, and posterior means;
- `log_weights(x, key, k)`: log p(x|z) and log p(z) − log q(z|x) for k posterior samples, the
  pieces of the importance-weighted bound;
- `encode`, `decode`, `sample`, `reconstruct` over the (top) latent code, for pictures.
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vae import kl, networks, objectives, priors

ARCHS = ("mlp", "conv", "hvae", "conv_hvae")
LIKELIHOODS = ("bernoulli",)
ACTIVATIONS, KERNEL_INITS = networks.ACTIVATIONS, networks.KERNEL_INITS


# --- Models --------------------------------------------------------------------------------------


class VAE(nnx.Module):
    """q(z|x) = N(mean(x), diag exp(log_var(x))), a prior p(z), p(x|z) = Bernoulli(logits(z))."""

    def __init__(self, encoder: nnx.Module, decoder: nnx.Module, prior: nnx.Module, latent_dim: int,
                 image_shape: Sequence[int]):
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior
        self.latent_dim = latent_dim
        self.image_shape = tuple(image_shape)  # (H, W, C) of the flattened inputs and outputs

    def encode(self, x_BxD: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Posterior mean and log-variance, each B x Z."""
        return self.encoder(x_BxD)

    def decode(self, z_BxZ: jax.Array) -> jax.Array:
        """Bernoulli logits of every pixel, B x D."""
        return self.decoder(z_BxZ)

    def __call__(self, x_BxD: jax.Array, key: jax.Array):
        """One reparameterised pass: (logits, mean, log_var, z)."""
        mean_BxZ, log_var_BxZ = self.encode(x_BxD)
        z_BxZ = kl.sample_gaussian(key, mean_BxZ, log_var_BxZ)
        return self.decode(z_BxZ), mean_BxZ, log_var_BxZ, z_BxZ

    def elbo_terms(self, x_BxD: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
        """rec (B), kl (B), kl_per_dim (B x Z, factorised priors only), mean (B x Z); one sample."""
        logits, mean_BxZ, log_var_BxZ, z_BxZ = self(x_BxD, key)
        kl_B, kl_per_dim = self.prior.kl(mean_BxZ, log_var_BxZ, z_BxZ, self.encode)
        terms = {"rec": -objectives.bernoulli_log_likelihood(logits, x_BxD), "kl": kl_B, "mean": mean_BxZ}
        return terms if kl_per_dim is None else terms | {"kl_per_dim": kl_per_dim}

    def log_weights(self, x_BxD: jax.Array, key: jax.Array, num_samples: int) -> dict[str, jax.Array]:
        """log p(x|z) and log p(z) − log q(z|x) for num_samples draws z ~ q(z|x): each K x B."""
        mean_BxZ, log_var_BxZ = self.encode(x_BxD)
        z_KxBxZ = kl.sample_gaussian(key, mean_BxZ, log_var_BxZ, num_samples)
        k, b, z_dim = z_KxBxZ.shape
        z_NxZ = z_KxBxZ.reshape(k * b, z_dim)
        logits_KxBxD = self.decode(z_NxZ).reshape(k, b, -1)
        log_pz = self.prior.log_prob(z_NxZ, self.encode).reshape(k, b)
        return {"log_lik": objectives.bernoulli_log_likelihood(logits_KxBxD, x_BxD[None]),
                "log_ratio": log_pz - kl.gaussian_log_density(z_KxBxZ, mean_BxZ, log_var_BxZ)}

    def reconstruct(self, x_BxD: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """Logits of x decoded from a posterior sample, or from the posterior mean if key is None."""
        mean_BxZ, log_var_BxZ = self.encode(x_BxD)
        z_BxZ = mean_BxZ if key is None else kl.sample_gaussian(key, mean_BxZ, log_var_BxZ)
        return self.decode(z_BxZ)

    def sample(self, key: jax.Array, num_samples: int, temperature: float = 1.0) -> jax.Array:
        """Logits of images decoded from z ~ p(z), its spread scaled by `temperature`."""
        z = self.prior.sample(key, num_samples, self.latent_dim, temperature, self.encode)
        return self.decode(z)

    @property
    def output_bias(self) -> nnx.Param:
        return self.decoder.output_bias


class HierarchicalVAE(nnx.Module):
    """Two stochastic layers (Tomczak & Welling, 2018, the "HVAE"):

        q(z1, z2 | x) = q(z2 | x) q(z1 | x, z2),   p(x, z1, z2) = p(x | z1, z2) p(z1 | z2) p(z2),

    every conditional a diagonal Gaussian (Bernoulli for x), p(z2) the model's prior. The KL term
    is KL(q(z2|x) ‖ p(z2)) + KL(q(z1|x, z2) ‖ p(z1|z2)) at one sample z2: the second is between two
    diagonal Gaussians and exact given z2 (`kl.gaussian_kl_per_dim`), the first exact for N(0, I).
    The latent code for pictures (encode, decode, interpolations) is z2; decoding z2 takes z1 as
    the mean of p(z1 | z2).
    """

    def __init__(self, q_z2: nnx.Module, q_z1: nnx.Module, p_z1: nnx.Module, p_x: nnx.Module,
                 prior: nnx.Module, latent_dim: int, image_shape: Sequence[int]):
        self.q_z2 = q_z2  # x -> (mean, log_var) of z2
        self.q_z1 = q_z1  # (x, z2) -> (mean, log_var) of z1
        self.p_z1 = p_z1  # z2 -> (mean, log_var) of z1
        self.p_x = p_x  # (z1, z2) -> Bernoulli logits of x
        self.prior = prior
        self.latent_dim = latent_dim
        self.image_shape = tuple(image_shape)

    def encode(self, x_BxD: jax.Array) -> tuple[jax.Array, jax.Array]:
        """q(z2 | x): mean and log-variance of the top latent, each B x Z."""
        return self.q_z2(x_BxD)

    def decode_both(self, z1_BxZ, z2_BxZ) -> jax.Array:
        """Bernoulli logits of p(x | z1, z2), B x D."""
        return self.p_x(z1_BxZ, z2_BxZ)

    def decode(self, z2_BxZ: jax.Array) -> jax.Array:
        """Logits of x from the top latent, with z1 at the mean of p(z1 | z2)."""
        return self.decode_both(self.p_z1(z2_BxZ)[0], z2_BxZ)

    def q_z1_from_features(self, x_features, z2):
        """q(z1 | x, z2) from x's features (the x-branch of q(z1|x, z2), computed once per image and
        repeated across samples of z2): mean and log-variance."""
        return self.q_z1.head(self.q_z1.body.join(x_features, z2))

    def elbo_terms(self, x_BxD: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
        """rec, kl (B); kl_per_dim (B x 2Z: z1's units then z2's, factorised priors); mean (B x 2Z)."""
        key_z2, key_z1 = jax.random.split(key)
        mean2, log_var2 = self.encode(x_BxD)
        z2 = kl.sample_gaussian(key_z2, mean2, log_var2)
        x_features = self.q_z1.body.a(x_BxD)
        mean1, log_var1 = self.q_z1_from_features(x_features, z2)
        z1 = kl.sample_gaussian(key_z1, mean1, log_var1)
        prior_mean1, prior_log_var1 = self.p_z1(z2)
        kl1_per_dim = kl.gaussian_kl_per_dim(mean1, log_var1, prior_mean1, prior_log_var1)
        kl2_B, kl2_per_dim = self.prior.kl(mean2, log_var2, z2, self.encode)
        terms = {
            "rec": -objectives.bernoulli_log_likelihood(self.decode_both(z1, z2), x_BxD),
            "kl": jnp.sum(kl1_per_dim, axis=-1) + kl2_B,
            # E_q[z1 | x] taken at z2's mean, so the activity of z1 is not inflated by z2's noise.
            "mean": jnp.concatenate([self.q_z1_from_features(x_features, mean2)[0], mean2], axis=-1),
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
        logits_KxBxD = self.decode_both(z1, z2).reshape(k, b, -1)
        return {"log_lik": objectives.bernoulli_log_likelihood(logits_KxBxD, x_BxD[None]),
                "log_ratio": log_p.reshape(k, b) - log_q}

    def reconstruct(self, x_BxD: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """Logits of x decoded from posterior samples of z2 and z1, or from their means if key is None."""
        mean2, log_var2 = self.encode(x_BxD)
        if key is None:
            return self.decode_both(self.q_z1(x_BxD, mean2)[0], mean2)
        key_z2, key_z1 = jax.random.split(key)
        z2 = kl.sample_gaussian(key_z2, mean2, log_var2)
        return self.decode_both(kl.sample_gaussian(key_z1, *self.q_z1(x_BxD, z2)), z2)

    def sample(self, key: jax.Array, num_samples: int, temperature: float = 1.0) -> jax.Array:
        """Logits of images from z2 ~ p(z2), z1 ~ p(z1 | z2), both spreads scaled by `temperature`."""
        key_z2, key_z1 = jax.random.split(key)
        z2 = self.prior.sample(key_z2, num_samples, self.latent_dim, temperature, self.encode)
        mean1, log_var1 = self.p_z1(z2)
        z1 = mean1 + temperature * jnp.exp(0.5 * log_var1) * jax.random.normal(key_z1, mean1.shape)
        return self.decode_both(z1, z2)

    @property
    def output_bias(self) -> nnx.Param:
        return self.p_x.output_bias


def build_model(model_config: ml_collections.ConfigDict, image_shape: Sequence[int], key: jax.Array,
                pixel_means=None):
    """The VAE that `model_config` describes, for images of `image_shape` (H, W, C).

    With `model.init_output_bias` and `pixel_means` (the training set's mean intensity per pixel,
    D values in [0, 1]), the decoder's output bias starts at their logits: a model that has learnt
    nothing yet already predicts the average image.
    """
    if model_config.arch not in ARCHS:
        raise ValueError(f"model.arch must be one of {ARCHS}, got {model_config.arch!r}")
    rngs = nnx.Rngs(params=key)
    latent_dim, activation = model_config.latent_dim, model_config.activation
    hidden, channels = tuple(model_config.hidden_dims), tuple(model_config.conv_channels)
    clip = tuple(model_config.log_var_clip)
    kw = {"kernel_init": getattr(nnx.initializers, model_config.kernel_init)(), "rngs": rngs}
    prior = priors.build_prior(model_config, math.prod(image_shape), rngs)
    if model_config.arch == "hvae":
        nets = networks.mlp_hvae_networks(image_shape, hidden, latent_dim, activation, clip, **kw)
        model = HierarchicalVAE(**nets, prior=prior, latent_dim=latent_dim, image_shape=image_shape)
    elif model_config.arch == "conv_hvae":
        nets = networks.conv_hvae_networks(image_shape, hidden, latent_dim, channels, clip, **kw)
        model = HierarchicalVAE(**nets, prior=prior, latent_dim=latent_dim, image_shape=image_shape)
    elif model_config.arch == "mlp":
        encoder = networks.mlp_encoder(image_shape, hidden, latent_dim, activation, clip, **kw)
        decoder = networks.mlp_decoder(image_shape, hidden, latent_dim, activation, **kw)
        model = VAE(encoder, decoder, prior, latent_dim, image_shape)
    else:
        encoder = networks.ConvEncoder(image_shape, channels, latent_dim, clip, rngs=rngs)
        decoder = networks.ConvDecoder(image_shape, channels, latent_dim, rngs=rngs)
        model = VAE(encoder, decoder, prior, latent_dim, image_shape)
    if model_config.init_output_bias and pixel_means is not None:
        _set_output_bias(model.output_bias, pixel_means)
    return model


def _set_output_bias(bias: nnx.Param, pixel_means) -> None:
    """bias = logit(p) per pixel, p clipped to [1e-3, 1 - 1e-3]; a convolutional decoder's bias is
    per channel, so it gets the logit of the mean intensity."""
    p = jnp.clip(jnp.asarray(pixel_means, jnp.float32).reshape(-1), 1e-3, 1 - 1e-3)
    if bias.shape != p.shape:
        p = jnp.full(bias.shape, jnp.mean(p))
    bias[...] = jnp.log(p) - jnp.log1p(-p)
