"""The networks VAEs are built from: gated and plain dense layers, MLPs, Gaussian heads, the
convolutional encoder/decoder of the one-level VAE, and the four networks of a two-level HVAE
(MLP or gated-convolutional, as published by Tomczak & Welling, 2018).

Images are flat vectors x_BxD (D = H·W·C); convolutional networks reshape to H x W x C inside.
Every network is deterministic: a Gaussian head returns (mean, log-variance), a decoder the
numbers its likelihood reads, `outputs_per_pixel` per pixel, flat B x (D · outputs_per_pixel)
(`vae.model.likelihoods`); sampling lives in the models. Imports nothing of the package.
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

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
    """Two inputs, each through its own network (`a` for the first input, `b` for the second),
    concatenated, then shared hidden layers: how the published HVAE joins x with z2 in
    q(z1|x, z2), and z1 with z2 in p(x|z1, z2). (The attribute names are the parameters' names
    in every saved checkpoint, so they stay.)"""

    def __init__(self, net_a: nnx.Module, net_b: nnx.Module, joint: "MLP"):
        self.a, self.b, self.joint = net_a, net_b, joint
        self.out_dim = joint.out_dim

    def __call__(self, a: jax.Array, b: jax.Array) -> jax.Array:
        return self.join(self.a(a), b)

    def join(self, features_a: jax.Array, b: jax.Array) -> jax.Array:
        """The output from the first input's features, already computed (reused across samples of b)."""
        return self.joint(jnp.concatenate([features_a, self.b(b)], axis=-1))


class GaussianNet(nnx.Module):
    """A network followed by a Gaussian head: the inputs' conditional N(mean, diag exp(log_var))."""

    def __init__(self, body: nnx.Module, head: GaussianHead):
        self.body, self.head = body, head

    def __call__(self, *inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.head(self.body(*inputs))


class DecoderNet(nnx.Module):
    """A network followed by a linear map (or any module) to the decoder output of every pixel."""

    def __init__(self, body: nnx.Module, head: nnx.Module):
        self.body, self.head = body, head

    def __call__(self, *inputs: jax.Array) -> jax.Array:
        return self.head(self.body(*inputs))

    @property
    def output_bias(self) -> nnx.Param:
        return self.head.output_bias if hasattr(self.head, "output_bias") else self.head.bias


# --- Networks of the one-level VAE ---------------------------------------------------------------


def mlp_encoder(image_shape, hidden_dims, latent_dim, activation="relu", log_var_clip=(), *,
                kernel_init=_LECUN_NORMAL, rngs: nnx.Rngs) -> GaussianNet:
    """x (D) -> hidden layers -> the mean and log-variance of q(z|x)."""
    body = MLP(math.prod(image_shape), hidden_dims, activation, kernel_init=kernel_init, rngs=rngs)
    return GaussianNet(body, GaussianHead(body.out_dim, latent_dim, log_var_clip, kernel_init=kernel_init,
                                          rngs=rngs))


def mlp_decoder(image_shape, hidden_dims, latent_dim, activation="relu", outputs_per_pixel: int = 1, *,
                kernel_init=_LECUN_NORMAL, rngs: nnx.Rngs) -> DecoderNet:
    """z -> the encoder's hidden layers in reverse -> the decoder output of every pixel."""
    body = MLP(latent_dim, tuple(reversed(hidden_dims)), activation, kernel_init=kernel_init, rngs=rngs)
    return DecoderNet(body, nnx.Linear(body.out_dim, math.prod(image_shape) * outputs_per_pixel,
                                       kernel_init=kernel_init, rngs=rngs))


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
    2x2 neighbourhood of inputs) and trains faster on CPU, where XLA's transposed convolutions are
    slow (docs/speed.md).
    """

    def __init__(self, image_shape, channels, latent_dim, outputs_per_pixel: int = 1, *, rngs: nnx.Rngs):
        height, width, image_channels = image_shape
        out_channels = image_channels * outputs_per_pixel
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


# --- Networks of the two-level HVAE -------------------------------------------------------------


class GatedConv(nnx.Module):
    """A gated convolution: h ⊙ sigmoid(g) from one convolution to 2 x c_out channels ("SAME")."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(c_in, 2 * c_out, kernel_size=(kernel, kernel), strides=(stride, stride),
                             padding="SAME", rngs=rngs)

    def __call__(self, h: jax.Array) -> jax.Array:
        h, gate = jnp.split(self.conv(h), 2, axis=-1)
        return h * jax.nn.sigmoid(gate)


class ConvFeatures(nnx.Module):
    """Flat images -> gated convolutions -> flat features. Each stage is a stride-1 convolution with
    the stage's kernel and a stride-2 3x3 one (halving H and W); a 3x3 convolution to
    `out_channels` maps ends it (the published ConvHVAE: stages (32, 7), (64, 5), then 6 maps)."""

    def __init__(self, image_shape, channels: Sequence[int], kernels: Sequence[int], out_channels: int, *,
                 rngs: nnx.Rngs):
        self.image_shape = tuple(image_shape)
        height, width, c_in = image_shape
        layers = []
        for c_out, kernel in zip(channels, kernels):
            layers += [GatedConv(c_in, c_out, kernel, rngs=rngs), GatedConv(c_out, c_out, 3, 2, rngs=rngs)]
            c_in = c_out
        layers.append(GatedConv(c_in, out_channels, 3, rngs=rngs))
        self.layers = nnx.List(layers)
        scale = 2 ** len(channels)
        self.out_dim = (height // scale) * (width // scale) * out_channels

    def __call__(self, x_BxD: jax.Array) -> jax.Array:
        h = x_BxD.reshape(x_BxD.shape[0], *self.image_shape)
        for layer in self.layers:
            h = layer(h)
        return h.reshape(h.shape[0], -1)


class ConvRefiner(nnx.Module):
    """H·W·C features read as an image -> gated 3x3 convolutions at full resolution -> a 1x1
    convolution to the decoder output of every pixel: local pixel structure on top of a dense
    decoder."""

    def __init__(self, image_shape, channels: int, num_layers: int, outputs_per_pixel: int = 1, *,
                 rngs: nnx.Rngs):
        self.image_shape = tuple(image_shape)
        c_in = image_shape[-1]
        self.layers = nnx.List([GatedConv(c_in if i == 0 else channels, channels, 3, rngs=rngs)
                                for i in range(num_layers)])
        self.out = nnx.Conv(channels, c_in * outputs_per_pixel, kernel_size=(1, 1), rngs=rngs)

    def __call__(self, h_BxD: jax.Array) -> jax.Array:
        h = h_BxD.reshape(h_BxD.shape[0], *self.image_shape)
        for layer in self.layers:
            h = layer(h)
        return self.out(h).reshape(h_BxD.shape[0], -1)

    @property
    def output_bias(self) -> nnx.Param:
        return self.out.bias


def mlp_hvae_networks(image_shape, hidden_dims, latent_dim, activation, log_var_clip,
                      outputs_per_pixel: int = 1, *, kernel_init, rngs: nnx.Rngs) -> dict[str, nnx.Module]:
    """q(z2|x), q(z1|x,z2), p(z1|z2), p(x|z1,z2) of the published HVAE: x and z2 (or z1 and z2) each
    through a hidden layer, concatenated, then the remaining hidden layers."""
    d, hidden = math.prod(image_shape), tuple(hidden_dims)
    kw = {"kernel_init": kernel_init, "rngs": rngs}

    def joined(d_a, d_b):
        return Branches(hidden_layer(d_a, hidden[0], activation, **kw),
                        hidden_layer(d_b, hidden[0], activation, **kw),
                        MLP(2 * hidden[0], hidden[1:], activation, **kw))

    def gaussian(body):
        return GaussianNet(body, GaussianHead(body.out_dim, latent_dim, log_var_clip, **kw))

    p_x_body = joined(latent_dim, latent_dim)
    return {"q_z2": mlp_encoder(image_shape, hidden, latent_dim, activation, log_var_clip, **kw),
            "q_z1": gaussian(joined(d, latent_dim)),
            "p_z1": gaussian(MLP(latent_dim, hidden, activation, **kw)),
            "p_x": DecoderNet(p_x_body, nnx.Linear(p_x_body.out_dim, d * outputs_per_pixel, **kw))}


def conv_hvae_networks(image_shape, hidden_dims, latent_dim, conv_channels, log_var_clip,
                       outputs_per_pixel: int = 1, *, kernel_init, rngs: nnx.Rngs) -> dict[str, nnx.Module]:
    """The published ConvHVAE (Tomczak & Welling, 2018): gated convolutions read x in q(z2|x) and
    q(z1|x, z2); p(x|z1, z2) is dense up to one value per pixel, then gated convolutions at full
    resolution. Not autoregressive. Dense widths from `hidden_dims`, conv widths `conv_channels`."""
    d, hidden = math.prod(image_shape), tuple(hidden_dims)
    kw = {"kernel_init": kernel_init, "rngs": rngs}
    big_kernels, small_kernels = (7, 5, 5, 5)[: len(conv_channels)], (3,) * len(conv_channels)

    def gaussian(body):
        return GaussianNet(body, GaussianHead(body.out_dim, latent_dim, log_var_clip, **kw))

    x_features = ConvFeatures(image_shape, conv_channels, small_kernels, 6, rngs=rngs)
    q_z1_body = Branches(x_features, GatedDense(latent_dim, x_features.out_dim, **kw),
                         MLP(2 * x_features.out_dim, hidden[-1:], "gated", **kw))
    p_x_body = Branches(GatedDense(latent_dim, hidden[0], **kw), GatedDense(latent_dim, hidden[0], **kw),
                        MLP(2 * hidden[0], (d,), "gated", **kw))
    return {"q_z2": gaussian(ConvFeatures(image_shape, conv_channels, big_kernels, 6, rngs=rngs)),
            "q_z1": gaussian(q_z1_body),
            "p_z1": gaussian(MLP(latent_dim, hidden, "gated", **kw)),
            "p_x": DecoderNet(p_x_body, ConvRefiner(image_shape, conv_channels[-1], 4, outputs_per_pixel,
                                                    rngs=rngs))}
