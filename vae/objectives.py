"""Per-example ELBO pieces, the β / warm-up / free-bits training objective, and the IWAE bound.

Every likelihood figure is in nats per image. `rec` is the reconstruction negative log-likelihood
-log p(x|z) for one posterior sample, `kl` is KL(q(z|x) ‖ p(z)) in closed form, and the negative
ELBO is rec + kl (β = 1): an upper bound on -log p(x).
"""

import math

import jax
import jax.numpy as jnp

from vae import kl


def bernoulli_nll(logits: jax.Array, x: jax.Array) -> jax.Array:
    """-log Bernoulli(x | sigmoid(logits)), summed over the last axis (pixels): one value per image.

    softplus(l) − x·l is exact for x ∈ {0, 1} and costs one softplus per pixel (the usual
    two-log-sigmoid form costs two). For grey levels in (0, 1) it is a cross-entropy, not a
    log-likelihood.
    """
    return jnp.sum(jax.nn.softplus(logits) - x * logits, axis=-1)


def kl_weight(step: jax.Array, beta: float, warmup_steps: float) -> jax.Array:
    """β scaled by a linear warm-up from 0 over `warmup_steps` optimiser steps (none if 0)."""
    if warmup_steps <= 0:
        return jnp.asarray(beta, jnp.float32)
    return beta * jnp.minimum(1.0, step.astype(jnp.float32) / warmup_steps)


def free_bits_kl(kl_per_dim_BxZ: jax.Array, free_bits: float) -> jax.Array:
    """Σ_z max(λ, E_batch[KL_z]): the KL term with a per-dimension floor λ (Kingma et al., 2016).

    With λ = 0 this is the batch mean of the summed KL. Dimensions below the floor get no
    gradient from the KL term, so the encoder is free to use them.
    """
    kl_per_dim_Z = jnp.mean(kl_per_dim_BxZ, axis=0)
    return jnp.sum(jnp.maximum(kl_per_dim_Z, free_bits))


def elbo_terms(model, x_BxD: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
    """Per-example rec (B), kl_per_dim (B x Z) and the posterior mean (B x Z), one sample each."""
    logits, mean_BxZ, log_var_BxZ, _ = model(x_BxD, key)
    return {
        "rec": bernoulli_nll(logits, x_BxD),
        "kl_per_dim": kl.standard_normal_kl_per_dim(mean_BxZ, log_var_BxZ),
        "mean": mean_BxZ,
    }


def training_loss(model, x_BxD: jax.Array, key: jax.Array, beta: jax.Array,
                  free_bits: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Batch mean of rec + β·KL (with the free-bits floor); aux holds the unweighted batch means."""
    terms = elbo_terms(model, x_BxD, key)
    rec = jnp.mean(terms["rec"])
    kl_mean = jnp.mean(jnp.sum(terms["kl_per_dim"], axis=-1))
    loss = rec + beta * free_bits_kl(terms["kl_per_dim"], free_bits)
    return loss, {"loss": loss, "rec": rec, "kl": kl_mean, "elbo": rec + kl_mean}


def importance_log_weights(model, x_BxD: jax.Array, mean_BxZ: jax.Array,
                           log_var_BxZ: jax.Array, key: jax.Array, num_samples: int) -> jax.Array:
    """log p(x|z) + log p(z) − log q(z|x) for num_samples posterior draws: num_samples x B."""
    z_KxBxZ = kl.sample_gaussian(key, mean_BxZ, log_var_BxZ, num_samples)
    k, b, z_dim = z_KxBxZ.shape
    logits_KxBxD = model.decode(z_KxBxZ.reshape(k * b, z_dim)).reshape(k, b, -1)
    log_px_given_z = -bernoulli_nll(logits_KxBxD, x_BxD[None])
    zeros = jnp.zeros_like(z_KxBxZ)
    log_pz = kl.gaussian_log_density(z_KxBxZ, zeros, zeros)
    log_qz = kl.gaussian_log_density(z_KxBxZ, mean_BxZ, log_var_BxZ)
    return log_px_given_z + log_pz - log_qz


def iwae_log_likelihood(model, x_BxD: jax.Array, key: jax.Array, num_samples: int,
                        chunk_size: int = 100) -> jax.Array:
    """Importance-weighted lower bound on log p(x) per example (Burda et al., 2015).

    log (1/k) Σ_i p(x, z_i) / q(z_i|x) over k = num_samples posterior draws, accumulated as a
    running log-sum-exp over chunks of `chunk_size` draws so memory does not grow with k. With
    k = 1 it is a one-sample ELBO; it tightens towards log p(x) as k grows.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    chunk = min(chunk_size, num_samples)
    num_chunks = -(-num_samples // chunk)
    mean_BxZ, log_var_BxZ = model.encode(x_BxD)

    def accumulate(running_lse_B, chunk_index):
        log_w_CxB = importance_log_weights(
            model, x_BxD, mean_BxZ, log_var_BxZ, jax.random.fold_in(key, chunk_index), chunk)
        sample_index = chunk_index * chunk + jnp.arange(chunk)
        log_w_CxB = jnp.where((sample_index < num_samples)[:, None], log_w_CxB, -jnp.inf)
        chunk_lse_B = jax.nn.logsumexp(log_w_CxB, axis=0)
        return jnp.logaddexp(running_lse_B, chunk_lse_B), None

    init_B = jnp.full(x_BxD.shape[:1], -jnp.inf, dtype=mean_BxZ.dtype)
    lse_B, _ = jax.lax.scan(accumulate, init_B, jnp.arange(num_chunks))
    return lse_B - math.log(num_samples)
