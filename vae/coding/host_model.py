"""The model's functions the coder reads, computed so that decoding sees exactly the numbers
encoding saw.

Bits-back decoding recomputes every probability from what it has decoded so far: q(z|x) from
the decoded images, p(x|z) from the decoded latents. One bit of difference in one probability
and the rest of the stream decodes to garbage. So:

- the model runs in float64 (`jax.enable_x64` around every call), on the host CPU whatever
  accelerator the process has, with the parameters cast to float64 once;
- on one of two batch shapes: a call of one row (the first image) runs as one row, any other is
  padded to `block_size` rows, the padding rows zero on both sides, so a block of 3 images runs
  the same program as a block of 100, and the first image does not pay for a whole block;
- the inputs are exact: images are 0/1 (or 0..255) and latents integer bin indices times the
  bin width, the same float64 numbers on both sides;
- what the coder reads of p(x|z) is integers (`fixed_point`): the likelihood's float64
  parameters rounded to coarse grids by one compiled program (`pixel_parameters`), which both
  the encoder and the decoder call; everything after it is integer arithmetic. From the decoder
  output that program gives, the encoder reads each rounded value's margin to its rounding
  boundary, and codes no block where a margin is below `fixed_point.GUARD_STEPS`
  (`bbans.VARIANTS`), so another CPU, thread count or vector width, whose float64 outputs differ
  in the last bits, gives the same integers (a staged decoder's stages are the one exception to
  "one program": the encoder rounds every stage's parameters in one teacher-forced program, the
  decoder each stage's in a program of that stage's head alone, and the guard band covers the
  last bits in which the two may differ, as it covers two machines). q(z|x)
  and the priors below the top layer are rounded likewise where they are coded (`latent_code.steps`).
A file that still meets a larger difference fails its checksum (the stack's bottom word) or meets
a symbol the coder cannot code, in one line (`codec.decode`).
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vae.coding import fixed_point, pixel_code
from vae.model import stages
from vae.model.hvae import HierarchicalVAE
from vae.model.ladder import Ladder
from vae.model.stages import StagedLikelihood


@dataclasses.dataclass(frozen=True)
class HostModel:
    """A model's coding functions on host arrays (float64), each call of more than one row padded
    to `block_size` rows.

    The latents are layers from the top: one for the VAE (z), two for the HVAE (z2, then z1), L for
    the ladder (z_L, ..., z_1).
    Every function takes the upper layers' latents (b x Z each, top first) as they were coded."""

    num_layers: int
    latent_dim: int  # of the top layer
    num_pixels: int
    block_size: int
    # (layer, symbols_bxD, upper latents) -> q(z_layer | x, upper)'s (mean, std), b x Z each; the
    # images as their symbols (uint8: 0/1, or the levels 0..255; float64 for an image between
    # them, such as `pixel_mean`'s), the model input made inside
    posterior: Callable[[int, np.ndarray, list], tuple[np.ndarray, np.ndarray]]
    # (layer >= 1, upper latents) -> p(z_layer | upper)'s (mean, std); the top layer's prior is N(0, I)
    conditional_prior: Callable[[int, list], tuple[np.ndarray, np.ndarray]]
    family: str  # the likelihood's coding family (`fixed_point.ROUNDING`)
    # (every layer's latents, the grids' offset in steps) -> p(x | z) as the coder reads it, for
    # both the encoder and the decoder: one compiled program (`PixelParameters`)
    pixel_parameters: Callable[[list, float], "PixelParameters"]
    # (PixelParameters) -> where decoding p(x | z) starts: (its fixed-point parameters, the first
    # round's probabilities, the search's state), arrays over the sub-pixels of the padded call
    # (padding rows included: 1 · D or block_size · D), on the CPU: integer arithmetic only
    pixel_search: Callable[["PixelParameters"], tuple]
    # (PixelParameters, symbols_bxD, the sub-pixels to count (b x D bool) or None for all) -> what
    # encoding pushes and checks: (every round's
    # probabilities of the b · D symbols' parts (`fixed_point.level_probabilities`), their bits
    # under the counts per image (b), log p(x | z) under the float64 model per image (b): the
    # images' likelihood, each image's smallest margin of the values rounded (b, in steps))
    pixel_probabilities: Callable[["PixelParameters", np.ndarray], tuple]
    # (every layer's latents) -> E[x | z] in the symbols' units (P(on), or the mean level), b x D
    # float64: an image `posterior` takes, for the first image's plan (`first_image.plan`)
    pixel_mean: Callable[[list], np.ndarray]
    # The size of each layer, top first, where they differ (a ladder's may); () where every layer
    # has latent_dim units. `layer_sizes` reads it.
    latent_dims: tuple[int, ...] = ()
    # A decoder of S > 1 stages (`vae.model.stages`): the stage of each sub-pixel (D ints, 0 .. S−1;
    # None for a factorised decoder), and (PixelParameters of the latents, symbols_bxD) -> the
    # PixelParameters every sub-pixel is coded with, each stage's from the symbols of the stages
    # before it (the others are not read). `pixel_parameters` alone gives the first stage's.
    sub_pixel_stages: np.ndarray | None = None
    stage_parameters: Callable[["PixelParameters", np.ndarray], "PixelParameters"] | None = None
    # (PixelParameters of the latents, symbols_bxD, stage, its sub-pixels' flat indices in an image)
    # -> `pixel_search` over those sub-pixels of every row, at the output of that stage's head alone
    # on the symbols of the stages before it: what decoding runs once a stage
    stage_search: Callable[["PixelParameters", np.ndarray, int, np.ndarray], tuple] | None = None

    @property
    def num_stages(self) -> int:
        return 1 if self.sub_pixel_stages is None else int(self.sub_pixel_stages.max()) + 1

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """The size of each layer, top first."""
        return tuple(self.latent_dims) or (self.latent_dim,) * self.num_layers

    def warm_up(self) -> None:
        """Compiles every function (the first call of each shape and dtype compiles), for one row
        and for a block: the posterior of symbols and of a float64 image (`pixel_mean`'s, which
        the first image's plan reads)."""
        for rows in sorted({1, self.block_size}):
            symbols = np.zeros((rows, self.num_pixels), np.uint8)
            zs = [np.zeros((rows, size)) for size in self.layer_sizes]
            mean = self.pixel_mean(zs)
            for layer in range(self.num_layers):
                self.posterior(layer, symbols, zs[:layer])
                self.posterior(layer, mean, zs[:layer])
                if layer:
                    self.conditional_prior(layer, zs[:layer])
            parameters = self.pixel_parameters(zs, 0.0)
            self.pixel_search(parameters)
            if self.stage_parameters is not None:
                parameters = self.stage_parameters(parameters, symbols)
            self.pixel_probabilities(parameters, symbols)


@dataclasses.dataclass(frozen=True)
class PixelParameters:
    """p(x | z) of a padded block as the coder reads it, from `HostModel.pixel_parameters` (arrays
    on the CPU)."""

    integers: tuple  # the fixed-point parameters (`fixed_point.INTEGERS`)
    output: object  # the decoder's float64 output, for the encoder's margins and figures only
    offset: float  # the grids' offset, in steps


def _float64(leaf):
    array = np.asarray(leaf)
    return array.astype(np.float64) if np.issubdtype(array.dtype, np.floating) else array


def _gaussian(mean_and_log_var):
    mean, log_var = mean_and_log_var
    return mean, jnp.exp(0.5 * log_var)


def _layer_functions(model, family: str):
    """(posterior per layer (of the images' symbols), conditional prior per layer (None at the
    top), decoder output from every layer's latents) as functions of the merged model: what each
    architecture's layers are."""
    if isinstance(model, Ladder):  # each layer's function is told the layer by how many are above it
        below = model.num_layers - 1
        return ([lambda m, s, *upper: _gaussian(m.posterior_below(pixel_code.model_input(s, family), upper))]
                * model.num_layers,
                [None] + [lambda m, *upper: _gaussian(m.prior_below(upper))] * below,
                lambda m, *zs: m.decode_layers(zs))
    if isinstance(model, HierarchicalVAE):
        posteriors = [lambda m, s: _gaussian(m.encode(pixel_code.model_input(s, family))),
                      lambda m, s, z2: _gaussian(m.q_z1(pixel_code.model_input(s, family), z2))]
        priors = [None, lambda m, z2: _gaussian(m.p_z1(z2))]
        return posteriors, priors, lambda m, z2, z1: m.decode_both(z1, z2)
    return ([lambda m, s: _gaussian(m.encode(pixel_code.model_input(s, family)))], [None],
            lambda m, z: m.decode(z))


def _pixel_functions(decode, family: str, num_pixels: int):
    """The merged model's pixel functions by name, `decode` giving the decoder output from every
    layer's latents: "parameters" (latents -> p(x|z)'s fixed-point parameters and the decoder
    output), "search" (fixed-point parameters -> the first round of the search), "probabilities"
    and "own_probabilities" (fixed-point parameters, decoder output, offset, symbols -> every
    round's probabilities, bits per image, log p(x|z) per image, the smallest margin of the values
    rounded per image), "mean" (latents -> E[x|z] in symbol units), and a staged decoder's
    "staged" and "stage_search" (`HostModel.stage_parameters`, `HostModel.stage_search`). Only
    "parameters" (and a staged decoder's two) make integers of the model's floats: the programs
    both the encoder and the decoder call ("probabilities" reads the margins of the same floats
    again, to decide, not to code)."""
    schedule = fixed_point.rounds(fixed_point.CDF[family][2])

    def coded(m):
        """The likelihood whose parameters are coded: a staged decoder's base, which reads the
        output its heads made (`staged`)."""
        return m.likelihood.base if isinstance(m.likelihood, StagedLikelihood) else m.likelihood

    def coding_steps(m, out, offset):
        return fixed_point.STEPS[family](*coded(m).coding_parameters(out), offset=offset)

    def parameters(m, offset, *zs):
        out = decode(m, *zs)
        return fixed_point.INTEGERS[family](*coding_steps(m, out, offset)), out

    def staged(m, out, offset, symbols_bxD):
        """A staged decoder's output with every stage's head applied to the symbols of the stages
        before it (teacher-forced), and its fixed-point parameters."""
        out = m.likelihood.parameters(out, pixel_code.model_input(symbols_bxD, family).astype(out.dtype))
        return fixed_point.INTEGERS[family](*coding_steps(m, out, offset)), out

    def stage_search(m, out, offset, symbols_bxD, sub_pixels, stage):
        """`search` over one stage's sub-pixels (flat indices in an image) of every row, at the
        output its head gives on the symbols of the stages before it: the head of that stage alone,
        and the integers of its sub-pixels alone."""
        if stage:
            x = pixel_code.model_input(symbols_bxD, family).astype(out.dtype)
            out = m.likelihood.stage_output(stage, out, x)
        rows = out.shape[0]
        out = out.reshape(rows, num_pixels, -1)[:, sub_pixels].reshape(rows, -1)
        return search(m, fixed_point.INTEGERS[family](*coding_steps(m, out, offset)))

    def search(m, integers):
        probabilities, state = fixed_point.first_round(family, integers, *schedule[0])
        if len(schedule) == 1:  # (a binarised pixel) nothing left to search: neither is needed
            return None, probabilities, None
        return integers, probabilities, state

    def probabilities(m, integers, out, offset, symbols_bxD):
        rounds, bits_N = fixed_point.level_probabilities(family, integers, symbols_bxD.reshape(-1))
        # log p(x|z) for the figures only: in float32, to about 1e-6 of its value
        x = pixel_code.model_input(symbols_bxD, family).astype(jnp.float32)
        log_prob = coded(m).log_prob_grouped(out.astype(jnp.float32), x)
        margins = fixed_point.margins(family, coding_steps(m, out, offset))
        margins = margins.reshape(symbols_bxD.shape[0], -1).min(axis=1)
        return rounds, bits_N.reshape(symbols_bxD.shape).astype(jnp.float64).sum(axis=1), log_prob, margins

    def own_probabilities(m, integers, out, offset, symbols_bxD, own_bxD):
        """`probabilities` with the bits and log p(x|z) of the sub-pixels marked own only (a tile's,
        `tiles`); log p(x|z) per sub-pixel: the likelihood's sum over one sub-pixel at a time."""
        rounds, bits_N = fixed_point.level_probabilities(family, integers, symbols_bxD.reshape(-1))
        rows, d = symbols_bxD.shape
        x = pixel_code.model_input(symbols_bxD, family).astype(jnp.float32).reshape(rows, d, 1)
        log_prob_bxD = coded(m).log_prob(out.astype(jnp.float32).reshape(rows, d, -1), x)
        margins = fixed_point.margins(family, coding_steps(m, out, offset))
        margins = margins.reshape(rows, -1).min(axis=1)
        bits = jnp.where(own_bxD, bits_N.reshape(symbols_bxD.shape), 0.0).astype(jnp.float64).sum(axis=1)
        return rounds, bits, jnp.where(own_bxD, log_prob_bxD, 0.0).sum(axis=1), margins

    def mean(m, *zs):
        return m.likelihood.mean(decode(m, *zs)) * (255.0 if family in fixed_point.EIGHT_BIT else 1.0)

    return {"parameters": parameters, "staged": staged, "stage_search": stage_search, "search": search,
            "probabilities": probabilities, "own_probabilities": own_probabilities, "mean": mean}


def host_model(model, block_size: int) -> HostModel:
    """q(z|x) per layer (mean and standard deviation), the conditional priors of the layers below the
    top (the HVAE's p(z1|z2), the ladder's p(z_l|z_>l)), and p(x|z)'s fixed-point parameters
    (`likelihood.coding_parameters` rounded by `fixed_point`), each jitted once, float64 on the CPU."""
    cpu = jax.devices("cpu")[0]
    graphdef, state = nnx.split(model)
    with jax.enable_x64(True):
        # a flat list of arrays: a call flattens it in C++, where the module's state would take
        # Python (about 2 ms a call, a sixth of a block's time for a binarised model)
        leaves64, treedef = jax.tree.flatten(jax.device_put(jax.tree.map(_float64, state), cpu))

    def compiled(function, static_argnums=()):
        def call(leaves, *rows):
            return function(nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves)), *rows)
        return jax.jit(call, static_argnums=static_argnums)

    family = model.likelihood.coding_family
    posteriors, priors, decode = _layer_functions(model, family)
    posteriors = [compiled(f) for f in posteriors]
    priors = [f and compiled(f) for f in priors]
    functions = _pixel_functions(decode, family, int(np.prod(model.image_shape)))
    parameters, staged, search, probabilities, own_probabilities, mean = (
        compiled(functions[name]) for name in ("parameters", "staged", "search", "probabilities",
                                                "own_probabilities", "mean"))
    stage_search = compiled(functions["stage_search"], static_argnums=(5,))  # the stage picks its head

    def padded(rows_bxK: tuple[np.ndarray, ...]) -> list:
        rows = rows_bxK[0].shape[0]
        if not 1 <= rows <= block_size:
            raise ValueError(f"a call codes 1 to {block_size} rows, got {rows}")
        arrays, shape_rows = [], 1 if rows == 1 else block_size
        for array in rows_bxK:
            # which sub-pixels count; symbols; latents
            dtype = (bool if array.dtype == bool
                     else np.uint8 if np.issubdtype(array.dtype, np.integer) else np.float64)
            if rows == shape_rows:
                full = np.asarray(array, dtype)
            else:
                full = np.zeros((shape_rows, array.shape[1]), dtype)
                full[:rows] = array
            arrays.append(jax.device_put(full, cpu))
        return arrays

    def padded_call(function, *rows_bxK: np.ndarray):
        rows = rows_bxK[0].shape[0]
        with jax.enable_x64(True):
            result = function(leaves64, *padded(rows_bxK))
            return jax.tree.map(lambda a: np.asarray(a, np.float64)[:rows], result)

    def pixel_parameters(zs, offset: float) -> PixelParameters:
        with jax.enable_x64(True):
            return PixelParameters(*parameters(leaves64, np.float64(offset), *padded(zs)), offset)

    def stage_parameters(given: PixelParameters, symbols_bxD) -> PixelParameters:
        with jax.enable_x64(True):
            (padded_symbols,) = padded([symbols_bxD])
            return PixelParameters(*staged(leaves64, given.output, np.float64(given.offset), padded_symbols),
                                   given.offset)

    def pixel_stage_search(given: PixelParameters, symbols_bxD, stage: int, sub_pixels):
        with jax.enable_x64(True):
            (padded_symbols,) = padded([symbols_bxD])
            return stage_search(leaves64, given.output, np.float64(given.offset), padded_symbols,
                                np.asarray(sub_pixels, np.int32), stage)

    def pixel_search(given: PixelParameters):
        with jax.enable_x64(True):
            return search(leaves64, given.integers)

    def pixel_probabilities(given: PixelParameters, symbols_bxD, own_bxD=None):
        rows, used = symbols_bxD.shape[0], symbols_bxD.size
        with jax.enable_x64(True):
            if own_bxD is None:
                rounds, bits, log_prob, margins = jax.device_get(
                    probabilities(leaves64, given.integers, given.output, np.float64(given.offset),
                                  *padded([symbols_bxD])))
            else:
                rounds, bits, log_prob, margins = jax.device_get(
                    own_probabilities(leaves64, given.integers, given.output, np.float64(given.offset),
                                      *padded([symbols_bxD, own_bxD])))
        return [p[:used] for p in rounds], bits[:rows], log_prob[:rows], margins[:rows]

    return HostModel(
        num_layers=len(posteriors), latent_dim=model.latent_dim, latent_dims=tuple(model.latent_dims[::-1]),
        num_pixels=int(np.prod(model.image_shape)), block_size=block_size, family=family,
        posterior=lambda layer, x, upper: padded_call(posteriors[layer], x, *upper),
        conditional_prior=lambda layer, upper: padded_call(priors[layer], *upper),
        pixel_parameters=pixel_parameters, pixel_search=pixel_search, pixel_probabilities=pixel_probabilities,
        pixel_mean=lambda zs: padded_call(mean, *zs),
        sub_pixel_stages=(stages.stage_of_subpixel(model.likelihood.stages, model.image_shape)
                          if isinstance(model.likelihood, StagedLikelihood) else None),
        stage_parameters=stage_parameters if isinstance(model.likelihood, StagedLikelihood) else None,
        stage_search=pixel_stage_search if isinstance(model.likelihood, StagedLikelihood) else None)
