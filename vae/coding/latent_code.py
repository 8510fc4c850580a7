"""The discretised latent code: z is coded as an integer bin index s, z = s · width, bins of
`width` centred on its multiples; [−half_range, half_range] are the bins [−K, K] (K = half_range
/ width), and the coder's indices are the 2^R from −2^(R−1) on that hold them (`index_bits`:
R = 11, [−1024, 1023], at the default), the first and last bins holding the Gaussians' tails.

Every Gaussian over bins is coded from integers, the same on every machine (`fixed_point`
rounds the pixels' probabilities the same way):

- its mean and standard deviation, in bins, are rounded to 1/GRID_STEPS of a bin (on a grid
  shifted by the block's offset, a fraction of a step: `bbans.VARIANTS`); the encoder checks
  how close each value came to a rounding boundary (`Steps.margin`, the guard band of
  `fixed_point`);
- a bin's count is the standard normal CDF's integer table (`fixed_point.PHI_TABLE`, 2^32 at
  256 entries per standard deviation, linear between them in 1/256) at its two edges, each
  standardised as (edge − mean) / std in integer arithmetic, plus LATENT_FLOOR, so every bin
  keeps a count;
- the index is coded in rounds of ROUND_BITS (the search over the levels that `pixel_code.py` runs
  for a sub-pixel), each round constriction's categorical over a few parts with those counts'
  shares; the prior N(0, 1), the same for every dimension, is one categorical over all 2^R bins
  (`PriorCode`). Constriction never computes a Gaussian.

Under the N(0, 1) prior of each dimension an index has the mass of its bin (the standard
deviation 1 / width bins). The width cancels from the bits-back rate,
log Q(bin) − log P(bin) ≈ log q(z) − log p(z), as long as it is small against the posterior
standard deviations (0.05 at the default clip of log-variances to −6); it costs log2(1/width)
bits per latent dimension of initial bits, and the decoder sees z rounded to its bin.

Under a narrow q(z|x) the first rounds cost next to nothing (one part holds its mass), and a pop
draws a far tail only through constriction's least probability of a round's part (2^-24): about
1e-6 per dimension, where a model over all the bins with 2^-24 each would give its tails 1e-4.

The default: bins of 1/64 over ±10 (K = 640).
"""

import dataclasses
import math

import constriction
import numpy as np

from vae.coding import fixed_point
from vae.coding.errors import CodingError

DEFAULT_BIN_WIDTH = 1.0 / 64
DEFAULT_HALF_RANGE = 10.0
MAX_INDEX = 1 << 20  # bins per side, at most
GRID_STEPS = 256  # a coded Gaussian's mean and standard deviation, in bins, are rounded to 1/256
LATENT_FLOOR = 1  # counts of every bin besides its share of 2^32
ROUND_BITS = 3  # bits of a bin index coded per round
_STANDARD_BITS = 16  # a standardised edge in 1/2^16 standard deviations: the table's step / 2^8
_INVERSE_BITS = 30  # a standard deviation's inverse as an integer: 2^(16 + 30) // std
# Means and standard deviations are clipped to this many bins before rounding (a model's outputs
# can be anything), so that every product below stays within int64.
MAX_BINS = 1 << 22
# A round's parts (their probabilities given per symbol): constriction's categorical
_PARTS = constriction.stream.model.Categorical(perfect=False)


class LatentBinsError(CodingError):
    """Bin settings that cannot code a latent."""


@dataclasses.dataclass(frozen=True)
class LatentBins:
    width: float = DEFAULT_BIN_WIDTH
    half_range: float = DEFAULT_HALF_RANGE

    def __post_init__(self):
        if not (np.isfinite(self.width) and self.width > 0 and np.isfinite(self.half_range)
                and self.half_range >= self.width):
            raise LatentBinsError(f"latent bins need 0 < width <= half_range, both finite; got width "
                                  f"{self.width}, half_range {self.half_range}")
        if self.max_index > MAX_INDEX:
            raise LatentBinsError(f"half_range / width is the number of bins per side, at most "
                                  f"{MAX_INDEX:,}; got {self.half_range:g} / {self.width:g}")

    @property
    def max_index(self) -> int:
        """K: the indices run over [−K, K]."""
        return int(round(self.half_range / self.width))

    def values(self, index_bxZ: np.ndarray) -> np.ndarray:
        """The latents z = s · width (float64) the decoder sees for bin indices s."""
        return np.asarray(index_bxZ, np.float64) * self.width

    def nearest(self, z_bxZ: np.ndarray) -> np.ndarray:
        """The index of the bin holding z (clipped to the range), int32."""
        return np.clip(np.rint(z_bxZ / self.width), -self.max_index, self.max_index).astype(np.int32)

    def steps(self, mean_bxZ, std_bxZ, offset: float = 0.0) -> "Steps":
        """A Gaussian over z (b x Z each, float64), rounded to steps of these bins."""
        mean, std = np.asarray(mean_bxZ, np.float64), np.asarray(std_bxZ, np.float64)
        return steps(mean / self.width, std / self.width, offset)


@dataclasses.dataclass(frozen=True)
class Steps:
    """Gaussians over bins as the coder reads them: mean and standard deviation in 1/GRID_STEPS of
    a bin (int64, one per symbol, in the shape of the symbols), and the margin of their rounding
    (the smallest distance of a rounded value to its rounding boundary, in steps; 1/2 for values
    that were not rounded)."""

    mean: np.ndarray
    std: np.ndarray
    margin: float = 0.5


def steps(mean_bins, std_bins, offset: float = 0.0) -> Steps:
    """Means and standard deviations given in bins (float64), rounded to steps: the mean to the
    nearest step of the grid shifted by `offset` steps, the standard deviation likewise and at
    least one step."""
    mean = np.clip(np.nan_to_num(np.asarray(mean_bins, np.float64)), -MAX_BINS, MAX_BINS)
    std = np.clip(np.nan_to_num(np.asarray(std_bins, np.float64)), 0, MAX_BINS)
    mean, std = mean * GRID_STEPS + offset, std * GRID_STEPS + offset
    margin = min(np.abs(v - np.floor(v) - 0.5).min(initial=0.5) for v in (mean, std))
    return Steps(np.rint(mean).astype(np.int64), np.maximum(np.rint(std).astype(np.int64), 1), float(margin))


def exact_steps(mean_bins, std_bins) -> Steps:
    """Steps of means and standard deviations computed exactly on both sides (constants and the
    host's IEEE arithmetic on them, not a model's outputs): rounded, nothing to guard."""
    rounded = steps(mean_bins, std_bins)
    return dataclasses.replace(rounded, margin=0.5)


def index_bits(max_index: int) -> int:
    """R: the bits of a coded bin index, whose 2^R indices [−2^(R−1), 2^(R−1) − 1] hold [−K, K]."""
    return (2 * max_index).bit_length()


# PHI_TABLE with a 0 before it (Φ(−8) and below) and its rise from each entry to the next
_PHI = np.concatenate([[0], fixed_point.PHI_TABLE])
_PHI_STEP = np.diff(_PHI, append=_PHI[-1])
_FRACTION_BITS = _STANDARD_BITS - int(math.log2(fixed_point.PHI_STEPS))
_PHI_ZERO = (fixed_point.PHI_RANGE * fixed_point.PHI_STEPS + 1) << _FRACTION_BITS  # Φ(0)'s entry, shifted


def _phi(standardised: np.ndarray) -> np.ndarray:
    """2^32 · Φ(standardised / 2^16), int64, for standardised within ±8 · 2^16 (and one below):
    PHI_TABLE, linear between its entries in 1/256."""
    argument = standardised + _PHI_ZERO
    index = argument >> _FRACTION_BITS
    return _PHI[index] + ((_PHI_STEP[index] * (argument & ((1 << _FRACTION_BITS) - 1))) >> _FRACTION_BITS)


def _cdf(bits: int, mean_N, std_N):
    """(levels_NxE -> the counts below each level (int64), of levels strictly between 0 and 2^bits;
    the total, C(2^bits)) of the Gaussians (mean, std in steps, N each) over the 2^bits bins from
    −2^(bits−1) on, level j the lower edge of bin −2^(bits−1) + j: the first and last bins hold
    the tails (C(0) = 0, C(2^bits) = 2^32 + 2^bits · LATENT_FLOOR), every bin LATENT_FLOOR counts
    besides its share. An edge is standardised in integer arithmetic, (edge − mean) ·
    (2^46 // std) >> 30, its distance to the mean clipped to 8 standard deviations first (where
    the table ends) so that the product fits int64."""
    mean_N, std_N = (np.asarray(a, np.int64).reshape(-1, 1) for a in (mean_N, std_N))
    levels = 1 << bits
    inverse = (1 << (_STANDARD_BITS + _INVERSE_BITS)) // std_N
    limit = fixed_point.PHI_RANGE * std_N
    origin = -(levels // 2) * GRID_STEPS - GRID_STEPS // 2 - mean_N  # level 0's edge − mean, in steps

    def inner(levels_NxE):
        standardised = (np.clip(origin + levels_NxE * GRID_STEPS, -limit, limit) * inverse) >> _INVERSE_BITS
        return _phi(standardised) + LATENT_FLOOR * levels_NxE

    return inner, (1 << fixed_point.PHI_BITS) + LATENT_FLOOR * levels


def _cdf_at(cdf, levels_NxE, bits: int):
    """The counts below any levels 0 ... 2^bits (`_cdf`'s, with its two ends)."""
    inner, total = cdf
    inside = np.clip(levels_NxE, 1, (1 << bits) - 1)
    return np.where(levels_NxE <= 0, 0, np.where(levels_NxE >= 1 << bits, total, inner(inside)))


def _shares(counts_NxP: np.ndarray) -> np.ndarray:
    """A round's counts as the probabilities constriction reads: exact integers below 2^53 divided
    in float64 (exactly rounded, the same everywhere); every part holds LATENT_FLOOR counts at
    least, so no row is empty."""
    return counts_NxP / counts_NxP.sum(axis=1, keepdims=True)


def push_rounds(coder, levels_N: np.ndarray, cdf, bits: int) -> None:
    """Pushes levels (0 .. 2^bits − 1) under the counts of `cdf` (`_cdf`), round by round, the
    last round first: every round's inner edges' counts in one call (the symbols are known), each
    round's ends those of its part in the round before, as decoding meets them."""
    levels_N = np.asarray(levels_N, np.int64)
    schedule = fixed_point.rounds(1 << bits, ROUND_BITS)
    parts_N = fixed_point.parts_of(levels_N, 1 << bits, ROUND_BITS)
    inner = [((levels_N >> int(math.log2(step * parts))) << int(math.log2(step * parts)))[:, None]
             + step * np.arange(1, parts) for step, parts in schedule]
    counts, rows = cdf[0](np.concatenate(inner, axis=1)), np.arange(levels_N.size)
    count_low, count_high = np.zeros(levels_N.size, np.int64), np.full(levels_N.size, cdf[1], np.int64)
    start, rounds = 0, []
    for (_, parts), part in zip(schedule, parts_N):
        edges = np.concatenate([count_low[:, None], counts[:, start:start + parts - 1], count_high[:, None]],
                               axis=1)
        rounds.append((part.astype(np.int32), _shares(np.diff(edges, axis=1))))
        count_low, count_high = edges[rows, part], edges[rows, part + 1]
        start += parts - 1
    for part, shares in reversed(rounds):
        coder.encode_reverse(part, _PARTS, shares)


def pop_rounds(coder, count: int, cdf, bits: int) -> np.ndarray:
    """Undoes `push_rounds`: `count` levels (int64), each round's counts from the last round's."""
    inner_cdf, total = cdf
    low, rows = np.zeros(count, np.int64), np.arange(count)
    count_low, count_high = np.zeros(count, np.int64), np.full(count, total, np.int64)
    for step, parts in fixed_point.rounds(1 << bits, ROUND_BITS):
        inner = inner_cdf(low[:, None] + step * np.arange(1, parts))
        edges = np.concatenate([count_low[:, None], inner, count_high[:, None]], axis=1)
        part = coder.decode(_PARTS, _shares(np.diff(edges, axis=1))).astype(np.int64)
        count_low, count_high = edges[rows, part], edges[rows, part + 1]
        low += part * step
    return low


class GaussianCode:
    """Pops and pushes bin indices under diagonal Gaussians given in steps (`Steps`), over the
    2^R indices from −2^(R−1) on that hold [−K, K] (`index_bits`): a pop under q reaches its far
    tails only through a round's least probability, 2^-24 a part, and a prior can push whatever q
    drew. One search over the levels for all symbols at once."""

    def __init__(self, max_index: int):
        self.bits = index_bits(max_index)
        self.first = -(1 << (self.bits - 1))  # the bin of level 0

    def pop(self, coder, gaussians: Steps) -> np.ndarray:
        """Bin indices (the shape of the Gaussians, int32) drawn from the stack."""
        cdf = _cdf(self.bits, gaussians.mean, gaussians.std)
        levels = pop_rounds(coder, gaussians.mean.size, cdf, self.bits)
        return (levels + self.first).reshape(gaussians.mean.shape).astype(np.int32)

    def push(self, coder, index, gaussians: Steps) -> None:
        """Pushes indices under the Gaussians; after `pop` under the same ones, the stack is as before."""
        levels = np.asarray(index, np.int64).reshape(-1) - self.first
        push_rounds(coder, levels, _cdf(self.bits, gaussians.mean, gaussians.std), self.bits)


class PriorCode:
    """Bin indices under N(0, 1), every dimension alike (`GaussianCode`'s levels and counts): one
    categorical over the 2^R bins whose probabilities are the integer counts' shares (exact
    float64 numbers, the same everywhere), which constriction turns into its table once."""

    def __init__(self, bins: LatentBins):
        self.bits = index_bits(bins.max_index)
        self.first = -(1 << (self.bits - 1))
        gaussian = exact_steps(np.zeros(1), np.full(1, 1.0 / bins.width))
        edges = np.arange((1 << self.bits) + 1)[None, :]
        counts = np.diff(_cdf_at(_cdf(self.bits, gaussian.mean, gaussian.std), edges, self.bits))
        self.model = constriction.stream.model.Categorical(_shares(counts)[0], perfect=False)

    def pop(self, coder, count: int) -> np.ndarray:
        return (coder.decode(self.model, count) + self.first).astype(np.int32)

    def push(self, coder, index) -> None:
        coder.encode_reverse((np.asarray(index).reshape(-1) - self.first).astype(np.int32), self.model)
