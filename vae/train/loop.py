"""The training loop, for every training command: `train_members` trains K >= 1 runs ("members"),
each into its own workdir; a single run (`train_and_evaluate`) is one member, a sweep
(`vae.sweep.driver`) many. Members whose configs differ only in the numbers of `state.Hyper` form
a group and train as one compiled program, in lock-step (`vae.train.epoch`); groups train one
after another.

An epoch of a group: the train step over the epoch's batches for every member (`epoch.py`, the
batches from `feed.py`), evaluation on the validation and test splits (`evaluate.py`), then, per
member, model selection with early stopping, checkpoints and metrics (`run.py`). Model selection
follows the published protocol: the validation split (carved from the training data) is
evaluated every epoch, the parameters with the lowest validation negative ELBO are kept as the
"best" checkpoint beside the latest ones, and a member stops once its validation ELBO has not
improved for `train.early_stopping_patience` epochs after the KL warm-up. Everything this needs is
derived from metrics.jsonl, so a resumed run makes the same choices as an uninterrupted one. A
member that is done (its epochs, early stopping, or a non-finite loss, which stops that member
only) or ahead of the others (a kill fell between two members' checkpoints) is carried through
the group's epochs unchanged while the others train.

A run over several processes (`distributed.py`) runs this same loop in every process: all of them
compute the same metrics from replicated outputs, so they take the same decisions and make the same
checkpoint calls in the same order; only process 0 writes metrics.jsonl and config.json and prints.
"""

import contextlib
import dataclasses
import signal
import sys
import threading
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from vae.data import dataset
from vae.train import config_checks, distributed, epoch, feed, pictures, state
from vae.train.evaluate import make_evaluators
from vae.train.run import NonFiniteLossError, RunDir, skip_line
from vae.workdir import faults, files, lock


@dataclasses.dataclass(frozen=True)
class Member:
    """One run of a training command: its config and the workdir it trains into."""

    config: ml_collections.ConfigDict
    workdir: Path
    name: str = ""  # a sweep member's name, which prefixes its lines; "" for a single run


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


def group_members(members: list) -> list[list]:
    """Members (anything with a `.config`) that can train as one compiled program
    (`state.program_key`), in their order."""
    groups: dict[str, list] = {}
    for member in members:
        groups.setdefault(state.program_key(member.config), []).append(member)
    return list(groups.values())


def _named(member: Member, error: Exception) -> Exception:
    return type(error)(f"member {member.name}: {error}") if member.name else error


def check_members(members: list[Member], num_devices: int, restart: bool,
                  configs_only: bool = False) -> None:
    """Every check that needs no data: each config, and (unless restarting, or `configs_only`) that
    each workdir holds nothing or a run of the same config."""
    for member in members:
        try:
            config_checks.validate_config(member.config, num_devices)
            if not (restart or configs_only):
                files.check_resumable(member.workdir, member.config)
        except (config_checks.ConfigError, files.WorkdirError) as e:
            raise _named(member, e) from None


# --- The loop ----------------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path, *,
                       devices=None, restart: bool = False, progress: bool = True) -> list[dict]:
    """Trains `config` into `workdir`, resuming from its last checkpoint; returns the metrics.

    In a multi-process run every process calls this with the same arguments (`devices`: None);
    process 0 alone takes the workdir's lock. One training per workdir at a time
    (`workdir.training_lock`); a failed write to the workdir (a full disk, a removed or read-only
    directory) ends the run with a `WorkdirError` that says how it resumes."""
    member = Member(config, Path(workdir))
    return train_members([member], devices=devices, restart=restart, progress=progress)[0]


def train_members(members: list[Member], *, devices=None, restart: bool = False, progress: bool = True,
                  member_loop: str = "auto", fault_dir: str | Path | None = None) -> list[list[dict]]:
    """Trains each member into its workdir, resuming each from its last checkpoint, the members of
    a group as one program (their step `member_loop`, see `epoch.py`); returns their metrics, in
    order. Every check (configs, resuming, data) runs before any compute. A non-finite loss stops
    its member only; the others finish, then it is raised (`fault_dir`: the directory a failed
    write names, default the first member's workdir)."""
    mesh = distributed.make_mesh(devices)
    check_members(members, mesh.devices.size, restart, configs_only=True)
    writer = distributed.is_writer()
    session = _Session(mesh, restart, progress and writer, None, member_loop)
    with contextlib.ExitStack() as stack:
        for member in members:  # process 0 holds the locks for all processes
            if writer:
                stack.enter_context(lock.training_lock(member.workdir))
        stack.enter_context(faults.write_errors(Path(fault_dir or members[0].workdir)))
        check_members(members, mesh.devices.size, restart)  # a run already training is named first
        groups = group_members(members)
        loaded = {}  # the data set of each data config
        for group in groups:
            data_config = group[0].config.data
            if data_config.to_json() not in loaded:
                loaded[data_config.to_json()] = dataset.load_dataset(data_config)
            steps_per_epoch(group[0].config, loaded[data_config.to_json()])
        session.stop = stack.enter_context(StopRequests(announce=writer))
        histories = {}
        for group in groups:
            histories |= _train_group(group, loaded[group[0].config.data.to_json()], session)
    if session.failures:
        if len(members) == 1:
            raise next(iter(session.failures.values()))
        raise NonFiniteLossError(
            "; ".join(f"member {name}: {error}" for name, error in session.failures.items())
            + " (the other members finished)")
    return [histories[member.workdir] for member in members]


@dataclasses.dataclass
class _Session:
    """What the groups of one training command share."""

    mesh: jax.sharding.Mesh
    restart: bool
    progress: bool  # a progress bar and a line per epoch (process 0 only)
    stop: StopRequests | None
    member_loop: str
    failures: dict = dataclasses.field(default_factory=dict)  # member name -> the error that stopped it


def _train_group(group: list[Member], data: dataset.Dataset, session: _Session) -> dict[Path, list[dict]]:
    """Restores every member of one group and trains those not done as one program."""
    config = group[0].config  # what the program compiles in, the members share
    steps = steps_per_epoch(config, data)
    replicated = NamedSharding(session.mesh, P())
    tx = state.make_optimizer(config.train, steps)
    runs, states = [], []
    try:
        for member in group:
            run = RunDir(member.workdir, member.config, steps, session.restart, image_shape=data.image_shape)
            runs.append(run)
            graphdef, initial = state.init_state(member.config, data.image_shape, tx, data.pixel_means())
            states.append(run.restore(jax.device_put(initial, replicated), replicated))
            if session.progress and run.epoch:
                print(_prefix(member) + resume_line(member.workdir, run, member.config), file=sys.stderr,
                      flush=True)
        live = [k for k, run in enumerate(runs) if not run.finished()]
        if live:
            _Group(graphdef, [group[k] for k in live], [runs[k] for k in live], [states[k] for k in live],
                   data, session).train()
    finally:
        for run in runs:
            run.close()
    return {member.workdir: run.history for member, run in zip(group, runs)}


class _Group:
    """One group's compiled programs and its members' runs, trained epoch by epoch until every
    member is done, stopped on a non-finite loss, or the command is interrupted."""

    def __init__(self, graphdef, members: list[Member], runs: list[RunDir], states: list[state.TrainState],
                 data: dataset.Dataset, session: _Session):
        self.members, self.runs, self.session = members, runs, session
        configs = [m.config for m in members]
        self.config = configs[0]
        self.replicated = NamedSharding(session.mesh, P())
        self.loop = epoch.member_loop(session.member_loop, len(members))
        self.carry = epoch.stack(states, self.loop, self.replicated)
        self.member_steps = [int(s.step) for s in states]
        self.failed = [False] * len(members)
        self.named = any(m.name for m in members)
        t0 = time.perf_counter()
        self.source = source = feed.batches(configs, data.train_images, session.mesh)
        self.epoch_images = data.epoch_images  # None, or each epoch's training images (random crops)
        self.train_epoch = epoch.compile_epoch(graphdef, configs, session.mesh, self.carry, source,
                                               runs[0].steps_per_epoch, data.dynamic, self.loop)
        self.compile_time = time.perf_counter() - t0
        self.evaluators = make_evaluators(graphdef, self.config, session.mesh, data)
        shown = pictures.make_pictures(graphdef, data.test_images)  # compiled once for the group
        for run in runs:
            run.open_board(shown)

    def _waiting(self) -> list[int]:
        return [k for k, run in enumerate(self.runs) if not (self.failed[k] or run.finished())]

    def _stop_member(self, k: int, error: Exception) -> None:
        """A non-finite loss stops its member only; its last good checkpoint is kept."""
        self.failed[k] = True
        self.session.failures[self.members[k].name] = error
        if self.named:
            tqdm.write(f"{self.members[k].name}: {error}; the other members go on", file=sys.stderr)

    def train(self) -> None:
        num_epochs = self.config.train.num_epochs
        progress = self.session.progress
        self.bar = tqdm(total=num_epochs, initial=min(run.epoch for run in self.runs), unit="epoch",
                        disable=not progress, file=sys.stderr, dynamic_ncols=True)
        session_start = time.perf_counter()
        try:
            while waiting := self._waiting():
                number = min(self.runs[k].epoch for k in waiting) + 1
                active = [k for k in waiting if self.runs[k].epoch == number - 1]  # the others wait
                records, signum = self._train_epoch(number, active)
                if records and self.runs[active[0]].eval_due():
                    self._evaluate(records)
                total = sum(r["images_per_sec"] for r in records.values())
                for k, record in records.items():
                    if self.named:
                        record |= {"sweep/members": len(active), "sweep/images_per_sec": total}
                    stopping = self.runs[k].end_epoch(record, epoch.member(self.carry, k), bool(signum),
                                                      session_start)
                    if progress:
                        self.bar.write(_prefix(self.members[k]) + epoch_line(record, num_epochs))
                        if stopping:
                            self.bar.write(_prefix(self.members[k])
                                           + early_stopping_line(record, self.config))
                self.bar.update(number - self.bar.n)
                self.bar.set_postfix_str(f"{len(records)} members, {total:,.0f} img/s in all" if self.named
                                         else f"{total:,.0f} img/s", refresh=False)
                if signum and self._waiting():
                    for run in self.runs:
                        run.manager.wait_until_finished()
                    raise interrupted(signum, number)
        finally:
            self.bar.close()

    def _train_epoch(self, number: int, active: list[int]) -> tuple[dict[int, dict], int]:
        """Trains the active members one epoch (the others carried through unchanged); their
        training records, and the stop signal every process agrees on."""
        if len(self.members) > 1:
            self.carry = epoch.with_step(self.carry, _shared_step(self.member_steps, active, self.members),
                                         self.replicated)
        frozen = [k for k in range(len(self.members)) if k not in active]
        saved = epoch.freeze(self.carry, frozen) if frozen else None
        if self.epoch_images is not None:
            self.source.load(self.epoch_images(number))
        t_epoch = time.perf_counter()
        self.carry, step_metrics = self.train_epoch(self.carry, number)
        step_metrics = jax.device_get(step_metrics)  # waits for the epoch to finish; steps x K x ...
        train_time = time.perf_counter() - t_epoch
        if saved is not None:
            self.carry = epoch.thaw(self.carry, saved)
        signum = distributed.agree_on_max(self.session.stop.signum or 0)  # a signal to any process stops all
        records = {}
        for k in active:
            self.member_steps[k] += self.runs[k].steps_per_epoch
            try:
                member_metrics = jax.tree.map(lambda m, k=k: np.asarray(m)[:, k], step_metrics)
                records[k] = self.runs[k].train_record(member_metrics, train_time, self.compile_time)
            except NonFiniteLossError as e:
                self._stop_member(k, e)
                continue
            if records[k]["train/skipped_updates"] and self.runs[k].writer:
                threshold = self.members[k].config.train.skip_threshold
                tqdm.write(_prefix(self.members[k]) + skip_line(records[k], threshold), file=sys.stderr)
        self.compile_time = None  # recorded on the session's first epoch only
        return records, signum

    def _evaluate(self, records: dict[int, dict]) -> None:
        """Evaluates the active members and adds the results to their records."""
        t_eval = time.perf_counter()
        summaries = {}
        for k in records:
            params = state.eval_params(epoch.member(self.carry, k))
            summaries[k] = {}
            for evaluator in self.evaluators:
                summaries[k] |= evaluator(params, self.members[k].config)
        eval_time = (time.perf_counter() - t_eval) / len(records)
        for k in list(records):
            try:
                self.runs[k].add_evaluation(records[k], summaries[k], eval_time)
            except NonFiniteLossError as e:
                self._stop_member(k, e)
                del records[k]


def _shared_step(steps: list[int], active: list[int], members: list[Member]) -> int:
    """The training members' step counter (they must agree: they share one)."""
    counts = {steps[k] for k in active}
    if len(counts) > 1:
        raise files.WorkdirError(
            f"the members of the group of {members[0].name} are at different steps {sorted(counts)} at "
            "the same epoch, so they cannot train in lock-step (was train.batch_size changed?); "
            "resume with the batch size they started with, or pass --restart")
    return counts.pop()


def _prefix(member: Member) -> str:
    return f"{member.name}: " if member.name else ""


def resume_line(workdir: Path, run: RunDir, config: ml_collections.ConfigDict) -> str:
    """What a restarted run does with the workdir it found."""
    num_epochs = config.train.num_epochs
    if run.finished():
        why = "all its epochs" if run.epoch >= num_epochs else "early stopping"
        return f"{workdir} is trained ({why}: epoch {run.epoch} of {num_epochs}); nothing to do"
    return f"resuming {workdir} from epoch {run.epoch} of {num_epochs}"


def interrupted(signum: int, number: int) -> Interrupted:
    return Interrupted(f"stopped by {signal.Signals(signum).name} after epoch {number}, which is "
                       f"checkpointed; run the same command again to resume", signum)


def early_stopping_line(record: dict, config: ml_collections.ConfigDict) -> str:
    return (f"early stopping: the validation ELBO has not improved for "
            f"{config.train.early_stopping_patience} epochs; best epoch {record['best/epoch']}")


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
