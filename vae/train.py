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

from vae import data, distributed, faults, programs, tensorboard, validation
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


class _StopRequests:
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


# --- The loop ----------------------------------------------------------------------------------


class _Evaluator:
    """Evaluates the current parameters on one split every evaluation epoch."""

    def __init__(self, evaluate, config, mesh, images: np.ndarray, split: str):
        self.evaluate = evaluate
        self.images = programs.images_on_device(images, mesh, config.eval.batch_size)
        self.num = images.shape[0]
        self.num_pixels = math.prod(images.shape[1:])
        self.key = programs.eval_key(config, split)
        self.prefix = split
        self.threshold = config.eval.active_unit_threshold

    def __call__(self, params) -> dict:
        terms = jax.device_get(self.evaluate(params, self.images, self.key))
        return summarize_eval(terms, self.num, self.num_pixels, self.threshold, self.prefix)


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
    validation.validate_image_shape(config, dataset.image_shape)
    num_train = dataset.train_images.shape[0]
    steps_per_epoch = num_train // config.train.batch_size
    if steps_per_epoch < 1:
        raise validation.ConfigError(
            f"train.batch_size={config.train.batch_size} is larger than the training split "
            f"({num_train} images); lower it or use a larger split")

    if writer:
        if restart:
            wd.clear_run(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        wd.write_config(workdir, config)
    distributed.barrier("workdir ready")  # no process looks at checkpoints before a restart cleared them

    tx = programs.make_optimizer(config.train, steps_per_epoch)
    graphdef, state = programs.init_state(config, dataset.image_shape, tx, dataset.pixel_means())
    replicated = NamedSharding(mesh, P())
    state = jax.device_put(state, replicated)
    manager = wd.checkpoint_manager(workdir, config.train.keep_checkpoints)
    best_manager = wd.checkpoint_manager(workdir, 1, subdir=wd.BEST_DIR)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                            state._asdict())
    start_epoch, restored = wd.restore_latest(manager, abstract)
    if restored is not None:
        state = TrainState(**restored)
    history = wd.truncate_metrics(workdir, start_epoch, rewrite=writer)
    _reconcile_best(best_manager, history, start_epoch, state)
    wall_offset = history[-1].get("wall_time_sec", 0.0) if history else 0.0

    t0 = time.perf_counter()
    train_epoch = programs.compile_epoch(graphdef, tx, config, mesh, state, dataset.train_images,
                                         dataset.dynamic)
    evaluate = programs.make_evaluate(graphdef, config, mesh)
    compile_time = time.perf_counter() - t0
    evaluators = [_Evaluator(evaluate, config, mesh, dataset.test_images, "test")]
    if dataset.val_images is not None:
        evaluators.insert(0, _Evaluator(evaluate, config, mesh, dataset.val_images, "val"))
    board = tensorboard.Board(workdir, graphdef, dataset.test_images, start_epoch, config.train.num_epochs,
                              enabled=writer)
    run_start = time.perf_counter()

    num_epochs = config.train.num_epochs
    bar = tqdm(total=num_epochs, initial=start_epoch, unit="epoch", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    last_good = start_epoch
    with _StopRequests(announce=writer) as stop:
        try:
            for epoch in range(start_epoch + 1, num_epochs + 1):
                if early_stop_due(history, config.train):
                    break
                first_step = (epoch - 1) * steps_per_epoch  # no device round trip
                t_epoch = time.perf_counter()
                state, step_metrics = train_epoch(state, epoch)
                step_metrics = jax.device_get(step_metrics)  # waits for the epoch to finish
                train_time = time.perf_counter() - t_epoch
                signum = distributed.agree_on_max(stop.signum or 0)  # a signal to any process stops all
                _check_finite(step_metrics["loss"], epoch, first_step, last_good)

                record = {"epoch": epoch, "step": first_step + steps_per_epoch}
                record |= {f"train/{k}": float(np.mean(v)) for k, v in step_metrics.items()}
                record["images_per_sec"] = steps_per_epoch * config.train.batch_size / train_time
                record["epoch_time_sec"] = train_time
                if epoch == start_epoch + 1:
                    record["compile_time_sec"] = compile_time
                if epoch % config.eval.every_epochs == 0 or epoch == num_epochs:
                    t_eval = time.perf_counter()
                    params = programs.eval_params(state)
                    for evaluator in evaluators:
                        record |= evaluator(params)
                    record["eval_time_sec"] = time.perf_counter() - t_eval
                    for key in ("test/elbo", SELECTION_METRIC):
                        if not math.isfinite(record.get(key, 0.0)):
                            raise NonFiniteLossError(
                                f"the {key} is {record[key]} after epoch {epoch}; {_kept(last_good)}")
                improved = SELECTION_METRIC in record and record[SELECTION_METRIC] < best_epoch(history)[1]
                if SELECTION_METRIC in record:
                    record["best/epoch"], record[f"best/{SELECTION_METRIC}"] = best_epoch([*history, record])
                record["wall_time_sec"] = wall_offset + time.perf_counter() - run_start
                # Metrics first, then the checkpoints: a resume drops lines newer than its checkpoint.
                if writer:
                    wd.append_metrics(workdir, record)
                history.append(record)
                board.log(record, programs.eval_params(state))
                if improved:  # finished before the latest is written, so a kill cannot reorder them
                    wd.save_checkpoint(best_manager, epoch, state._asdict(),
                                       {SELECTION_METRIC: record[SELECTION_METRIC]})
                    best_manager.wait_until_finished()
                stopping = early_stop_due(history, config.train)
                if (epoch % config.train.checkpoint_every_epochs == 0 or epoch == num_epochs
                        or signum or stopping):
                    wd.save_checkpoint(manager, epoch, state._asdict())
                    last_good = epoch
                bar.update(1)
                bar.set_postfix_str(_postfix(record), refresh=False)
                if progress:
                    bar.write(_epoch_line(record, num_epochs))
                if stopping and progress:
                    bar.write(f"early stopping: the validation ELBO has not improved for "
                              f"{config.train.early_stopping_patience} epochs; "
                              f"best epoch {record['best/epoch']}")
                if signum and epoch < num_epochs and not stopping:
                    manager.wait_until_finished()
                    raise Interrupted(
                        f"stopped by {signal.Signals(signum).name} after epoch {epoch}, which is "
                        f"checkpointed; run the same command again to resume", signum)
        finally:
            bar.close()
            board.close()
            wd.close_managers(manager, best_manager)
    return history


def _postfix(record: dict) -> str:
    return f"{record['images_per_sec']:,.0f} img/s"


def _epoch_line(record: dict, num_epochs: int) -> str:
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
