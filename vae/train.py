"""The training loop: epochs of the compiled programs (`vae.programs`), evaluation on the
validation and test sets, model selection with early stopping, checkpoints and metrics.

Model selection follows the published protocol: the validation split (carved from the training
data) is evaluated every epoch, the parameters with the lowest validation negative ELBO are kept
as the "best" checkpoint beside the latest ones, and training stops once the validation ELBO has
not improved for `train.early_stopping_patience` epochs after the KL warm-up. Everything this
needs is derived from `metrics.jsonl`, so a resumed run makes the same choices as an
uninterrupted one.

A run over several processes (`vae.distributed`) runs this same loop in every process: all of them
compute the same metrics from replicated outputs, so they take the same decisions and make the same
checkpoint calls in the same order; only process 0 writes metrics.jsonl and config.json and prints.
"""

import contextlib
import math
import signal
import sys
import threading
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from vae import data, distributed, faults, feeding, programs, validation
from vae import workdir as wd
from vae.programs import TrainState
from vae.run_dir import (  # noqa: F401 - the loop's rules and errors, which callers use from here
    SELECTION_METRIC,
    NonFiniteLossError,
    RunDir,
    best_epoch,
    early_stop_due,
)


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


# --- Metrics and model selection ---------------------------------------------------------------


def summarize_eval(terms: dict, num_examples: int, num_pixels: int, threshold: float,
                   prefix: str = "test") -> dict:
    """Means in nats per image, per-dimension KL (factorised priors) and active units (Burda et
    al., 2015) of one evaluated split."""
    rec = np.asarray(terms["rec"][:num_examples], np.float64)
    kl = np.asarray(terms["kl"][:num_examples], np.float64)
    means = np.asarray(terms["mean"][:num_examples], np.float64)
    elbo = float(np.mean(rec + kl))
    activity = means.var(axis=0)  # Cov_x(E_q[z_u | x]) per dimension
    summary = {
        f"{prefix}/elbo": elbo,
        f"{prefix}/rec": float(rec.mean()),
        f"{prefix}/kl": float(kl.mean()),
        f"{prefix}/active_units": int(np.sum(activity > threshold)),
        f"{prefix}/bits_per_dim": elbo / (num_pixels * math.log(2.0)),
    }
    if "kl_per_dim" in terms:
        kl_per_dim = np.asarray(terms["kl_per_dim"][:num_examples], np.float64).mean(axis=0)
        summary[f"{prefix}/kl_per_dim"] = [round(float(v), 5) for v in kl_per_dim]
    return summary


# --- One run's workdir while it trains ----------------------------------------------------------


class Evaluator:
    """Evaluates parameters on one split every evaluation epoch: one run's, or with `keys` (one per
    member) the stacked parameters of a sweep's members."""

    def __init__(self, evaluate, config, mesh, images: np.ndarray, split: str, keys=None):
        self.evaluate = evaluate
        self.images = programs.images_on_device(images, mesh, config.eval.batch_size)
        self.num = images.shape[0]
        self.num_pixels = math.prod(images.shape[1:])
        self.key = programs.eval_key(config, split) if keys is None else keys
        self.prefix = split
        self.threshold = config.eval.active_unit_threshold

    def _summary(self, terms) -> dict:
        return summarize_eval(terms, self.num, self.num_pixels, self.threshold, self.prefix)

    def __call__(self, params) -> dict:
        return self._summary(jax.device_get(self.evaluate(params, self.images, self.key)))

    def per_member(self, params) -> list[dict]:
        terms = jax.device_get(self.evaluate(params, self.images, self.key))
        return [self._summary(jax.tree.map(lambda t, k=k: t[k], terms)) for k in range(len(self.key))]


def make_evaluators(evaluate, config, mesh, dataset: data.Dataset, keys_of=None) -> list[Evaluator]:
    """The validation (where the data set has one) and test evaluators; `keys_of(split)` gives a
    sweep's per-member keys."""
    splits = [("val", dataset.val_images)] if dataset.val_images is not None else []
    return [Evaluator(evaluate, config, mesh, images, split, keys_of(split) if keys_of else None)
            for split, images in [*splits, ("test", dataset.test_images)]]


def check_run(config: ml_collections.ConfigDict, workdir: Path, num_devices: int, restart: bool) -> None:
    """The checks that need neither data nor compute: the config, and resuming this workdir."""
    validation.validate_config(config, num_devices)
    if not restart:
        wd.check_resumable(workdir, config)


def steps_per_epoch(config: ml_collections.ConfigDict, dataset: data.Dataset) -> int:
    """Optimiser steps per epoch, after checking that the model and batch fit the data."""
    validation.validate_image_shape(config, dataset.image_shape)
    num_train = dataset.train_images.shape[0]
    if num_train < config.train.batch_size:
        raise validation.ConfigError(
            f"train.batch_size={config.train.batch_size} is larger than the training split "
            f"({num_train} images); lower it or use a larger split")
    return num_train // config.train.batch_size


# --- The loop ----------------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path, *,
                       devices=None, restart: bool = False, progress: bool = True) -> list[dict]:
    """Trains `config` into `workdir`, resuming from its last checkpoint; returns the metrics.

    In a multi-process run every process calls this with the same arguments (`devices`: None);
    process 0 alone takes the workdir's lock. One training per workdir at a time
    (`workdir.training_lock`); a failed write to the workdir (a full disk, a removed or read-only
    directory) ends the run with a `WorkdirError` that says how it resumes."""
    validation.validate_config(config, len(devices) if devices is not None else jax.device_count())
    lock = wd.training_lock(workdir) if distributed.is_writer() else contextlib.nullcontext()
    with lock, faults.write_errors(workdir):
        return _train_and_evaluate(config, workdir, devices=devices, restart=restart, progress=progress)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path, *,
                        devices=None, restart: bool = False, progress: bool = True) -> list[dict]:
    workdir = Path(workdir)
    mesh = programs.make_mesh(devices)
    writer = distributed.is_writer()
    progress = progress and writer
    if not restart:
        wd.check_resumable(workdir, config)
    dataset = data.load_dataset(config.data)
    steps = steps_per_epoch(config, dataset)
    run = RunDir(workdir, config, steps, restart)

    tx = programs.make_optimizer(config.train, steps)
    graphdef, state = programs.init_state(config, dataset.image_shape, tx, dataset.pixel_means())
    replicated = NamedSharding(mesh, P())
    state = run.restore(jax.device_put(state, replicated), replicated)

    t0 = time.perf_counter()
    train_epoch = feeding.compile_epoch(graphdef, config, mesh, state, dataset.train_images, dataset.dynamic)
    evaluate = programs.make_evaluate(graphdef, config, mesh)
    compile_time = time.perf_counter() - t0
    evaluators = make_evaluators(evaluate, config, mesh, dataset)
    run.open_board(graphdef, dataset.test_images)
    session_start = time.perf_counter()

    num_epochs = config.train.num_epochs
    bar = progress_bar(num_epochs, run.epoch, progress)
    with StopRequests(announce=writer) as stop:
        try:
            while not run.finished():
                t_epoch = time.perf_counter()
                state, step_metrics = train_epoch(state, run.epoch + 1)
                step_metrics = jax.device_get(step_metrics)  # waits for the epoch to finish
                train_time = time.perf_counter() - t_epoch
                signum = distributed.agree_on_max(stop.signum or 0)  # a signal to any process stops all
                record = run.train_record(step_metrics, train_time, compile_time)
                compile_time = None  # recorded on the session's first epoch only
                if run.eval_due():
                    t_eval = time.perf_counter()
                    params = programs.eval_params(state)
                    summaries = {}
                    for evaluator in evaluators:
                        summaries |= evaluator(params)
                    run.add_evaluation(record, summaries, time.perf_counter() - t_eval)
                stopping = run.end_epoch(record, state, bool(signum), session_start)
                bar.update(1)
                bar.set_postfix_str(_postfix(record), refresh=False)
                if progress:
                    bar.write(epoch_line(record, num_epochs))
                    if stopping:
                        bar.write(early_stopping_line(record, config))
                if signum and not run.finished():
                    run.manager.wait_until_finished()
                    raise interrupted(signum, record["epoch"])
        finally:
            bar.close()
            run.close()
    return run.history


def progress_bar(num_epochs: int, start_epoch: int, progress: bool) -> tqdm:
    return tqdm(total=num_epochs, initial=start_epoch, unit="epoch", disable=not progress,
                file=sys.stderr, dynamic_ncols=True)


def interrupted(signum: int, epoch: int) -> Interrupted:
    return Interrupted(f"stopped by {signal.Signals(signum).name} after epoch {epoch}, which is "
                       f"checkpointed; run the same command again to resume", signum)


def early_stopping_line(record: dict, config: ml_collections.ConfigDict) -> str:
    return (f"early stopping: the validation ELBO has not improved for "
            f"{config.train.early_stopping_patience} epochs; best epoch {record['best/epoch']}")


def _postfix(record: dict) -> str:
    return f"{record['images_per_sec']:,.0f} img/s"


def epoch_line(record: dict, num_epochs: int) -> str:
    line = (f"epoch {record['epoch']}/{num_epochs}  train -elbo {record['train/elbo']:.2f} "
            f"(rec {record['train/rec']:.2f}, kl {record['train/kl']:.2f})")
    if SELECTION_METRIC in record:
        line += f"  val -elbo {record[SELECTION_METRIC]:.2f} (best {record['best/val/elbo']:.2f})"
    if "test/elbo" in record:
        line += (f"  test -elbo {record['test/elbo']:.2f} (rec {record['test/rec']:.2f}, "
                 f"kl {record['test/kl']:.2f}, {record['test/active_units']} active)")
    return line + f"  {record['images_per_sec']:,.0f} img/s"


# --- Loading a trained run ---------------------------------------------------------------------

CHECKPOINTS = ("best", "latest")


def checkpoint_used(workdir: str | Path, epoch: int | None, checkpoint: str) -> str:
    """Which checkpoint `load_trained` restores: 'best', 'latest' or 'epoch'."""
    if epoch is not None:
        return "epoch"
    return "best" if checkpoint == "best" and wd.has_checkpoints(Path(workdir), wd.BEST_DIR) else "latest"


def load_trained(workdir: str | Path, epoch: int | None = None, checkpoint: str = "best"):
    """(config, model, epoch) of a trained workdir.

    `checkpoint='best'` (the default) is the epoch with the lowest validation negative ELBO where
    the run has a validation split, else the latest; 'latest' is the newest checkpoint; `epoch`
    picks one of the latest checkpoints by number. The model carries the evaluated parameters
    (the moving average where the run keeps one). The data set is not loaded: its image shape is
    read from TFDS's metadata.
    """
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {CHECKPOINTS}, got {checkpoint!r}")
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise wd.WorkdirError(f"workdir {workdir} does not exist")
    config = wd.read_config(workdir)
    builder = data.check_prepared(config.data.name, config.data.data_dir)
    image_shape = tuple(builder.info.features["image"].shape)
    tx = programs.make_optimizer(config.train, steps_per_epoch=1)  # only its state's structure is used
    graphdef, state = programs.init_state(config, image_shape, tx)
    # Onto this process's first device, whatever the run was trained on (4 GPUs -> a laptop); in a
    # multi-process run, replicated over every process's devices (all processes restore together).
    sharding = (NamedSharding(programs.make_mesh(), P()) if jax.process_count() > 1
                else jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                            state._asdict())
    if not (workdir / wd.CHECKPOINT_DIR).is_dir():
        raise wd.WorkdirError(f"{workdir} has no checkpoints yet; train it first")
    use_best = checkpoint_used(workdir, epoch, checkpoint) == "best"
    restored_epoch, restored = wd.restore_for_reading(workdir, abstract, epoch, use_best)
    if restored is None:
        raise wd.WorkdirError(f"{workdir} has no usable checkpoint; train it first")
    return config, nnx.merge(graphdef, programs.eval_params(TrainState(**restored))), restored_epoch
