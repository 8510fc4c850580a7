"""Likelihoods p(x|z): how a decoder's output becomes a distribution over an image.

A model holds its likelihood as it holds its prior (`model.likelihood` in the config names it).
The decoder emits `outputs_per_pixel` numbers per pixel, flat B x P with P = D · outputs_per_pixel
(pixel-major: reshaping to B x D x outputs_per_pixel gives each pixel's numbers); the likelihood
turns them into:

- `log_prob(out_BxP, x_BxD)`: log p(x|z) summed over pixels, one value per image (nats), for
  model inputs x in [0, 1] (`vae.data.pixels` encodes uint8 pixels);
- `log_prob_grouped(out_BxP, x_BxD)`: the same number computed for speed, where the IWAE
  evaluation's decoder output is the hot loop (equal up to float rounding, tested);
- `mean(out_BxP)`: E[x|z] per pixel in [0, 1], the picture of a decoded code;
- `sample(key, out_BxP)`: a draw x ~ p(x|z), B x D in [0, 1];
- `initial_output_bias(pixel_means_D, shape)`: the decoder's output bias at which the model,
  having learnt nothing yet, predicts the training set's average image;
- `coding_family` and `coding_probabilities(out_BxP)`: what lossless coding (`vae.coding`)
  codes each pixel with: the family of its discrete distribution ("bernoulli": B x D
  probabilities of the pixel being on) and that distribution's parameters.

A likelihood is a Flax module so that one with parameters of its own fits the same slot.
Imports nothing of the package.
"""

import jax
import jax.numpy as jnp
from flax import nnx


class Bernoulli(nnx.Module):
    """p(x|z) = Π_d Bernoulli(x_d | sigmoid(l_d)): one logit l_d per pixel, for binarised pixels.

    For grey levels x ∈ (0, 1) the same formula is a negative cross-entropy, not a likelihood:
    the data pipeline binarises every image this likelihood sees."""

    outputs_per_pixel = 1
    coding_family = "bernoulli"  # vae.coding codes each pixel as 0 or 1 with P(1) = coding_probabilities

    def log_prob(self, logits: jax.Array, x: jax.Array) -> jax.Array:
        """x·l − softplus(l) summed over pixels: exact for x ∈ {0, 1}, one softplus per pixel (the
        two-log-sigmoid form costs two)."""
        return jnp.sum(x * logits - jax.nn.softplus(logits), axis=-1)

    def log_prob_grouped(self, logits: jax.Array, x: jax.Array) -> jax.Array:
        """`log_prob` with a tenth of its transcendental work.

        softplus(l) = max(l, 0) + log1p(e^−|l|), and the log1p terms of a group of g pixels sum to
        log Π (1 + e^−|l|): one exp per pixel and one log per group instead of an exp and a log1p
        per pixel. Every factor lies in [1, 2], so a product of g ≤ 120 stays finite in float32;
        its rounding (about 1e-7 per factor) is below that of the sum over pixels. Falls back to
        the per-pixel form where the pixel count has no divisor in [8, 120].
        """
        num_pixels = logits.shape[-1]
        group = max(g for g in range(1, 121) if num_pixels % g == 0)
        linear = jnp.sum(x * logits - jnp.maximum(logits, 0.0), axis=-1)
        if group < 8:
            return linear - jnp.sum(jnp.log1p(jnp.exp(-jnp.abs(logits))), axis=-1)
        factors = (1.0 + jnp.exp(-jnp.abs(logits))).reshape(*logits.shape[:-1], num_pixels // group, group)
        return linear - jnp.sum(jnp.log(jnp.prod(factors, axis=-1)), axis=-1)

    def mean(self, logits: jax.Array) -> jax.Array:
        """Each pixel's probability of being on."""
        return jax.nn.sigmoid(logits)

    def coding_probabilities(self, logits: jax.Array) -> jax.Array:
        """P(pixel on), B x D: the parameter of each pixel's Bernoulli when an image is coded."""
        return self.mean(logits)

    def sample(self, key: jax.Array, logits: jax.Array) -> jax.Array:
        return jax.random.bernoulli(key, jax.nn.sigmoid(logits)).astype(logits.dtype)

    def initial_output_bias(self, pixel_means_D: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        """logit(p) per pixel, p clipped to [1e-3, 1 − 1e-3]; a bias of another shape (a
        convolutional decoder's, one per channel) gets the logit of the mean intensity."""
        p = jnp.clip(jnp.asarray(pixel_means_D, jnp.float32).reshape(-1), 1e-3, 1 - 1e-3)
        if tuple(shape) != p.shape:
            p = jnp.full(shape, jnp.mean(p))
        return jnp.log(p) - jnp.log1p(-p)


LIKELIHOODS = {"bernoulli": Bernoulli}


def build_likelihood(name: str) -> nnx.Module:
    if name not in LIKELIHOODS:
        raise ValueError(f"model.likelihood must be one of {tuple(LIKELIHOODS)}, got {name!r}")
    return LIKELIHOODS[name]()
