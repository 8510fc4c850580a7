"""Which uint8 arrays a likelihood codes, the symbols its pixels become, and how they are pushed
onto and popped off the ANS stack.

A likelihood names the discrete family it codes a pixel with (`likelihood.coding_family`):

- "bernoulli" (binarised pixels): an array of uint8 whose values are all in {0, 1} or all in
  {0, 255} (how the data pipeline stores binarised images); each pixel is the symbol 0 or 1, and
  the file records which of 1 and 255 stands for "on", so decompression returns the same array.
  An array of zeros only is taken as 0/1.

- "logistic_mixture" and "categorical" (8-bit pixels): any uint8 array; each sub-pixel is the
  symbol 0..255, its value itself (the pixel scale is 1).

`PixelCode` codes a block's symbols with the integer counts of `fixed_point`: round by round
(the search over a sub-pixel's levels), each round one constriction call (a categorical over
the round's parts) for the whole block. The probabilities of every round come from one compiled
call when encoding (the symbols are known) and from one call per round when decoding (each
round's parts depend on the one before), both from the integers of `HostModel.pixel_parameters`.
"""

import functools

import constriction
import jax
import numpy as np

from vae.coding import fixed_point
from vae.coding.errors import CodingError

FAMILIES = tuple(fixed_point.ROUNDING)
EIGHT_BIT_FAMILIES = fixed_point.EIGHT_BIT  # 256 levels per sub-pixel


class PixelError(CodingError):
    """An image array the likelihood cannot code."""


def check_family(family: str) -> None:
    if family not in FAMILIES:
        raise PixelError(f"this model's likelihood codes pixels as {family!r}; the codec knows {FAMILIES}")


def pixel_scale(images: np.ndarray, family: str) -> int:
    """The value that stands for symbol 1 (1 or 255; 1 for 8-bit pixels, each value its own
    symbol): PixelError for values the family cannot code."""
    check_family(family)
    if images.dtype != np.uint8:
        raise PixelError(f"the images must be uint8, got {images.dtype}")
    if family in EIGHT_BIT_FAMILIES:
        return 1
    values = np.unique(images)
    if set(values.tolist()) <= {0, 1}:
        return 1
    if set(values.tolist()) <= {0, 255}:
        return 255
    bad = values[(values != 0) & (values != 1) & (values != 255)]
    example = int(bad[0]) if bad.size else "both 1 and 255"
    raise PixelError(f"a Bernoulli model codes binarised pixels, all 0/1 or all 0/255; these images have "
                     f"{len(values)} distinct values (e.g. {example}): binarise them first")


def to_symbols(images: np.ndarray, scale: int) -> np.ndarray:
    """N x D int32 symbols (0 or 1; 0..255 for 8-bit pixels) of N images."""
    return (images.reshape(images.shape[0], -1) // scale).astype(np.int32)


def from_symbols(symbols_NxD: np.ndarray, scale: int, shape: tuple[int, ...]) -> np.ndarray:
    """The uint8 array of the symbols, in the shape that was compressed."""
    return (symbols_NxD.astype(np.uint8) * np.uint8(scale)).reshape(shape)


def model_input(symbols_bxD, family: str):
    """The model's input x in [0, 1] (float64) of a NumPy or JAX array of symbols: a Bernoulli
    symbol as 0 or 1, a level as v / 255 (the host model calls it inside its compiled functions)."""
    return symbols_bxD.astype(np.float64) * (1.0 / 255.0 if family in EIGHT_BIT_FAMILIES else 1.0)


# A round's parts (its probabilities given per symbol, N x parts); also for two parts, where it
# encodes a symbol in half the time of constriction's Bernoulli (12 ns against 25, measured here).
_PARTS = constriction.stream.model.Categorical(perfect=False)


class PixelCode:
    """Pushes a block's pixels with the probabilities `HostModel.pixel_probabilities` gives, and
    pops them from where `HostModel.pixel_search` starts the search (p(x|z)'s fixed-point
    parameters and the first round, over the sub-pixels of the host's padded call)."""

    def __init__(self, family: str, num_pixels: int, block_size: int):
        check_family(family)
        self.family, self.num_pixels, self.block_size = family, num_pixels, block_size
        self.levels = fixed_point.CDF[family][2]
        self.schedule = fixed_point.rounds(self.levels)
        self._next_round = _compiled(family)

    def push(self, coder, symbols_bxD: np.ndarray, rounds: list, own_bxD: np.ndarray | None = None) -> None:
        """Pushes the symbols given every round's probabilities: the last round first, so that the
        first is popped first. `own_bxD`: only the sub-pixels marked True (a tile's own; None: all)."""
        parts = fixed_point.parts_of(symbols_bxD.reshape(-1), self.levels)
        picked = None if own_bxD is None else np.flatnonzero(own_bxD)
        for probabilities, part in zip(reversed(rounds), reversed(parts)):
            if picked is not None:
                part, probabilities = part[picked], np.asarray(probabilities)[picked]
            coder.encode_reverse(part.astype(np.int32), _PARTS, probabilities)

    def pop(self, coder, rows: int, search, own_bxD: np.ndarray | None = None) -> np.ndarray:
        """The rows x D symbols on top of the stack (int32), from `HostModel.pixel_search`'s
        (parameters, first round's probabilities, state). The search's state stays with the
        compiled program between rounds; only each round's probabilities and parts travel.
        `own_bxD`: only the sub-pixels marked True are popped, the others are 0."""
        parameters, probabilities, state = search
        used = rows * self.num_pixels
        picked = np.arange(used) if own_bxD is None else np.flatnonzero(own_bxD)
        symbols = np.zeros(used, np.int64)
        part = np.zeros(len(probabilities), np.int32)  # the padded call's sub-pixels
        for r, (step, parts) in enumerate(self.schedule):
            if r:
                with jax.enable_x64(True):
                    probabilities, state = self._next_round(parameters, state, part, self.schedule[r - 1][0],
                                                            step, parts)
            if own_bxD is None:
                part[:used] = coder.decode(_PARTS, np.asarray(probabilities)[:used])
            else:
                part[picked] = coder.decode(_PARTS, np.asarray(probabilities)[picked])
            symbols += part[:used].astype(np.int64) * step
        return symbols.reshape(rows, self.num_pixels).astype(np.int32)

    def warm_up(self, host, tiles: bool = False) -> None:
        """Compiles the rounds at both of the host's shapes, one row and a block (a push and a pop
        on a scratch coder); with `tiles`, also the figures of a tile's own sub-pixels."""
        for rows in sorted({1, host.block_size}):
            parameters = host.pixel_parameters([np.zeros((rows, size)) for size in host.layer_sizes], 0.0)
            symbols = np.zeros((rows, self.num_pixels), np.int32)
            coder = constriction.stream.stack.AnsCoder()
            if tiles:
                host.pixel_probabilities(parameters, symbols, np.ones(symbols.shape, bool))
            self.push(coder, symbols, host.pixel_probabilities(parameters, symbols)[0])
            self.pop(coder, rows, host.pixel_search(parameters))


@functools.cache
def _compiled(family: str):
    """`fixed_point.next_round`, jitted once per family: compiled programs outlive a PixelCode."""
    return jax.jit(functools.partial(fixed_point.next_round, family), static_argnums=(3, 4, 5))
