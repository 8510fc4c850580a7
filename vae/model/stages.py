"""A decoder that sees its neighbours: p(x|z) = Π_s p(x_s | x_<s, z) over S interleaved sub-grids.

A factorised likelihood pays for every pixel's local texture separately. `StagedLikelihood` wraps
any likelihood of `vae.model.likelihoods` and splits the image into its four 2x2 sub-grids
(space-to-depth; sub-grid k = 2·(row mod 2) + (column mod 2)), decoded in S stages:

- S = 1: every sub-grid at once (the factorised likelihood itself; `build_model` does not wrap it);
- S = 2: the checkerboard (He et al., 2021): sub-grids 0 and 3, then 1 and 2;
- S = 4: one sub-grid per stage (coarse to fine, as L3C and LC-FDNet decode sub-images).

Stage 1 takes the decoder's output as it is (it sees only z). Stage s > 1 has a small head of its
own, on the half-resolution grid of 2x2 blocks: it reads each block's decoder output (a dense
layer) and the pixels of the earlier stages in the 3x3 blocks around it (a 3x3 convolution of the
few pixel channels, written as a dense layer over 3x3 patches, which compiles to plain matmuls
inside a scanned epoch), mixes them in a residual dense layer of HEAD_WIDTH units, and adds what it
writes to the decoder's output at its own sub-grid's pixels; the base likelihood reads the sum.
Each head's last layer starts at zero, so an untrained staged model is the factorised one.

Training is teacher-forced: `log_prob` runs every head once on the true pixels of the earlier
stages, so the ELBO is exact for the staged p(x|z) in one pass. `sample` and `mean` decode stage by
stage: the decoder once (the caller's output), then each head on what the stages before it drew
(or, for `mean`, on their means: the picture of a code is each stage's mean given the earlier
stages' means). The interface is the likelihood's, so every architecture, the IWAE bound and the
pictures use it unchanged. Lossless coding (vae.coding) codes each stage's pixels with the base
likelihood's code at the teacher-forced output, and decodes stage by stage.

Imports nothing of the package.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# The sub-grids each stage decodes, per S; sub-grid k = 2·(row mod 2) + (column mod 2).
STAGE_GROUPS = {1: ((0, 1, 2, 3),), 2: ((0, 3), (1, 2)), 4: ((0,), (1,), (2,), (3,))}
DECODER_STAGES = tuple(STAGE_GROUPS)
HEAD_WIDTH = 16  # the channels of a stage head's hidden layers


def stages_problem(stages, image_shape) -> str | None:
    """Why `model.decoder_stages` cannot decode images of `image_shape` (H, W, C) (None if it can)."""
    if not isinstance(stages, int) or isinstance(stages, bool) or stages not in DECODER_STAGES:
        return f"model.decoder_stages must be one of {DECODER_STAGES}, got {stages!r}"
    height, width = image_shape[0], image_shape[1]
    if stages > 1 and (height % 2 or width % 2):
        return (f"model.decoder_stages={stages} splits the image into its 2x2 sub-grids, so height and width "
                f"must be even; the images are {height}x{width}: use model.decoder_stages=1")
    return None


def stage_of_subpixel(stages: int, image_shape) -> np.ndarray:
    """The stage (0 .. S−1) of every sub-pixel, D = H·W·C ints in the flat image's order."""
    height, width, channels = image_shape
    stage_of_grid = np.zeros(4, np.int32)
    for stage, grids in enumerate(STAGE_GROUPS[stages]):
        stage_of_grid[list(grids)] = stage
    grid_HxW = 2 * (np.arange(height)[:, None] % 2) + np.arange(width)[None, :] % 2
    return np.repeat(stage_of_grid[grid_HxW][..., None], channels, axis=-1).reshape(-1)


def space_to_depth(x_NxHxWxF: jax.Array) -> jax.Array:
    """N x H/2 x W/2 x 4F: each 2x2 block's four positions (sub-grid-major) on the channel axis."""
    n, h, w, f = x_NxHxWxF.shape
    blocks = x_NxHxWxF.reshape(n, h // 2, 2, w // 2, 2, f).transpose(0, 1, 3, 2, 4, 5)
    return blocks.reshape(n, h // 2, w // 2, 4 * f)


def depth_to_space(x_Nxhxwx4F: jax.Array) -> jax.Array:
    """The inverse of `space_to_depth`."""
    n, h, w, f4 = x_Nxhxwx4F.shape
    blocks = x_Nxhxwx4F.reshape(n, h, w, 2, 2, f4 // 4).transpose(0, 1, 3, 2, 4, 5)
    return blocks.reshape(n, 2 * h, 2 * w, f4 // 4)


def patches_3x3(x_NxHxWxF: jax.Array) -> jax.Array:
    """N x H x W x 9F: each position's 3x3 neighbourhood (zero-padded), so that a dense layer over
    it is a 3x3 convolution ("same" padding)."""
    h, w = x_NxHxWxF.shape[1:3]
    padded = jnp.pad(x_NxHxWxF, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return jnp.concatenate([padded[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=-1)


class StageHead(nnx.Module):
    """One stage's head on the grid of 2x2 blocks: a dense layer of the block's decoder output plus a
    3x3 convolution of the earlier stages' pixels around it, a residual dense layer, and a dense
    layer to a change of the decoder's output of every position of the block (zero at the start)."""

    def __init__(self, outputs_per_block: int, pixels_per_block: int, width: int, *, rngs: nnx.Rngs):
        self.read = nnx.Linear(outputs_per_block, width, rngs=rngs)
        self.see = nnx.Linear(9 * pixels_per_block, width, use_bias=False, rngs=rngs)
        self.mix = nnx.Linear(width, width, rngs=rngs)
        zero = nnx.initializers.zeros_init()
        self.write = nnx.Linear(width, outputs_per_block, kernel_init=zero, rngs=rngs)

    def __call__(self, out_Nxhxwx4Q: jax.Array, context_Nxhxwx4C: jax.Array) -> jax.Array:
        h = jax.nn.silu(self.read(out_Nxhxwx4Q) + self.see(patches_3x3(context_Nxhxwx4C)))
        h = h + jax.nn.silu(self.mix(h))
        return self.write(h)


class StagedLikelihood(nnx.Module):
    """`base`'s likelihood decoded in `stages` stages (see the module): the interface of a
    likelihood (`log_prob`, `log_prob_grouped`, `mean`, `sample`, `initial_output_bias`,
    `outputs_per_pixel`) over the same decoder output, plus `parameters` (the teacher-forced
    decoder output each pixel is scored with) and `stage_log_probs` (one term per stage)."""

    @property
    def coding_family(self) -> str | None:
        """The base likelihood's: lossless coding codes each stage's pixels with the base's code, at
        the output `parameters` gives (vae.coding runs the heads stage by stage when decoding)."""
        return self.base.coding_family

    def __init__(self, base: nnx.Module, stages: int, image_shape, *, rngs: nnx.Rngs):
        problem = stages_problem(stages, image_shape)
        if problem:
            raise ValueError(problem)
        self.base = base
        self.stages = stages
        self.image_shape = tuple(image_shape)
        self.outputs_per_pixel = base.outputs_per_pixel
        channels = self.image_shape[-1]
        self.heads = nnx.List([StageHead(4 * channels * self.outputs_per_pixel, 4 * channels, HEAD_WIDTH,
                                         rngs=rngs) for _ in range(stages - 1)])

    # --- One stage ------------------------------------------------------------------------------

    def _stage_masks(self):
        """(stage of each sub-pixel, D; the same per decoder output, P), as constants."""
        stage_D = stage_of_subpixel(self.stages, self.image_shape)
        return jnp.asarray(stage_D), jnp.asarray(np.repeat(stage_D, self.outputs_per_pixel))

    def _head_output(self, stage: int, out_NxP: jax.Array, context_NxD: jax.Array) -> jax.Array:
        """Stage `stage`'s (≥ 1) change of the decoder output, N x P (every position; the caller
        keeps its own sub-grid's), from the output and the pixels of the earlier stages."""
        h, w, c = self.image_shape
        n = out_NxP.shape[0]
        out = space_to_depth(out_NxP.reshape(n, h, w, c * self.outputs_per_pixel))
        context = space_to_depth(context_NxD.reshape(n, h, w, c))
        return depth_to_space(self.heads[stage - 1](out, context)).reshape(n, -1)

    def stage_output(self, stage: int, out_NxP: jax.Array, x_NxD: jax.Array) -> jax.Array:
        """The decoder output stage `stage` scores its pixels with, given pixels x (only those of
        the earlier stages are read): every position's, of which the stage's own pixels count."""
        if stage == 0:
            return out_NxP
        stage_D, _ = self._stage_masks()
        context = jnp.where(stage_D < stage, x_NxD, 0.0)
        return out_NxP + self._head_output(stage, out_NxP, context)

    @staticmethod
    def _rows(out_BxP: jax.Array, x_BxD: jax.Array):
        """(out N x P, x N x D) with the leading axes joined, x broadcast to out's rows."""
        lead = out_BxP.shape[:-1]
        x = jnp.broadcast_to(x_BxD, lead + x_BxD.shape[-1:]).astype(out_BxP.dtype)
        return out_BxP.reshape(math.prod(lead), -1), x.reshape(math.prod(lead), -1)

    # --- Training and evaluation: teacher forcing -----------------------------------------------

    def parameters(self, out_BxP: jax.Array, x_BxD: jax.Array) -> jax.Array:
        """The decoder output every pixel is scored with, teacher-forced: each stage's pixels get
        their head's change computed from the true pixels x of the earlier stages. Same shape as
        `out_BxP` (x broadcasts against its leading axes)."""
        out, x = self._rows(out_BxP, x_BxD)
        _, stage_P = self._stage_masks()
        params = out
        for stage in range(1, self.stages):
            params = jnp.where(stage_P == stage, self.stage_output(stage, out, x), params)
        return params.reshape(out_BxP.shape)

    def log_prob(self, out_BxP: jax.Array, x_BxD: jax.Array) -> jax.Array:
        """log p(x|z) = Σ_s log p(x_s | x_<s, z), one value per image (nats)."""
        return self.base.log_prob(self.parameters(out_BxP, x_BxD), x_BxD)

    def log_prob_grouped(self, out_BxP: jax.Array, x_BxD: jax.Array) -> jax.Array:
        """`log_prob` through the base likelihood's fast form (the IWAE loop)."""
        return self.base.log_prob_grouped(self.parameters(out_BxP, x_BxD), x_BxD)

    def stage_log_probs(self, out_BxP: jax.Array, x_BxD: jax.Array) -> jax.Array:
        """log p(x_s | x_<s, z) of each stage, ... x S, each stage computed on its own (its head, then
        the base likelihood on its sub-pixels alone): what `log_prob` sums in one pass."""
        out, x = self._rows(out_BxP, x_BxD)
        stage_D = stage_of_subpixel(self.stages, self.image_shape)
        k = self.outputs_per_pixel
        terms = []
        for stage in range(self.stages):
            pixels = np.flatnonzero(stage_D == stage)
            outputs = (pixels[:, None] * k + np.arange(k)[None, :]).reshape(-1)
            params = self.stage_output(stage, out, x)
            terms.append(self.base.log_prob(params[:, outputs], x[:, pixels]))
        return jnp.stack(terms, axis=-1).reshape(*out_BxP.shape[:-1], self.stages)

    # --- Pictures: stage by stage ---------------------------------------------------------------

    def _decode(self, out_BxP: jax.Array, draw) -> jax.Array:
        """Pixels decoded stage by stage: stage s's are draw(s, its decoder output) given those of
        the stages before."""
        lead = out_BxP.shape[:-1]
        out = out_BxP.reshape(math.prod(lead), -1)
        stage_D, _ = self._stage_masks()
        x = jnp.zeros((out.shape[0], stage_D.shape[0]), out.dtype)
        for stage in range(self.stages):
            x = jnp.where(stage_D == stage, draw(stage, self.stage_output(stage, out, x)), x)
        return x.reshape(*lead, -1)

    def mean(self, out_BxP: jax.Array) -> jax.Array:
        """The picture of a decoder output: each stage's mean (the base likelihood's `mean`) given
        the means of the stages before it."""
        return self._decode(out_BxP, lambda stage, params: self.base.mean(params))

    def sample(self, key: jax.Array, out_BxP: jax.Array) -> jax.Array:
        """A draw x ~ p(x|z), stage by stage: stage s draws with the s-th of S keys split from `key`,
        given the pixels the stages before it drew."""
        keys = jax.random.split(key, self.stages)
        return self._decode(out_BxP, lambda stage, params: self.base.sample(keys[stage], params))

    def initial_output_bias(self, pixel_means_D: jax.Array, shape: tuple[int, ...],
                            channels: int = 1) -> jax.Array:
        """The base likelihood's: an untrained staged model is the factorised one."""
        return self.base.initial_output_bias(pixel_means_D, shape, channels)
