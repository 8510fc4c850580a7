"""The discretised latent code: z is coded as an integer bin index s in [−K, K], z = s · width,
bins of `width` centred on its multiples over [−half_range, half_range] (K = half_range / width).

Under q(z|x) and under the N(0, I) prior each index has the mass of its bin under the Gaussian,
clipped to the range and renormalised (`constriction`'s `QuantizedGaussian` over integer bins,
with mean and standard deviation divided by the width). The width cancels from the bits-back
rate, log Q(bin) − log P(bin) ≈ log q(z) − log p(z), as long as it is small against the posterior
standard deviations (0.05 at the default clip of log-variances to −6); it costs
log2(1/width) bits per latent dimension of initial bits, and a decoder that sees z rounded to its
bin. The default: bins of 1/64 over ±10 (1,281 indices per dimension).
"""

import dataclasses

import constriction
import numpy as np

from vae.coding.errors import CodingError

DEFAULT_BIN_WIDTH = 1.0 / 64
DEFAULT_HALF_RANGE = 10.0
MAX_INDEX = 1 << 20  # bins per side, at most
MIN_STD_IN_BINS = 1e-3  # a posterior standard deviation below a thousandth of a bin is coded as that


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

    def posterior_model(self):
        """The quantised Gaussian family for q(z|x): parameters (mean, std) in bins at each call."""
        return constriction.stream.model.QuantizedGaussian(-self.max_index, self.max_index)

    def posterior_parameters(self, mean_bxZ: np.ndarray, std_bxZ: np.ndarray):
        """q(z|x)'s mean and standard deviation in units of bins, each flat (b · Z) float64."""
        std = np.maximum(std_bxZ / self.width, MIN_STD_IN_BINS)
        return (np.ascontiguousarray(mean_bxZ / self.width, np.float64).reshape(-1),
                np.ascontiguousarray(std, np.float64).reshape(-1))

    def prior_model(self):
        """The N(0, 1) prior of every latent dimension, quantised to the bins."""
        k = self.max_index
        return constriction.stream.model.QuantizedGaussian(-k, k, 0.0, 1.0 / self.width)
