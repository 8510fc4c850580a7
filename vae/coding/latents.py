"""The discretised latent code: z is coded as an integer bin index s in [−K, K], z = s · width,
bins of `width` centred on its multiples over [−half_range, half_range] (K = half_range / width).

Under the N(0, 1) prior of each dimension an index has the mass of its bin, clipped to the range
and renormalised (`constriction`'s `QuantizedGaussian` over integer bins, mean and standard
deviation divided by the width). The width cancels from the bits-back rate,
log Q(bin) − log P(bin) ≈ log q(z) − log p(z), as long as it is small against the posterior
standard deviations (0.05 at the default clip of log-variances to −6); it costs log2(1/width)
bits per latent dimension of initial bits, and the decoder sees z rounded to its bin.

Under q(z|x) the index is coded within a window around the bin of the posterior mean, ±W bins
with W the smallest of 8, 32, 128, ... (at most K) that covers WINDOW_STDS posterior standard
deviations. Why: constriction's models have 24-bit probabilities and give every index of their
support at least 2^-24, so a narrow posterior over all 2K + 1 bins would put about 2K · 2^-24 of
its mass (1e-4 per dimension at the default) on bins far in its tails; a bits-back pop draws such
a bin now and then, and that image's pixels and prior then cost dearly. The window is a function
of (mean, std), which encoder and decoder both know when they code under q.

Every Gaussian is coded with its mean and standard deviation in bins rounded to 1/256 of a bin
(`GRID_STEPS`): the float64 encoder's outputs differ between machines in their last bits, and
the rounded values, which are what constriction reads, almost never do (`fixed_point`).

The default: bins of 1/64 over ±10 (1,281 indices per dimension).
"""

import dataclasses

import constriction
import numpy as np

from vae.coding.errors import CodingError

DEFAULT_BIN_WIDTH = 1.0 / 64
DEFAULT_HALF_RANGE = 10.0
MAX_INDEX = 1 << 20  # bins per side, at most
WINDOW_STDS = 8.0  # q(z|x)'s window covers this many of its standard deviations each side
GRID_STEPS = 256  # a coded Gaussian's mean and standard deviation, in bins, are rounded to 1/256
SMALLEST_WINDOW, WINDOW_GROWTH = 8, 4


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

    def windows(self) -> list[int]:
        """The half-widths W of q's windows, in bins: 8, 32, 128, ... and K."""
        sizes = [SMALLEST_WINDOW]
        while sizes[-1] < self.max_index:
            sizes.append(sizes[-1] * WINDOW_GROWTH)
        return [min(size, self.max_index) for size in sizes]

    def values(self, index_bxZ: np.ndarray) -> np.ndarray:
        """The latents z = s · width (float64) the decoder sees for bin indices s."""
        return np.asarray(index_bxZ, np.float64) * self.width

    def nearest(self, z_bxZ: np.ndarray) -> np.ndarray:
        """The index of the bin holding z (clipped to the range), int32."""
        return np.clip(np.rint(z_bxZ / self.width), -self.max_index, self.max_index).astype(np.int32)

    def prior_model(self):
        """The N(0, 1) prior of every latent dimension, quantised to the bins."""
        k = self.max_index
        return constriction.stream.model.QuantizedGaussian(-k, k, 0.0, 1.0 / self.width)


def _rounded(values: np.ndarray) -> np.ndarray:
    """To the nearest 1/GRID_STEPS (clipped to ±2^40 bins, so the result stays exact)."""
    return np.rint(np.clip(np.nan_to_num(values), -2.0**40, 2.0**40) * GRID_STEPS) / GRID_STEPS


class GaussianCode:
    """Pops and pushes bin indices under a diagonal Gaussian N(mean, std²) given per index, each
    within its window (`windowed`, for q(z|x), whose pops must not reach its far tails) or over
    the whole range (for a conditional prior such as the HVAE's p(z1|z2), which must be able to
    push whatever q drew): one constriction model per window size, one coder call per window size
    in use."""

    def __init__(self, bins: LatentBins, windowed: bool = True):
        self.bins = bins
        self.windows = bins.windows() if windowed else [bins.max_index]
        self.models = [constriction.stream.model.QuantizedGaussian(-w, w) for w in self.windows]

    def _groups(self, mean_bxZ, std_bxZ):
        """Per window in use: (the flat positions it codes, their centre bins, mean and std
        relative to the centre, in bins)."""
        k = self.bins.max_index
        mean = _rounded(np.asarray(mean_bxZ, np.float64).reshape(-1) / self.bins.width)
        std = np.maximum(_rounded(np.asarray(std_bxZ, np.float64).reshape(-1) / self.bins.width),
                         1.0 / GRID_STEPS)
        needed = WINDOW_STDS * std + 1.0
        choice = np.minimum(np.searchsorted(np.asarray(self.windows, np.float64), needed),
                            len(self.windows) - 1)
        groups = []
        for j, w in enumerate(self.windows):
            where = np.flatnonzero(choice == j)
            if where.size:
                centre = np.clip(np.rint(mean[where]), -k + w, k - w).astype(np.int64)
                groups.append((j, where, centre, mean[where] - centre, std[where]))
        return groups

    def pop(self, coder, mean_bxZ, std_bxZ) -> np.ndarray:
        """Bin indices (b x Z, int32) drawn from the stack under the Gaussian."""
        index = np.zeros(mean_bxZ.size, np.int64)
        for j, where, centre, offset_mean, std in self._groups(mean_bxZ, std_bxZ):
            index[where] = centre + coder.decode(self.models[j], offset_mean, std)
        return index.reshape(mean_bxZ.shape).astype(np.int32)

    def push(self, coder, index_bxZ, mean_bxZ, std_bxZ) -> None:
        """Pushes indices under the Gaussian; after `pop`, under the same one, the stack is as before."""
        flat = np.asarray(index_bxZ, np.int64).reshape(-1)
        for j, where, centre, offset_mean, std in reversed(self._groups(mean_bxZ, std_bxZ)):
            coder.encode_reverse((flat[where] - centre).astype(np.int32), self.models[j], offset_mean, std)
