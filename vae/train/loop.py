"""The training loop: epochs of the train step (`step.py`, built into an epoch by `epoch.py` and
`feed.py`), evaluation on the validation and test sets (`evaluate.py`), model selection with
early stopping, checkpoints and metrics (`run.py`).

Model selection follows the published protocol: the validation split (carved from the training
data) is evaluated every epoch, the parameters with the lowest validation negative ELBO are kept
as the "best" checkpoint beside the latest ones, and training stops once the validation ELBO has
not improved for `train.early_stopping_patience` epochs after the KL warm-up. Everything this
needs is derived from `metrics.jsonl`, so a resumed run makes the same choices as an
uninterrupted one.

A run over several processes (`distributed.py`) runs this same loop in every process: all of them
compute the same metrics from replicated outputs, so they take the same decisions and make the same
checkpoint calls in the same order; only process 0 writes metrics.jsonl and config.json and prints.
"""

import contextlib
import signal
import sys
import threading
import time
from pathlib import Path

import jax
import ml_collections
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from vae.data import dataset
from vae.train import config_checks, distributed, feed, state
from vae.train.evaluate import make_evaluate, make_evaluators
from vae.train.run import SELECTION_METRIC, RunDir
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


def steps_per_epoch(config: ml_collections.ConfigDict, data: dataset.Dataset) -> int:
    """Optimiser steps per epoch, after checking that the model and batch fit the data."""
    config_checks.validate_image_shape(config, data.image_shape)
    num_train = data.train_images.shape[0]
    if num_train < config.train.batch_size:
        raise config_checks.ConfigError(
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
    config_checks.validate_config(config, len(devices) if devices is not None else jax.device_count())
    held = lock.training_lock(workdir) if distributed.is_writer() else contextlib.nullcontext()
    with held, faults.write_errors(workdir):
        return _train_and_evaluate(config, workdir, devices=devices, restart=restart, progress=progress)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path, *,
                        devices=None, restart: bool = False, progress: bool = True) -> list[dict]:
    workdir = Path(workdir)
    mesh = distributed.make_mesh(devices)
    writer = distributed.is_writer()
    progress = progress and writer
    if not restart:
        files.check_resumable(workdir, config)
    data = dataset.load_dataset(config.data)
    steps = steps_per_epoch(config, data)
    run = RunDir(workdir, config, steps, restart, image_shape=data.image_shape)

    tx = state.make_optimizer(config.train, steps)
    graphdef, train_state = state.init_state(config, data.image_shape, tx, data.pixel_means())
    replicated = NamedSharding(mesh, P())
    train_state = run.restore(jax.device_put(train_state, replicated), replicated)
    if progress and run.epoch:
        print(resume_line(workdir, run, config), file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    train_epoch = feed.compile_epoch(graphdef, config, mesh, train_state, data.train_images,
                                     data.dynamic)
    evaluate = make_evaluate(graphdef, config, mesh)
    compile_time = time.perf_counter() - t0
    evaluators = make_evaluators(evaluate, config, mesh, data, graphdef=graphdef)
    run.open_board(graphdef, data.test_images)
    session_start = time.perf_counter()

    num_epochs = config.train.num_epochs
    bar = progress_bar(num_epochs, run.epoch, progress)
    with StopRequests(announce=writer) as stop:
        try:
            while not run.finished():
                t_epoch = time.perf_counter()
                train_state, step_metrics = train_epoch(train_state, run.epoch + 1)
                step_metrics = jax.device_get(step_metrics)  # waits for the epoch to finish
                train_time = time.perf_counter() - t_epoch
                signum = distributed.agree_on_max(stop.signum or 0)  # a signal to any process stops all
                record = run.train_record(step_metrics, train_time, compile_time)
                compile_time = None  # recorded on the session's first epoch only
                if run.eval_due():
                    t_eval = time.perf_counter()
                    params = state.eval_params(train_state)
                    summaries = {}
                    for evaluator in evaluators:
                        summaries |= evaluator(params)
                    run.add_evaluation(record, summaries, time.perf_counter() - t_eval)
                stopping = run.end_epoch(record, train_state, bool(signum), session_start)
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


def resume_line(workdir: Path, run: RunDir, config: ml_collections.ConfigDict) -> str:
    """What a restarted run does with the workdir it found."""
    num_epochs = config.train.num_epochs
    if run.finished():
        why = "all its epochs" if run.epoch >= num_epochs else "early stopping"
        return f"{workdir} is trained ({why}: epoch {run.epoch} of {num_epochs}); nothing to do"
    return f"resuming {workdir} from epoch {run.epoch} of {num_epochs}"


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
        bits = f"{record['test/bits_per_dim']:.3f} bits/dim, " if "test/bits_per_dim" in record else ""
        line += (f"  test -elbo {record['test/elbo']:.2f} ({bits}rec {record['test/rec']:.2f}, "
                 f"kl {record['test/kl']:.2f}, {record['test/active_units']} active)")
    if record.get("eval_params") == "ema":
        line += " of the parameter average"
    return line + f"  {record['images_per_sec']:,.0f} img/s"
