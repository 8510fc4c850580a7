"""The model a config describes, and the one registry of architectures (`ARCHITECTURES`) that the
model builder, the config checks, the epoch loop and the results table read: a new `model.arch`
is one entry here (its builder, its name in tables, whether it is convolutional).

Imports nothing of the package but `vae.kl` (through the modules it builds).
"""

import dataclasses
import math
from collections.abc import Callable, Sequence

import jax
import ml_collections
from flax import nnx

from vae.model import ladder, ladder_cells, likelihoods, networks, priors, stages
from vae.model.hvae import HierarchicalVAE
from vae.model.vae import VAE


def _mlp(m, image_shape, prior, likelihood, kw):
    clip, hidden, outputs = tuple(m.log_var_clip), tuple(m.hidden_dims), likelihood.outputs_per_pixel
    encoder = networks.mlp_encoder(image_shape, hidden, m.latent_dim, m.activation, clip, **kw)
    decoder = networks.mlp_decoder(image_shape, hidden, m.latent_dim, m.activation, outputs, **kw)
    return VAE(encoder, decoder, prior, likelihood, m.latent_dim, image_shape)


def _conv(m, image_shape, prior, likelihood, kw):
    channels, outputs = tuple(m.conv_channels), likelihood.outputs_per_pixel
    clip = tuple(m.log_var_clip)
    encoder = networks.ConvEncoder(image_shape, channels, m.latent_dim, clip, rngs=kw["rngs"])
    decoder = networks.ConvDecoder(image_shape, channels, m.latent_dim, outputs, rngs=kw["rngs"])
    return VAE(encoder, decoder, prior, likelihood, m.latent_dim, image_shape)


def _hvae(m, image_shape, prior, likelihood, kw):
    nets = networks.mlp_hvae_networks(image_shape, tuple(m.hidden_dims), m.latent_dim, m.activation,
                                      tuple(m.log_var_clip), likelihood.outputs_per_pixel, **kw)
    return HierarchicalVAE(**nets, prior=prior, likelihood=likelihood, latent_dim=m.latent_dim,
                           image_shape=image_shape)


def _conv_hvae(m, image_shape, prior, likelihood, kw):
    nets = networks.conv_hvae_networks(image_shape, tuple(m.hidden_dims), m.latent_dim,
                                       tuple(m.conv_channels), tuple(m.log_var_clip),
                                       likelihood.outputs_per_pixel, **kw)
    return HierarchicalVAE(**nets, prior=prior, likelihood=likelihood, latent_dim=m.latent_dim,
                           image_shape=image_shape)


def latent_sizes(model_config, image_shape: Sequence[int]) -> tuple[int, ...]:
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


def _ladder(m, image_shape, prior, likelihood, kw):
    """The ladder with gated dense cells (vae/model/ladder.py)."""
    parts = ladder_cells.mlp_ladder(image_shape, tuple(m.hidden_dims), latent_sizes(m, image_shape)[::-1],
                                    m.activation, m.bottleneck, likelihood.outputs_per_pixel, **kw)
    return ladder.Ladder(**parts, prior=prior, likelihood=likelihood, merge_kind=m.ladder_merge,
                         log_var_clip=tuple(m.log_var_clip), image_shape=image_shape)


def _conv_ladder(m, image_shape, prior, likelihood, kw):
    """The ladder with convolutional cells (vae/model/ladder.py)."""
    parts = ladder_cells.conv_ladder(image_shape, tuple(m.conv_channels), m.num_layers, m.latent_channels,
                                     m.bottleneck, likelihood.outputs_per_pixel, **kw)
    return ladder.Ladder(**parts, prior=prior, likelihood=likelihood, merge_kind=m.ladder_merge,
                         log_var_clip=tuple(m.log_var_clip), image_shape=image_shape)


def _dims(values) -> str:
    return "-".join(str(v) for v in values)


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One `model.arch`: how it is built from `config.model`, how tables name it, and what it needs
    of the images."""

    title: str  # its name in tables
    build: Callable  # (model config, image shape, prior, likelihood, {kernel_init, rngs}) -> model
    describe: Callable[[dict], str]  # its widths and latents, from config.model (a dict or ConfigDict)
    # Halves H and W once per model.conv_channels entry (they must be multiples of 2^len); on CPU
    # its epochs run one compiled step per call (`vae.train.epoch.epoch_loop`).
    convolutional: bool = False
    # Whether its initial parameters drawn inside one compiled program are those drawn op by op, bit
    # for bit (`initialises_compiled`): not where a draw is scaled twice (the ladder's cells), as
    # XLA multiplies the two constants first.
    initialises_compiled: bool = True


def _mlp_widths(m) -> str:
    return f"{m['activation']} {_dims(m['hidden_dims'])}, z={m['latent_dim']}"


def _ladder_widths(m) -> str:
    sizes = _dims(m["latent_dims"]) if m.get("latent_dims") else f"{m['num_layers']} x {m['latent_dim']}"
    return f"{m['activation']} {_dims(m['hidden_dims'])}, z={sizes}"


ARCHITECTURES = {
    "mlp": Architecture("MLP", _mlp, _mlp_widths),
    "conv": Architecture("conv", _conv, lambda m: f"z={m['latent_dim']}", convolutional=True),
    "hvae": Architecture("HVAE (2 levels)", _hvae, _mlp_widths),
    "conv_hvae": Architecture(
        "ConvHVAE (2 levels)", _conv_hvae,
        lambda m: f"conv {_dims(m['conv_channels'])}, {_dims(m['hidden_dims'])}, z={m['latent_dim']}",
        convolutional=True),
    "ladder": Architecture("ladder", _ladder, _ladder_widths, initialises_compiled=False),
    "conv_ladder": Architecture(
        "conv ladder", _conv_ladder,
        lambda m: f"conv {_dims(m['conv_channels'])}, {m['num_layers']} x z of {m['latent_channels']} maps",
        convolutional=True, initialises_compiled=False),
}
ARCHS = tuple(ARCHITECTURES)
LADDER_MERGES = ladder.MERGES
LIKELIHOODS = tuple(likelihoods.LIKELIHOODS)
EIGHT_BIT_LIKELIHOODS = likelihoods.EIGHT_BIT_LIKELIHOODS
PRIORS = priors.PRIORS
DECODER_STAGES = stages.DECODER_STAGES
STAGE_HEADS_KEY = 1  # the stage heads' parameters come from fold_in(key, this): the rest of the model's
#   initial parameters are those of the same config with model.decoder_stages=1
ACTIVATIONS, KERNEL_INITS = networks.ACTIVATIONS, networks.KERNEL_INITS


def image_shape_problem(model_config, image_shape: Sequence[int]) -> str | None:
    """Why the architecture (or its decoder stages) cannot take images of this shape (None if it can)."""
    problem = stages.stages_problem(model_config.get("decoder_stages", 1), image_shape)
    if problem or not ARCHITECTURES[model_config.arch].convolutional:
        return problem
    times = len(model_config.conv_channels)
    scale = 2 ** times
    height, width, _ = image_shape
    if height % scale == 0 and width % scale == 0:
        return None
    return (f"model.arch={model_config.arch} halves the image {times} times, so height and width must be "
            f"multiples of {scale}; the images are {height}x{width}")


def build_model(model_config: ml_collections.ConfigDict, image_shape: Sequence[int], key: jax.Array,
                pixel_means=None):
    """The VAE that `model_config` describes, for images of `image_shape` (H, W, C).

    With `model.init_output_bias` and `pixel_means` (the training set's mean intensity per pixel,
    D values in [0, 1]), the decoder's output bias starts where the likelihood predicts the
    average image: a model that has learnt nothing yet already draws the mean picture (a
    convolutional decoder, whose bias is one per output channel, gets each image channel's mean).
    With `model.decoder_stages` S > 1 the likelihood decodes in S stages (`stages.StagedLikelihood`).
    """
    if model_config.arch not in ARCHITECTURES:
        raise ValueError(f"model.arch must be one of {ARCHS}, got {model_config.arch!r}")
    rngs = nnx.Rngs(params=key)
    kw = {"kernel_init": getattr(nnx.initializers, model_config.kernel_init)(), "rngs": rngs}
    prior = priors.build_prior(model_config, math.prod(image_shape), rngs)
    likelihood = likelihoods.build_likelihood(model_config.likelihood, model_config.mixture_components)
    num_stages = model_config.get("decoder_stages", 1)
    if num_stages != 1:
        head_rngs = nnx.Rngs(params=jax.random.fold_in(key, STAGE_HEADS_KEY))
        likelihood = stages.StagedLikelihood(likelihood, num_stages, image_shape, rngs=head_rngs)
    model = ARCHITECTURES[model_config.arch].build(model_config, tuple(image_shape), prior, likelihood, kw)
    set_initial_output_bias(model, model_config, pixel_means)
    return model


def set_initial_output_bias(model, model_config: ml_collections.ConfigDict, pixel_means=None) -> None:
    """With `model.init_output_bias` and `pixel_means`, sets the decoder's output bias where the
    likelihood predicts the average image (`build_model`); nothing otherwise."""
    if model_config.init_output_bias and pixel_means is not None:
        bias = model.output_bias
        bias[...] = model.likelihood.initial_output_bias(pixel_means, bias.shape, model.image_shape[-1])


def initialises_compiled(model_config: ml_collections.ConfigDict) -> bool:
    """Whether `build_model` inside one compiled program gives the parameters it gives op by op, bit
    for bit (the output bias aside, `set_initial_output_bias`). Not where XLA's CPU compiler
    rewrites the arithmetic of a draw: a draw scaled twice (`Architecture.initialises_compiled`),
    or the VampPrior's pseudo-inputs, mean + std * noise, fused into one multiply-add that rounds
    once instead of twice."""
    return ARCHITECTURES[model_config.arch].initialises_compiled and model_config.prior != "vampprior"
