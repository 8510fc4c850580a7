"""The codec: bits-back coding with ANS (BB-ANS) over blocks of images on one stack.

Encoding a block of b images (b <= block_size), the stack holding the blocks before it:
  1. pop b · Z latent bin indices under q(z|x) (the bits back: decoding pushes them again);
  2. push the b · D pixels under p(x|z) at those latents;
  3. push the latents under the prior p(z).
A block then costs −log P(x|z) − log P(z) + log Q(z|x) bits: a one-sample estimate of the
negative ELBO at the discretised latents. Decoding runs it backwards, last block first: pop the
latents under the prior, pop the pixels under p(x|z), push the latents under q(z|x) of the
decoded images. One constriction call codes each of those steps for the whole block.

Where the block's floats are rounded (q's and the priors' means and standard deviations, p(x|z)'s
parameters: `latent_code.steps`, `fixed_point.STEPS`), every grid is shifted by the block's
variant v, v / VARIANTS of a step; v is pushed last (decoding pops it first, so it rounds on the
same grids). The encoder takes v = 0 but where a value of the block lies within
`fixed_point.GUARD_STEPS` of a rounding boundary on that grid (a value another machine's floats
could round the other way): then it undoes the pop and takes the next v. So a decoder whose
floats differ from the encoder's by less than the guard band rounds every value alike. The
first image has a variant too (`first_image.plan`). v = 0 costs 2e-5 bits a block, another about
20 bits.

A model with layers of latents (the HVAE: z2 on top, z1 below) pops them top first, each under
q given the layers above it (q(z2|x), then q(z1|x, z2)), pushes x, then pushes them bottom
first, each under its prior given the layers above (p(z1|z2), then p(z2)); decoding pops the
top first under the prior. The rate is then KL(q(z2|x) ‖ p(z2)) + KL(q(z1|x, z2) ‖ p(z1|z2)),
one sample each, as in the HVAE's ELBO.

The initial bits. Step 1 of the first block reads bits that must come from somewhere. Here the
first image is coded without bits back, with a two-part code (`first_image.py`): a few latent
dimensions at a coarse precision, then its pixels under p(x | those latents). The blocks after
it grow with the stack: each takes at most as many images as are coded already (1, 2, 4, ...;
or, `encode`'s eager ramp, block_size), halved again while its pop would read the stack dry,
until a block of block_size fits; these ramp sizes go into the file, so decoding follows
either. What the file pays beyond the images' code lengths is then the
first image's two-part code (reported as `first_image_bits`), the coder's final state and the
header.
"""

import dataclasses
import sys

import constriction
import numpy as np
from tqdm import tqdm

from vae.coding import first_image, multiset, pixel_code, tiles
from vae.coding.errors import CodingError, DecodeMismatch
from vae.coding.fixed_point import GUARD_STEPS
from vae.coding.host_model import HostModel
from vae.coding.latent_code import GaussianCode, LatentBins, PriorCode

# A pop that leaves fewer valid bits than this read the stack dry (an ANS coder popped past its
# data returns symbols from the far tails, which then cost dearly to push): the block is halved.
DRY_STACK_BITS = 64
LOG2E = 1.0 / np.log(2.0)
# The rounding grids a block can be coded on: variant v shifts each by v / VARIANTS of a step (an
# odd count: no variant puts a clipped value, a whole number of steps, on a boundary). The variant
# is coded under these probabilities: 0 nearly always.
VARIANTS = 15
VARIANT_PROBABILITIES = np.array([1.0 - (VARIANTS - 1) * 2.0**-20] + [2.0**-20] * (VARIANTS - 1))
_VARIANT_MODEL = constriction.stream.model.Categorical(VARIANT_PROBABILITIES, perfect=False)
# What constriction raises when asked to code a symbol its model gives no probability (or a
# model with invalid parameters): while decoding, the sign of other probabilities than encoding's.
_CODER_ERRORS = (KeyError, ValueError, RuntimeError, OverflowError)


@dataclasses.dataclass(frozen=True)
class Coded:
    words: np.ndarray  # uint32: the ANS stack
    ramp: tuple[int, ...]  # the sizes of the blocks between the first image and the first full block
    first_image_bits: int  # the stack's size after the first image (coded without bits back)
    elbo_bits_N: np.ndarray  # per image: −log2 p(x|z) at the coded latents + KL(q ‖ p) in bits
    # per image: the pixels' bits under the coder's fixed-point counts (`fixed_point`), the ideal
    # code length of what the coder pushed; minus the −log2 p(x|z) in elbo_bits_N, the cost of
    # rounding the model to integers
    pixel_bits_N: np.ndarray
    kl_bits_N: np.ndarray  # per image: KL(q ‖ p) in bits, closed form, summed over the layers
    # The stack's size (bits) after each block's three steps: the pop under q (the first image
    # has none), the pixels pushed, the latents pushed. Per image where blocks hold one image.
    steps_bits_Bx3: np.ndarray
    # the fewest valid bits the stack held after a pop under q (or at the start, where fewer): a
    # decoder whose stack holds fewer after the same pops has run out of words
    least_bits: int = 0
    other_variants: int = 0  # the blocks (the first image not counted) coded on a variant other than 0


def block_sizes(count: int, block_size: int, ramp: tuple[int, ...]) -> list[int]:
    """The sizes of the blocks a file of `count` images was coded in: the first image, the ramp,
    then blocks of block_size (the last one partial)."""
    sizes = [1, *ramp][:count] if count else []
    if sum(sizes) > count or any(size < 1 or size > block_size for size in ramp):
        raise ValueError(f"ramp {ramp} does not fit {count} images in blocks of at most {block_size}")
    rest = count - sum(sizes)
    sizes += [block_size] * (rest // block_size) + ([rest % block_size] if rest % block_size else [])
    return sizes


def _kl_bits(mean_bxZ, std_bxZ, prior_mean_bxZ=0.0, prior_std_bxZ=1.0) -> np.ndarray:
    """KL(N(mean, std²) ‖ N(prior_mean, prior_std²)) per image, bits."""
    ratio = std_bxZ / prior_std_bxZ
    per_dim = 0.5 * (ratio**2 + ((mean_bxZ - prior_mean_bxZ) / prior_std_bxZ) ** 2 - 1.0) - np.log(ratio)
    return per_dim.sum(axis=-1) * LOG2E


def _failure(first: int, last: int, error: Exception) -> DecodeMismatch:
    """What constriction raised decoding images first..last, as one line."""
    return DecodeMismatch(f"the coder failed at images {first}-{last}: "
                          f"{str(error).strip() or type(error).__name__}")


def offset(variant: int) -> float:
    """The variant's shift of every rounding grid, in steps."""
    return variant / VARIANTS


@dataclasses.dataclass(frozen=True)
class _Draw:
    """A block's latents popped under q on one variant's grids, and what its pushes read."""

    variant: int
    indices: list  # per layer, top first: b x Z bin indices
    posteriors: list  # per layer: q's Steps they were popped under
    priors: list  # per layer below the top: the conditional prior's Steps
    pixels: tuple  # what `HostModel.pixel_probabilities` gave: rounds, bits, log p(x|z), margins
    kl_bits: np.ndarray  # per image, the closed-form KL of q to the prior, summed over the layers
    margin: float  # the smallest margin of all the block's roundings, in steps


class _Block:
    """The coding steps of one block on a coder (the models built once per file). Latents are
    lists of bin indices, one b x Z array per layer, top first."""

    def __init__(self, host: HostModel, bins: LatentBins):
        self.host, self.bins = host, bins
        self.gaussian, self.prior = GaussianCode(bins.max_index), PriorCode(bins)
        self.pixels = pixel_code.PixelCode(host.family, host.num_pixels, host.block_size)
        self._plans = {}
        # a staged decoder's: per stage, its sub-pixels' indices in an image and their pixel code
        self.stages = [] if host.sub_pixel_stages is None else [
            (sub_pixels, pixel_code.PixelCode(host.family, len(sub_pixels), host.block_size))
            for sub_pixels in (np.flatnonzero(host.sub_pixel_stages == s) for s in range(host.num_stages))]

    def values(self, indices: list) -> list:
        return [self.bins.values(index) for index in indices]

    # --- p(x|z): at once for a factorised decoder, stage by stage for a staged one ---------------

    def _stage_masks(self, own_bxD, rows: int) -> list:
        """Per stage, first to last, the sub-pixels it codes (b x D bool, None for all): the
        stage's among the own (`own_bxD`; None: all)."""
        if not self.stages:
            return [own_bxD]
        own = np.ones((rows, self.host.num_pixels), bool) if own_bxD is None else own_bxD
        return [own & (self.host.sub_pixel_stages == stage)[None] for stage in range(len(self.stages))]

    def pixel_probabilities(self, given, symbols_bxD, own_bxD=None) -> tuple:
        """`HostModel.pixel_probabilities` of the symbols under p(x|z) at the latents `given` was
        made of; a staged decoder's with every stage's head on the symbols before it, the copies
        of a tile (not `own_bxD`) read as 0, as decoding has them when it runs the heads."""
        if self.host.stage_parameters is not None:
            context = symbols_bxD if own_bxD is None else np.where(own_bxD, symbols_bxD, 0)
            given = self.host.stage_parameters(given, context)
        return self.host.pixel_probabilities(given, symbols_bxD, own_bxD)

    def push_pixels(self, coder, symbols_bxD, rounds: list, own_bxD=None) -> None:
        """Pushes the symbols with `pixel_probabilities`' rounds: the last stage first, so that
        decoding pops the first stage first."""
        for mask in reversed(self._stage_masks(own_bxD, len(symbols_bxD))):
            self.pixels.push(coder, symbols_bxD, rounds, mask)

    def pop_pixels(self, coder, rows: int, given, own_bxD=None) -> np.ndarray:
        """Undoes `push_pixels` (`given`: `HostModel.pixel_parameters` of the latents): rows x D
        symbols, 0 where not own; a staged decoder's heads run once a stage, on the symbols popped,
        and each stage searches its own sub-pixels only."""
        if not self.stages:
            return self.pixels.pop(coder, rows, self.host.pixel_search(given), own_bxD)
        symbols = np.zeros((rows, self.host.num_pixels), np.int32)
        for stage, (sub_pixels, code) in enumerate(self.stages):
            own = None if own_bxD is None else own_bxD[:, sub_pixels]
            search = self.host.stage_search(given, symbols, stage, sub_pixels)
            symbols[:, sub_pixels] = code.pop(coder, rows, search, own)
        return symbols

    def warm_up(self) -> None:
        """Compiles a staged decoder's pixel code (its heads and every stage's search, at one row
        and at a block): a push and a pop of blank images on a scratch coder."""
        for rows in sorted({1, self.host.block_size}):
            symbols = np.zeros((rows, self.host.num_pixels), np.int32)
            latents = [np.zeros((rows, size)) for size in self.host.layer_sizes]
            given = self.host.pixel_parameters(latents, 0.0)
            coder = constriction.stream.stack.AnsCoder()
            self.push_pixels(coder, symbols, self.pixel_probabilities(given, symbols)[0])
            self.pop_pixels(coder, rows, given)

    def plan(self, variant: int) -> first_image.Plan:
        if variant not in self._plans:
            self._plans[variant] = first_image.plan(self.host, offset(variant))
        return self._plans[variant]

    def draw(self, coder, symbols_bxD, variant: int, own_bxD=None) -> _Draw:
        """Pops every layer's indices under q with the variant's grids, top first, and rounds
        what the pushes will read (`own_bxD`: the sub-pixels the pixel code codes, None: all)."""
        indices, posteriors, priors, kl_bits, margin = [], [], [], 0.0, 0.5
        for layer in range(self.host.num_layers):
            upper = self.values(indices)
            mean, std = self.host.posterior(layer, symbols_bxD, upper)
            prior = self.host.conditional_prior(layer, upper) if layer else (0.0, 1.0)
            kl_bits = kl_bits + _kl_bits(mean, std, *prior)
            if layer:
                priors.append(self.bins.steps(*prior, offset(variant)))
            posteriors.append(self.bins.steps(mean, std, offset(variant)))
            indices.append(self.gaussian.pop(coder, posteriors[-1]))
        given = self.host.pixel_parameters(self.values(indices), offset(variant))
        probabilities = self.pixel_probabilities(given, symbols_bxD, own_bxD)
        margin = min([margin, *(g.margin for g in posteriors + priors), float(probabilities[3].min())])
        return _Draw(variant, indices, posteriors, priors, probabilities, kl_bits, margin)

    def undo(self, coder, draw: _Draw) -> None:
        """Pushes a draw's indices back under q, bottom first: the stack as before `draw`."""
        for layer in reversed(range(self.host.num_layers)):
            self.gaussian.push(coder, draw.indices[layer], draw.posteriors[layer])

    def clean_draw(self, coder, symbols_bxD, first: int, own_bxD=None) -> _Draw:
        """The draw of the first variant whose roundings all keep out of the guard band."""
        for variant in range(VARIANTS):
            draw = self.draw(coder, symbols_bxD, variant, own_bxD)
            if draw.margin >= GUARD_STEPS:
                return draw
            self.undo(coder, draw)
        raise CodingError(f"images {first}-{first + len(symbols_bxD) - 1}: each of the {VARIANTS} rounding "
                          "grids puts one of the model's outputs on a rounding boundary; compress them with "
                          "another --block_size")

    def push_draw(self, coder, symbols_bxD, draw: _Draw, own_bxD=None) -> tuple[int, np.ndarray, np.ndarray]:
        """Pushes the pixels, then the latents bottom first under their priors, then the variant:
        (the stack's size (bits) between the pixels and the latents, −log2 p(x|z) per image under
        the model, the pixels' bits under the coder's counts)."""
        rounds, pixel_bits, log_prob, _ = draw.pixels
        self.push_pixels(coder, symbols_bxD, rounds, own_bxD)
        between = coder.num_valid_bits()
        for layer in reversed(range(self.host.num_layers)):
            if layer:
                self.gaussian.push(coder, draw.indices[layer], draw.priors[layer - 1])
            else:
                self.prior.push(coder, draw.indices[0])
        coder.encode_reverse(np.array([draw.variant], np.int32), _VARIANT_MODEL)
        return between, -log_prob * LOG2E, pixel_bits

    def pop_block(self, coder, rows: int, own_bxD=None) -> tuple[int, list, np.ndarray]:
        """Undoes `push_draw`: (the variant, every layer's indices, the rows x D symbols; 0 where
        not `own_bxD`)."""
        variant = int(coder.decode(_VARIANT_MODEL, 1)[0])
        indices = []
        for layer in range(self.host.num_layers):
            if layer:
                prior = self.host.conditional_prior(layer, self.values(indices))
                indices.append(self.gaussian.pop(coder, self.bins.steps(*prior, offset(variant))))
            else:
                indices.append(self.prior.pop(coder, rows * self.host.latent_dim).reshape(rows, -1))
        given = self.host.pixel_parameters(self.values(indices), offset(variant))
        return variant, indices, self.pop_pixels(coder, rows, given, own_bxD)

    def push_posterior(self, coder, symbols_bxD, indices: list, variant: int) -> None:
        """Pushes every layer's indices under q, bottom first: undoes `draw`."""
        for layer in reversed(range(self.host.num_layers)):
            mean, std = self.host.posterior(layer, symbols_bxD, self.values(indices[:layer]))
            self.gaussian.push(coder, indices[layer], self.bins.steps(mean, std, offset(variant)))

    def first_figures(self, symbols_1xD, own_1xD=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The first image's (closed-form KL, −ELBO, pixels' bits under the counts) at the bins of
        q's means, as the other images' figures are at theirs."""
        indices, kl_bits = [], 0.0
        for layer in range(self.host.num_layers):
            mean, std = self.host.posterior(layer, symbols_1xD, self.values(indices))
            prior = self.host.conditional_prior(layer, self.values(indices)) if layer else (0.0, 1.0)
            kl_bits = kl_bits + _kl_bits(mean, std, *prior)
            indices.append(self.bins.nearest(mean))
        given = self.host.pixel_parameters(self.values(indices), 0.0)
        _, pixel_bits, log_prob, _ = self.pixel_probabilities(given, symbols_1xD, own_1xD)
        return kl_bits, -log_prob * LOG2E + kl_bits, pixel_bits

    def push_first_image(self, coder, symbols_1xD, own_1xD=None) -> int:
        """Pushes one image with the two-part code of `first_image`, pixels then latents, then its
        variant; the stack's size (bits) between the pixels and the latents."""
        for variant in range(VARIANTS):
            code = self.plan(variant)
            bins = first_image.posterior_bins(self.host, symbols_1xD, code)
            values = first_image.latent_values(self.host, bins, code)
            rounds, *_, margins = self.pixel_probabilities(
                self.host.pixel_parameters(values, offset(variant)), symbols_1xD, own_1xD)
            if min(code.margin, float(margins.min())) >= GUARD_STEPS:
                break
        else:
            raise CodingError(f"image 0: each of the {VARIANTS} rounding grids puts one of the model's "
                              "outputs on a rounding boundary; compress it in a file with other images")
        self.push_pixels(coder, symbols_1xD, rounds, own_1xD)
        between = coder.num_valid_bits()
        first_image.push(coder, bins, code)
        coder.encode_reverse(np.array([variant], np.int32), _VARIANT_MODEL)
        return between

    def pop_first_image(self, coder, own_1xD=None) -> np.ndarray:
        """Undoes `push_first_image`: the image's symbols, 1 x D."""
        variant = int(coder.decode(_VARIANT_MODEL, 1)[0])
        code = self.plan(variant)
        bins = first_image.pop(coder, code)
        values = first_image.latent_values(self.host, bins, code)
        given = self.host.pixel_parameters(values, offset(variant))
        return self.pop_pixels(coder, 1, given, own_1xD)


def warm_up_stages(host: HostModel) -> None:
    """Compiles a staged decoder's pixel code (`_Block.warm_up`)."""
    _Block(host, LatentBins()).warm_up()


def no_sources(first: int, last: int) -> None:
    """Every sub-pixel is an image's own (images of the model's shape)."""
    return None


def encode(host: HostModel, symbols_NxD: np.ndarray, bins: LatentBins, progress: bool = False,
           bottom=None, sources=no_sources, eager: bool = False, unordered: bool = False) -> Coded:
    """The ANS stack of N images' symbols (N x D int32), in blocks of host.block_size, on an empty
    stack or on one holding the 32-bit words `bottom` (the file's checksum and any padding:
    `container.bottom_words`; the last one nonzero). `sources(first, last)`: tiles' copies of
    their own sub-pixels (`tiles.Tiling.sources`), which are not coded; None where there are none.
    `eager`: each block of the ramp tries block_size images first, halved while its pop reads
    the stack dry (for images that leave many bits each, such as 8-bit tiles: fewer, fuller
    blocks), rather than growing with the images coded. `unordered`: the images are a set (no
    sources): which come next is popped from the stack before each block (`multiset`), the first
    image is the first row; the figures stay at each image's row."""
    count, block_size = symbols_NxD.shape[0], host.block_size
    if count < 1:
        raise ValueError("nothing to compress: no images")
    block = _Block(host, bins)
    start_words = [] if bottom is None else [np.atleast_1d(np.asarray(bottom, np.uint32))]
    coder = constriction.stream.stack.AnsCoder(*start_words)
    start_bits = coder.num_valid_bits()
    elbo_bits, kl_bits, pixel_bits = np.zeros(count), np.zeros(count), np.zeros(count)
    variants = 0
    with tqdm(total=count, unit="img", disable=not progress, file=sys.stderr, desc="compress",
              dynamic_ncols=True) as bar:
        first = symbols_NxD[:1]
        # its -ELBO and its pixels' bits at the bins of q's means, as for the other images (the
        # two-part code itself is measured by first_image_bits)
        own = tiles.own(sources(0, 1))
        kl_bits[:1], elbo_bits[:1], pixel_bits[:1] = block.first_figures(first, own)
        between = block.push_first_image(coder, first, own)
        first_image_bits = coder.num_valid_bits()
        steps = [(0, between, first_image_bits)]
        bar.update(1)
        start, ramp, ramping = 1, [], True
        chooser = multiset.Chooser(symbols_NxD, range(1, count)) if unordered else None

        def rows_of(size):  # the next images' rows: in order, or popped from the stack (a set)
            return chooser.take(coder, size) if unordered else np.arange(start, start + size)

        while start < count:
            grown = block_size if eager else start  # the ramp: as many as are coded already, or all
            size = min(block_size, count - start, grown) if ramping else min(block_size, count - start)
            own = tiles.own(sources(start, start + size))
            rows = rows_of(size)
            draw = block.clean_draw(coder, symbols_NxD[rows], start, own)
            while ramping and size > 1 and coder.num_valid_bits() < DRY_STACK_BITS:  # read dry: halve
                block.undo(coder, draw)
                if unordered:
                    chooser.give_back(coder, rows, symbols_NxD)
                size //= 2
                own = tiles.own(sources(start, start + size))
                rows = rows_of(size)
                draw = block.clean_draw(coder, symbols_NxD[rows], start, own)
            x = symbols_NxD[rows]
            popped = coder.num_valid_bits()
            between, rec_bits, pixel_bits[rows] = block.push_draw(coder, x, draw, own)
            steps.append((popped, between, coder.num_valid_bits()))
            kl_bits[rows] = draw.kl_bits
            elbo_bits[rows] = rec_bits + draw.kl_bits
            variants += draw.variant > 0
            if ramping and size == block_size:
                ramping = False
            elif ramping:
                ramp.append(size)
            start += size
            bar.update(size)
    steps = np.asarray(steps, np.int64)
    least_bits = int(min(steps[1:, 0].min(initial=start_bits), start_bits))
    return Coded(words=coder.get_compressed(), ramp=tuple(ramp), first_image_bits=first_image_bits,
                 elbo_bits_N=elbo_bits, kl_bits_N=kl_bits, pixel_bits_N=pixel_bits,
                 steps_bits_Bx3=steps, least_bits=least_bits, other_variants=variants)


def _check_left(coder, least_bits: int, first: int, last: int, count: int) -> None:
    """DecodeMismatch where the stack holds fewer bits than encoding's stack ever held after a
    pop: the words ran out (a damaged or truncated file, which would decode garbage to the end)."""
    if coder.num_valid_bits() < least_bits:
        raise DecodeMismatch(f"the stack ran out at images {first}-{last} of {count}")


def decode(host: HostModel, words: np.ndarray, count: int, ramp: tuple[int, ...], bins: LatentBins,
           progress: bool = False, least_bits: int = 0, sources=no_sources,
           unordered: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(the N x D symbols `encode` coded into `words`, the words left on the stack): what encoding
    started from (nothing, or its bottom words) where the probabilities are encoding's and the
    words undamaged, other words where not. DecodeMismatch where the coder meets a symbol its
    model cannot code (other probabilities than encoding's, or damaged words), or where a block's
    pops leave fewer than `least_bits` valid bits (what the encoder guaranteed: `Coded.least_bits`).
    `sources`: as `encode` was given (the copies are made again from the sub-pixels popped).
    `unordered`: as `encode` was given; the images come back in the order they were coded."""
    sizes = block_sizes(count, host.block_size, ramp)
    ends = np.cumsum(sizes)
    block = _Block(host, bins)
    try:  # a damaged top word (zero) is refused before any image
        coder = constriction.stream.stack.AnsCoder(np.ascontiguousarray(words, np.uint32))
    except _CODER_ERRORS as e:
        raise DecodeMismatch(f"the coder refused the words: {str(e).strip() or type(e).__name__}") from None
    symbols = np.zeros((count, host.num_pixels), np.int32)
    seen = multiset.Remaining()  # a set's images decoded so far (the encoder's images left)
    with tqdm(total=count, unit="img", disable=not progress, file=sys.stderr, desc="decompress",
              dynamic_ncols=True) as bar:
        for size, end in zip(sizes[:0:-1], ends[:0:-1]):
            try:
                source = sources(end - size, end)
                variant, indices, x = block.pop_block(coder, size, tiles.own(source))
                x = tiles.fill(x, source)
                _check_left(coder, least_bits, end - size, end - 1, count)
                symbols[end - size:end] = x
                block.push_posterior(coder, x, indices, variant)
                if unordered:
                    multiset.push_choices(coder, seen, x)
            except _CODER_ERRORS as e:
                raise _failure(end - size, end - 1, e) from None
            bar.update(size)
        try:
            source = sources(0, 1)
            symbols[:1] = tiles.fill(block.pop_first_image(coder, tiles.own(source)), source)
        except _CODER_ERRORS as e:
            raise _failure(0, 0, e) from None
        _check_left(coder, least_bits, 0, 0, count)
        bar.update(1)
    return symbols, coder.get_compressed()
