"""Test-set likelihood of a trained workdir: the importance-weighted bound, the ELBO and its parts.

log p(x) ≥ log (1/k) Σ_i p(x, z_i) / q(z_i | x), z_i ~ q(z | x) (Burda et al., 2015): k = 1 is
the ELBO and the bound tightens as k grows; k = 5000 gives the headline numbers. The images are
split over the devices like training batches, and the k samples are taken in chunks so memory
stays bounded. The test set is the one training evaluates on (binarised once, fixed seed).
"""

import math
import sys
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from vae import data, distributed, objectives, programs, train

_IWAE_STREAM = 17


def encode_images(model, images_u8: np.ndarray, batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means and log-variances (N x Z each) of N x H x W x C uint8 images."""
    encode = jax.jit(lambda x_u8: model.encode(data.to_model_input(x_u8, None)))
    flat = programs.flatten(images_u8)
    parts = [jax.device_get(encode(flat[i:i + batch_size])) for i in range(0, len(flat), batch_size)]
    return (np.concatenate([m for m, _ in parts]), np.concatenate([lv for _, lv in parts]))


def project_2d(points_NxZ: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The points themselves if Z = 2, else their first two principal components; and the share
    of variance each axis explains."""
    centred = points_NxZ - points_NxZ.mean(axis=0)
    if points_NxZ.shape[1] == 2:
        variance = centred.var(axis=0)
        return points_NxZ, variance / variance.sum()
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    explained = singular**2 / np.sum(singular**2)
    return centred @ vt[:2].T, explained[:2]


def make_iwae(graphdef, mesh, num_samples: int, chunk_size: int):
    """A jitted (params, images_u8 B x D, key) -> per-image log p(x) lower bound (B)."""
    batch_sharding = NamedSharding(mesh, P("data"))

    def iwae(params, images_u8, key):
        model = nnx.merge(graphdef, params)
        x = jax.lax.with_sharding_constraint(data.to_model_input(images_u8, None), batch_sharding)
        return objectives.iwae_log_likelihood(model, x, key, num_samples, chunk_size)

    return jax.jit(iwae, out_shardings=NamedSharding(mesh, P()))


def iwae_log_likelihoods(model, images_u8: np.ndarray, key: jax.Array, num_samples: int, *,
                         batch_size: int = 32, chunk_size: int = 250, devices=None,
                         progress: bool = True) -> np.ndarray:
    """Per-image importance-weighted log-likelihood bounds (nats) of N x H x W x C uint8 images."""
    mesh = programs.make_mesh(devices)
    num_devices = mesh.devices.size
    batch_size = max(num_devices, batch_size - batch_size % num_devices)
    graphdef, params = nnx.split(model)
    replicated = NamedSharding(mesh, P())
    params = jax.device_put(params, replicated)
    iwae = make_iwae(graphdef, mesh, num_samples, chunk_size)
    padded = programs.pad_to_multiple(programs.flatten(images_u8), batch_size)
    batches = padded.reshape(-1, batch_size, padded.shape[-1])
    results = []
    with tqdm(total=images_u8.shape[0], unit="img", disable=not progress, file=sys.stderr,
              desc=f"IWAE k={num_samples}", dynamic_ncols=True) as bar:
        for index, batch in enumerate(batches):
            batch = distributed.global_batch(batch, NamedSharding(mesh, P("data")))  # this process's rows
            results.append(iwae(params, batch, jax.random.fold_in(key, index)))
            if index > 0:  # read the previous result: the device keeps working on this one
                bar.update(len(np.asarray(results[-2])))
        bar.update(images_u8.shape[0] - bar.n)
    return np.concatenate([np.asarray(r) for r in results])[: images_u8.shape[0]]


def evaluate_workdir(workdir: str | Path, num_samples: int = 5000, *, epoch: int | None = None,
                     checkpoint: str = "best", batch_size: int = 32, chunk_size: int = 250,
                     max_examples: int | None = None,
                     devices=None, progress: bool = True) -> dict:
    """The test-set NLL (IWAE bound), negative ELBO, its parts, bits/dim and active units, of the
    best checkpoint (by validation ELBO; the latest where the run has no validation split), the
    latest (`checkpoint='latest'`) or one epoch's."""
    if num_samples < 1:
        raise ValueError(f"the number of importance samples must be >= 1, got {num_samples}")
    config, model, restored_epoch = train.load_trained(workdir, epoch, checkpoint)
    images, _ = data.load_test_set(config.data)
    if max_examples is not None:
        images = images[: max(2, max_examples)]
    num_pixels = math.prod(images.shape[1:])
    mesh = programs.make_mesh(devices)
    graphdef, params = nnx.split(model)
    params = jax.device_put(params, NamedSharding(mesh, P()))

    start = time.perf_counter()
    evaluate = programs.make_evaluate(graphdef, config, mesh)
    padded = programs.images_on_device(images, mesh, config.eval.batch_size)
    terms = jax.device_get(evaluate(params, padded, programs.eval_key(config, "test")))
    result = {"epoch": restored_epoch, "checkpoint": train.checkpoint_used(workdir, epoch, checkpoint),
              "num_examples": int(images.shape[0])}
    result |= train.summarize_eval(terms, images.shape[0], num_pixels, config.eval.active_unit_threshold)

    key = jax.random.fold_in(programs.root_key(config.seed), _IWAE_STREAM)
    t_iwae = time.perf_counter()
    log_px = iwae_log_likelihoods(model, images, key, num_samples, batch_size=batch_size,
                                  chunk_size=chunk_size, devices=devices, progress=progress)
    iwae_time = time.perf_counter() - t_iwae
    nll = -float(np.mean(log_px, dtype=np.float64))
    result |= {
        "iw_samples": num_samples,
        "test/nll": nll,
        "test/nll_std_error": float(np.std(log_px, ddof=1) / math.sqrt(len(log_px))),
        "test/nll_bits_per_dim": nll / (num_pixels * math.log(2.0)),
        "iwae_time_sec": iwae_time,
        "iwae_images_per_sec": images.shape[0] / iwae_time,
        "time_sec": time.perf_counter() - start,
    }
    return result
