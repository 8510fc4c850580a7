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
- `initial_output_bias(pixel_means_D, shape, channels)`: the decoder's output bias at which the
  model, having learnt nothing yet, predicts the training set's average image (a bias of
  D · outputs_per_pixel entries, or a convolution's, one set per channel of the C-channel image);
- `coding_family` and `coding_parameters(out_BxP)`: what lossless coding (`vae.coding`) codes
  each pixel with: the family of its discrete distribution ("bernoulli", "logistic_mixture",
  "categorical") and that distribution's parameters per sub-pixel, as floats (the coder rounds
  them to fixed point: `vae.coding.fixed_point`).

Two kinds of data, two kinds of likelihood; their numbers are not comparable:
- `Bernoulli` models binarised pixels (data.binarize dynamic or static): each pixel is one bit,
  and -log p(x|z) counts the nats of a 1-bit image.
- `LogisticMixture` and `Categorical` model 8-bit pixels (data.binarize=none): each sub-pixel
  (a pixel's grey level, or one of its colour channels) is one of 256 levels, and -log p(x|z)
  counts the nats of the 8-bit image; they also give `level_log_probs(out_BxP)`, the B x D x 256
  log-probabilities of every level (what sums to 1, what the coder codes with).
An 8-bit sub-pixel's level v becomes the model input v / 255, as a binarised one's 0/1 does.

A likelihood is a Flax module so that one with parameters of its own fits the same slot.
Imports nothing of the package but `vae.native` (the logistic mixture's CPU kernel).
"""

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from vae.native import mixture


class Bernoulli(nnx.Module):
    """p(x|z) = Π_d Bernoulli(x_d | sigmoid(l_d)): one logit l_d per pixel, for binarised pixels.

    For grey levels x ∈ (0, 1) the same formula is a negative cross-entropy, not a likelihood:
    the data pipeline binarises every image this likelihood sees."""

    outputs_per_pixel = 1
    coding_family = "bernoulli"  # vae.coding codes each pixel as 0 or 1 with P(1) = sigmoid(logit)

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

    def coding_parameters(self, logits: jax.Array) -> tuple[jax.Array]:
        """(logits B x D,): P(pixel on) = sigmoid(logit) when an image is coded."""
        return (logits,)

    def sample(self, key: jax.Array, logits: jax.Array) -> jax.Array:
        return jax.random.bernoulli(key, jax.nn.sigmoid(logits)).astype(logits.dtype)

    def initial_output_bias(self, pixel_means_D: jax.Array, shape: tuple[int, ...],
                            channels: int = 1) -> jax.Array:
        """logit(p) per pixel, p clipped to [1e-3, 1 − 1e-3]; a bias of another shape (a
        convolutional decoder's, one per channel) gets the logit of the mean intensity."""
        p = jnp.clip(jnp.asarray(pixel_means_D, jnp.float32).reshape(-1), 1e-3, 1 - 1e-3)
        if tuple(shape) != p.shape:
            p = jnp.full(shape, jnp.mean(p))
        return jnp.log(p) - jnp.log1p(-p)


LEVELS = 256  # the values of an 8-bit sub-pixel
MIN_LOG_SCALE = -7.0  # PixelCNN++'s floor on a logistic's log-scale, in the [-1, 1] pixel scale
TILE_ROWS = 32  # images the IWAE's mixture likelihood works on at once (`LogisticMixture.log_prob_grouped`)


def levels_of(x: jax.Array) -> jax.Array:
    """The 8-bit level 0..255 (int32) of model inputs x = level / 255."""
    return jnp.clip(jnp.round(x * (LEVELS - 1)), 0, LEVELS - 1).astype(jnp.int32)


def discretized_logistic_log_probs(level: jax.Array, mean: jax.Array, log_scale: jax.Array) -> jax.Array:
    """log P(level) under a logistic(mean, exp(log_scale)) on [-1, 1] rounded to 256 levels.

    Level v covers [c − 1/255, c + 1/255] around c = v / 127.5 − 1; level 0 takes the whole left
    tail and level 255 the right one, so the 256 masses sum to 1. With a = (c + 1/255 − mean)/s and
    b = (c − 1/255 − mean)/s, the mass σ(a) − σ(b) is computed in log space as

        log(σ(a) − σ(b)) = a − softplus(a) − softplus(b) + log(−expm1(b − a)),

    exact wherever float32 holds its terms: a bin far in a tail, whose mass σ(a) − σ(b) underflows
    to 0 (where PixelCNN++ falls back to the density at the mid-point times the bin width), keeps
    its exact log-mass here (e.g. −631 nats, not −inf, tested). The edges are log σ(a) = −softplus(−a)
    and log(1 − σ(b)) = −softplus(b). Broadcasts over its arguments.
    """
    log_scale = jnp.maximum(log_scale, MIN_LOG_SCALE)
    inv_scale = jnp.exp(-log_scale)
    centre = level.astype(mean.dtype) * (2.0 / (LEVELS - 1)) - 1.0 - mean
    a = inv_scale * (centre + 1.0 / (LEVELS - 1))
    b = inv_scale * (centre - 1.0 / (LEVELS - 1))
    width = jnp.maximum(a - b, jnp.finfo(mean.dtype).tiny)  # 2/(255·s) > 0, but keep log finite
    inner = a - jax.nn.softplus(a) - jax.nn.softplus(b) + jnp.log(-jnp.expm1(-width))
    return jnp.where(level == 0, -jax.nn.softplus(-a),
                     jnp.where(level == LEVELS - 1, -jax.nn.softplus(b), inner))


def discretized_logistic_mixture_log_prob(level: jax.Array, logits: jax.Array, means: jax.Array,
                                          log_scales: jax.Array) -> jax.Array:
    """log Σ_k π_k P_k(level) of a mixture of discretised logistics, per sub-pixel (... x D), its
    components on axis −2 (logits, means, log-scales each ... x K x D; level ... x D, int).

    The same number as `discretized_logistic_log_probs` mixed by a log-softmax, with a third of
    the transcendental work. A bin's mass σ(a) − σ(b) = σ(a)·σ(−b)·(1 − e^−w) (w = a − b) is
    split into an exponent and a bounded factor:

        σ(a)·σ(−b)·(1 − e^−w) = e^E · f,   E = −max(−a, 0) − max(b, 0),
        f = −expm1(−w) / ((1 + e^−|a|)(1 + e^−|b|))  ∈ [(1 − e^−w)/4, 1],

    so a bin far in a tail keeps its exact log-mass (E carries it, no underflow) and the mixture
    is log Σ_k e^(l_k + E_k)·f_k − logsumexp_k l_k, one log per sub-pixel. e^−|a| comes from e^−|b|
    and e^−w (a = b + w) instead of an exp of its own. The edge bins drop the factor of their open
    side: level 0 is σ(a), level 255 is σ(−b).
    """
    log_scales = jnp.maximum(log_scales, MIN_LOG_SCALE)
    inv_scale = jnp.exp(-log_scales)
    level = level[..., None, :]
    centre = level.astype(means.dtype) * (2.0 / (LEVELS - 1)) - 1.0 - means
    a = inv_scale * (centre + 1.0 / (LEVELS - 1))
    b = inv_scale * (centre - 1.0 / (LEVELS - 1))
    em1 = jnp.expm1(-inv_scale * (2.0 / (LEVELS - 1)))  # e^−w − 1, w = a − b > 0
    r = 1.0 + em1  # e^−w
    t_b = jnp.exp(-jnp.abs(b))
    t_a = jnp.where(b >= 0, t_b * r, jnp.where(a <= 0, t_b / r, r / t_b))  # e^−|a|
    is_low, is_high = level == 0, level == LEVELS - 1
    exponent = -(jnp.where(is_high, 0.0, jnp.maximum(-a, 0.0)) + jnp.where(is_low, 0.0, jnp.maximum(b, 0.0)))
    numerator = jnp.where(is_low | is_high, 1.0, -em1)
    denominator = jnp.where(is_high, 1.0, 1.0 + t_a) * jnp.where(is_low, 1.0, 1.0 + t_b)
    joint = logits + exponent  # log π_k + E_k, up to the logits' normaliser
    joint_max = jnp.max(joint, axis=-2, keepdims=True)
    logit_max = jnp.max(logits, axis=-2, keepdims=True)
    mixed = jnp.sum(jnp.exp(joint - joint_max) * (numerator / denominator), axis=-2)
    normaliser = jnp.sum(jnp.exp(logits - logit_max), axis=-2)
    return (joint_max - logit_max)[..., 0, :] + jnp.log(mixed / normaliser)


# Where every sub-pixel of a tile has at least this probability, `_mixture_probability` is exact
# to float rounding (a component it loses to underflow holds under 1e-37 of it).
_SMALLEST_FAST_PROBABILITY = 1e-30


def _mixture_probability(level, logits, means, log_scales):
    """Σ_k π_k P_k(level) itself, per sub-pixel (arguments as `discretized_logistic_mixture_log_prob`'s):
    the same factors, σ(a)·σ(−b)·(1 − e^−w) = −expm1(−w) / ((1 + e^−a)(1 + e^b)), e^−a = e^−w / e^b,
    without the exponents that keep a far tail's mass from underflowing: 4 exps per component,
    and the mixture without a log-sum-exp. A mass beyond float range gives 0 (never NaN)."""
    log_scales = jnp.maximum(log_scales, MIN_LOG_SCALE)
    inv_scale = jnp.exp(-log_scales)
    level = level[..., None, :]
    b = inv_scale * (level.astype(means.dtype) * (2.0 / (LEVELS - 1)) - 1.0 - means - 1.0 / (LEVELS - 1))
    em1 = jnp.expm1(-inv_scale * (2.0 / (LEVELS - 1)))  # e^−w − 1
    exp_b = jnp.exp(b)
    exp_minus_a = (1.0 + em1) / exp_b
    is_low, is_high = level == 0, level == LEVELS - 1
    mass = jnp.where(is_low | is_high, 1.0, -em1) / (
        jnp.where(is_high, 1.0, 1.0 + exp_minus_a) * jnp.where(is_low, 1.0, 1.0 + exp_b))
    weights = jnp.exp(logits - jnp.max(logits, axis=-2, keepdims=True))
    return jnp.sum(weights * mass, axis=-2) / jnp.sum(weights, axis=-2)


def tiled_mixture_log_prob(out_NxP: jax.Array, levels_BxD: jax.Array, components: int) -> jax.Array:
    """`LogisticMixture.log_prob_grouped` in XLA, row r of `out_NxP` against the levels of image
    r mod B: with each image's pixels on the minor axis (so it vectorises), over tiles of TILE_ROWS
    rows at a time (so its intermediates stay in cache), each tile's mixture as a probability
    (`_mixture_probability`, a fifth of `log_prob`'s transcendental work) unless one of its
    sub-pixels is under 1e-30 (or NaN), whose tile takes the exact log-space form
    (`discretized_logistic_mixture_log_prob`)."""
    k, (images, d), rows = components, levels_BxD.shape, out_NxP.shape[0]
    levels = jnp.broadcast_to(levels_BxD, (rows // images, images, d)).reshape(rows, d)
    pad = -rows % TILE_ROWS
    out, levels = jnp.pad(out_NxP, ((0, pad), (0, 0))), jnp.pad(levels, ((0, pad), (0, 0)))

    def tile(out_and_levels):
        out_TxP, level_TxD = out_and_levels
        components = jnp.swapaxes(out_TxP.reshape(TILE_ROWS, -1, 3 * k), -1, -2)  # T x 3K x D
        parameters = (level_TxD, components[:, :k], components[:, k:2 * k], components[:, 2 * k:])
        probability = _mixture_probability(*parameters)
        return jax.lax.cond(jnp.all(probability >= _SMALLEST_FAST_PROBABILITY),
                            lambda: jnp.sum(jnp.log(probability), axis=-1),
                            lambda: jnp.sum(discretized_logistic_mixture_log_prob(*parameters), axis=-1))

    tiles = (out.reshape(-1, TILE_ROWS, out.shape[-1]), levels.reshape(-1, TILE_ROWS, d))
    return jax.lax.map(tile, tiles).reshape(-1)[:rows]


@functools.cache
def _tiled_mixture_log_prob_of(components: int):
    """`tiled_mixture_log_prob` of K components as a function of (out_NxP, levels_BxD): one object
    per K, as `vae.native.mixture.log_prob` takes it into the operation it builds."""
    return functools.partial(tiled_mixture_log_prob, components=components)


class LogisticMixture(nnx.Module):
    """p(x|z) = Π_d Σ_k π_dk · DiscretizedLogistic(x_d | μ_dk, s_dk): a mixture of K logistics per
    8-bit sub-pixel (Salimans et al., 2017, PixelCNN++), its 256 levels the bins of [-1, 1].

    The decoder gives each sub-pixel 3K numbers: K mixture logits, K means (in [-1, 1] pixel
    units) and K log-scales (floored at −7). Colour channels are modelled independently given z:
    each sub-pixel's distribution depends on the latent code only, so sampling and lossless
    coding decode every sub-pixel in one parallel step, and the decoder carries the correlation of
    a pixel's channels through z. PixelCNN++ shifts the green and blue means linearly by the
    pixel's earlier channels, which helps a model whose structure lives in the likelihood; here it
    would make sampling and coding sequential over channels for what z already conveys. What that
    choice costs is measured by the colour test set's bits/dim, not assumed.
    """

    coding_family = "logistic_mixture"

    def __init__(self, num_components: int = 5):
        if not (isinstance(num_components, int) and num_components >= 1):
            raise ValueError(f"model.mixture_components must be an integer >= 1, got {num_components!r}")
        self.num_components = num_components
        self.outputs_per_pixel = 3 * num_components

    def _split(self, out_BxP: jax.Array):
        """(logits, means, log_scales), each ... x D x K, from the flat decoder output."""
        k = self.num_components
        per_pixel = out_BxP.reshape(*out_BxP.shape[:-1], -1, 3 * k)
        return per_pixel[..., :k], per_pixel[..., k:2 * k], per_pixel[..., 2 * k:]

    def log_prob(self, out_BxP: jax.Array, x_BxD: jax.Array) -> jax.Array:
        logits, means, log_scales = self._split(out_BxP)
        component = discretized_logistic_log_probs(levels_of(x_BxD)[..., None], means, log_scales)
        per_pixel = jax.nn.logsumexp(jax.nn.log_softmax(logits, axis=-1) + component, axis=-1)
        return jnp.sum(per_pixel, axis=-1)

    def log_prob_grouped(self, out_BxP: jax.Array, x_BxD: jax.Array) -> jax.Array:
        """`log_prob` for speed, where the IWAE evaluation's decoder output is the hot loop (equal
        up to float rounding, tested): `vae.native.mixture`'s operation, on CPU a compiled kernel
        that makes one pass per row, elsewhere (or where the kernel is not built)
        `tiled_mixture_log_prob`. docs/evaluation.md has what each step saves. `x_BxD` broadcasts
        against the leading axes of `out_BxP`; where it holds one image per row of their last axes
        (x_BxD[None] against C x B rows), each is read once rather than copied per row. For
        evaluation: the kernel has no gradient (training differentiates `log_prob`)."""
        lead, d = out_BxP.shape[:-1], x_BxD.shape[-1]
        levels = levels_of(x_BxD)
        image_lead = levels.shape[:-1]
        while image_lead and image_lead[0] == 1:
            image_lead = image_lead[1:]
        if lead[len(lead) - len(image_lead):] != image_lead:  # not one image per row of the last axes
            levels, image_lead = jnp.broadcast_to(levels, lead + (d,)), lead
        images = math.prod(image_lead)
        out_GxBxP = out_BxP.reshape(-1, images, out_BxP.shape[-1])
        log_p = mixture.log_prob(out_GxBxP, levels.reshape(images, d), self.num_components,
                                 _tiled_mixture_log_prob_of(self.num_components))
        return log_p.reshape(lead)

    def level_log_probs(self, out_BxP: jax.Array) -> jax.Array:
        """log P(level) of all 256 levels, ... x D x 256."""
        logits, means, log_scales = self._split(out_BxP)
        levels = jnp.arange(LEVELS)[:, None]  # 256 x 1, against ... x D x 1 x K
        component = discretized_logistic_log_probs(levels, means[..., None, :], log_scales[..., None, :])
        return jax.nn.logsumexp(jax.nn.log_softmax(logits, axis=-1)[..., None, :] + component, axis=-1)

    def mean(self, out_BxP: jax.Array) -> jax.Array:
        """E[x|z] in [0, 1]: each component's logistic clipped to [-1, 1] (its tails folded into the
        edges, as the discretisation does), in closed form; within half a level of the discretised
        mean, and without the 256 levels' work."""
        logits, means, log_scales = self._split(out_BxP)
        scale = jnp.exp(jnp.maximum(log_scales, MIN_LOG_SCALE))
        return jnp.sum(jax.nn.softmax(logits, axis=-1) * _clipped_logistic_mean(means, scale), axis=-1)

    def coding_parameters(self, out_BxP: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(mixture logits, means in [-1, 1] units, log-scales floored at −7), each B x D x K: the
        distribution each sub-pixel is coded with."""
        logits, means, log_scales = self._split(out_BxP)
        return logits, means, jnp.maximum(log_scales, MIN_LOG_SCALE)

    def sample(self, key: jax.Array, out_BxP: jax.Array) -> jax.Array:
        """A draw of every sub-pixel: a component, a logistic value, its level; as level / 255."""
        logits, means, log_scales = self._split(out_BxP)
        component_key, value_key = jax.random.split(key)
        k = jax.random.categorical(component_key, logits, axis=-1)[..., None]
        mean = jnp.take_along_axis(means, k, axis=-1)[..., 0]
        scale = jnp.exp(jnp.maximum(jnp.take_along_axis(log_scales, k, axis=-1)[..., 0], MIN_LOG_SCALE))
        value = mean + scale * jax.random.logistic(value_key, mean.shape, mean.dtype)
        level = jnp.clip(jnp.round((value + 1.0) * ((LEVELS - 1) / 2.0)), 0, LEVELS - 1)
        return level * (1.0 / (LEVELS - 1))

    def initial_output_bias(self, pixel_means_D: jax.Array, shape: tuple[int, ...],
                            channels: int = 1) -> jax.Array:
        """Equal weights, every component with scale 1/3 in [-1, 1] units (a logistic's std is
        s·π/√3, so about 0.6: an 8-bit image's spread) and placed where its mean is the sub-pixel's
        mean intensity (`mean` of the bias is the training set's mean image); a convolution's bias
        gets each of the image's `channels` its mean intensity, repeated over its positions."""
        return _per_pixel_bias(pixel_means_D, shape, channels, self.outputs_per_pixel,
                               lambda p: _mixture_bias(p, self.num_components))


class Categorical(nnx.Module):
    """p(x|z) = Π_d Categorical(x_d | softmax(l_d)): 256 logits per 8-bit sub-pixel, no assumption
    on the shape of a level's distribution. The reference the logistic mixture is checked
    against; its decoder output is 256 numbers per sub-pixel, so its last layer is large."""

    coding_family = "categorical"
    outputs_per_pixel = LEVELS

    def _logits(self, out_BxP: jax.Array) -> jax.Array:
        return out_BxP.reshape(*out_BxP.shape[:-1], -1, LEVELS)

    def log_prob(self, out_BxP: jax.Array, x_BxD: jax.Array) -> jax.Array:
        logits = self._logits(out_BxP)
        picked = jnp.take_along_axis(logits, levels_of(x_BxD)[..., None], axis=-1)[..., 0]
        return jnp.sum(picked - jax.nn.logsumexp(logits, axis=-1), axis=-1)

    # No faster form for the IWAE loop: the decoder's last layer spends its hidden width in multiply-adds
    # on each of a sub-pixel's 256 logits, the log-softmax one exp.
    log_prob_grouped = log_prob

    def level_log_probs(self, out_BxP: jax.Array) -> jax.Array:
        return jax.nn.log_softmax(self._logits(out_BxP), axis=-1)

    def mean(self, out_BxP: jax.Array) -> jax.Array:
        probs = jax.nn.softmax(self._logits(out_BxP), axis=-1)
        return probs @ (jnp.arange(LEVELS, dtype=probs.dtype) / (LEVELS - 1))

    def coding_parameters(self, out_BxP: jax.Array) -> tuple[jax.Array]:
        """(the 256 logits of each sub-pixel, B x D x 256,)."""
        return (self._logits(out_BxP),)

    def sample(self, key: jax.Array, out_BxP: jax.Array) -> jax.Array:
        level = jax.random.categorical(key, self._logits(out_BxP), axis=-1)
        return level.astype(out_BxP.dtype) * (1.0 / (LEVELS - 1))

    def initial_output_bias(self, pixel_means_D: jax.Array, shape: tuple[int, ...],
                            channels: int = 1) -> jax.Array:
        """The log-probabilities of one discretised logistic whose mean is each sub-pixel's mean
        intensity (scale 1/3 in [-1, 1] units): the logistic mixture's starting point."""
        def bias(p_D):
            return discretized_logistic_log_probs(jnp.arange(LEVELS), _location_of_mean(p_D)[:, None],
                                                  jnp.full((1, 1), _INITIAL_LOG_SCALE))
        return _per_pixel_bias(pixel_means_D, shape, channels, LEVELS, bias)


_INITIAL_LOG_SCALE = math.log(1.0 / 3.0)


def _clipped_logistic_mean(mean: jax.Array, scale: jax.Array) -> jax.Array:
    """E[clip(X, −1, 1)] mapped to [0, 1], X ~ logistic(mean, scale): the mean the discretisation
    gives up to rounding. E[clip(X, −1, 1)] = −1 + ∫_{−1}^{1} P(X > t) dt
    = 1 − s·(softplus((1 − μ)/s) − softplus((−1 − μ)/s))."""
    clipped = 1.0 - scale * (jax.nn.softplus((1.0 - mean) / scale) - jax.nn.softplus((-1.0 - mean) / scale))
    return (clipped + 1.0) * 0.5


def _location_of_mean(p_D: jax.Array) -> jax.Array:
    """The location μ whose clipped logistic (scale 1/3) has mean p: bisection, the mean rising in μ."""
    scale = math.exp(_INITIAL_LOG_SCALE)
    lo, hi = jnp.full_like(p_D, -4.0), jnp.full_like(p_D, 4.0)
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        low = _clipped_logistic_mean(mid, scale) < p_D
        lo, hi = jnp.where(low, mid, lo), jnp.where(low, hi, mid)
    return 0.5 * (lo + hi)


def _mixture_bias(p_D: jax.Array, num_components: int) -> jax.Array:
    d = p_D.shape[0]
    means = jnp.broadcast_to(_location_of_mean(p_D)[:, None], (d, num_components))
    return jnp.concatenate([jnp.zeros((d, num_components)), means,
                            jnp.full((d, num_components), _INITIAL_LOG_SCALE)], axis=-1)


def _per_pixel_bias(pixel_means_D, shape, channels, outputs_per_pixel, bias_of) -> jax.Array:
    """The flat bias `bias_of(p)` (D x outputs_per_pixel) for D sub-pixel means p (a dense
    decoder's bias); or, for a convolution's bias, `bias_of` of each image channel's mean,
    repeated over the bias's positions (the depth-to-space decoder holds its channels once per
    2x2 position: channel-minor)."""
    p = jnp.clip(jnp.asarray(pixel_means_D, jnp.float32).reshape(-1), 1e-3, 1 - 1e-3)
    size = math.prod(shape)
    if size != p.shape[0] * outputs_per_pixel:
        if size % (channels * outputs_per_pixel) or p.shape[0] % channels:
            raise ValueError(f"an output bias of shape {tuple(shape)} fits neither {p.shape[0]} sub-pixels "
                             f"nor {channels} channels with {outputs_per_pixel} outputs each")
        p = p.reshape(-1, channels).mean(axis=0)
    return jnp.tile(bias_of(p).reshape(-1), size // (p.shape[0] * outputs_per_pixel)).reshape(shape)


LIKELIHOODS = {"bernoulli": Bernoulli, "logistic_mixture": LogisticMixture, "categorical": Categorical}
EIGHT_BIT_LIKELIHOODS = ("logistic_mixture", "categorical")  # model 256 levels: data.binarize=none


def build_likelihood(name: str, mixture_components: int = 5) -> nnx.Module:
    if name not in LIKELIHOODS:
        raise ValueError(f"model.likelihood must be one of {tuple(LIKELIHOODS)}, got {name!r}")
    if name == "logistic_mixture":
        return LogisticMixture(mixture_components)
    return LIKELIHOODS[name]()
