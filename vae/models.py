"""Flax NNX VAEs: the one-level VAE (MLP or convolutional) and the two-level hierarchical VAE.

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

from vae import kl, objectives, priors

ARCHS = ("mlp", "conv", "hvae")
LIKELIHOODS = ("bernoulli",)
ACTIVATIONS = ("relu", "gated", "elu", "tanh")
KERNEL_INITS = ("lecun_normal", "he_normal")
_NONLINEARITIES = {"relu": nnx.relu, "elu": nnx.elu, "tanh": jnp.tanh}
_LECUN_NORMAL = nnx.initializers.lecun_normal()  # Flax's default for nnx.Linear


# --- Building blocks -----------------------------------------------------------------------------


class GatedDense(nnx.Module):
    """h = (W x + b) ⊙ sigmoid(V x + c) (Dauphin et al., 2017): the gate decides what passes; no
    other nonlinearity. W and V are one fused matmul of 2 x d_out outputs."""

    def __init__(self, d_in: int, d_out: int, *, kernel_init, rngs: nnx.Rngs):
        self.linear = nnx.Linear(d_in, 2 * d_out, kernel_init=kernel_init, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h, gate = jnp.split(self.linear(x), 2, axis=-1)
        return h * jax.nn.sigmoid(gate)


class Dense(nnx.Module):
    """A linear layer followed by a fixed nonlinearity."""

    def __init__(self, d_in: int, d_out: int, activation: str, *, kernel_init, rngs: nnx.Rngs):
        self.linear = nnx.Linear(d_in, d_out, kernel_init=kernel_init, rngs=rngs)
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        return _NONLINEARITIES[self.activation](self.linear(x))


def hidden_layer(d_in: int, d_out: int, activation: str, *, kernel_init, rngs: nnx.Rngs) -> nnx.Module:
    if activation == "gated":
        return GatedDense(d_in, d_out, kernel_init=kernel_init, rngs=rngs)
    return Dense(d_in, d_out, activation, kernel_init=kernel_init, rngs=rngs)


class MLP(nnx.Module):
    """Hidden layers d_in -> dims[0] -> ... -> dims[-1] (no layers if dims is empty)."""

    def __init__(self, d_in: int, dims: Sequence[int], activation: str, *, kernel_init, rngs: nnx.Rngs):
        sizes = (d_in, *dims)
        self.layers = nnx.List([hidden_layer(a, b, activation, kernel_init=kernel_init, rngs=rngs)
                                for a, b in zip(sizes[:-1], sizes[1:])])
        self.out_dim = sizes[-1]

    def __call__(self, h: jax.Array) -> jax.Array:
        for layer in self.layers:
            h = layer(h)
        return h


class GaussianHead(nnx.Module):
    """A linear map to the mean and log-variance of a diagonal Gaussian over `latent_dim` units,
    the log-variance optionally clipped to [lo, hi] (the published models use [-6, 2])."""

    def __init__(self, d_in: int, latent_dim: int, log_var_clip: Sequence[float], *, kernel_init,
                 rngs: nnx.Rngs):
        self.linear = nnx.Linear(d_in, 2 * latent_dim, kernel_init=kernel_init, rngs=rngs)
        self.log_var_clip = tuple(log_var_clip)

    def __call__(self, h: jax.Array) -> tuple[jax.Array, jax.Array]:
        mean, log_var = jnp.split(self.linear(h), 2, axis=-1)
        if self.log_var_clip:
            log_var = jnp.clip(log_var, *self.log_var_clip)
        return mean, log_var


class Branches(nnx.Module):
    """Two inputs, each through its own hidden layer, concatenated, then shared hidden layers:
    how the published HVAE joins x with z2 in q(z1|x, z2), and z1 with z2 in p(x|z1, z2)."""

    def __init__(self, d_a: int, d_b: int, dims: Sequence[int], activation: str, *, kernel_init,
                 rngs: nnx.Rngs):
        self.a = hidden_layer(d_a, dims[0], activation, kernel_init=kernel_init, rngs=rngs)
        self.b = hidden_layer(d_b, dims[0], activation, kernel_init=kernel_init, rngs=rngs)
        self.joint = MLP(2 * dims[0], dims[1:], activation, kernel_init=kernel_init, rngs=rngs)
        self.out_dim = self.joint.out_dim

    def __call__(self, a: jax.Array, b: jax.Array) -> jax.Array:
        return self.joint(jnp.concatenate([self.a(a), self.b(b)], axis=-1))


# --- Networks of the one-level VAE ---------------------------------------------------------------


class MLPEncoder(nnx.Module):
    def __init__(self, image_shape, hidden_dims, latent_dim, activation="relu", log_var_clip=(), *,
                 kernel_init=_LECUN_NORMAL, rngs: nnx.Rngs):
        self.body = MLP(math.prod(image_shape), hidden_dims, activation, kernel_init=kernel_init, rngs=rngs)
        self.head = GaussianHead(self.body.out_dim, latent_dim, log_var_clip, kernel_init=kernel_init,
                                 rngs=rngs)

    def __call__(self, x_BxD: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.head(self.body(x_BxD))


class MLPDecoder(nnx.Module):
    def __init__(self, image_shape, hidden_dims, latent_dim, activation="relu", *,
                 kernel_init=_LECUN_NORMAL, rngs: nnx.Rngs):
        self.body = MLP(latent_dim, tuple(reversed(hidden_dims)), activation, kernel_init=kernel_init,
                        rngs=rngs)
        self.head = nnx.Linear(self.body.out_dim, math.prod(image_shape), kernel_init=kernel_init,
                               rngs=rngs)

    def __call__(self, z_BxZ: jax.Array) -> jax.Array:
        return self.head(self.body(z_BxZ))


class ConvEncoder(nnx.Module):
    """Stride-2 4x4 convolutions (each halves H and W), then a dense Gaussian head."""

    def __init__(self, image_shape, channels, latent_dim, log_var_clip=(), *, rngs: nnx.Rngs):
        self.image_shape = tuple(image_shape)
        height, width, in_channels = image_shape
        chans = (in_channels, *channels)
        self.convs = nnx.List([
            nnx.Conv(c_in, c_out, kernel_size=(4, 4), strides=(2, 2), padding="SAME", rngs=rngs)
            for c_in, c_out in zip(chans[:-1], chans[1:])])
        scale = 2 ** len(channels)
        flat = (height // scale) * (width // scale) * chans[-1]
        self.head = GaussianHead(flat, latent_dim, log_var_clip,
                                 kernel_init=_LECUN_NORMAL, rngs=rngs)

    def __call__(self, x_BxD: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = x_BxD.reshape(x_BxD.shape[0], *self.image_shape)
        for conv in self.convs:
            h = nnx.relu(conv(h))
        return self.head(h.reshape(h.shape[0], -1))


def depth_to_space(h_BxHxWx4C: jax.Array) -> jax.Array:
    """B x H x W x 4C -> B x 2H x 2W x C: each pixel's 4C channels become a 2x2 block of C."""
    b, height, width, channels = h_BxHxWx4C.shape
    c = channels // 4
    h = h_BxHxWx4C.reshape(b, height, width, 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return h.reshape(b, 2 * height, 2 * width, c)


class ConvDecoder(nnx.Module):
    """A dense layer to a small feature map, then sub-pixel upsampling (Shi et al., 2016) back to
    H x W: each stage is a 3x3 convolution to 4x the channels and a depth-to-space shuffle.

    This covers every 4x4 stride-2 transposed convolution (each output pixel sees a 3x3 rather than
    2x2 neighbourhood of inputs) and trains about 3x faster on CPU, where XLA's transposed
    convolutions are slow (68 ms vs 21 ms for the 64->32 stage at batch 128, forward + backward).
    """

    def __init__(self, image_shape, channels, latent_dim, *, rngs: nnx.Rngs):
        height, width, out_channels = image_shape
        scale = 2 ** len(channels)
        self.base_shape = (height // scale, width // scale, channels[-1])
        self.dense = nnx.Linear(latent_dim, math.prod(self.base_shape), rngs=rngs)
        chans = (*reversed(channels), out_channels)
        self.upsamples = nnx.List([
            nnx.Conv(c_in, 4 * c_out, kernel_size=(3, 3), padding="SAME", rngs=rngs)
            for c_in, c_out in zip(chans[:-1], chans[1:])])

    def __call__(self, z_BxZ: jax.Array) -> jax.Array:
        h = nnx.relu(self.dense(z_BxZ)).reshape(z_BxZ.shape[0], *self.base_shape)
        for i, conv in enumerate(self.upsamples):
            h = depth_to_space(conv(h))
            if i < len(self.upsamples) - 1:
                h = nnx.relu(h)
        return h.reshape(z_BxZ.shape[0], -1)

    @property
    def output_bias(self) -> nnx.Param:
        return self.upsamples[-1].bias


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
        return self.decoder.output_bias if hasattr(self.decoder, "output_bias") else self.decoder.head.bias


class HierarchicalVAE(nnx.Module):
    """Two stochastic layers (Tomczak & Welling, 2018, the "HVAE"):

        q(z1, z2 | x) = q(z2 | x) q(z1 | x, z2),   p(x, z1, z2) = p(x | z1, z2) p(z1 | z2) p(z2),

    every conditional a diagonal Gaussian (Bernoulli for x), p(z2) the model's prior. The KL term
    is KL(q(z2|x) ‖ p(z2)) + KL(q(z1|x, z2) ‖ p(z1|z2)) at one sample z2: the second is between two
    diagonal Gaussians and exact given z2 (`kl.gaussian_kl_per_dim`), the first exact for N(0, I).
    The latent code for pictures (encode, decode, interpolations) is z2; decoding z2 takes z1 as
    the mean of p(z1 | z2).
    """

    def __init__(self, image_shape, hidden_dims, latent_dim, activation, log_var_clip, prior, *,
                 kernel_init, rngs: nnx.Rngs):
        d = math.prod(image_shape)
        hidden = tuple(hidden_dims)
        kw = {"kernel_init": kernel_init, "rngs": rngs}
        self.q_z2 = MLPEncoder(image_shape, hidden, latent_dim, activation, log_var_clip, **kw)
        self.q_z1_body = Branches(d, latent_dim, hidden, activation, **kw)
        self.q_z1_head = GaussianHead(self.q_z1_body.out_dim, latent_dim, log_var_clip, **kw)
        self.p_z1_body = MLP(latent_dim, hidden, activation, **kw)
        self.p_z1_head = GaussianHead(self.p_z1_body.out_dim, latent_dim, log_var_clip, **kw)
        self.p_x_body = Branches(latent_dim, latent_dim, hidden, activation, **kw)
        self.p_x_head = nnx.Linear(self.p_x_body.out_dim, d, **kw)
        self.prior = prior
        self.latent_dim = latent_dim
        self.image_shape = tuple(image_shape)

    def encode(self, x_BxD: jax.Array) -> tuple[jax.Array, jax.Array]:
        """q(z2 | x): mean and log-variance of the top latent, each B x Z."""
        return self.q_z2(x_BxD)

    def q_z1(self, x_BxD, z2_BxZ):
        return self.q_z1_head(self.q_z1_body(x_BxD, z2_BxZ))

    def p_z1(self, z2_BxZ):
        return self.p_z1_head(self.p_z1_body(z2_BxZ))

    def decode_both(self, z1_BxZ, z2_BxZ) -> jax.Array:
        """Bernoulli logits of p(x | z1, z2), B x D."""
        return self.p_x_head(self.p_x_body(z1_BxZ, z2_BxZ))

    def decode(self, z2_BxZ: jax.Array) -> jax.Array:
        """Logits of x from the top latent, with z1 at the mean of p(z1 | z2)."""
        return self.decode_both(self.p_z1(z2_BxZ)[0], z2_BxZ)

    def elbo_terms(self, x_BxD: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
        """rec, kl (B); kl_per_dim (B x 2Z: z1's units then z2's, factorised priors); mean (B x 2Z)."""
        key_z2, key_z1 = jax.random.split(key)
        mean2, log_var2 = self.encode(x_BxD)
        z2 = kl.sample_gaussian(key_z2, mean2, log_var2)
        mean1, log_var1 = self.q_z1(x_BxD, z2)
        z1 = kl.sample_gaussian(key_z1, mean1, log_var1)
        prior_mean1, prior_log_var1 = self.p_z1(z2)
        kl1_per_dim = kl.gaussian_kl_per_dim(mean1, log_var1, prior_mean1, prior_log_var1)
        kl2_B, kl2_per_dim = self.prior.kl(mean2, log_var2, z2, self.encode)
        terms = {
            "rec": -objectives.bernoulli_log_likelihood(self.decode_both(z1, z2), x_BxD),
            "kl": jnp.sum(kl1_per_dim, axis=-1) + kl2_B,
            # E_q[z1 | x] taken at z2's mean, so the activity of z1 is not inflated by z2's noise.
            "mean": jnp.concatenate([self.q_z1(x_BxD, mean2)[0], mean2], axis=-1),
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
        x_NxD = jnp.broadcast_to(x_BxD[None], (k, *x_BxD.shape)).reshape(k * b, -1)
        mean1, log_var1 = self.q_z1(x_NxD, z2)
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
        return self.p_x_head.bias


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
    latent_dim = model_config.latent_dim
    hidden = tuple(model_config.hidden_dims)
    activation = model_config.activation
    clip = tuple(model_config.log_var_clip)
    kernel_init = getattr(nnx.initializers, model_config.kernel_init)()
    prior = priors.build_prior(model_config, math.prod(image_shape), rngs)
    if model_config.arch == "hvae":
        model = HierarchicalVAE(image_shape, hidden, latent_dim, activation, clip, prior,
                                kernel_init=kernel_init, rngs=rngs)
    else:
        if model_config.arch == "mlp":
            encoder = MLPEncoder(image_shape, hidden, latent_dim, activation, clip,
                                 kernel_init=kernel_init, rngs=rngs)
            decoder = MLPDecoder(image_shape, hidden, latent_dim, activation, kernel_init=kernel_init,
                                 rngs=rngs)
        else:
            channels = tuple(model_config.conv_channels)
            encoder = ConvEncoder(image_shape, channels, latent_dim, clip, rngs=rngs)
            decoder = ConvDecoder(image_shape, channels, latent_dim, rngs=rngs)
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
