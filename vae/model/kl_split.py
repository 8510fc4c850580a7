"""What the KL term pays for: the KL term averaged over N images, split by the aggregate posterior.

With q(z) = (1/N) Σ_n q(z|x_n), the mixture of the N evaluated images' posteriors (Hoffman &
Johnson, 2016, "ELBO surgery"), the KL term splits exactly:

    (1/N) Σ_n KL(q(z|x_n) ‖ p(z)) = I_q(x; z) + KL(q(z) ‖ p(z)),

I_q(x; z) the mutual information between the image index n (uniform) and its code z: what the
code says about the image; KL(q(z) ‖ p(z)) the extra nats of coding z under a prior built for
another distribution than the codes the encoder emits. With a factorised prior the second part
splits again (Chen et al., 2018, β-TCVAE): KL(q(z) ‖ p(z)) = TC(q(z)) + Σ_j KL(q(z_j) ‖ p(z_j)),
TC = KL(q(z) ‖ Π_j q(z_j)) the total correlation of the aggregate posterior.

The estimators (`kl_split_terms`) are Monte Carlo averages over codes z ~ q(z|x_n), with log q(z)
and every log q(z_j) computed exactly against all N posteriors by log-sum-exp (O(N²·Z) work, in
chunks of rows so memory stays O(chunk·N·Z)); the only randomness is the draw of z. Their bias:

- For the N images' own mixture, each part is unbiased and its standard error is that of a mean of
  independent terms (the draws are independent given the posteriors): `summarize` reports it.
- As estimates of the population's I(x; z), with x drawn from the data rather than one of N
  images, I is biased low: its expectation is the InfoNCE lower bound (Poole et al., 2019), and
  it never exceeds log N, since the index n carries at most log N nats; so its error is at least
  I − log N, and a code that tells images apart sharply shows I ≈ log N whatever its true
  information. The leave-one-out form (`mutual_info_upper`: each code's own posterior left out
  of q(z)) is biased high, an upper bound in expectation; the two bracket the population's I,
  and the gap between them bounds the finite-N error. Both converge to I as N grows.
  KL(q(z) ‖ p(z)), and within it the total correlation, take I's bias with the opposite sign
  (I + KL(q(z) ‖ p(z)) is the unbiased KL term). The per-dimension marginals overlap far more, and their
  finite-N error is small (tests/test_kl_split.py: 0.003 nats at N = 6,400 on a 3-d linear model).

Pure functions of posterior means and log-variances and a prior's log-density; jit-friendly (all
shapes static). Imports nothing of the package but `vae.kl`. It lives in `vae.model`, beside the
priors whose `log_prob` (and `log_prob_per_dim`) it takes, because every evaluation epoch uses it
(`vae.train.evaluate`; `vae.train` may not import `vae.analysis`), and `vae.kl` keeps to closed
forms.
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from vae import kl

LogDensity = Callable[[jax.Array], jax.Array]
# Elements (rows x N x Z) of the per-dimension log densities held at once: 4 MB of float32, which
# stays in a CPU's cache (5x faster here than 64 MB for N = 1000, Z = 40).
CHUNK_ELEMENTS = 1 << 20


def rows_per_chunk(num_posteriors: int, latent_dim: int, multiple: int = 1,
                   chunk_elements: int = CHUNK_ELEMENTS) -> int:
    """Rows of codes compared with all posteriors at once: within `chunk_elements`, a multiple of
    `multiple` (the devices the rows are split over)."""
    rows = max(1, chunk_elements // max(1, num_posteriors * latent_dim))
    return max(multiple, rows - rows % multiple)


def aggregate_log_densities(z_RxZ: jax.Array, own_R: jax.Array, mean_NxZ: jax.Array,
                            log_var_NxZ: jax.Array, *, chunk_rows: int | None = None,
                            constrain_rows: Callable[[jax.Array], jax.Array] | None = None) -> dict:
    """log q(z), the leave-one-out log q_{-n}(z) and the marginals log q(z_j) of R codes under the
    mixture of N diagonal Gaussians, exactly (log-sum-exp over all N):

        joint_R          log (1/N) Σ_m q(z|x_m)
        leave_one_out_R  log (1/(N-1)) Σ_{m≠own} q(z|x_m)  (-inf where N = 1)
        marginal_RxZ     log (1/N) Σ_m q(z_j|x_m), each dimension j

    `own_R` is each code's own image (the posterior left out). Rows go `chunk_rows` at a time
    (`rows_per_chunk` by default) through `lax.map`; `constrain_rows` (e.g. a sharding constraint)
    is applied to each chunk of rows.
    """
    num_rows, latent_dim = z_RxZ.shape
    num = mean_NxZ.shape[0]
    chunk = min(chunk_rows or rows_per_chunk(num, latent_dim), num_rows)
    pad = (-num_rows) % chunk
    z_KxCxZ = jnp.pad(z_RxZ, ((0, pad), (0, 0))).reshape(-1, chunk, latent_dim)
    own_KxC = jnp.pad(own_R, (0, pad), constant_values=-1).reshape(-1, chunk)
    precision_NxZ = jnp.exp(-log_var_NxZ)
    columns_N = jnp.arange(num)

    def one_chunk(args):
        z_CxZ, own_C = args
        if constrain_rows is not None:
            z_CxZ, own_C = constrain_rows(z_CxZ), constrain_rows(own_C)
        log_q_CxNxZ = -0.5 * (kl.LOG_2PI + log_var_NxZ
                              + jnp.square(z_CxZ[:, None, :] - mean_NxZ) * precision_NxZ)
        log_q_CxN = jnp.sum(log_q_CxNxZ, axis=-1)
        others_CxN = jnp.where(columns_N == own_C[:, None], -jnp.inf, log_q_CxN)
        return (jax.nn.logsumexp(log_q_CxN, axis=-1) - math.log(num),
                jax.nn.logsumexp(others_CxN, axis=-1) - math.log(max(num - 1, 1)),
                jax.nn.logsumexp(log_q_CxNxZ, axis=1) - math.log(num))

    joint, leave_one_out, marginal = jax.lax.map(one_chunk, (z_KxCxZ, own_KxC))
    return {"joint_R": joint.reshape(-1)[:num_rows],
            "leave_one_out_R": leave_one_out.reshape(-1)[:num_rows],
            "marginal_RxZ": marginal.reshape(-1, latent_dim)[:num_rows]}


def kl_split_terms(key: jax.Array, mean_NxZ: jax.Array, log_var_NxZ: jax.Array, log_prior: LogDensity,
                   *, num_samples: int = 1, log_prior_per_dim: LogDensity | None = None,
                   chunk_rows: int | None = None,
                   constrain_rows: Callable[[jax.Array], jax.Array] | None = None) -> dict:
    """Per-code terms whose means are the parts of the KL term of N posteriors N(mean, exp(log_var)),
    for `num_samples` codes z ~ q(z|x_n) per image (R = num_samples · N rows, sample-major):

        kl_R                  log q(z|x_n) − log p(z): the KL term itself (mutual_info + marginal_kl)
        mutual_info_R         log q(z|x_n) − log q(z): I_q(x; z), at most log N
        mutual_info_upper_R   log q(z|x_n) − log q_{-n}(z): leave-one-out, an upper bound in expectation
        marginal_kl_R         log q(z) − log p(z): KL(q(z) ‖ p(z))
        total_correlation_R   log q(z) − Σ_j log q(z_j): TC(q(z))
        dimwise_kl_RxZ        log q(z_j) − log p(z_j): KL(q(z_j) ‖ p(z_j)), with `log_prior_per_dim`
                              (a factorised prior's log density per dimension, R x Z)

    `log_prior` maps R x Z codes to log p(z) (R). The bias of each mean: see the module docstring.
    """
    num, latent_dim = mean_NxZ.shape
    z_SxNxZ = kl.sample_gaussian(key, mean_NxZ, log_var_NxZ, num_samples)
    z_RxZ = z_SxNxZ.reshape(num_samples * num, latent_dim)
    own_R = jnp.tile(jnp.arange(num), num_samples)
    log_own_R = kl.gaussian_log_density(z_SxNxZ, mean_NxZ, log_var_NxZ).reshape(-1)
    log_q = aggregate_log_densities(z_RxZ, own_R, mean_NxZ, log_var_NxZ, chunk_rows=chunk_rows,
                                    constrain_rows=constrain_rows)
    log_prior_R = log_prior(z_RxZ)
    terms = {
        "kl_R": log_own_R - log_prior_R,
        "mutual_info_R": log_own_R - log_q["joint_R"],
        "mutual_info_upper_R": log_own_R - log_q["leave_one_out_R"],
        "marginal_kl_R": log_q["joint_R"] - log_prior_R,
        "total_correlation_R": log_q["joint_R"] - jnp.sum(log_q["marginal_RxZ"], axis=-1),
    }
    if log_prior_per_dim is not None:
        terms["dimwise_kl_RxZ"] = log_q["marginal_RxZ"] - log_prior_per_dim(z_RxZ)
    return terms


def summarize(terms: dict) -> dict:
    """Means of `kl_split_terms`' terms (suffix dropped) and the standard errors of the scalar ones
    (`NAME_std_error`: the rows are independent draws given the posteriors)."""
    summary = {}
    for name, values in terms.items():
        short = name.rsplit("_", 1)[0]
        summary[short] = jnp.mean(values, axis=0)
        if values.ndim == 1:
            summary[f"{short}_std_error"] = jnp.std(values, ddof=1) / math.sqrt(values.shape[0])
    return summary

