"""KL divergence, entropy and cross-entropy, discrete and diagonal-Gaussian, in exact closed form.

KL(P‖Q) = Σ p log(p/q) is the extra surprise of describing data from P with a model Q: the
cross-entropy H(P, Q) minus the entropy H(P). It is zero iff P = Q, it is not symmetric, and
0·log 0 = 0, while KL = +inf where Q gives zero probability to something P can produce.

Discrete functions take probability vectors along the last axis; their inputs are checked (when
they are concrete, i.e. not traced under `jax.jit`) and give nats by default, bits on request.
Gaussian functions take means and log-variances; `*_per_dim` variants keep the last axis.
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import rel_entr, xlogy

LOG_2PI = math.log(2.0 * math.pi)
_UNITS = {"nats": 1.0, "bits": 1.0 / math.log(2.0)}


def _unit_factor(unit: str) -> float:
    if unit not in _UNITS:
        raise ValueError(f"unit must be one of {sorted(_UNITS)}, got {unit!r}")
    return _UNITS[unit]


def _check_distribution(p, name: str, atol: float) -> jax.Array:
    """Returns p as an array; raises ValueError if concrete p is not a probability vector."""
    p = jnp.asarray(p, dtype=jnp.result_type(float))
    if p.ndim == 0:
        raise ValueError(f"{name} must have at least one axis of outcomes, got a scalar")
    if isinstance(p, jax.core.Tracer):
        return p  # values are unknown under tracing; shapes were checked
    p_np = np.asarray(p)
    if not np.all(np.isfinite(p_np)):
        raise ValueError(f"{name} has non-finite entries: {p_np}")
    if np.any(p_np < 0):
        raise ValueError(f"{name} has negative entries: {p_np}")
    sums = p_np.sum(axis=-1)
    if not np.allclose(sums, 1.0, atol=atol, rtol=0.0):
        raise ValueError(f"{name} must sum to 1 along its last axis (within {atol}); sums are {sums}")
    return p


def _check_pair(p, q, atol: float) -> tuple[jax.Array, jax.Array]:
    p = _check_distribution(p, "P", atol)
    q = _check_distribution(q, "Q", atol)
    if p.shape != q.shape:
        raise ValueError(f"P and Q must have the same shape, got {p.shape} and {q.shape}")
    return p, q


def entropy(p, *, unit: str = "nats", atol: float = 1e-5) -> jax.Array:
    """H(P) = -Σ p log p, with 0·log 0 = 0."""
    p = _check_distribution(p, "P", atol)
    return (0.0 - jnp.sum(xlogy(p, p), axis=-1)) * _unit_factor(unit)  # 0.0 - x: no "-0.0"


def cross_entropy(p, q, *, unit: str = "nats", atol: float = 1e-5) -> jax.Array:
    """H(P, Q) = -Σ p log q = H(P) + KL(P‖Q); +inf where q = 0 < p."""
    p, q = _check_pair(p, q, atol)
    return -jnp.sum(xlogy(p, q), axis=-1) * _unit_factor(unit)


def kl_divergence(p, q, *, unit: str = "nats", atol: float = 1e-5) -> jax.Array:
    """KL(P‖Q) = Σ p log(p/q), with 0·log(0/q) = 0 and +inf where q = 0 < p."""
    p, q = _check_pair(p, q, atol)
    return jnp.sum(rel_entr(p, q), axis=-1) * _unit_factor(unit)


# Diagonal Gaussians N(mean, exp(log_var)), one factor per entry of the last axis.


def standard_normal_kl_per_dim(mean, log_var) -> jax.Array:
    """KL(N(mean, exp(log_var)) ‖ N(0, 1)) for each dimension.

    0.5·(mean² + σ² − 1 − log σ²), with σ² − 1 − log σ² written as expm1(log σ²) − log σ² so that
    nearly-collapsed dimensions (σ² ≈ 1) keep their precision instead of cancelling to 0.
    """
    mean, log_var = jnp.asarray(mean), jnp.asarray(log_var)
    return 0.5 * (jnp.square(mean) + jnp.expm1(log_var) - log_var)


def gaussian_kl_per_dim(mean_p, log_var_p, mean_q, log_var_q) -> jax.Array:
    """KL(N(mean_p, σ_p²) ‖ N(mean_q, σ_q²)) for each dimension.

    0.5·(log σ_q² − log σ_p² + (σ_p² + (mean_p − mean_q)²) / σ_q² − 1).
    """
    log_ratio = jnp.asarray(log_var_p) - jnp.asarray(log_var_q)
    mahalanobis = jnp.square(jnp.asarray(mean_p) - jnp.asarray(mean_q)) * jnp.exp(-log_var_q)
    return 0.5 * (jnp.expm1(log_ratio) - log_ratio + mahalanobis)


def gaussian_kl(mean_p, log_var_p, mean_q, log_var_q) -> jax.Array:
    """KL between two diagonal Gaussians, summed over the last axis."""
    return jnp.sum(gaussian_kl_per_dim(mean_p, log_var_p, mean_q, log_var_q), axis=-1)


def gaussian_log_density(x, mean, log_var) -> jax.Array:
    """log N(x; mean, diag exp(log_var)), summed over the last axis."""
    x, mean, log_var = jnp.asarray(x), jnp.asarray(mean), jnp.asarray(log_var)
    return -0.5 * jnp.sum(LOG_2PI + log_var + jnp.square(x - mean) * jnp.exp(-log_var), axis=-1)


def sample_gaussian(key: jax.Array, mean, log_var, num_samples: int | None = None) -> jax.Array:
    """Reparameterised samples mean + σ·ε, ε ~ N(0, I); a leading axis of num_samples if given."""
    mean, log_var = jnp.asarray(mean), jnp.asarray(log_var)
    shape = jnp.broadcast_shapes(mean.shape, log_var.shape)
    if num_samples is not None:
        shape = (num_samples, *shape)
    eps = jax.random.normal(key, shape, dtype=mean.dtype)
    return mean + jnp.exp(0.5 * log_var) * eps


def monte_carlo_kl(
    key: jax.Array,
    sample_p: Callable[[jax.Array, int], jax.Array],
    log_p: Callable[[jax.Array], jax.Array],
    log_q: Callable[[jax.Array], jax.Array],
    num_samples: int,
) -> tuple[jax.Array, jax.Array]:
    """Unbiased estimate of KL(P‖Q) = E_P[log p(x) − log q(x)] and its standard error.

    `sample_p(key, n)` draws n samples along axis 0; `log_p` and `log_q` map samples to log
    densities (or log probabilities). Used to check the closed forms, and where none exists.
    """
    if num_samples < 2:
        raise ValueError(f"num_samples must be >= 2 to estimate a standard error, got {num_samples}")
    x = sample_p(key, num_samples)
    log_ratio = log_p(x) - log_q(x)
    estimate = jnp.mean(log_ratio, axis=0)
    std_error = jnp.std(log_ratio, axis=0, ddof=1) / math.sqrt(num_samples)
    return estimate, std_error
