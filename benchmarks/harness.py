"""Measurements of what `scripts/train.py` and `scripts/evaluate.py` run: training throughput, the
negative-ELBO evaluation and the importance-weighted bound, each as a share of the machine's
matmul ceiling measured in the same process; compile time, step-time percentiles, memory, a
PyTorch reference, and (with a profile) where the time of a step goes.

Times on a shared machine are noisy: every figure is a median over repeats; comparisons (JAX vs
PyTorch) alternate their runs in one process so drift hits both alike; and on Linux each timed
repeat records how much of the CPU other processes took meanwhile (`others_cpu`), so a figure
measured beside someone else's job can be told apart.
"""

import json
import os
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from benchmarks import host, profiling
from vae.analysis import iwae
from vae.data import dataset, pixels
from vae.model import objectives
from vae.sweep import program
from vae.train import distributed, epoch, evaluate, state, step
from vae.train import loop as train_loop
from vae.workdir import files


def machine() -> dict:
    cpu = host.cpu_name()
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
        "versions": files.library_versions(),
    }
    try:
        import torch

        info["versions"]["torch"] = torch.__version__
    except ImportError:
        pass
    return info


# --- Timing on a shared machine --------------------------------------------------------------------


class OtherProcesses:
    """The share of all CPU time that other processes used while the block ran (Linux; else None)."""

    def __enter__(self):
        self.start = self._read()
        return self

    def __exit__(self, *exc):
        end = self._read()
        if self.start is None or end is None:
            self.share = None
        else:
            busy, total, mine = (b - a for a, b in zip(self.start, end))
            self.share = max(0.0, busy - mine) / max(1, total)
        return False

    @staticmethod
    def _read():
        try:
            with open("/proc/stat") as f:
                ticks = [int(v) for v in f.readline().split()[1:9]]
            with open(f"/proc/{os.getpid()}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        idle = ticks[3] + ticks[4]
        return sum(ticks) - idle, sum(ticks), int(fields[11]) + int(fields[12])


def timed(run, repeats: int, warmup: bool = True) -> dict:
    """Runs `run()` `repeats` times after a warm-up (unless it is warm already); median seconds,
    every time, others' CPU share."""
    if warmup:
        run()
    seconds, others = [], []
    for _ in range(repeats):
        with OtherProcesses() as other:
            start = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - start)
        others.append(other.share)
    return {"seconds": statistics.median(seconds), "all_seconds": seconds, "others_cpu": others}


def matmul_ceiling(repeats: int = 7, sizes=None) -> dict:
    """The machine's sustained fp32 matmul rate: a jitted N x N matmul (and NumPy's BLAS on a CPU),
    the median of `repeats` timings, the best over sizes and libraries. Nothing that multiplies
    matrices runs faster, so every throughput below is reported as a share of it."""
    backend = jax.default_backend()
    sizes = sizes or ((1024, 2048) if backend == "cpu" else (4096, 8192))
    matmul = jax.jit(jnp.matmul)
    per_size = {}
    for size in sizes:
        a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
        a_device = jnp.asarray(a)
        run_jax = lambda m=a_device: matmul(m, m).block_until_ready()
        rates = {"jax": 2 * size**3 / timed(run_jax, repeats)["seconds"] / 1e9}
        if backend == "cpu":
            rates["numpy"] = 2 * size**3 / timed(lambda m=a: m @ m, repeats)["seconds"] / 1e9
        per_size[str(size)] = rates
    best = max(rate for rates in per_size.values() for rate in rates.values())
    return {"gflops": best, "per_size_gflops": per_size}


# --- FLOPs of what is measured ---------------------------------------------------------------------


def flops(config, image_shape, iw_samples: int, num_devices: int = 1) -> dict:
    """Matmul FLOPs, counted on the traced programs at the shapes that run: per image of a train
    step (forward and backward) at the config's batch size and of the ELBO evaluation at its eval
    batch size; per importance sample of the decoder, the yardstick of the IWAE's speed, and of
    everything the IWAE computes per sample (the decoder, the encoder once per image and chunk, a
    VampPrior's components), at evaluate.py's batch and chunk sizes for `iw_samples`. The shapes
    matter for a VampPrior: its pseudo-inputs pass the encoder once per batch (or chunk)."""
    tx = state.make_optimizer(config.train, 1)
    graphdef, train_state = state.init_state(config, image_shape, tx)
    model = nnx.merge(graphdef, train_state.params)
    image_dim = int(np.prod(image_shape))
    key = jax.random.key(0)
    train_step = step.make_train_step(graphdef, config, 1, dynamic=True)
    hyper = state.hyperparameters(config)
    train_batch, eval_batch = config.train.batch_size, config.eval.batch_size
    iw_batch, iw_chunk = iwae.iwae_shapes(iw_samples, num_devices)
    iw_batch //= num_devices  # per device: what one device's program multiplies
    x_u8 = jnp.zeros((train_batch, image_dim), jnp.uint8)
    x_eval = jnp.zeros((eval_batch, image_dim), jnp.float32)
    x_iw = jnp.zeros((iw_batch, image_dim), jnp.float32)
    keys = objectives.sample_keys(key, jnp.arange(iw_batch), jnp.arange(iw_chunk))
    return {
        "train_per_image": profiling.matmul_flops(lambda s, x: train_step(s, x, key, hyper),
                                                  train_state, x_u8) / train_batch,
        "elbo_eval_per_image": profiling.matmul_flops(model.elbo_terms, x_eval, key) / eval_batch,
        "iwae_decoder_per_sample": profiling.matmul_flops(model.decode,
                                                          jnp.zeros((iw_batch, model.latent_dim))) / iw_batch,
        "iwae_per_sample": profiling.matmul_flops(lambda: model.iwae_log_weights(x_iw, keys))
        / (iw_batch * iw_chunk),
        "shapes": {"train_batch": train_batch, "eval_batch": eval_batch, "iw_batch_per_device": iw_batch,
                   "iw_chunk": iw_chunk},
    }


def load_images(config, synthetic: bool) -> tuple[np.ndarray, np.ndarray, bool]:
    """(train, test) uint8 images as training sees them; random ones if synthetic."""
    if synthetic:
        rng = np.random.default_rng(0)
        return (rng.integers(0, 256, (60_000, 28, 28, 1), dtype=np.uint8),
                pixels.binarize_static(rng.integers(0, 256, (10_000, 28, 28, 1), dtype=np.uint8), 0),
                config.data.binarize == "dynamic")
    data = dataset.load_dataset(config.data)
    return data.train_images, data.test_images, data.dynamic


def percentiles(values, qs=(50, 90, 99)) -> dict:
    return {f"p{q}": float(np.percentile(values, q)) for q in qs}


# --- The programs of a run ------------------------------------------------------------------------


class Trainer:
    """The compiled programs of one config on one set of devices, built as training builds them
    (`vae.train.loop.build`: the feed train.batch_source picks, the decoder's bias at the pixel means);
    with `members` (configs that differ in `state.Hyper` numbers only), a sweep's group of them as
    one program (`loop`: the member loop, see `vae.sweep.program`)."""

    def __init__(self, config, train_images, test_images, dynamic: bool, devices=None, members=None,
                 loop: str = "auto"):
        self.config = config
        self.configs = members or [config]
        data = dataset.Dataset("benchmark", train_images, np.zeros(len(train_images), np.int64), test_images,
                               np.zeros(len(test_images), np.int64), dynamic)
        mesh = distributed.make_mesh(devices)
        self.num_members = len(self.configs)
        self.built = (program.build(self.configs, data, mesh) if members
                      else train_loop.build(config, data, mesh))
        self.mesh, self.steps = mesh, self.built.steps_per_epoch
        self.graphdef = self.built.graphdef
        self.loop = program.member_loop(loop, self.num_members) if members else None
        states = [self.built.initial, *(self.built.init_state(c) for c in self.configs[1:])]
        self.carry = program.stack(states, self.loop, self.built.replicated) if members else states[0]
        self.source = self.built.source
        # The training set on the device (the device feed's own copy, else one of its own).
        self.train_images = (self.source.consts if self.source.consts is not None
                             else distributed.images_on_device(train_images, mesh))
        self.test_images_u8 = test_images
        self.test_images = distributed.images_on_device(test_images, mesh, config.eval.batch_size)
        self.dynamic = dynamic
        self.epoch_fn, self.compile_sec = self.built.compile_epoch(self.carry, self._body())
        self.epoch_loop = epoch.epoch_loop(config)
        self.evaluate = evaluate.make_evaluate(self.graphdef, config, mesh)
        self.eval_key = evaluate.eval_key(config.seed, "test")
        self.epochs_run = 0

    def _body(self):
        """The epoch's step body: one run's, or the members' (`program.members_body`)."""
        if self.loop is None:
            return self.built.body(state.hyperparameters(self.config))
        return program.members_body(self.built.train_step, self.configs, self.source.batch, self.loop)

    @property
    def state(self) -> state.TrainState:
        """The (first member's) state."""
        return self.carry if self.loop is None else program.member(self.carry, 0)

    def run_epoch(self) -> float:
        """Trains one epoch; returns its wall time in seconds. Also keeps `images_per_cpu_sec`
        (of all members together): per second of this process's CPU time, all threads, which other
        processes on a shared machine disturb less than the wall clock."""
        self.epochs_run += 1
        start, start_cpu = time.perf_counter(), time.process_time()
        self.carry, metrics = self.epoch_fn(self.carry, self.epochs_run)
        jax.block_until_ready(metrics)
        seconds = time.perf_counter() - start
        self.images_per_cpu_sec = self.images_per_epoch / (time.process_time() - start_cpu)
        return seconds

    @property
    def images_per_epoch(self) -> int:
        """Images one epoch trains, of all members together."""
        return self.num_members * self.steps * self.config.train.batch_size

    def step_times(self, num_steps: int) -> list[float]:
        """Seconds per step for the same step called one at a time from Python (dispatch included)."""
        train_step = self.built.train_step
        hyper = state.hyperparameters(self.config)

        def one_step(s, x_u8):
            return train_step(s, x_u8, step.step_key(hyper.seed, s.step), hyper)

        jitted = jax.jit(one_step, donate_argnums=0)
        batch_sharding = NamedSharding(self.mesh, P("data"))
        b = self.config.train.batch_size
        batches = [jax.device_put(self.train_images[i * b:(i + 1) * b], batch_sharding)
                   for i in range(min(num_steps, self.steps))]
        current, _ = jitted(self.state, batches[0])
        jax.block_until_ready(current)
        times = []
        for x in batches:
            start = time.perf_counter()
            current, metrics = jitted(current, x)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
        self.carry = current if self.loop is None else program.stack([current], self.loop)
        return times

    def evaluate_once(self):
        jax.block_until_ready(self.evaluate(self.state.params, self.test_images, self.eval_key))

    def iwae_run(self, k: int, num_images: int, batch_size=None, chunk_size=None):
        """A function that computes the IWAE bound of the first `num_images` test images, k samples."""
        model = nnx.merge(self.graphdef, self.state.params)
        images = self.test_images_u8[:num_images]
        options = {"batch_size": batch_size, "chunk_size": chunk_size,
                   "loop": epoch.epoch_loop(self.config), "progress": False}
        return lambda: iwae.iwae_log_likelihoods(model, images, state.root_key(1), k, **options)

    def iwae_hlo(self, k: int, batch_size=None, chunk_size=None) -> str:
        """The compiled IWAE program of one batch (scan loop) as HLO text."""
        batch_size, chunk_size = iwae.iwae_shapes(k, self.mesh.devices.size, batch_size, chunk_size)
        bound = iwae.make_iwae(self.graphdef, self.mesh, k, chunk_size, loop="scan")
        images = jnp.zeros((batch_size, self.train_images.shape[1]), jnp.uint8)
        key = state.root_key(0)
        bound(self.state.params, images, jnp.arange(batch_size, dtype=jnp.int32), key)
        return bound.compiled[images.shape, key.dtype].as_text()

    def epoch_hlo(self) -> str:
        """The compiled epoch program (scan loop) as HLO text, for `profiling.profile`."""
        return epoch.compile_loop(self._body(), "scan", self.mesh, self.carry, self.source.consts,
                                  self.source.abstract()).as_text()


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
