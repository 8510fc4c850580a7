"""Test-set likelihood of a trained workdir: the importance-weighted bound, the ELBO and its parts.

log p(x) ≥ log (1/k) Σ_i p(x, z_i) / q(z_i | x), z_i ~ q(z | x) (Burda et al., 2015): k = 1 is
the ELBO and the bound tightens as k grows; k = 5000 gives the headline numbers. The images are
split over the devices like training batches, and the k samples are taken in chunks so memory
stays bounded. The test set is the one training evaluates on (binarised once, fixed seed).
"""

import functools
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from vae.config import ConfigError
from vae.data import dataset, pixels
from vae.model import objectives
from vae.train import distributed
from vae.train.epoch import compile_loop, epoch_loop
from vae.train.evaluate import eval_key, make_evaluate, make_kl_split, summarize_eval, summarize_kl_split
from vae.train.state import stream_key
from vae.train.trained import checkpoint_used, load_trained

_IWAE_STREAM = 17


# Rows (samples x images) each device decodes at once. On a CPU the chunk's decoder output (rows x 784
# floats) should stay in cache between the decoder's last matmul and the likelihood that reads
# them; an accelerator wants large matmuls. See docs/speed.md (the chunk sizes measured).
_CHUNK_ROWS = {"cpu": 1024}
_CHUNK_ROWS_ACCELERATOR = 32768
_BATCH_PER_DEVICE = {"cpu": 32}
_BATCH_PER_DEVICE_ACCELERATOR = 256
# Images x samples the decoder holds at once, at most, where a batch or chunk size is given: about
# 6 GB of float32 pixels at 784 per image.
MAX_DRAWS_PER_CALL = 2_000_000


def iwae_shapes(num_samples: int, num_devices: int, batch_size: int | None = None,
                chunk_size: int | None = None, backend: str | None = None) -> tuple[int, int]:
    """(images per call, samples per chunk): the given ones, or this backend's defaults. The batch
    is a multiple of the device count; chunks are balanced so the last is not mostly padding.
    The estimate does not depend on either (up to float rounding). A given size whose product with
    the other exceeds `MAX_DRAWS_PER_CALL` is refused (ConfigError)."""
    given = batch_size is not None or chunk_size is not None
    backend = backend or jax.default_backend()
    if batch_size is None:
        batch_size = num_devices * _BATCH_PER_DEVICE.get(backend, _BATCH_PER_DEVICE_ACCELERATOR)
    batch_size = max(num_devices, batch_size - batch_size % num_devices)
    if chunk_size is None:
        rows = _CHUNK_ROWS.get(backend, _CHUNK_ROWS_ACCELERATOR)
        chunk_size = max(1, rows // (batch_size // num_devices))
    chunk_size = min(chunk_size, num_samples)
    if given and batch_size * chunk_size > MAX_DRAWS_PER_CALL:
        raise ConfigError(
            f"batch size x chunk size is the number of images the decoder holds at once, at most "
            f"{MAX_DRAWS_PER_CALL:,}; got {batch_size:,} x {chunk_size:,}: lower one of them")
    num_chunks = -(-num_samples // chunk_size)
    return batch_size, -(-num_samples // num_chunks)


@functools.lru_cache(maxsize=16)
def make_iwae(graphdef, mesh, num_samples: int, chunk_size: int, *, loop: str = "scan"):
    """(params, images_u8 B x D, image_index_B, key) -> per-image log p(x) lower bound (B): the
    chunks of samples through `epoch.compile_loop` (loop='scan': one compiled program per batch;
    'steps': one per chunk, for the conv model on CPU, see `epoch.epoch_loop`), compiled on the
    first call. Both give the same numbers. Cached, so evaluating the same model again does not
    compile again."""
    batch_sharding = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())
    num_chunks = -(-num_samples // chunk_size)
    chunk_indices = distributed.replicated(np.arange(num_chunks, dtype=np.int32), replicated)

    def body(running_lse_B, consts, chunk_index):
        params, images_u8, image_index_B, key = consts
        x = jax.lax.with_sharding_constraint(pixels.to_model_input(images_u8, None), batch_sharding)
        chunk_lse_B = objectives.iwae_chunk_logsumexp(nnx.merge(graphdef, params), x, key, image_index_B,
                                                      chunk_index, chunk_size, num_samples)
        return jnp.logaddexp(running_lse_B, chunk_lse_B), None

    finish = jax.jit(lambda lse_B: lse_B - math.log(num_samples), out_shardings=replicated)
    compiled = {}  # by the batch's shape and the key's type (jax.random's or vae.threefry's)

    def iwae(params, images_u8, image_index_B, key):
        lse_B = distributed.global_batch(np.full(images_u8.shape[:1], -np.inf, np.float32), batch_sharding)
        consts = (params, images_u8, image_index_B, key)
        signature = (images_u8.shape, key.dtype)
        if signature not in compiled:
            compiled[signature] = compile_loop(body, loop, mesh, lse_B, consts, chunk_indices,
                                               out_shardings=batch_sharding)
        lse_B, _ = compiled[signature](lse_B, consts, chunk_indices)
        return finish(lse_B)

    iwae.compiled = compiled  # the compiled programs, for benchmarks' HLO
    return iwae


def iwae_log_likelihoods(model, images_u8: np.ndarray, key: jax.Array, num_samples: int, *,
                         batch_size: int | None = None, chunk_size: int | None = None, devices=None,
                         loop: str = "scan", progress: bool = True) -> np.ndarray:
    """Per-image importance-weighted log-likelihood bounds (nats) of N x H x W x C uint8 images.

    Image i's draws depend only on (key, i, sample), not on the batch or chunk size (`loop`:
    see `make_iwae`). Batches are dispatched ahead: the device works on one while the previous
    result is read."""
    mesh = distributed.make_mesh(devices)
    batch_size, chunk_size = iwae_shapes(num_samples, mesh.devices.size, batch_size, chunk_size)
    graphdef, params = nnx.split(model)
    params = jax.device_put(params, NamedSharding(mesh, P()))
    iwae = make_iwae(graphdef, mesh, num_samples, chunk_size, loop=loop)
    padded = distributed.pad_to_multiple(distributed.flatten(images_u8), batch_size)
    batch_sharding = NamedSharding(mesh, P("data"))
    results = []
    with tqdm(total=images_u8.shape[0], unit="img", disable=not progress, file=sys.stderr,
              desc=f"IWAE k={num_samples}", dynamic_ncols=True) as bar:
        for start in range(0, padded.shape[0], batch_size):  # each process sends only its rows
            batch = distributed.global_batch(padded[start:start + batch_size], batch_sharding)
            index_B = np.arange(start, start + batch_size, dtype=np.int32)
            index = distributed.global_batch(index_B, batch_sharding)
            results.append(iwae(params, batch, index, key))
            if len(results) > 1:  # wait for the previous batch: the device keeps working on this one
                results[-2] = np.asarray(results[-2])
                bar.update(min(batch_size, images_u8.shape[0] - bar.n))
        results[-1] = np.asarray(results[-1])
        bar.update(images_u8.shape[0] - bar.n)
    return np.concatenate(results)[: images_u8.shape[0]]


def kl_split_of_test_set(graphdef, config, mesh, params, padded_images, num_examples: int) -> dict:
    """The KL split (`vae.model.kl_split`) on every one of the test images (rounded down to a
    multiple of the device count), their aggregate posterior against all of them: test/mutual_info
    (at most log N), test/marginal_kl, ... as in metrics.jsonl (`summarize_kl_split`)."""
    num = num_examples - num_examples % mesh.devices.size
    split = make_kl_split(graphdef, config, mesh, num)(params, padded_images, eval_key(config.seed, "test"))
    return summarize_kl_split(jax.device_get(split), num, "test")


def evaluate_workdir(workdir: str | Path, num_samples: int = 5000, *, epoch: int | None = None,
                     checkpoint: str = "best", batch_size: int | None = None,
                     chunk_size: int | None = None,
                     max_examples: int | None = None,
                     devices=None, progress: bool = True) -> dict:
    """The test-set NLL (IWAE bound), negative ELBO, its parts, bits/dim, active units and the KL
    term's split into I_q(x; z) and KL(q(z) ‖ p(z)) over the whole test set, of the best checkpoint
    (by validation ELBO; the latest where the run has no validation split), the
    latest (`checkpoint='latest'`) or one epoch's."""
    if num_samples < 1:
        raise ValueError(f"the number of importance samples must be >= 1, got {num_samples}")
    config, model, restored_epoch = load_trained(workdir, epoch, checkpoint)
    images, _ = dataset.load_test_set(config.data)
    if max_examples is not None:
        images = images[: max(2, max_examples)]
    num_pixels = math.prod(images.shape[1:])
    mesh = distributed.make_mesh(devices)
    graphdef, params = nnx.split(model)
    params = jax.device_put(params, NamedSharding(mesh, P()))

    start = time.perf_counter()
    evaluate = make_evaluate(graphdef, config, mesh)
    padded = distributed.images_on_device(images, mesh, config.eval.batch_size)
    terms = jax.device_get(evaluate(params, padded, eval_key(config.seed, "test")))
    result = {"epoch": restored_epoch, "checkpoint": checkpoint_used(workdir, epoch, checkpoint),
              "num_examples": int(images.shape[0])}
    result |= summarize_eval(terms, images.shape[0], num_pixels, config.eval.active_unit_threshold,
                             layer_sizes=model.latent_dims)
    t_split = time.perf_counter()
    result |= kl_split_of_test_set(graphdef, config, mesh, params, padded, images.shape[0])
    result["kl_split_time_sec"] = time.perf_counter() - t_split

    key = stream_key(config.seed, _IWAE_STREAM)
    t_iwae = time.perf_counter()
    log_px = iwae_log_likelihoods(model, images, key, num_samples, batch_size=batch_size,
                                  chunk_size=chunk_size, devices=devices, progress=progress,
                                  loop=epoch_loop(config))
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
