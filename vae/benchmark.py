"""Measurements of the trainer that `scripts/train.py` runs: throughput, compile time, step-time
percentiles, memory, evaluation speed, the machine's matmul ceiling, and a PyTorch reference.

Times on a shared machine are noisy: every figure is a median over repeats, and comparisons
(JAX vs PyTorch) alternate their runs in one process so drift hits both alike.
"""

import json
import os
import platform
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vae import data, evaluation, programs, sweep_program, workdir


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
        "versions": workdir.library_versions(),
    }
    try:
        import torch

        info["versions"]["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def _best_time(run, repeats: int) -> float:
    run()  # warm up (and compile)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_peak_flops(sizes=(1024, 2048), repeats: int = 5) -> float:
    """The machine's sustained fp32 matmul rate (FLOP/s): the best of JAX and NumPy's BLAS over
    square sizes, each the best of `repeats`. Training cannot beat this, so it is the ceiling."""
    matmul = jax.jit(jnp.matmul)
    best = 0.0
    for size in sizes:
        a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
        a_jax = jnp.asarray(a)
        jax_time = _best_time(lambda m=a_jax: matmul(m, m).block_until_ready(), repeats)
        numpy_time = _best_time(lambda m=a: m @ m, repeats)
        best = max(best, 2 * size**3 / min(jax_time, numpy_time))
    return best


def mlp_train_flops_per_image(config, image_dim: int) -> float | None:
    """Forward + backward matmul FLOPs per image of the MLP VAE (≈ 3 × forward); None for conv."""
    if config.model.arch != "mlp":
        return None
    hidden, z = tuple(config.model.hidden_dims), config.model.latent_dim
    enc = (image_dim, *hidden, 2 * z)
    dec = (z, *reversed(hidden), image_dim)
    macs = sum(a * b for a, b in zip(enc[:-1], enc[1:])) + sum(a * b for a, b in zip(dec[:-1], dec[1:]))
    return 3 * 2 * macs


def load_images(config, synthetic: bool) -> tuple[np.ndarray, np.ndarray, bool]:
    """(train, test) uint8 images as training sees them; random ones if synthetic."""
    if synthetic:
        rng = np.random.default_rng(0)
        return (rng.integers(0, 256, (60_000, 28, 28, 1), dtype=np.uint8),
                data.binarize_static(rng.integers(0, 256, (10_000, 28, 28, 1), dtype=np.uint8), 0),
                config.data.binarize == "dynamic")
    dataset = data.load_dataset(config.data)
    return dataset.train_images, dataset.test_images, dataset.dynamic


def percentiles(values, qs=(50, 90, 99)) -> dict:
    return {f"p{q}": float(np.percentile(values, q)) for q in qs}


class Trainer:
    """The compiled programs of one config on one set of devices, as train_and_evaluate builds them;
    with `members` (configs that differ in `programs.Hyper` numbers only), the sweep's one vmapped
    program over their stacked states, as `vae.sweep` builds it."""

    def __init__(self, config, train_images, test_images, dynamic: bool, devices=None, members=None,
                 loop: str = "auto"):
        self.config = config
        self.mesh = programs.make_mesh(devices)
        self.replicated = NamedSharding(self.mesh, P())
        self.num_train = len(train_images)
        self.steps = self.num_train // config.train.batch_size
        self.tx = programs.make_optimizer(config.train, self.steps)
        self.num_members = len(members) if members else 1
        states = [programs.init_state(c, train_images.shape[1:], self.tx) for c in members or [config]]
        self.graphdef = states[0][0]
        if members:
            self.state = sweep_program.stack([s for _, s in states], self.replicated)
        else:
            self.state = jax.device_put(states[0][1], self.replicated)
        self.train_images = programs.images_on_device(train_images, self.mesh)
        self.test_images = programs.images_on_device(test_images, self.mesh, config.eval.batch_size)
        self.dynamic = dynamic
        start = time.perf_counter()
        if members:
            self.epoch_fn = sweep_program.compile_members_epoch(self.graphdef, members, self.mesh, self.state,
                                                              self.train_images, dynamic, loop)
        else:
            self.epoch_fn = programs.compile_train_epoch(self.graphdef, config, self.mesh, self.state,
                                                         self.train_images, dynamic)
        self.epoch_loop = programs.epoch_loop(config)
        self.compile_sec = time.perf_counter() - start
        self.evaluate = programs.make_evaluate(self.graphdef, config, self.mesh)
        self.eval_key = programs.eval_key(config, "test")
        self.epochs_run = 0

    def _epoch(self, epoch: int):
        return jax.device_put(np.int32(epoch), self.replicated)

    def run_epoch(self) -> float:
        """Trains one epoch; returns images per second (of all members together). Also keeps
        `images_per_cpu_sec`: per second of this process's CPU time, all threads, which other
        processes on a shared machine disturb less than the wall clock."""
        self.epochs_run += 1
        start, start_cpu = time.perf_counter(), time.process_time()
        self.state, metrics = self.epoch_fn(self.state, self.train_images, self._epoch(self.epochs_run))
        jax.block_until_ready(metrics)
        images = self.num_members * self.steps * self.config.train.batch_size
        self.images_per_cpu_sec = images / (time.process_time() - start_cpu)
        return images / (time.perf_counter() - start)

    def step_times(self, num_steps: int) -> list[float]:
        """Seconds per step for the same step called one at a time from Python (dispatch included)."""
        train_step = programs.make_train_step(self.graphdef, self.config, self.steps, self.dynamic)
        hyper = programs.hyperparameters(self.config)
        step = jax.jit(lambda state, x_u8: train_step(state, x_u8, hyper), donate_argnums=0)
        batch_sharding = NamedSharding(self.mesh, P("data"))
        b = self.config.train.batch_size
        batches = [jax.device_put(self.train_images[i * b:(i + 1) * b], batch_sharding)
                   for i in range(min(num_steps, self.steps))]
        state, _ = step(self.state, batches[0])
        jax.block_until_ready(state)
        times = []
        for x in batches:
            start = time.perf_counter()
            state, metrics = step(state, x)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
        self.state = state
        return times

    def eval_images_per_sec(self, repeats: int = 3) -> float:
        jax.block_until_ready(self.evaluate(self.state.params, self.test_images, self.eval_key))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(self.evaluate(self.state.params, self.test_images, self.eval_key))
            times.append(time.perf_counter() - start)
        return self.test_images.shape[0] / statistics.median(times)

    def iwae_images_per_sec(self, test_images_u8: np.ndarray, k: int, num_images: int) -> float:
        from flax import nnx

        model = nnx.merge(self.graphdef, self.state.params)
        images = test_images_u8[:num_images]
        evaluation.iwae_log_likelihoods(model, images[:32], jax.random.key(0), k, progress=False)  # compile
        start = time.perf_counter()
        evaluation.iwae_log_likelihoods(model, images, jax.random.key(1), k, progress=False)
        return len(images) / (time.perf_counter() - start)


def peak_memory() -> dict:
    memory = {"host_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    stats = jax.devices()[0].memory_stats() if hasattr(jax.devices()[0], "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        memory["device_peak_mb"] = stats["peak_bytes_in_use"] / 2**20
    return memory


def write_json(path: str, results: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {path}")
