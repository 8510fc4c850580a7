"""The training objectives (β-ELBO with warm-up and free bits, and the importance-weighted
bound), and the IWAE estimate of log p(x).

Every likelihood figure is in nats per image. `rec` is the reconstruction negative log-likelihood
-log p(x|z) for one posterior sample, `kl` the KL term (exact where a closed form exists, see
`priors`), and the negative ELBO is rec + kl (β = 1): an upper bound on -log p(x). The
objectives take any model with `elbo_terms`, `log_weights` and `iwae_log_weights`
(`vae.model.vae`). Imports nothing of the package.
"""

import math

import jax
import jax.numpy as jnp

OBJECTIVES = ("elbo", "iwae")


def kl_weight(step: jax.Array, beta: float | jax.Array, warmup_steps: float | jax.Array) -> jax.Array:
    """β scaled by a linear warm-up from 0 over `warmup_steps` optimiser steps (none if 0).

    No Python branch on the values, so both may be traced (a sweep's members differ in them). The
    step is an integer, so dividing by max(warmup_steps, 1) changes nothing for warm-ups under one
    step: the ramp is 0 at step 0 and 1 after."""
    ramp = jnp.minimum(1.0, step.astype(jnp.float32) / jnp.maximum(warmup_steps, 1.0))
    return beta * jnp.where(jnp.asarray(warmup_steps) > 0, ramp, 1.0)


def free_bits_kl(kl_per_dim_BxZ: jax.Array, free_bits: float) -> jax.Array:
    """Σ_z max(λ, E_batch[KL_z]): the KL term with a per-dimension floor λ (Kingma et al., 2016).

    With λ = 0 this is the batch mean of the summed KL. Dimensions below the floor get no
    gradient from the KL term, so the encoder is free to use them.
    """
    kl_per_dim_Z = jnp.mean(kl_per_dim_BxZ, axis=0)
    return jnp.sum(jnp.maximum(kl_per_dim_Z, free_bits))


def elbo_loss(model, x_BxD: jax.Array, key: jax.Array, beta: jax.Array,
              free_bits: float | jax.Array = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Batch mean of rec + β·KL (with the free-bits floor); aux holds the unweighted batch means.
    A traced `free_bits` (a sweep's members differ in it) selects the floor or none per member."""
    terms = model.elbo_terms(x_BxD, key)
    rec, kl_mean = jnp.mean(terms["rec"]), jnp.mean(terms["kl"])
    if isinstance(free_bits, jax.Array):
        kl_term = jnp.where(free_bits > 0, free_bits_kl(terms["kl_per_dim"], free_bits), kl_mean)
    else:
        kl_term = free_bits_kl(terms["kl_per_dim"], free_bits) if free_bits > 0 else kl_mean
    loss = rec + beta * kl_term
    return loss, {"loss": loss, "rec": rec, "kl": kl_mean, "elbo": rec + kl_mean}


def log_mean_exp(log_w_KxB: jax.Array) -> jax.Array:
    """log (1/K) Σ_k exp(log_w_k) over the leading axis."""
    return jax.nn.logsumexp(log_w_KxB, axis=0) - math.log(log_w_KxB.shape[0])


def iwae_loss(model, x_BxD: jax.Array, key: jax.Array, beta: jax.Array,
              num_samples: int) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The negative importance-weighted bound with k = num_samples (Burda et al., 2015), batch mean.

    The weights are log p(x|z) + β·(log p(z) − log q(z|x)), so the KL warm-up works as for the
    ELBO; with k = 1 and β = 1 this is the single-sample ELBO with a Monte Carlo KL. aux: the
    bound itself (`iwae`, with β = 1) and the single-sample terms averaged over the k draws.
    """
    w = model.log_weights(x_BxD, key, num_samples)
    loss = -jnp.mean(log_mean_exp(w["log_lik"] + beta * w["log_ratio"]))
    rec, kl_mean = -jnp.mean(w["log_lik"]), -jnp.mean(w["log_ratio"])
    iwae = -jnp.mean(log_mean_exp(w["log_lik"] + w["log_ratio"]))
    return loss, {"loss": loss, "rec": rec, "kl": kl_mean, "elbo": rec + kl_mean, "iwae": iwae}


def training_loss(model, x_BxD: jax.Array, key: jax.Array, beta: jax.Array, *, objective: str = "elbo",
                  free_bits: float = 0.0, num_samples: int = 1):
    """The objective the config names: 'elbo' (β, free bits) or 'iwae' (k = num_samples, β)."""
    if objective == "iwae":
        return iwae_loss(model, x_BxD, key, beta, num_samples)
    return elbo_loss(model, x_BxD, key, beta, free_bits)


# --- The importance-weighted estimate of log p(x), for evaluation ---------------------------------
#
# Sample s of image i is drawn with the key fold_in(fold_in(key, i), s), i the image's index in the
# evaluated set: every draw is a pure function of (key, image, sample), so the estimate does not
# depend on how the images are batched, the samples chunked or the batch sharded, up to the order
# of float summation. It is what the previous implementation computed with one image per batch and
# one sample per chunk (`tests/test_iwae.py` pins those numbers).


def sample_keys(key: jax.Array, image_index_B: jax.Array, sample_index_C: jax.Array) -> jax.Array:
    """C x B keys: fold_in(fold_in(key, image), sample) for each sample and image index."""
    image_keys_B = jax.vmap(jax.random.fold_in, (None, 0))(key, image_index_B)
    return jax.vmap(lambda s: jax.vmap(jax.random.fold_in, (0, None))(image_keys_B, s))(sample_index_C)


def log_weights_by_key(model, x_BxD: jax.Array, keys_CxB: jax.Array) -> jax.Array:
    """log p(x, z) − log q(z|x), C x B, one draw per key, through the model's own `log_weights`: works
    for every model. (Each draw is `log_weights(x_i, key, 1)`; vmap batches the decoder over all.)"""

    def one(x_D, key):
        w = model.log_weights(x_D[None], key, 1)
        return (w["log_lik"] + w["log_ratio"])[0, 0]

    return jax.vmap(jax.vmap(one), (None, 0))(x_BxD, keys_CxB)


def iwae_chunk_logsumexp(model, x_BxD: jax.Array, key: jax.Array, image_index_B: jax.Array,
                         chunk_index: jax.Array, chunk_size: int, num_samples: int) -> jax.Array:
    """log Σ exp(log w) over samples chunk_index·C ... (chunk_index + 1)·C − 1 of each image (B),
    samples past num_samples left out; the model's `iwae_log_weights` gives the C x B weights."""
    sample_index_C = chunk_index * chunk_size + jnp.arange(chunk_size)
    log_w_CxB = model.iwae_log_weights(x_BxD, sample_keys(key, image_index_B, sample_index_C))
    log_w_CxB = jnp.where((sample_index_C < num_samples)[:, None], log_w_CxB, -jnp.inf)
    return jax.nn.logsumexp(log_w_CxB, axis=0)


def iwae_log_likelihood(model, x_BxD: jax.Array, key: jax.Array, num_samples: int,
                        chunk_size: int = 100, *, image_index_B: jax.Array | None = None) -> jax.Array:
    """Importance-weighted lower bound on log p(x) per example (Burda et al., 2015).

    log (1/k) Σ_i p(x, z_i) / q(z_i|x) over k = num_samples posterior draws, accumulated as a
    running log-sum-exp over chunks of `chunk_size` draws so memory does not grow with k. With
    k = 1 it is a one-sample ELBO; it tightens towards log p(x) as k grows. `image_index_B` are
    the images' indices in the evaluated set (default 0 ... B − 1); they and `key` fix every draw.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if image_index_B is None:
        image_index_B = jnp.arange(x_BxD.shape[0])
    chunk = min(chunk_size, num_samples)

    def accumulate(running_lse_B, chunk_index):
        chunk_lse_B = iwae_chunk_logsumexp(model, x_BxD, key, image_index_B, chunk_index, chunk, num_samples)
        return jnp.logaddexp(running_lse_B, chunk_lse_B), None

    init_B = jnp.full(x_BxD.shape[:1], -jnp.inf, dtype=jnp.float32)
    lse_B, _ = jax.lax.scan(accumulate, init_B, jnp.arange(-(-num_samples // chunk)))
    return lse_B - math.log(num_samples)
