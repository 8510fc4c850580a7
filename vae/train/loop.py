"""THE training loop of one run (`train_and_evaluate`): the set-up (`build`: the optimizer, the
initial state, the feed, the compiled epoch, the evaluators; a sweep and the benchmarks build
through it too), then epoch after epoch the train step over the epoch's batches (`epoch.py`, the
batches from `feed.py`), evaluation on the validation and test splits (`evaluate.py`), model
selection with early stopping, checkpoints and metrics (`run_dir.py`). A sweep (`vae.sweep.program`)
trains several runs as one program with the same per-epoch pieces (`run_epoch`, `epoch_record`,
`evaluation`, `end_epoch`).

Model selection follows the published protocol: the validation split (carved from the training
data) is evaluated every epoch, the parameters with the lowest validation negative ELBO are kept as
the "best" checkpoint beside the latest ones, and the run stops once its validation ELBO has not
improved for `train.early_stopping_patience` epochs after the KL warm-up. Everything this needs is
derived from metrics.jsonl, so a resumed run makes the same choices as an uninterrupted one. A
non-finite loss stops the run; its last good checkpoint is kept.

A run over several processes (`distributed.py`) runs this same loop in every process: all of them
compute the same metrics from replicated outputs, so they take the same decisions and make the same
checkpoint calls in the same order; only process 0 writes metrics.jsonl and config.json and prints.
"""

import contextlib
import dataclasses
import functools
import signal
import sys
import threading
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from vae.config import ConfigError, validate_config, validate_image_shape
from vae.data import dataset
from vae.train import distributed, epoch, feed, pictures, state
from vae.train.evaluate import Evaluator, make_evaluators
from vae.train.run_dir import RunDir, skip_line
from vae.train.step import make_train_step
from vae.workdir import faults, files, lock


class Interrupted(RuntimeError):
    """SIGINT or SIGTERM stopped the run at an epoch boundary, after a checkpoint was written."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopRequests:
    """Records SIGINT/SIGTERM instead of dying mid-write; a second signal stops at once."""

    def __init__(self, announce: bool = True):
        self.signum = None
        self.announce = announce
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # asked twice: abandon the epoch, keep the last checkpoint
            raise KeyboardInterrupt
        self.signum = signum
        if self.announce:
            print(f"\n{signal.Signals(signum).name}: stopping after this epoch's checkpoint "
                  "(send it again to stop at once)", file=sys.stderr)

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False


# --- The set-up: built in one place for this loop, a sweep's groups and the benchmarks -------------


def steps_per_epoch(config: ml_collections.ConfigDict, data: dataset.Dataset) -> int:
    """Optimiser steps per epoch, after checking that the model and batch fit the data."""
    validate_image_shape(config, data.image_shape)
    num_train = data.train_images.shape[0]
    if num_train < config.train.batch_size:
        raise ConfigError(
            f"train.batch_size={config.train.batch_size} is larger than the training split "
            f"({num_train} images); lower it or use a larger split")
    return num_train // config.train.batch_size


@dataclasses.dataclass
class Setup:
    """What a training compiles and starts from (`build`), for the runs of `config` (they may
    differ in the numbers of `state.Hyper` only)."""

    config: ml_collections.ConfigDict
    data: dataset.Dataset
    mesh: Mesh
    steps_per_epoch: int
    tx: optax.GradientTransformation
    graphdef: nnx.GraphDef
    latent_dims: tuple[int, ...]  # the model's, z_1 first
    initial: state.TrainState  # the fresh state of `config`'s run, replicated
    seeds: int | tuple[int, ...]  # whose batch orders the feed gives (`feed.compile_orders`)

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def init_state(self, config: ml_collections.ConfigDict) -> state.TrainState:
        """A fresh state for the run of another config of the set-up (its seed), replicated."""
        _, initial = state.init_state(config, self.data.image_shape, self.tx, self.data.pixel_means())
        return jax.device_put(initial, self.replicated)

    @functools.cached_property
    def train_step(self):
        """(state, x_u8_BxD, key, hyper) -> (state, metrics) (`step.make_train_step`)."""
        return make_train_step(self.graphdef, self.config, self.steps_per_epoch, self.data.dynamic)

    @functools.cached_property
    def source(self) -> feed.DeviceBatches | feed.HostBatches:
        """The feed of the epochs' batches: the one place a training takes its training images."""
        t = self.config.train
        return feed.batches(t.batch_source, t.batch_size, self.seeds, self.data.train_images, self.mesh)

    def load_epoch(self, number: int) -> None:
        """Gives the feed epoch `number`'s training images where they change every epoch (random
        crops, `dataset.Dataset.epoch_images`); nothing otherwise."""
        if self.data.epoch_images is not None:
            self.source.load(self.data.epoch_images(number))

    def body(self, hyper: state.Hyper):
        """The epoch's step body of one run with these numbers (`epoch.step_body`)."""
        return epoch.step_body(self.train_step, hyper, self.source.batch)

    def compile_epoch(self, carry, body) -> tuple[object, float]:
        """(carry, epoch) -> (carry, per-step metrics) of `body`, compiled now for `carry`
        (`epoch.compile_epoch`), and the seconds compiling took."""
        start = time.perf_counter()
        train_epoch = epoch.compile_epoch(body, epoch.epoch_loop(self.config), self.mesh, carry, self.source)
        return train_epoch, time.perf_counter() - start

    def evaluators(self) -> list[Evaluator]:
        """The validation (where the data set has one) and test evaluators (`evaluate.make_evaluators`)."""
        return make_evaluators(self.graphdef, self.config, self.mesh, self.data, self.latent_dims)

    def pictures(self):
        """TensorBoard's pictures of parameters (`pictures.make_pictures`), one program for every run."""
        return pictures.make_pictures(self.graphdef, self.data.test_images)


def build(config: ml_collections.ConfigDict, data: dataset.Dataset, mesh: Mesh,
          seeds: int | tuple[int, ...] | None = None) -> Setup:
    """The set-up of `config` on `data` over `mesh`, after checking that they fit: the optimizer,
    the initial state (the decoder's output bias at the training set's pixel means, as every run
    starts), and, when first asked for, the feed (train.batch_source's), the compiled epoch, the
    evaluators. The feed's batch orders are those of `seeds` (default: the config's seed; a tuple
    gives one order per seed, see `feed.compile_orders`)."""
    steps = steps_per_epoch(config, data)
    tx = state.make_optimizer(config.train, steps)
    graphdef, initial = state.init_state(config, data.image_shape, tx, data.pixel_means())
    latent_dims = tuple(nnx.merge(graphdef, initial.params).latent_dims)
    initial = jax.device_put(initial, NamedSharding(mesh, P()))
    return Setup(config, data, mesh, steps, tx, graphdef, latent_dims, initial,
                 config.seed if seeds is None else seeds)


# --- The loop ----------------------------------------------------------------------------------------


def train_and_evaluate(config, workdir: str | Path, *, devices=None, restart: bool = False,
                       progress: bool = True) -> list[dict]:
    """Trains `config` into `workdir`, resuming from its last checkpoint; returns the metrics.

    Every check (the config, resuming, the data) runs before any compute. In a multi-process run
    every process calls this with the same arguments (`devices`: None); process 0 alone takes the
    workdir's lock. One training per workdir at a time (`workdir.training_lock`); a failed write to
    the workdir (a full disk, a removed or read-only directory) ends the run with a `WorkdirError`
    that says how it resumes."""
    workdir = Path(workdir)
    mesh = distributed.make_mesh(devices)
    validate_config(config, mesh.devices.size)
    writer = distributed.is_writer()
    with contextlib.ExitStack() as stack:
        if writer:  # process 0 holds the lock for all processes
            stack.enter_context(lock.training_lock(workdir))
        stack.enter_context(faults.write_errors(workdir))
        if not restart:  # a run already training is named first
            files.check_resumable(workdir, config)
        data = dataset.load_dataset(config.data)
        stop = stack.enter_context(StopRequests(announce=writer))
        built = build(config, data, mesh)
        run = stack.enter_context(contextlib.closing(
            RunDir(workdir, config, built.steps_per_epoch, restart, image_shape=data.image_shape)))
        train_state = run.restore(built.initial, built.replicated)
        if progress and writer and run.epoch:
            print(resume_line(workdir, run), file=sys.stderr, flush=True)
        if not run.finished():
            train_epochs(built, run, train_state, stop, progress and writer)
    return run.history


def train_epochs(built: Setup, run: RunDir, train_state: state.TrainState, stop: StopRequests,
                 progress: bool) -> None:
    """Trains `run` epoch by epoch from `train_state` until it is done or a signal stops it."""
    config = built.config
    train_epoch, compile_time = built.compile_epoch(train_state, built.body(state.hyperparameters(config)))
    evaluators = built.evaluators()
    run.open_board(built.pictures())
    num_epochs = config.train.num_epochs
    session_start = time.perf_counter()
    with progress_bar(num_epochs, run.epoch, progress) as bar:
        while not run.finished():
            number = run.epoch + 1
            built.load_epoch(number)
            train_state, step_metrics, train_time, signum = run_epoch(train_epoch, train_state, number, stop)
            record = epoch_record(run, step_metrics, train_time, compile_time)
            compile_time = None  # recorded on the session's first epoch only
            if run.eval_due():
                t_eval = time.perf_counter()
                summaries = evaluation(state.eval_params(train_state), evaluators, config.seed)
                run.add_evaluation(record, summaries, time.perf_counter() - t_eval)
            end_epoch(run, record, train_state, signum, session_start, bar if progress else None)
            bar.update(number - bar.n)
            bar.set_postfix_str(f"{record['images_per_sec']:,.0f} img/s", refresh=False)
            if signum and not run.finished():
                run.manager.wait_until_finished()
                raise interrupted(signum, number)


# --- The pieces of an epoch, for a run and for each run of a sweep ------------------------------------


def progress_bar(num_epochs: int, initial: int, progress: bool) -> tqdm:
    return tqdm(total=num_epochs, initial=initial, unit="epoch", disable=not progress, file=sys.stderr,
                dynamic_ncols=True)


def run_epoch(train_epoch, carry, number: int, stop: StopRequests):
    """Trains epoch `number` from `carry`: the new carry, the per-step metrics on the host (waiting
    for the epoch to finish), the epoch's wall time, and the stop signal every process agrees on."""
    start = time.perf_counter()
    carry, step_metrics = train_epoch(carry, number)
    step_metrics = jax.device_get(step_metrics)
    train_time = time.perf_counter() - start
    signum = distributed.agree_on_max(stop.signum or 0)  # a signal to any process stops all
    return carry, step_metrics, train_time, signum


def epoch_record(run: RunDir, step_metrics: dict, train_time: float, compile_time: float | None,
                 prefix: str = "") -> dict:
    """The run's training record of the epoch (`RunDir.train_record`), with a line on any skipped
    updates; NonFiniteLossError on a non-finite loss."""
    record = run.train_record(jax.tree.map(np.asarray, step_metrics), train_time, compile_time)
    if record["train/skipped_updates"] and run.writer:
        tqdm.write(prefix + skip_line(record, run.config.train.skip_threshold), file=sys.stderr)
    return record


def evaluation(params, evaluators: list[Evaluator], seed: int) -> dict:
    """Every split's summary of `params`, keyed by the run's seed (`Evaluator`)."""
    summaries = {}
    for evaluator in evaluators:
        summaries |= evaluator(params, seed)
    return summaries


def end_epoch(run: RunDir, record: dict, train_state: state.TrainState, signum: int, session_start: float,
              bar: tqdm | None, prefix: str = "") -> None:
    """Writes the epoch's metrics and checkpoints (`RunDir.end_epoch`) and, with a `bar`, its lines."""
    stopping = run.end_epoch(record, train_state, bool(signum), session_start)
    if bar is not None:
        bar.write(prefix + epoch_line(record, run.config.train.num_epochs))
        if stopping:
            bar.write(prefix + early_stopping_line(record, run.config.train.early_stopping_patience))


def resume_line(workdir: Path, run: RunDir) -> str:
    """What a restarted run does with the workdir it found."""
    num_epochs = run.config.train.num_epochs
    if run.finished():
        why = "all its epochs" if run.epoch >= num_epochs else "early stopping"
        return f"{workdir} is trained ({why}: epoch {run.epoch} of {num_epochs}); nothing to do"
    return f"resuming {workdir} from epoch {run.epoch} of {num_epochs}"


def interrupted(signum: int, number: int) -> Interrupted:
    return Interrupted(f"stopped by {signal.Signals(signum).name} after epoch {number}, which is "
                       f"checkpointed; run the same command again to resume", signum)


def early_stopping_line(record: dict, patience: int) -> str:
    return (f"early stopping: the validation ELBO has not improved for "
            f"{patience} epochs; best epoch {record['best/epoch']}")


def epoch_line(record: dict, num_epochs: int) -> str:
    line = (f"epoch {record['epoch']}/{num_epochs}  train -elbo {record['train/elbo']:.2f} "
            f"(rec {record['train/rec']:.2f}, kl {record['train/kl']:.2f})")
    if files.BEST_METRIC in record:
        line += f"  val -elbo {record[files.BEST_METRIC]:.2f} (best {record['best/val/elbo']:.2f})"
    if "test/elbo" in record:
        bits = f"{record['test/bits_per_dim']:.3f} bits/dim, " if "test/bits_per_dim" in record else ""
        line += (f"  test -elbo {record['test/elbo']:.2f} ({bits}rec {record['test/rec']:.2f}, "
                 f"kl {record['test/kl']:.2f}, {record['test/active_units']} active)")
    if record.get("eval_params") == "ema":
        line += " of the parameter average"
    return line + f"  {record['images_per_sec']:,.0f} img/s"
