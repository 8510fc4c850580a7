"""The model a config describes: the one place that maps `config.model` fields to modules (the
extension point for a new architecture, prior or likelihood: add its name and its branch here).

Imports nothing of the package but `vae.kl` (through the modules it builds).
"""

import math
from collections.abc import Sequence

import jax
import ml_collections
from flax import nnx

from vae.model import ladder, ladder_cells, likelihoods, networks, priors
from vae.model.hvae import HierarchicalVAE
from vae.model.vae import VAE

ARCHS = ("mlp", "conv", "hvae", "conv_hvae", "ladder", "conv_ladder")
CONVOLUTIONAL_ARCHS = ("conv", "conv_hvae", "conv_ladder")
LADDER_ARCHS = ("ladder", "conv_ladder")  # the deep top-down hierarchy: model.num_layers latent layers
LADDER_MERGES = ladder.MERGES
LIKELIHOODS = tuple(likelihoods.LIKELIHOODS)
EIGHT_BIT_LIKELIHOODS = likelihoods.EIGHT_BIT_LIKELIHOODS
PRIORS = priors.PRIORS
ACTIVATIONS, KERNEL_INITS = networks.ACTIVATIONS, networks.KERNEL_INITS


def latent_sizes(model_config: ml_collections.ConfigDict, image_shape: Sequence[int]) -> tuple[int, ...]:
    """The size of each latent layer of the model `model_config` describes, z_1 (next to x) first:
    the order of the model's `kl_per_layer` columns and of its `kl_per_dim` and `mean` units."""
    arch = model_config.arch
    if arch == "ladder":
        dims = tuple(model_config.latent_dims)
        return dims or (model_config.latent_dim,) * model_config.num_layers
    if arch == "conv_ladder":
        return tuple(math.prod(shape) for shape in ladder_cells.conv_latent_shapes(
            image_shape, model_config.conv_channels, model_config.num_layers, model_config.latent_channels))
    return (model_config.latent_dim,) * (2 if arch in ("hvae", "conv_hvae") else 1)


def build_model(model_config: ml_collections.ConfigDict, image_shape: Sequence[int], key: jax.Array,
                pixel_means=None):
    """The VAE that `model_config` describes, for images of `image_shape` (H, W, C).

    With `model.init_output_bias` and `pixel_means` (the training set's mean intensity per pixel,
    D values in [0, 1]), the decoder's output bias starts where the likelihood predicts the
    average image: a model that has learnt nothing yet already draws the mean picture (a
    convolutional decoder, whose bias is one per output channel, gets each image channel's mean).
    """
    if model_config.arch not in ARCHS:
        raise ValueError(f"model.arch must be one of {ARCHS}, got {model_config.arch!r}")
    rngs = nnx.Rngs(params=key)
    latent_dim, activation = model_config.latent_dim, model_config.activation
    hidden, channels = tuple(model_config.hidden_dims), tuple(model_config.conv_channels)
    clip = tuple(model_config.log_var_clip)
    kw = {"kernel_init": getattr(nnx.initializers, model_config.kernel_init)(), "rngs": rngs}
    prior = priors.build_prior(model_config, math.prod(image_shape), rngs)
    likelihood = likelihoods.build_likelihood(model_config.likelihood, model_config.mixture_components)
    outputs = likelihood.outputs_per_pixel
    if model_config.arch in LADDER_ARCHS:
        model = _ladder(model_config, image_shape, prior, likelihood, kw["kernel_init"], rngs)
    elif model_config.arch in ("hvae", "conv_hvae"):
        if model_config.arch == "hvae":
            nets = networks.mlp_hvae_networks(image_shape, hidden, latent_dim, activation, clip, outputs,
                                              **kw)
        else:
            nets = networks.conv_hvae_networks(image_shape, hidden, latent_dim, channels, clip, outputs,
                                               **kw)
        model = HierarchicalVAE(**nets, prior=prior, likelihood=likelihood, latent_dim=latent_dim,
                                image_shape=image_shape)
    elif model_config.arch == "mlp":
        encoder = networks.mlp_encoder(image_shape, hidden, latent_dim, activation, clip, **kw)
        decoder = networks.mlp_decoder(image_shape, hidden, latent_dim, activation, outputs, **kw)
        model = VAE(encoder, decoder, prior, likelihood, latent_dim, image_shape)
    else:
        encoder = networks.ConvEncoder(image_shape, channels, latent_dim, clip, rngs=rngs)
        decoder = networks.ConvDecoder(image_shape, channels, latent_dim, outputs, rngs=rngs)
        model = VAE(encoder, decoder, prior, likelihood, latent_dim, image_shape)
    if model_config.init_output_bias and pixel_means is not None:
        bias = model.output_bias
        bias[...] = likelihood.initial_output_bias(pixel_means, bias.shape, image_shape[-1])
    return model


def _ladder(m: ml_collections.ConfigDict, image_shape, prior, likelihood, kernel_init, rngs) -> ladder.Ladder:
    """The ladder `m` describes: gated dense cells (arch ladder) or convolutional ones (conv_ladder)."""
    outputs = likelihood.outputs_per_pixel
    kw = {"kernel_init": kernel_init, "rngs": rngs}
    if m.arch == "ladder":
        top_first = latent_sizes(m, image_shape)[::-1]
        parts = ladder_cells.mlp_ladder(image_shape, tuple(m.hidden_dims), top_first, m.activation,
                                        m.bottleneck, outputs, **kw)
    else:
        parts = ladder_cells.conv_ladder(image_shape, tuple(m.conv_channels), m.num_layers, m.latent_channels,
                                         m.bottleneck, outputs, **kw)
    return ladder.Ladder(**parts, prior=prior, likelihood=likelihood, merge_kind=m.ladder_merge,
                         log_var_clip=tuple(m.log_var_clip), image_shape=image_shape)
