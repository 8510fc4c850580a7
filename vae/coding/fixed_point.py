"""The numbers the entropy coder reads, the same integers on every machine.

The model runs in float64 (`host_model.py`), and its outputs differ between CPUs, thread counts and
vector widths in their last bits: a sum in another order, an exp or tanh with or without fused
multiply-adds (XLA with `--xla_cpu_max_isa=SSE4_2` gives another float64 exp for about 1 value
in 1,000, another tanh for half of them). One such bit in one probability and bits-back decoding
goes wrong for good. So every probability is made in two steps:

1. Round: each float the coder depends on is rounded to a coarse grid (the steps below),
   shifted by the block's offset (a fraction of a step, `bbans.VARIANTS`). A last-bit
   difference d changes the rounded value only where the float lies within d of a grid
   boundary; each rounding also gives its margin, the distance to that boundary in steps, and
   the encoder codes no block where a margin is below GUARD_STEPS (it takes another offset), so
   a decoder whose floats differ by less than that rounds exactly as the encoder did.
2. Integers: from the rounded values, each sub-pixel's cumulative counts over its levels are
   integer arithmetic and look-ups in constant integer tables (built here; an entry whose
   float64 value lies near a rounding boundary is recomputed exactly with `decimal`).

The grids, by family (`likelihood.coding_family`):
- "bernoulli": the logit l to 2^-16; P(on) = sigmoid(l), 24 bits, in [2^-24, 1 − 2^-24].
- "logistic_mixture": per component, the weight softmax(logits) to 2^-16, the mean to 1/256
  of a level, the log-scale to 1/256 (clipped to [MIN_LOG_SCALE, MAX_LOG_SCALE]); the CDF at a
  level's edges is the weights times the sigmoid of (edge − mean) / scale, 24 bits, each level
  given at least MIXTURE_FLOOR counts of about 2^40 (so none has probability zero).
- "categorical": each logit below the sub-pixel's largest to 2^-10, exp of it 24 bits, + 1.

A sub-pixel's level is coded in rounds of ROUND_BITS bits from the top (a search over the 256
levels): each round codes which of the 2^ROUND_BITS parts of the current interval holds it, with
the integer counts of those parts. A round needs the CDF at 2^ROUND_BITS − 1 points only, not
at all 257 edges, and decoding reads them in the same order. The counts are exact integers
below 2^53; times the reciprocal of their total in float64 (two exactly rounded IEEE operations)
they are the probabilities constriction reads, the same numbers everywhere.

The standard normal CDF's table (PHI_TABLE) is the latents' (`latent_code.py`), read with NumPy.

These constants are part of the file format: changing one changes what a file decodes to (the
file's coder tag, `container.coder_hash`, covers them). Functions here are pure jax.numpy and
need 64-bit integers (`jax.enable_x64`); the callers jit them. Imports nothing of the package.
"""

import decimal
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

LEVELS = 256
MIN_LOG_SCALE, MAX_LOG_SCALE = -7.0, 5.0  # of a logistic in [-1, 1] units (the likelihood floors at -7)
PROB_BITS = 24  # sigmoid and exp tables: values in [0, 2^24]
WEIGHT_BITS = 16  # mixture weights: integers summing to about 2^16
MEAN_STEPS = 256  # per level: a component's mean to 1/256 of a level
LOG_SCALE_STEPS = 256  # per unit of log-scale
MEAN_MARGIN = 1024  # a component's mean is clipped to [-1024, 255 + 1024] levels
TABLE_STEPS = 256  # sigmoid / exp table entries per unit of their argument
FRACTION_BITS = 8  # the linear interpolation between two entries, in 1/256
TABLE_RANGE = 24  # sigmoid beyond ±24 and exp below −24 round to 0 or 1 at 24 bits
INV_SCALE_BITS = 30  # 2^30 / (a scale in levels): the inverse scale as an integer
LOGIT_BITS = 16  # a Bernoulli logit to 2^-16
CATEGORICAL_LOGIT_BITS = 10  # a categorical logit (below the largest) to 2^-10
# Counts every level gets besides its share: 2^-24 of the total (constriction's smallest
# probability), so no level has probability zero.
MIXTURE_FLOOR = 1 << WEIGHT_BITS  # of about 2^40
CATEGORICAL_FLOOR = 1  # of at least 2^24
# Bits of a level coded per round. Measured here (2 cores, docs/compression.md): constriction's
# categorical over 4 parts costs 16 ns to encode and 32 to decode a symbol, over 2 parts 12 and
# 27, over 16 parts 26 and 48, and a round's CDF point 2 ns per mixture component: 2 bits a
# round (4 rounds, 3 points each) costs least per 8-bit sub-pixel.
ROUND_BITS = 2
# The guard band: a rounded value whose float lies closer than this (in steps of its grid) to a
# rounding boundary is a value another machine may round the other way; the encoder takes
# another offset for its block. The float64 differences measured between vector widths reach
# 6e-11 of a step (docs/compression.md); this is 250 times that. Only the encoder reads it.
GUARD_STEPS = 2.0**-26
PHI_BITS = 32  # the standard normal CDF table: values in [0, 2^32] ...
PHI_STEPS = 256  # ... at 256 entries per standard deviation ...
PHI_RANGE = 8  # ... over ±8 standard deviations (beyond, it rounds to 0 or 2^32)

_ARGUMENT_BITS = math.log2(TABLE_STEPS) + FRACTION_BITS  # fixed-point bits of a table argument
_ARGUMENT_SCALE = 1 << int(_ARGUMENT_BITS)  # 2^16: an argument u is the integer u · 2^16
_MEAN_SHIFT = int(math.log2(MEAN_STEPS)) + INV_SCALE_BITS - int(_ARGUMENT_BITS)


def _integer_table(floats: np.ndarray, exact) -> np.ndarray:
    """round(floats) as int64, where each entry close to a rounding boundary (within 1e-6: far
    more than any libm's error in the float64 value) is `exact(i)` instead, computed in decimal."""
    rounded = np.rint(floats).astype(np.int64)
    for i in np.flatnonzero(np.abs(np.abs(floats - np.floor(floats)) - 0.5) < 1e-6):
        rounded[i] = exact(int(i))
    return rounded


def _decimal_round(value: decimal.Decimal) -> int:
    return int(value.to_integral_value(rounding=decimal.ROUND_HALF_EVEN))


_CONTEXT = decimal.Context(prec=40)


def _sigmoid_table() -> np.ndarray:
    """round(2^24 · sigmoid(t / 256)) for t = −24·256 ... 24·256 + 1 (one past the end, for the
    interpolation)."""
    t = np.arange(-TABLE_RANGE * TABLE_STEPS, TABLE_RANGE * TABLE_STEPS + 2)
    floats = (1 << PROB_BITS) / (1.0 + np.exp(-t / TABLE_STEPS))

    def exact(i):
        u = _CONTEXT.divide(decimal.Decimal(int(t[i])), TABLE_STEPS)
        return _decimal_round(_CONTEXT.divide(1 << PROB_BITS, 1 + _CONTEXT.exp(-u)))

    return _integer_table(floats, exact)


def _exp_table() -> np.ndarray:
    """round(2^24 · exp(−t / 256)) for t = 0 ... 24·256 + 1."""
    t = np.arange(0, TABLE_RANGE * TABLE_STEPS + 2)
    floats = (1 << PROB_BITS) * np.exp(-t / TABLE_STEPS)

    def exact(i):
        return _decimal_round(_CONTEXT.multiply(1 << PROB_BITS,
                                                _CONTEXT.exp(_CONTEXT.divide(-int(t[i]), TABLE_STEPS))))

    return _integer_table(floats, exact)


def _inverse_scale_table() -> np.ndarray:
    """round(2^30 / s) for the scales s (in levels: 127.5 · e^log_scale) on the log-scale grid."""
    steps = np.arange(int((MAX_LOG_SCALE - MIN_LOG_SCALE) * LOG_SCALE_STEPS) + 1)
    log_scale = MIN_LOG_SCALE + steps / LOG_SCALE_STEPS
    floats = (1 << INV_SCALE_BITS) * np.exp(-log_scale) / ((LEVELS - 1) / 2)

    def exact(i):
        log_s = _CONTEXT.add(decimal.Decimal(MIN_LOG_SCALE), _CONTEXT.divide(int(steps[i]), LOG_SCALE_STEPS))
        return _decimal_round(_CONTEXT.divide(_CONTEXT.multiply(1 << INV_SCALE_BITS, _CONTEXT.exp(-log_s)),
                                              decimal.Decimal(LEVELS - 1) / 2))

    return _integer_table(floats, exact)


def _pi() -> decimal.Decimal:
    """π to the context's precision (the recipe of Python's `decimal` documentation)."""
    with decimal.localcontext(_PHI_CONTEXT) as ctx:
        ctx.prec += 2
        three = decimal.Decimal(3)
        last, t, s, n, na, d, da = 0, three, 3, 1, 0, 0, 24
        while s != last:
            last = s
            n, na = n + na, na + 8
            d, da = d + da, da + 32
            t = (t * n) / d
            s += t
    return +s


_PHI_CONTEXT = decimal.Context(prec=60)


def normal_cdf_decimal(u: decimal.Decimal) -> decimal.Decimal:
    """Φ(u) in `decimal` to about 40 digits for |u| <= PHI_RANGE: 1/2 + φ(u) Σ u^(2n+1) / (2n+1)!!,
    a series of positive terms for u > 0 (the lower tail as 1 − Φ(−u))."""
    ctx = _PHI_CONTEXT
    if u < 0:
        return ctx.subtract(1, normal_cdf_decimal(-u))
    term = total = u
    n = 0
    while term > total * decimal.Decimal(10) ** -45:
        n += 1
        term = ctx.divide(ctx.multiply(term, ctx.multiply(u, u)), 2 * n + 1)
        total = ctx.add(total, term)
    density = ctx.divide(ctx.exp(ctx.divide(-ctx.multiply(u, u), 2)), ctx.sqrt(ctx.multiply(2, _pi())))
    return ctx.add(decimal.Decimal("0.5"), ctx.multiply(density, total))


def _phi_table() -> np.ndarray:
    """round(2^32 · Φ(t / 256)) for t = −8·256 ... 8·256 + 1 (one past the end, for the
    interpolation): the lower half from math.erfc, the upper half its mirror (2^32 minus it: an
    exact tie, the only case where the two differ, cannot happen for Φ's irrational values), an
    entry within 1e-4 of a rounding boundary (a thousand times what libm's erfc can be off by)
    recomputed in `decimal`."""
    t = np.arange(-PHI_RANGE * PHI_STEPS, 1)
    floats = np.array([math.ldexp(math.erfc(-float(v) / PHI_STEPS / math.sqrt(2.0)), PHI_BITS - 1)
                       for v in t])
    lower = np.rint(floats).astype(np.int64)
    for i in np.flatnonzero(np.abs(np.abs(floats - np.floor(floats)) - 0.5) < 1e-4):
        u = _PHI_CONTEXT.divide(decimal.Decimal(int(t[i])), PHI_STEPS)
        lower[i] = _decimal_round(_PHI_CONTEXT.multiply(1 << PHI_BITS, normal_cdf_decimal(u)))
    upper = (1 << PHI_BITS) - lower[::-1][1:]  # t = 1 ... 8·256
    return np.concatenate([lower, upper, [1 << PHI_BITS]])


SIGMOID_TABLE = _sigmoid_table()
EXP_TABLE = _exp_table()
INVERSE_SCALE_TABLE = _inverse_scale_table()
PHI_TABLE = _phi_table()


def _interpolate(table: np.ndarray, argument: jax.Array, offset: int) -> jax.Array:
    """table at argument / 2^16 (int64, in 1/2^16 of a unit), linear between entries; the
    argument clipped to the table's range. `offset` is the index of argument 0."""
    limit = TABLE_RANGE * _ARGUMENT_SCALE
    argument = jnp.clip(argument, -limit if offset else 0, limit)
    index = (argument >> FRACTION_BITS) + offset
    fraction = argument & ((1 << FRACTION_BITS) - 1)
    table = jnp.asarray(table)
    low, high = table[index], table[index + 1]
    return low + (((high - low) * fraction) >> FRACTION_BITS)


def sigmoid(argument: jax.Array) -> jax.Array:
    """2^24 · sigmoid(argument / 2^16), int64, monotone in the argument."""
    return _interpolate(SIGMOID_TABLE, argument, TABLE_RANGE * TABLE_STEPS)


def exp_minus(argument: jax.Array) -> jax.Array:
    """2^24 · exp(−argument / 2^16) for argument >= 0, int64."""
    return _interpolate(EXP_TABLE, argument, 0)


def _steps(x: jax.Array, scale: float, offset) -> jax.Array:
    """x · scale + offset: a float64 value in steps of its grid, shifted by the block's offset; NaN as 0."""
    return jnp.nan_to_num(x) * scale + offset


def _nearest(steps: jax.Array) -> jax.Array:
    """The step a value in steps rounds to, int64 (half to even)."""
    return jnp.round(steps).astype(jnp.int64)


def margins(family: str, steps: tuple) -> jax.Array:
    """Each sub-pixel's smallest margin (N): how far its values in steps (`STEPS`) lie from the
    rounding boundary between two steps, in steps (0 on a boundary, 1/2 on a step)."""
    smallest = functools.reduce(jnp.minimum, [0.5 - jnp.abs(s - jnp.round(s)) for s in steps])
    if family == "bernoulli":  # one value per pixel; the others have theirs on the last axis
        return smallest.reshape(-1)
    return smallest.reshape(-1, smallest.shape[-1]).min(axis=-1)


# --- Rounding: the model's float64 outputs to the integer parameters of each family ---------------
#
# STEPS[family] takes the likelihood's `coding_parameters` (float64, sub-pixels on the last axes)
# and the offset of the block's grids (a float in [0, 1), in steps) and gives the values to round,
# in steps of their grids; INTEGERS[family] rounds them and makes a tuple of integer arrays with
# the sub-pixels flattened to one axis N: what `cdf` reads. ROUNDING[family] does both and gives
# the margins too (`margins`).


def bernoulli_steps(logits: jax.Array, offset=0.0):
    """The logit in 2^-16, clipped to ±25."""
    limit = float(TABLE_RANGE + 1)
    return (_steps(jnp.clip(logits, -limit, limit), float(1 << LOGIT_BITS), offset),)


def bernoulli_integers(logit_steps: jax.Array) -> tuple[jax.Array]:
    """(2^24 · P(on),) per pixel: the rounded logit through the sigmoid table, clipped to
    [1, 2^24 − 1] so that both values keep a count."""
    on = sigmoid(_nearest(logit_steps))
    return (jnp.clip(on, 1, (1 << PROB_BITS) - 1).reshape(-1),)


def mixture_steps(logits: jax.Array, means: jax.Array, log_scales: jax.Array, offset=0.0):
    """Per component, the weight softmax(logits) in 2^-16, the mean in 1/256 of a level (clipped
    to MEAN_MARGIN levels beyond the range), the log-scale above MIN_LOG_SCALE in 1/256 (clipped
    to [MIN_LOG_SCALE, MAX_LOG_SCALE])."""
    level_means = jnp.clip((means + 1.0) * ((LEVELS - 1) / 2), -MEAN_MARGIN, LEVELS - 1 + MEAN_MARGIN)
    log_scales = jnp.clip(jnp.nan_to_num(log_scales), MIN_LOG_SCALE, MAX_LOG_SCALE)
    return (_steps(jax.nn.softmax(logits, axis=-1), float(1 << WEIGHT_BITS), offset),
            _steps(level_means, float(MEAN_STEPS), offset),
            _steps(log_scales - MIN_LOG_SCALE, float(LOG_SCALE_STEPS), offset))


def mixture_integers(weight_steps, mean_steps, scale_steps):
    """(weights, means in 1/256 levels, inverse scales · 2^30), each N x K (int64)."""
    k = weight_steps.shape[-1]
    scales = jnp.minimum(_nearest(scale_steps), len(INVERSE_SCALE_TABLE) - 1)
    inverse_scales = jnp.asarray(INVERSE_SCALE_TABLE)[scales]
    return (_nearest(weight_steps).reshape(-1, k), _nearest(mean_steps).reshape(-1, k),
            inverse_scales.reshape(-1, k))


def categorical_steps(logits: jax.Array, offset=0.0):
    """Each logit below the sub-pixel's largest, in 2^-10, clipped to 25."""
    below = jnp.max(logits, axis=-1, keepdims=True) - logits
    return (_steps(jnp.clip(below, 0.0, float(TABLE_RANGE + 1)), float(1 << CATEGORICAL_LOGIT_BITS), offset),)


def categorical_integers(below_steps: jax.Array) -> tuple[jax.Array]:
    """(cumulative counts, N x 257,) from 256 logits per sub-pixel: exp of each rounded logit
    below the largest, + CATEGORICAL_FLOOR."""
    shift = int(_ARGUMENT_BITS) - CATEGORICAL_LOGIT_BITS
    counts = exp_minus(_nearest(below_steps) << shift) + CATEGORICAL_FLOOR
    counts = counts.reshape(-1, LEVELS)
    return (jnp.concatenate([jnp.zeros_like(counts[:, :1]), jnp.cumsum(counts, axis=-1)], axis=-1),)


STEPS = {"bernoulli": bernoulli_steps, "logistic_mixture": mixture_steps, "categorical": categorical_steps}
INTEGERS = {"bernoulli": bernoulli_integers, "logistic_mixture": mixture_integers,
            "categorical": categorical_integers}


def _rounding(family: str):
    def rounding(*outputs, offset=0.0):
        """(the family's integer parameters, each sub-pixel's smallest margin) of its outputs."""
        steps = STEPS[family](*outputs, offset=offset)
        return INTEGERS[family](*steps), margins(family, steps)

    return rounding


EIGHT_BIT = ("logistic_mixture", "categorical")  # the families of 256 levels per sub-pixel
ROUNDING = {family: _rounding(family) for family in STEPS}


# --- Cumulative counts ---------------------------------------------------------------------------
#
# cdf(parameters, points) for points N x E (ints in 1 ... levels − 1, each a level's lower edge)
# and total(parameters) (N): integer counts with C(0) = 0 and C(levels) = total; level v has
# C(v + 1) − C(v) >= 1 counts.


def bernoulli_cdf(parameters, points):
    (on,) = parameters
    return jnp.broadcast_to(((1 << PROB_BITS) - on)[:, None], points.shape)


def bernoulli_total(parameters):
    return jnp.full(parameters[0].shape, 1 << PROB_BITS, jnp.int64)


def mixture_cdf(parameters, points):
    """Σ_k w_k · 2^24 sigmoid((edge − mean_k) / scale_k) + MIXTURE_FLOOR · j, the edge of level j at
    j − 1/2 levels; (edge − mean) / scale is (j·256 − 128 − mean steps) · inverse scale, shifted
    to the table's 2^16 per unit."""
    weights, mean_steps, inverse_scales = parameters
    offset = (points[..., None] * MEAN_STEPS - MEAN_STEPS // 2) - mean_steps[:, None, :]  # N x E x K
    argument = (offset * inverse_scales[:, None, :] + (1 << (_MEAN_SHIFT - 1))) >> _MEAN_SHIFT
    return jnp.sum(weights[:, None, :] * sigmoid(argument), axis=-1) + MIXTURE_FLOOR * points


def mixture_total(parameters):
    return jnp.sum(parameters[0], axis=-1) * (1 << PROB_BITS) + MIXTURE_FLOOR * LEVELS


def categorical_cdf(parameters, points):
    return jnp.take_along_axis(parameters[0], points, axis=-1)


def categorical_total(parameters):
    return parameters[0][:, -1]


CDF = {"bernoulli": (bernoulli_cdf, bernoulli_total, 2),
       "logistic_mixture": (mixture_cdf, mixture_total, LEVELS),
       "categorical": (categorical_cdf, categorical_total, LEVELS)}


def rounds(levels: int, round_bits: int | None = None) -> list[tuple[int, int]]:
    """(step, parts) of each round of the search over `levels` (a power of two): the interval of
    parts · step levels is split into `parts` of `step` levels; ROUND_BITS bits a round (or
    `round_bits`), the last round what is left. 256 levels, 1 bit: (128, 2), (64, 2), ..., (1, 2)."""
    remaining, schedule = int(math.log2(levels)), []
    while remaining:
        take = min(round_bits or ROUND_BITS, remaining)
        remaining -= take
        schedule.append((1 << remaining, 1 << take))
    return schedule


def _probabilities(counts):
    """A round's counts (N x parts) as the probabilities constriction reads: each part's share,
    the exact integers (below 2^53) in float64 times the reciprocal of their sum, two exactly
    rounded IEEE operations, so the same numbers everywhere. (Written as a division, XLA makes
    this of it too; written so, the numbers do not hang on that rewrite.)"""
    counts = counts.astype(jnp.float64)
    return counts * (1.0 / jnp.sum(counts, axis=-1, keepdims=True))


def _round(family: str, parameters, low, count_low, count_high, step: int, parts: int):
    """One round of the search: the probabilities of the `parts` parts of [low, low + parts ·
    step) and the CDF at their edges, N x (parts + 1)."""
    inner = low[:, None] + step * jnp.arange(1, parts, dtype=jnp.int64)
    edges = jnp.concatenate([count_low[:, None], CDF[family][0](parameters, inner), count_high[:, None]],
                            axis=-1)
    return _probabilities(jnp.diff(edges, axis=-1)), edges


def first_round(family: str, parameters, step: int, parts: int):
    """(the first round's probabilities, the search's state): the state is (low, edges), what
    `next_round` reads with the part the coder decoded."""
    high = CDF[family][1](parameters)
    zeros = jnp.zeros_like(high)
    probabilities, edges = _round(family, parameters, zeros, zeros, high, step, parts)
    return probabilities, (zeros, edges)


def _pick(edges, index):
    """edges[n, index[n]] for each row n: a select over the few columns, which vectorises where a
    gather does not."""
    columns = jnp.arange(edges.shape[-1])
    return jnp.sum(jnp.where(columns == index[:, None], edges, 0), axis=-1)


def next_round(family: str, parameters, state, part, last_step: int, step: int, parts: int):
    """The next round's probabilities and state, after the part (N, int) of the last round."""
    low, edges = state
    part = part.astype(jnp.int64)
    low = low + part * last_step
    count_low, count_high = _pick(edges, part), _pick(edges, part + 1)
    probabilities, edges = _round(family, parameters, low, count_low, count_high, step, parts)
    return probabilities, (low, edges)


def parts_of(symbols, levels: int, round_bits: int | None = None) -> list:
    """The part each symbol is in, round by round: its digits in the rounds' bases (powers of
    two: shifts and masks, which vectorise where integer division does not)."""
    return [(symbols >> int(math.log2(step))) & (parts - 1) for step, parts in rounds(levels, round_bits)]


def level_probabilities(family: str, parameters, symbols_N: jax.Array):
    """What the decoder will see round by round, for known symbols, at once: (each round's
    probabilities, each symbol's bits under the counts: −log2(its level's counts / the total),
    the code length an ideal coder would give it, for the figures: in float32, to about 1e-7)."""
    levels = CDF[family][2]
    schedule = rounds(levels)
    symbols_N = symbols_N.astype(jnp.int64)
    total = CDF[family][1](parameters)
    probabilities, state = first_round(family, parameters, *schedule[0])
    result = [probabilities]
    parts = parts_of(symbols_N, levels)
    for (last_step, _), (step, parts_count), part in zip(schedule, schedule[1:], parts):
        probabilities, state = next_round(family, parameters, state, part, last_step, step, parts_count)
        result.append(probabilities)
    edges, last = state[1], parts[-1]
    mass = _pick(edges, last + 1) - _pick(edges, last)
    return result, jnp.log2(total.astype(jnp.float32)) - jnp.log2(mass.astype(jnp.float32))
