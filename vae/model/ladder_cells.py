"""The ladder's networks (`vae.model.ladder`): two families of residual cells, gated dense (`mlp_ladder`,
fast on a CPU, for 28x28 binarised images) and convolutional (`conv_ladder`, for 8-bit and colour
images, and for a GPU), each as the three parts a `Ladder` needs:

- a bottom-up path: x -> one feature array per latent layer, top first (what q reads of x);
- one block per latent layer, top first: `enter` (the state entering the layer: the conv ladder
  upsamples where a finer resolution starts), `prior` (p(z | state)'s mean and log-variance and an
  update of the state; none for the top layer, whose p is the model's prior), `posterior` (the two
  numbers per latent unit that `ladder.merge` turns into q(z | x, upper layers) with p) and `absorb`
  (the state after z: z projected into it, then a residual cell);
- an output network: the final state -> the decoder output of every pixel, with `output_bias`.

Latents are flat vectors (B x Z) in every interface; the conv blocks hold each layer's latent as a
map h x w x c inside. Initialisation (so that a 16-layer model trains): the last layer of every
residual branch and every latent's projection into the state are scaled by 1/sqrt(L) (VDVAE), so
the state's variance does not grow with depth; the prior heads' and the posterior heads' last layers
start at zero, so each p starts as N(0, I) and each q as its p (no KL, no noise from x at the start).

Imports nothing of the package.
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vae.model import networks

_ZEROS = nnx.initializers.zeros


def _scaled(init, scale: float):
    """An initialiser: `init`'s draw times `scale`."""
    return lambda key, shape, dtype=jnp.float32: scale * init(key, shape, dtype)


def inner_width(width: int, bottleneck: float) -> int:
    """The hidden width of a cell or head: `bottleneck` times the state's width, at least 1."""
    return max(1, round(width * bottleneck))


# --- Gated dense cells ------------------------------------------------------------------------------


class DenseCell(nnx.Module):
    """h + W_out · a(W_in · h): one hidden layer (gated by default) and a linear map back, scaled."""

    def __init__(self, width: int, inner: int, activation: str, scale: float, *, kernel_init, rngs):
        self.hidden = networks.hidden_layer(width, inner, activation, kernel_init=kernel_init, rngs=rngs)
        self.out = nnx.Linear(inner, width, kernel_init=_scaled(kernel_init, scale), rngs=rngs)

    def __call__(self, h):
        return h + self.out(self.hidden(h))


class DenseHead(nnx.Module):
    """A hidden layer, then a linear map that starts at zero: `out_dim` numbers."""

    def __init__(self, d_in: int, inner: int, out_dim: int, activation: str, *, kernel_init, rngs):
        self.hidden = networks.hidden_layer(d_in, inner, activation, kernel_init=kernel_init, rngs=rngs)
        self.out = nnx.Linear(inner, out_dim, kernel_init=_ZEROS, rngs=rngs)

    def __call__(self, h):
        return self.out(self.hidden(h))


class DenseBlock(nnx.Module):
    """One latent layer of the dense ladder; the state and the features are `width` units."""

    def __init__(self, width: int, inner: int, latent_dim: int, activation: str, scale: float, top: bool, *,
                 kernel_init, rngs):
        self.latent_dim = latent_dim
        self.width = width
        kw = {"kernel_init": kernel_init, "rngs": rngs}
        self.prior_head = None if top else DenseHead(width, inner, 2 * latent_dim + width, activation, **kw)
        self.posterior_head = DenseHead(2 * width, inner, 2 * latent_dim, activation, **kw)
        self.z_proj = nnx.Linear(latent_dim, width, kernel_init=_scaled(kernel_init, scale), rngs=rngs)
        self.cell = DenseCell(width, inner, activation, scale, **kw)

    def enter(self, h):
        return h

    def prior(self, h):
        out = self.prior_head(h)
        z = self.latent_dim
        return out[..., :z], out[..., z:2 * z], out[..., 2 * z:]

    def posterior(self, h, features):
        return jnp.split(self.posterior_head(jnp.concatenate([h, features], axis=-1)), 2, axis=-1)

    def absorb(self, h, z_BxZ):
        return self.cell(h + self.z_proj(z_BxZ))


class DenseBottomUp(nnx.Module):
    """x -> the hidden layers of `hidden_dims` -> one residual cell per latent layer, bottom first;
    the features after cell l are what q(z_l | ...) reads (the deepest ones feed the top layer)."""

    def __init__(self, num_pixels: int, hidden_dims: Sequence[int], num_layers: int, inner: int,
                 activation: str, scale: float, *, kernel_init, rngs):
        self.stem = networks.MLP(num_pixels, hidden_dims, activation, kernel_init=kernel_init, rngs=rngs)
        width = self.stem.out_dim
        self.cells = nnx.List([DenseCell(width, inner, activation, scale, kernel_init=kernel_init, rngs=rngs)
                               for _ in range(num_layers)])

    def __call__(self, x_BxD) -> list:
        h, features = self.stem(x_BxD), []
        for cell in self.cells:
            h = cell(h)
            features.append(h)
        return features[::-1]


class DenseOutput(nnx.Module):
    """The state -> the hidden layers of `hidden_dims` in reverse (all but the state's own) -> a
    linear map to the decoder output of every pixel."""

    def __init__(self, num_outputs: int, hidden_dims: Sequence[int], activation: str, *, kernel_init, rngs):
        hidden = tuple(reversed(hidden_dims))
        self.body = networks.MLP(hidden[0], hidden[1:], activation, kernel_init=kernel_init, rngs=rngs)
        self.head = nnx.Linear(self.body.out_dim, num_outputs, kernel_init=kernel_init, rngs=rngs)
        # The state is a residual stream: one hidden layer before the linear output even when
        # hidden_dims has a single entry.
        self.first = networks.hidden_layer(hidden[0], hidden[0], activation, kernel_init=kernel_init,
                                           rngs=rngs)

    def __call__(self, h):
        return self.head(self.body(self.first(h)))

    @property
    def output_bias(self) -> nnx.Param:
        return self.head.bias


def mlp_ladder(image_shape, hidden_dims: Sequence[int], latent_dims_top_first: Sequence[int], activation: str,
               bottleneck: float, outputs_per_pixel: int, *, kernel_init, rngs) -> dict:
    """The dense ladder's parts: its state and features are hidden_dims[-1] units wide."""
    num_layers, width = len(latent_dims_top_first), hidden_dims[-1]
    inner, scale = inner_width(width, bottleneck), 1.0 / math.sqrt(len(latent_dims_top_first))
    kw = {"kernel_init": kernel_init, "rngs": rngs}
    num_pixels = math.prod(image_shape)
    return {
        "bottom_up": DenseBottomUp(num_pixels, hidden_dims, num_layers, inner, activation, scale, **kw),
        "blocks": [DenseBlock(width, inner, z, activation, scale, top=i == 0, **kw)
                   for i, z in enumerate(latent_dims_top_first)],
        "output": DenseOutput(num_pixels * outputs_per_pixel, hidden_dims, activation, **kw),
        "initial_state": jnp.zeros((width,)),
    }


# --- Convolutional cells ----------------------------------------------------------------------------


def _conv(c_in, c_out, kernel, *, kernel_init, rngs, stride=1):
    return nnx.Conv(c_in, c_out, kernel_size=(kernel, kernel), strides=(stride, stride), padding="SAME",
                    kernel_init=kernel_init, rngs=rngs)


class ConvBranch(nnx.Module):
    """GELU, 1x1 to `inner` channels, GELU, 3x3, GELU, 1x1 to `c_out` (VDVAE's bottleneck, one 3x3
    fewer); the last convolution's kernel from `last_init`."""

    def __init__(self, c_in: int, inner: int, c_out: int, last_init, *, kernel_init, rngs):
        self.reduce = _conv(c_in, inner, 1, kernel_init=kernel_init, rngs=rngs)
        self.mix = _conv(inner, inner, 3, kernel_init=kernel_init, rngs=rngs)
        self.expand = _conv(inner, c_out, 1, kernel_init=last_init, rngs=rngs)

    def __call__(self, h):
        h = self.reduce(jax.nn.gelu(h))
        h = self.mix(jax.nn.gelu(h))
        return self.expand(jax.nn.gelu(h))


class ConvCell(nnx.Module):
    """h + branch(h), the branch's last convolution scaled."""

    def __init__(self, channels: int, inner: int, scale: float, *, kernel_init, rngs):
        self.branch = ConvBranch(channels, inner, channels, _scaled(kernel_init, scale),
                                 kernel_init=kernel_init, rngs=rngs)

    def __call__(self, h):
        return h + self.branch(h)


class Upsample(nnx.Module):
    """h x w x c_in -> 2h x 2w x c_out: a 3x3 convolution to 4 c_out channels, then depth-to-space."""

    def __init__(self, c_in: int, c_out: int, *, kernel_init, rngs):
        self.conv = _conv(c_in, 4 * c_out, 3, kernel_init=kernel_init, rngs=rngs)

    def __call__(self, h):
        return networks.depth_to_space(self.conv(h))


class ConvBlock(nnx.Module):
    """One latent layer of the conv ladder: z is a map of `map_shape` (h, w, latent channels) at the
    resolution of its stage, flat in the interface."""

    def __init__(self, channels: int, inner: int, map_shape: Sequence[int], scale: float, top: bool,
                 upsample_from: int | None, *, kernel_init, rngs):
        self.map_shape = tuple(map_shape)
        self.latent_dim = math.prod(map_shape)
        c_z = map_shape[-1]
        kw = {"kernel_init": kernel_init, "rngs": rngs}
        self.upsample = None if upsample_from is None else Upsample(upsample_from, channels, **kw)
        self.prior_head = None if top else ConvBranch(channels, inner, 2 * c_z + channels, _ZEROS, **kw)
        self.posterior_head = ConvBranch(2 * channels, inner, 2 * c_z, _ZEROS, **kw)
        self.z_proj = _conv(c_z, channels, 1, kernel_init=_scaled(kernel_init, scale), rngs=rngs)
        self.cell = ConvCell(channels, inner, scale, **kw)

    def _flat(self, maps):
        return maps.reshape(maps.shape[0], -1)

    def enter(self, h):
        return h if self.upsample is None else self.upsample(h)

    def prior(self, h):
        out = self.prior_head(h)
        c_z = self.map_shape[-1]
        return self._flat(out[..., :c_z]), self._flat(out[..., c_z:2 * c_z]), out[..., 2 * c_z:]

    def posterior(self, h, features):
        out = self.posterior_head(jnp.concatenate([h, features], axis=-1))
        c_z = self.map_shape[-1]
        return self._flat(out[..., :c_z]), self._flat(out[..., c_z:])

    def absorb(self, h, z_BxZ):
        return self.cell(h + self.z_proj(z_BxZ.reshape(z_BxZ.shape[0], *self.map_shape)))


def stage_layers(num_layers: int, num_stages: int) -> list[int]:
    """Latent layers per resolution, finest first: an even split, the remainder to the coarsest."""
    counts = [num_layers // num_stages] * num_stages
    for s in range(num_layers % num_stages):
        counts[num_stages - 1 - s] += 1
    return counts


def conv_latent_shapes(image_shape, conv_channels: Sequence[int], num_layers: int,
                       latent_channels: int) -> list[tuple[int, int, int]]:
    """Each latent layer's map (h, w, c), bottom first: stage s (s = 1 ... S) halves H and W s times."""
    height, width, _ = image_shape
    shapes = []
    for s, count in enumerate(stage_layers(num_layers, len(conv_channels)), start=1):
        shapes += [(height >> s, width >> s, latent_channels)] * count
    return shapes


class ConvBottomUp(nnx.Module):
    """x -> a 3x3 convolution at full resolution -> per stage (finest first) a stride-2 3x3 convolution
    to its channels, then one residual cell per latent layer of the stage; each layer's features are
    the maps after its cell."""

    def __init__(self, image_shape, conv_channels: Sequence[int], counts: Sequence[int], bottleneck: float,
                 scale: float, *, kernel_init, rngs):
        self.image_shape = tuple(image_shape)
        kw = {"kernel_init": kernel_init, "rngs": rngs}
        chans = (conv_channels[0], *conv_channels)
        self.stem = _conv(image_shape[-1], chans[0], 3, **kw)
        self.downs = nnx.List([_conv(c_in, c_out, 3, stride=2, **kw)
                               for c_in, c_out in zip(chans[:-1], chans[1:])])
        self.cells = nnx.List([
            nnx.List([ConvCell(c, inner_width(c, bottleneck), scale, **kw) for _ in range(n)])
            for c, n in zip(conv_channels, counts)])

    def __call__(self, x_BxD) -> list:
        h = self.stem(x_BxD.reshape(x_BxD.shape[0], *self.image_shape) * 2.0 - 1.0)
        features = []
        for down, cells in zip(self.downs, self.cells):
            h = down(h)
            for cell in cells:
                h = cell(h)
                features.append(h)
        return features[::-1]


class ConvOutput(nnx.Module):
    """The finest stage's state -> upsampled to full resolution -> a residual cell -> GELU and a 1x1
    convolution to the decoder output of every sub-pixel (one bias per output channel)."""

    def __init__(self, channels: int, image_channels: int, outputs_per_pixel: int, bottleneck: float,
                 scale: float, *, kernel_init, rngs):
        kw = {"kernel_init": kernel_init, "rngs": rngs}
        self.upsample = Upsample(channels, channels, **kw)
        self.cell = ConvCell(channels, inner_width(channels, bottleneck), scale, **kw)
        self.out = _conv(channels, image_channels * outputs_per_pixel, 1, **kw)

    def __call__(self, h):
        h = self.out(jax.nn.gelu(self.cell(self.upsample(h))))
        return h.reshape(h.shape[0], -1)

    @property
    def output_bias(self) -> nnx.Param:
        return self.out.bias


def conv_ladder(image_shape, conv_channels: Sequence[int], num_layers: int, latent_channels: int,
                bottleneck: float, outputs_per_pixel: int, *, kernel_init, rngs) -> dict:
    """The conv ladder's parts: stage s works at H/2^s x W/2^s with conv_channels[s - 1] channels; its
    latent layers (`stage_layers`) are maps of `latent_channels` channels at that resolution."""
    counts = stage_layers(num_layers, len(conv_channels))
    scale = 1.0 / math.sqrt(num_layers)
    kw = {"kernel_init": kernel_init, "rngs": rngs}
    height, width, image_channels = image_shape
    blocks = []
    for s in reversed(range(len(conv_channels))):  # coarsest stage first
        channels = conv_channels[s]
        shape = (height >> (s + 1), width >> (s + 1), latent_channels)
        for j in range(counts[s]):
            upsample_from = conv_channels[s + 1] if j == 0 and blocks else None
            blocks.append(ConvBlock(channels, inner_width(channels, bottleneck), shape, scale, not blocks,
                                    upsample_from, **kw))
    coarsest = len(conv_channels)
    return {
        "bottom_up": ConvBottomUp(image_shape, conv_channels, counts, bottleneck, scale, **kw),
        "blocks": blocks,
        "output": ConvOutput(conv_channels[0], image_channels, outputs_per_pixel, bottleneck, scale, **kw),
        "initial_state": jnp.zeros((height >> coarsest, width >> coarsest, conv_channels[-1])),
    }
