"""The training loop: epochs of the compiled programs (`vae.programs`), evaluation on the
validation and test sets, model selection with early stopping, checkpoints and metrics.

Model selection follows the published protocol: the validation split (carved from the training
data) is evaluated every epoch, the parameters with the lowest validation negative ELBO are kept
as the "best" checkpoint beside the latest ones, and training stops once the validation ELBO has
not improved for `train.early_stopping_patience` epochs after the KL warm-up. Everything this
needs is derived from `metrics.jsonl`, so a resumed run makes the same choices as an
uninterrupted one.
"""

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

from vae import data, programs, validation
from vae import workdir as wd
from vae.programs import TrainState

SELECTION_METRIC = wd.BEST_METRIC


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


class Interrupted(RuntimeError):
    """SIGINT or SIGTERM stopped the run at an epoch boundary, after a checkpoint was written."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopRequests:
    """Records SIGINT/SIGTERM instead of dying mid-write; a second signal stops at once."""

    def __init__(self):
        self.signum = None
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


def best_epoch(history: list[dict]) -> tuple[int, float]:
    """(epoch, value) of the lowest validation negative ELBO so far; (0, inf) if none."""
    scored = [(r[SELECTION_METRIC], r["epoch"]) for r in history if SELECTION_METRIC in r]
    if not scored:
        return 0, math.inf
    value, epoch = min(scored)  # ties go to the earlier epoch
    return epoch, value


def early_stop_due(history: list[dict], train_config: ml_collections.ConfigDict) -> bool:
    """True once the validation ELBO has not improved for `early_stopping_patience` epochs, counted
    from the end of the KL warm-up (while β still rises the ELBO is not yet the objective)."""
    patience = train_config.early_stopping_patience
    if patience <= 0 or not history:
        return False
    best, _ = best_epoch(history)
    counting_from = max(best, math.ceil(train_config.kl_warmup_epochs))
    return history[-1]["epoch"] - counting_from >= patience


def _kept(last_good: int) -> str:
    return (f"the last good checkpoint (epoch {last_good}) is kept" if last_good
            else "no checkpoint had been written yet")


def _check_finite(per_step_loss: np.ndarray, epoch: int, first_step: int, last_good: int) -> None:
    bad = np.flatnonzero(~np.isfinite(per_step_loss))
    if bad.size:
        raise NonFiniteLossError(
            f"the loss became {per_step_loss[bad[0]]} at epoch {epoch}, step {first_step + int(bad[0]) + 1}"
            f"; {_kept(last_good)}. Lower train.learning_rate or set train.grad_clip_norm.")


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


class RunDir:
    """One run's workdir while it trains: its config, metrics and the latest and best checkpoint
    managers, written in the order that keeps them consistent through a kill (metrics, then the
    best checkpoint, then the latest). A single run is one; so is each member of a sweep, whose
    workdir is therefore exactly a single run's."""

    def __init__(self, workdir: Path, config: ml_collections.ConfigDict, steps: int, restart: bool = False):
        self.workdir, self.config, self.steps_per_epoch = Path(workdir), config, steps
        if restart:
            wd.clear_run(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        wd.write_config(self.workdir, config)
        self.manager = wd.checkpoint_manager(self.workdir, config.train.keep_checkpoints)
        self.best_manager = wd.checkpoint_manager(self.workdir, 1, subdir=wd.BEST_DIR)
        self.epoch = self.last_good = 0  # the last finished epoch, the last checkpointed one
        self.history: list[dict] = []
        self.wall_offset = 0.0

    def restore(self, state: TrainState, sharding) -> TrainState:
        """The newest usable checkpoint's state (else `state`, freshly initialised), with the
        metrics and the best checkpoint made to agree with it."""
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                                state._asdict())
        self.epoch, restored = wd.restore_latest(self.manager, abstract)
        if restored is not None:
            state = TrainState(**restored)
        self.last_good = self.epoch
        self.history = wd.truncate_metrics(self.workdir, self.epoch)
        _reconcile_best(self.best_manager, self.history, self.epoch, state)
        self.wall_offset = self.history[-1].get("wall_time_sec", 0.0) if self.history else 0.0
        return state

    def finished(self) -> bool:
        """All epochs trained, or early stopping is due."""
        return self.epoch >= self.config.train.num_epochs or early_stop_due(self.history, self.config.train)

    def eval_due(self) -> bool:
        """Whether the next epoch is evaluated."""
        epoch = self.epoch + 1
        return epoch % self.config.eval.every_epochs == 0 or epoch == self.config.train.num_epochs

    def train_record(self, step_metrics: dict, train_time: float, compile_time: float | None) -> dict:
        """The next epoch's training metrics; NonFiniteLossError on a non-finite loss."""
        epoch, steps = self.epoch + 1, self.steps_per_epoch
        first_step = (epoch - 1) * steps  # no device round trip
        _check_finite(step_metrics["loss"], epoch, first_step, self.last_good)
        record = {"epoch": epoch, "step": first_step + steps}
        record |= {f"train/{k}": float(np.mean(v)) for k, v in step_metrics.items()}
        record["images_per_sec"] = steps * self.config.train.batch_size / train_time
        record["epoch_time_sec"] = train_time
        if compile_time is not None:
            record["compile_time_sec"] = compile_time
        return record

    def add_evaluation(self, record: dict, summaries: dict, eval_time: float) -> None:
        """Adds the evaluation to `record`; NonFiniteLossError on a non-finite ELBO."""
        record |= summaries
        record["eval_time_sec"] = eval_time
        for key in ("test/elbo", SELECTION_METRIC):
            if not math.isfinite(record.get(key, 0.0)):
                raise NonFiniteLossError(
                    f"the {key} is {record[key]} after epoch {record['epoch']}; {_kept(self.last_good)}")

    def end_epoch(self, record: dict, state: TrainState, stop_requested: bool, session_start: float) -> bool:
        """Writes the epoch's metrics and checkpoints; returns whether early stopping is now due."""
        epoch = record["epoch"]
        improved = SELECTION_METRIC in record and record[SELECTION_METRIC] < best_epoch(self.history)[1]
        if SELECTION_METRIC in record:
            record["best/epoch"], record[f"best/{SELECTION_METRIC}"] = best_epoch([*self.history, record])
        record["wall_time_sec"] = self.wall_offset + time.perf_counter() - session_start
        # Metrics first, then the checkpoints: a resume drops lines newer than its checkpoint.
        wd.append_metrics(self.workdir, record)
        self.history.append(record)
        self.epoch = epoch
        if improved:  # finished before the latest is written, so a kill cannot reorder them
            wd.save_checkpoint(self.best_manager, epoch, state._asdict(),
                               {SELECTION_METRIC: record[SELECTION_METRIC]})
            self.best_manager.wait_until_finished()
        stopping = early_stop_due(self.history, self.config.train)
        if (epoch % self.config.train.checkpoint_every_epochs == 0 or epoch == self.config.train.num_epochs
                or stop_requested or stopping):
            wd.save_checkpoint(self.manager, epoch, state._asdict())
            self.last_good = epoch
        return stopping

    def close(self) -> None:
        for manager in (self.manager, self.best_manager):
            manager.wait_until_finished()
            manager.close()


def _reconcile_best(best_manager, history: list[dict], restored_epoch: int, state: TrainState) -> None:
    """Makes the best checkpoint agree with the metrics kept after a restart: checkpoints newer than
    the restored epoch are dropped (they will be recomputed), and a best epoch that is the
    restored one but was not saved yet (a kill between the two saves) is saved now."""
    for step in best_manager.all_steps():
        if step > restored_epoch:
            best_manager.delete(step)
    epoch, value = best_epoch(history)
    if epoch and epoch == restored_epoch and epoch not in best_manager.all_steps():
        wd.save_checkpoint(best_manager, epoch, state._asdict(), {SELECTION_METRIC: value})
        best_manager.wait_until_finished()


# --- The loop ----------------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path, *,
                       devices=None, restart: bool = False, progress: bool = True) -> list[dict]:
    """Trains `config` into `workdir`, resuming from its last checkpoint; returns the metrics."""
    workdir = Path(workdir)
    mesh = programs.make_mesh(devices)
    check_run(config, workdir, mesh.devices.size, restart)
    dataset = data.load_dataset(config.data)
    steps = steps_per_epoch(config, dataset)
    run = RunDir(workdir, config, steps, restart)

    tx = programs.make_optimizer(config.train, steps)
    graphdef, state = programs.init_state(config, dataset.image_shape, tx, dataset.pixel_means())
    replicated = NamedSharding(mesh, P())
    state = run.restore(jax.device_put(state, replicated), replicated)

    train_images = programs.images_on_device(dataset.train_images, mesh)
    t0 = time.perf_counter()
    train_epoch = programs.compile_train_epoch(graphdef, config, mesh, state, train_images, dataset.dynamic)
    evaluate = programs.make_evaluate(graphdef, config, mesh)
    compile_time = time.perf_counter() - t0
    evaluators = make_evaluators(evaluate, config, mesh, dataset)
    session_start = time.perf_counter()

    num_epochs = config.train.num_epochs
    bar = progress_bar(num_epochs, run.epoch, progress)
    with StopRequests() as stop:
        try:
            while not run.finished():
                t_epoch = time.perf_counter()
                epoch_arg = jax.device_put(np.int32(run.epoch + 1), replicated)
                state, step_metrics = train_epoch(state, train_images, epoch_arg)
                step_metrics = jax.device_get(step_metrics)  # waits for the epoch to finish
                record = run.train_record(step_metrics, time.perf_counter() - t_epoch, compile_time)
                compile_time = None  # recorded on the session's first epoch only
                if run.eval_due():
                    t_eval = time.perf_counter()
                    params = programs.eval_params(state)
                    summaries = {}
                    for evaluator in evaluators:
                        summaries |= evaluator(params)
                    run.add_evaluation(record, summaries, time.perf_counter() - t_eval)
                stopping = run.end_epoch(record, state, stop.signum is not None, session_start)
                bar.update(1)
                bar.set_postfix_str(_postfix(record), refresh=False)
                if progress:
                    bar.write(epoch_line(record, num_epochs))
                    if stopping:
                        bar.write(early_stopping_line(record, config))
                if stop.signum is not None and not run.finished():
                    run.manager.wait_until_finished()
                    raise interrupted(stop.signum, record["epoch"])
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
    # Onto this process's first device, whatever the run was trained on (4 GPUs -> a laptop).
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                            state._asdict())
    if not (workdir / wd.CHECKPOINT_DIR).is_dir():
        raise wd.WorkdirError(f"{workdir} has no checkpoints yet; train it first")
    use_best = checkpoint_used(workdir, epoch, checkpoint) == "best"
    manager = wd.checkpoint_manager(workdir, read_only=True, subdir=wd.BEST_DIR if use_best else None)
    try:
        restored_epoch, restored = wd.restore_latest(manager, abstract, step=epoch)
    finally:
        manager.close()
    if restored is None:
        raise wd.WorkdirError(f"{workdir} has no usable checkpoint; train it first")
    return config, nnx.merge(graphdef, programs.eval_params(TrainState(**restored))), restored_epoch
