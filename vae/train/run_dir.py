"""One run's workdir while it trains (`RunDir`): its metrics and its latest and best checkpoints,
written in the order that keeps them consistent through a kill, and the model-selection rules
they follow (best epoch, early stopping), all derived from metrics.jsonl so a resumed run makes
the same choices as an uninterrupted one. A single run (`vae.train.loop`) has one; a sweep
(`vae.sweep.program`) one per run it trains, so each of those workdirs is exactly a single run's. The
train state is any NamedTuple of arrays (checkpointed as its dict).

In a run over several processes every process keeps a RunDir and makes the same checkpoint calls;
only the writer (process 0) clears the workdir, writes config.json, metrics.jsonl and TensorBoard.
"""

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import ml_collections
import numpy as np
from flax import nnx

from vae.train import distributed
from vae.train.state import TrainState, eval_params
from vae.workdir import checkpoints, files, tensorboard


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


class UpdatesSkippedError(NonFiniteLossError):
    """Every update of an epoch was skipped (`vae.train.step`); the last good checkpoint is kept."""


def best_epoch(history: list[dict]) -> tuple[int, float]:
    """(epoch, value) of the lowest validation negative ELBO so far; (0, inf) if none."""
    scored = [(r[files.BEST_METRIC], r["epoch"]) for r in history if files.BEST_METRIC in r]
    if not scored:
        return 0, math.inf
    value, epoch = min(scored)  # ties go to the earlier epoch
    return epoch, value


def early_stop_due(history: list[dict], patience: int, kl_warmup_epochs: float) -> bool:
    """True once the validation ELBO has not improved for `patience` epochs (0: never), counted
    from the end of the KL warm-up (while β still rises the ELBO is not yet the objective)."""
    if patience <= 0 or not history:
        return False
    best, _ = best_epoch(history)
    counting_from = max(best, math.ceil(kl_warmup_epochs))
    return history[-1]["epoch"] - counting_from >= patience


# A training loss this many times its lowest after the KL warm-up: the run has diverged. A healthy
# run's loss falls or wobbles by a few percent once β is 1; the HVAE + VampPrior run that diverged
# at epoch 128 of 800 went from 229 to 21,776 nats in two epochs and stayed above 290.
DIVERGED_RATIO = 2.0


def divergence(history: list[dict], kl_warmup_epochs: float, patience: int) -> str | None:
    """What to tell the user when the last epoch's training loss is DIVERGED_RATIO times the lowest one since
    the KL warm-up ended (before it, β is still rising and so is the loss); else None. `patience`:
    train.early_stopping_patience, which the message names."""
    warmed = [r for r in history if r["epoch"] > kl_warmup_epochs and "train/loss" in r]
    if len(warmed) < 2:
        return None
    lowest = min(warmed[:-1], key=lambda r: r["train/loss"])
    last = warmed[-1]
    if not (lowest["train/loss"] > 0 and last["train/loss"] >= DIVERGED_RATIO * lowest["train/loss"]):
        return None
    stop = (f"early stopping ends it once the best validation epoch is {patience} epochs old" if patience
            else "it trains on to its last epoch (train.early_stopping_patience stops such a run)")
    return (f"the training loss of epoch {last['epoch']}, {last['train/loss']:.6g}, is "
            f"{last['train/loss'] / lowest['train/loss']:.3g}x its lowest ({lowest['train/loss']:.6g} at "
            f"epoch {lowest['epoch']}): the run has diverged. The best checkpoint is kept; {stop}. "
            "Lower train.learning_rate or set train.grad_clip_norm.")


def kept(last_good: int) -> str:
    return (f"the last good checkpoint (epoch {last_good}) is kept" if last_good
            else "no checkpoint had been written yet")


def check_finite(per_step_loss: np.ndarray, epoch: int, first_step: int, last_good: int) -> None:
    bad = np.flatnonzero(~np.isfinite(per_step_loss))
    if bad.size:
        raise NonFiniteLossError(
            f"the loss became {per_step_loss[bad[0]]} at epoch {epoch}, step {first_step + int(bad[0]) + 1}"
            f"; {kept(last_good)}. Lower train.learning_rate or set train.grad_clip_norm.")


def _norms_text(grad_norm: np.ndarray) -> str:
    finite = grad_norm[np.isfinite(grad_norm)]
    if not finite.size:
        return "every gradient norm was not finite"
    bad = grad_norm.size - finite.size
    return (f"the gradient norms were {finite.min():.4g} to {finite.max():.4g}"
            + (f", {bad} not finite" if bad else ""))


def check_updates(step_metrics: dict, epoch: int, threshold: float, last_good: int) -> None:
    """UpdatesSkippedError when every update of the epoch was skipped: the run cannot move."""
    skipped = np.asarray(step_metrics["skipped"]) > 0
    if skipped.size and skipped.all():
        limit = f"above train.skip_threshold={threshold:g} or not finite" if threshold > 0 else "not finite"
        raise UpdatesSkippedError(
            f"every update of epoch {epoch} was skipped ({skipped.size} of {skipped.size}: the gradient "
            f"norm {limit}; {_norms_text(np.asarray(step_metrics['grad_norm']))}), so training cannot "
            f"go on; {kept(last_good)}. Raise train.skip_threshold (0 skips only non-finite updates), "
            "lower train.learning_rate or set train.grad_clip_norm.")


def skip_line(record: dict, threshold: float) -> str:
    """The epoch's line about the updates it skipped."""
    limit = f"above train.skip_threshold={threshold:g} or not finite" if threshold > 0 else "not finite"
    largest = record.get("train/grad_norm_max")
    return (f"epoch {record['epoch']}: skipped {record['train/skipped_updates']} of the epoch's updates "
            f"(gradient norm {limit}"
            + (f"; the largest finite norm was {largest:.4g})" if largest is not None else ")"))


def repeated_keys(kl_warmup_epochs: float, beta: float, free_bits: float) -> frozenset[str]:
    """The training record's keys that TensorBoard leaves out because the training's numbers make
    them repeat another curve or a constant: β where no warm-up changes it, and the loss where it is
    the bound itself (β = 1 throughout, no free bits: the negative ELBO, or `train/iwae` with the
    IWAE objective). metrics.jsonl keeps them."""
    if kl_warmup_epochs > 0:
        return frozenset()
    if beta == 1.0 and free_bits == 0:
        return frozenset({"train/beta", "train/loss"})
    return frozenset({"train/beta"})


class RunDir:
    """One run's workdir while it trains: its config, metrics and the latest and best checkpoint
    managers, written in the order that keeps them consistent through a kill (metrics, then the
    best checkpoint, then the latest). A single run is one; so is each run of a sweep, whose
    workdir is therefore exactly a single run's."""

    def __init__(self, workdir: Path, config: ml_collections.ConfigDict, steps: int, restart: bool = False,
                 image_shape: tuple[int, ...] | None = None):
        self.workdir, self.config, self.steps_per_epoch = Path(workdir), config, steps
        # Sub-pixels per image (H·W·C): train/bits_per_dim when known.
        self.num_dims = math.prod(image_shape) if image_shape else None
        self.writer = distributed.is_writer()
        if self.writer:
            if restart:
                files.clear_run(self.workdir)
            self.workdir.mkdir(parents=True, exist_ok=True)
            files.write_config(self.workdir, config, image_shape)
        distributed.barrier("workdir ready")  # no process looks at checkpoints before a restart cleared them
        self.board = self.pictures = None
        self.manager = checkpoints.checkpoint_manager(self.workdir, config.train.keep_checkpoints)
        self.best_manager = checkpoints.checkpoint_manager(self.workdir, 1, subdir=files.BEST_DIR)
        self.epoch = self.last_good = 0  # the last finished epoch, the last checkpointed one
        self.history: list[dict] = []
        self.wall_offset = 0.0
        self.warned_divergence = False  # the divergence warning is printed once a session

    def restore(self, state: TrainState, sharding) -> TrainState:
        """The newest usable checkpoint's state (else `state`, freshly initialised), with the
        metrics and the best checkpoint made to agree with it."""
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                                state._asdict())
        self.epoch, restored = checkpoints.restore_latest(self.manager, abstract)
        if restored is not None:
            state = TrainState(**restored)
        self.last_good = self.epoch
        self.history = files.truncate_metrics(self.workdir, self.epoch, rewrite=self.writer)
        _reconcile_best(self.best_manager, self.history, self.epoch, state)
        self.wall_offset = self.history[-1].get("wall_time_sec", 0.0) if self.history else 0.0
        return state

    def open_board(self, pictures: Callable[[nnx.State], tensorboard.Pictures]) -> None:
        """TensorBoard events of the epochs trained from now on (`vae.workdir.tensorboard`), by the
        writer; `pictures` (`vae.train.pictures.make_pictures`) draws its images from the parameters."""
        self.pictures = pictures
        t = self.config.train
        self.board = tensorboard.Board(self.workdir, self.epoch, t.num_epochs,
                                       left_out=repeated_keys(t.kl_warmup_epochs, t.beta, t.free_bits),
                                       enabled=self.writer)

    def finished(self) -> bool:
        """All epochs trained, or early stopping is due."""
        t = self.config.train
        return self.epoch >= t.num_epochs or early_stop_due(self.history, t.early_stopping_patience,
                                                             t.kl_warmup_epochs)

    def eval_due(self) -> bool:
        """Whether the next epoch is evaluated."""
        epoch = self.epoch + 1
        return epoch % self.config.eval.every_epochs == 0 or epoch == self.config.train.num_epochs

    def train_record(self, step_metrics: dict, train_time: float, compile_time: float | None) -> dict:
        """The next epoch's training metrics: the means of the steps whose update was applied, the
        gradient norm's mean and largest finite value over every step, the number of updates
        skipped; UpdatesSkippedError if every update was, NonFiniteLossError on a non-finite loss
        of an applied update."""
        epoch, steps = self.epoch + 1, self.steps_per_epoch
        first_step = (epoch - 1) * steps  # no device round trip
        check_updates(step_metrics, epoch, self.config.train.skip_threshold, self.last_good)
        applied = np.asarray(step_metrics["skipped"]) == 0
        check_finite(np.where(applied, step_metrics["loss"], 0.0), epoch, first_step, self.last_good)
        record = {"epoch": epoch, "step": first_step + steps}
        record |= {f"train/{k}": float(np.mean(np.asarray(v)[applied])) for k, v in step_metrics.items()
                   if k not in ("grad_norm", "skipped")}
        norms = np.asarray(step_metrics["grad_norm"], np.float64)
        finite = norms[np.isfinite(norms)]
        if finite.size:
            record["train/grad_norm"] = float(finite.mean())
            record["train/grad_norm_max"] = float(finite.max())
        record["train/skipped_updates"] = int(steps - applied.sum())
        if self.num_dims and "train/elbo" in record:
            record["train/bits_per_dim"] = record["train/elbo"] / (self.num_dims * math.log(2.0))
        record["images_per_sec"] = steps * self.config.train.batch_size / train_time
        record["epoch_time_sec"] = train_time
        if compile_time is not None:
            record["compile_time_sec"] = compile_time
        return record

    def add_evaluation(self, record: dict, summaries: dict, eval_time: float) -> None:
        """Adds the evaluation to `record`; NonFiniteLossError on a non-finite ELBO."""
        record |= summaries
        # Which parameters the figures are of: the moving average (train.ema_decay > 0) or the latest.
        record["eval_params"] = "ema" if self.config.train.ema_decay > 0 else "latest"
        record["eval_time_sec"] = eval_time
        for key in ("test/elbo", files.BEST_METRIC):
            if not math.isfinite(record.get(key, 0.0)):
                raise NonFiniteLossError(
                    f"the {key} is {record[key]} after epoch {record['epoch']}; {kept(self.last_good)}")

    def end_epoch(self, record: dict, state: TrainState, stop_requested: bool, session_start: float) -> bool:
        """Writes the epoch's metrics and checkpoints; returns whether early stopping is now due."""
        epoch = record["epoch"]
        improved = files.BEST_METRIC in record and record[files.BEST_METRIC] < best_epoch(self.history)[1]
        if files.BEST_METRIC in record:
            record["best/epoch"], record[f"best/{files.BEST_METRIC}"] = best_epoch([*self.history, record])
        record["wall_time_sec"] = self.wall_offset + time.perf_counter() - session_start
        # Metrics first, then the checkpoints: a resume drops lines newer than its checkpoint.
        if self.writer:
            files.append_metrics(self.workdir, record)
        self.history.append(record)
        self.epoch = epoch
        t = self.config.train
        warning = (None if self.warned_divergence
                   else divergence(self.history, t.kl_warmup_epochs, t.early_stopping_patience))
        if warning and self.writer:
            print(f"warning: {self.workdir}: {warning}", file=sys.stderr, flush=True)
        self.warned_divergence = self.warned_divergence or warning is not None
        if self.board is not None:
            shown = self.pictures(eval_params(state)) if self.board.shows_pictures(epoch) else None
            self.board.log(record, shown)
        if improved:  # finished before the latest is written, so a kill cannot reorder them
            checkpoints.save_checkpoint(self.best_manager, epoch, state._asdict(),
                               {files.BEST_METRIC: record[files.BEST_METRIC]})
            self.best_manager.wait_until_finished()
        stopping = early_stop_due(self.history, t.early_stopping_patience, t.kl_warmup_epochs)
        if (epoch % self.config.train.checkpoint_every_epochs == 0 or epoch == self.config.train.num_epochs
                or stop_requested or stopping):
            checkpoints.save_checkpoint(self.manager, epoch, state._asdict())
            self.last_good = epoch
        return stopping

    def close(self) -> None:
        if self.board is not None:
            self.board.close()
        checkpoints.close_managers(self.manager, self.best_manager)


def _reconcile_best(best_manager, history: list[dict], restored_epoch: int, state: TrainState) -> None:
    """Makes the best checkpoint agree with the metrics kept after a restart: checkpoints newer than
    the restored epoch are dropped (they will be recomputed), and a best epoch that is the
    restored one but was not saved yet (a kill between the two saves) is saved now."""
    for step in best_manager.all_steps():
        if step > restored_epoch:
            best_manager.delete(step)
    epoch, value = best_epoch(history)
    if epoch and epoch == restored_epoch and epoch not in best_manager.all_steps():
        checkpoints.save_checkpoint(best_manager, epoch, state._asdict(), {files.BEST_METRIC: value})
        best_manager.wait_until_finished()
