"""The first image of a file: a two-part code, as an empty stack has no bits to give back.

Bits back pop the latents from what the stack already holds; the first image of a file finds
nothing there (but the file's 32-bit checksum). It is coded with a plain two-part code instead:
its latents at a coarse precision, then its pixels under p(x | those latents). Decoding pops the
latents, then the pixels. Everything here is a function of the model alone, computed on both
sides by the same host program (`host_model.py`), so encoder and decoder agree bit for bit.

- The plan (`plan`): at the model's own mean image (the image p(x|z) gives at the prior's mean),
  each latent dimension's posterior standard deviation relative to its prior's, r. A dimension
  with r >= THRESHOLD is not coded and sits at the prior's mean, for free (a dimension the model
  does not use has q(z|x) = p(z) whatever x is). The others are coded in bins of width
  BIN_WIDTH · r prior deviations (clipped to [MIN_WIDTH, MAX_WIDTH]): a two-part code loses
  least when a dimension's bins are a few of its posterior deviations wide.
- The bins: those of the posterior means; bin s ∈ [−K, K] stands for m + s · width · σ (m, σ:
  the prior's mean and deviation: N(0, 1) at the top layer, the HVAE's p(z1|z2) below it, given
  the layers above as coded), and costs the prior's mass of the bin (N(0, 1) in units of the
  width, from the integer tables of `latent_code.GaussianCode`).
- The plan's ratios are rounded on a grid shifted by the image's offset (`bbans.VARIANTS`), and
  the encoder takes another offset where one lies within the guard band of a rounding boundary
  (`Plan.margin`), as it does for p(x|z)'s parameters.

The code keeps the posterior means: moving single bins to lower the two parts' total (a greedy
search) saved almost nothing (docs/compression.md has what this code and the search cost). The
constants below are part of the file format: other values decode a file to other images, so
changing one needs a new format in `container.py`.

Imports only `latent_code` of the package (it is handed a `host_model.HostModel`).
"""

import dataclasses

import numpy as np

from vae.coding import latent_code

BIN_WIDTH = 4.0  # a coded dimension's bins, in its posterior deviations at the mean image ...
MIN_WIDTH, MAX_WIDTH = 0.05, 4.0  # ... clipped to these many prior deviations
THRESHOLD = 0.8  # a dimension is coded where q's deviation at the mean image is below this times p's
HALF_RANGE = 8.0  # the bins cover ± this many prior deviations
# q's deviation relative to p's is rounded to 1/RATIO_STEPS before the two rules above read it: the
# float64 model's outputs differ between machines in their last bits, the rounded ratio almost
# never does (`fixed_point`), so encoder and decoder plan alike
RATIO_STEPS = 1024
K = int(np.ceil(HALF_RANGE / MIN_WIDTH))  # bin indices run over [−K, K]


@dataclasses.dataclass(frozen=True)
class Plan:
    """Each layer's (top first) bin widths in prior deviations, Z each: 0 where a dimension is
    not coded."""

    widths: list
    margin: float = 0.5  # the ratios' smallest distance to a rounding boundary, in 1/RATIO_STEPS

    @property
    def masks(self) -> list:
        return [w > 0 for w in self.widths]

    def coded(self) -> int:
        return int(sum(mask.sum() for mask in self.masks))

    def flat_widths(self) -> np.ndarray:
        return np.concatenate([w[w > 0] for w in self.widths])


_CODE = latent_code.GaussianCode(K)


def _gaussians(code: Plan) -> latent_code.Steps:
    """N(0, 1) over each coded dimension's bins: standard deviation 1 / width bins (constants,
    the same on both sides)."""
    widths = code.flat_widths()
    return latent_code.exact_steps(np.zeros(widths.size), 1.0 / widths)


def _prior(host, layer: int, upper: list):
    """(mean, std) of a layer's prior given the layers above, 1 x Z each."""
    if layer == 0:
        return np.zeros((1, host.latent_dim)), np.ones((1, host.latent_dim))
    return host.conditional_prior(layer, upper)


def plan(host, offset: float = 0.0) -> Plan:
    """Which dimensions the first image codes, and how coarsely (see the module's docstring), the
    ratios rounded on the grid shifted by `offset` of a step."""
    upper = []
    for layer in range(host.num_layers):
        upper.append(_prior(host, layer, upper)[0])
    x = host.pixel_mean(upper)
    widths, margin = [], 0.5
    for layer in range(host.num_layers):
        _, std = host.posterior(layer, x, upper[:layer])
        steps = np.nan_to_num(std[0] / _prior(host, layer, upper[:layer])[1][0] * RATIO_STEPS) + offset
        margin = min(margin, float(np.abs(steps - np.floor(steps) - 0.5).min()))
        relative = np.rint(steps) / RATIO_STEPS
        width = np.clip(BIN_WIDTH * relative, MIN_WIDTH, MAX_WIDTH)
        widths.append(np.where(relative < THRESHOLD, width, 0.0))
    return Plan(widths, margin)


def latent_values(host, bins: list, code: Plan) -> list:
    """Each layer's latents (1 x Z, float64) of its bins (1 x Z, 0 where a dimension is not coded):
    the prior's mean plus the bin's number of widths in prior deviations."""
    values = []
    for bins_1xZ, widths_Z in zip(bins, code.widths):
        mean, std = _prior(host, len(values), values)
        values.append(mean + bins_1xZ * widths_Z * std)
    return values


def posterior_bins(host, symbols_1xD, code: Plan) -> list:
    """Each layer's bins (1 x Z) of the image's posterior means, the layers above as coded."""
    bins, values = [], []
    for layer, widths_Z in enumerate(code.widths):
        mean, std = _prior(host, layer, values)
        q_mean, _ = host.posterior(layer, symbols_1xD, values)
        steps = np.where(widths_Z > 0, (q_mean - mean) / (np.maximum(widths_Z, MIN_WIDTH) * std), 0.0)
        bins.append(np.clip(np.rint(steps), -K, K).astype(np.int64))
        values.append(mean + bins[-1] * widths_Z * std)
    return bins


def push(coder, bins: list, code: Plan) -> None:
    """Pushes one image's coded bins (the top layer's first when popped)."""
    flat = np.concatenate([b[0][mask] for b, mask in zip(bins, code.masks)]).astype(np.int32)
    if flat.size:
        _CODE.push(coder, flat, _gaussians(code))


def pop(coder, code: Plan) -> list:
    """Undoes `push`: each layer's bins, 1 x Z, 0 where a dimension is not coded."""
    flat = _CODE.pop(coder, _gaussians(code)) if code.coded() else np.zeros(0, np.int64)
    bins, start = [], 0
    for mask in code.masks:
        layer = np.zeros((1, mask.size), np.int64)
        layer[0, mask] = flat[start:start + mask.sum()]
        bins.append(layer)
        start += mask.sum()
    return bins
