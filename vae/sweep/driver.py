"""Trains a sweep: K configs at once, each group of members (`spec`) as one compiled
program whose step is vmapped over the members' stacked states. Each member trains into its own
workdir under the sweep's through the bookkeeping a single run uses (`vae.train.run.RunDir`), so its
workdir is exactly a single run's, and it resumes after a kill as a run does.

A group's members advance in lock-step, one epoch of all of them per call. A member that is done
(its epochs, early stopping, or a non-finite loss, which stops that member only) or ahead of the
others (a kill fell between two members' checkpoints) is frozen: its state is carried through the
epoch unchanged while the others train.
"""

import contextlib
import dataclasses
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vae.analysis import plotting
from vae.data import dataset
from vae.sweep import program, spec
from vae.train import config_checks, distributed, loop, state
from vae.train.evaluate import eval_key, make_evaluate, make_evaluators
from vae.train.run import NonFiniteLossError, RunDir
from vae.train.state import TrainState
from vae.workdir import faults, files, lock


def train_sweep(config: ml_collections.ConfigDict, axes: list[tuple[str, list]], sweep_dir: str | Path,
                **kwargs) -> dict[str, list[dict]]:
    """Trains the cross product of `axes` (field, values) over `config` into `sweep_dir`; returns
    each member's metrics by name (`train_members` for the keywords)."""
    return train_members(spec.make_members(config, axes), sweep_dir, **kwargs)


def train_members(members: list[spec.Member], sweep_dir: str | Path, *, devices=None, restart: bool = False,
                  progress: bool = True, member_loop: str = "auto") -> dict[str, list[dict]]:
    """Trains each member into SWEEP/<name>, the members of a group as one program (its member
    loop `member_loop`, see `program`); returns their metrics by name. Every check (configs,
    resuming, data) runs before any compute."""
    member_loop = program.member_loop(member_loop)
    sweep_dir = Path(sweep_dir)
    mesh = distributed.make_mesh(devices)
    for member in members:
        try:
            config_checks.validate_config(member.config, mesh.devices.size)
            if not restart:
                files.check_resumable(sweep_dir / member.name, member.config)
        except (config_checks.ConfigError, files.WorkdirError) as e:
            raise type(e)(f"member {member.name}: {e}") from None
    groups = spec.group_members(members)
    loaded = {}  # data set by its config
    for group in groups:
        data_config = group[0].config.data
        if data_config.to_json() not in loaded:
            loaded[data_config.to_json()] = dataset.load_dataset(data_config)
        loop.steps_per_epoch(group[0].config, loaded[data_config.to_json()])
    histories = {}
    # One training per member's workdir at a time, as for a single run (`workdir.training_lock`).
    with contextlib.ExitStack() as locks, faults.write_errors(sweep_dir), loop.StopRequests() as stop:
        for member in members:
            locks.enter_context(lock.training_lock(sweep_dir / member.name))
        spec.write_sweep_file(sweep_dir, groups)
        print(spec.plan(groups, member_loop), file=sys.stderr)  # always: which members share a program
        session = _Session(mesh, restart, progress, stop, member_loop)
        for group in groups:
            data = loaded[group[0].config.data.to_json()]
            histories |= _train_group(group, sweep_dir, data, session)
    if all(any("test/kl" in r for r in h) for h in histories.values()):
        save_rate_distortion(sweep_dir)
    if session.failures:
        raise NonFiniteLossError(
            "; ".join(f"member {name}: {message}" for name, message in session.failures.items())
            + " (the other members finished)")
    return histories


@dataclasses.dataclass
class _Session:
    """What the groups of one sweep command share."""

    mesh: Mesh
    restart: bool
    progress: bool
    stop: loop.StopRequests
    member_loop: str
    failures: dict = dataclasses.field(default_factory=dict)  # member name -> why it stopped


def _train_group(group: list[spec.Member], sweep_dir: Path, data: dataset.Dataset,
                 session: _Session) -> dict[str, list[dict]]:
    """Restores every member of one group and trains those not done as one program."""
    config = group[0].config  # what the program compiles in, the members share
    steps = loop.steps_per_epoch(config, data)
    replicated = NamedSharding(session.mesh, P())
    tx = state.make_optimizer(config.train, steps)
    runs, states = [], []
    try:
        for member in group:
            runs.append(RunDir(sweep_dir / member.name, member.config, steps, session.restart,
                               image_shape=data.image_shape))
            graphdef, member_state = state.init_state(member.config, data.image_shape, tx,
                                                      data.pixel_means())
            states.append(runs[-1].restore(jax.device_put(member_state, replicated), replicated))
            runs[-1].open_board(graphdef, data.test_images)
        live = [k for k, run in enumerate(runs) if not run.finished()]
        if live:
            _Group(graphdef, [group[k] for k in live], [runs[k] for k in live], [states[k] for k in live],
                   data, session).train()
    finally:
        for run in runs:
            run.close()
    return {member.name: run.history for member, run in zip(group, runs)}


class _Group:
    """One group's compiled programs and its members' runs, trained epoch by epoch until every
    member is done, stopped on a non-finite loss, or the sweep is interrupted."""

    def __init__(self, graphdef, members: list[spec.Member], runs: list[RunDir],
                 states: list[TrainState], data: dataset.Dataset, session: _Session):
        self.members, self.runs, self.session = members, runs, session
        configs = [m.config for m in members]
        self.config = configs[0]
        self.replicated = NamedSharding(session.mesh, P())
        self.state = program.stack(states, self.replicated)
        self.member_steps = [int(s.step) for s in states]
        self.failed = [False] * len(members)
        self.train_images = distributed.images_on_device(data.train_images, session.mesh)
        t0 = time.perf_counter()
        self.train_epoch = program.compile_members_epoch(graphdef, configs, session.mesh, self.state,
                                                         self.train_images, data.dynamic,
                                                         session.member_loop)
        evaluate = make_evaluate(graphdef, self.config, session.mesh, members=True)
        self.compile_time = time.perf_counter() - t0
        self.evaluators = make_evaluators(
            evaluate, self.config, session.mesh, data,
            keys_of=lambda split: jnp.stack([eval_key(c, split) for c in configs]), graphdef=graphdef)

    def _waiting(self) -> list[int]:
        return [k for k, run in enumerate(self.runs) if not (self.failed[k] or run.finished())]

    def _stop_member(self, k: int, error: Exception) -> None:
        """A non-finite loss stops its member only; its last good checkpoint is kept."""
        self.failed[k] = True
        self.session.failures[self.members[k].name] = str(error)
        self.bar.write(f"{self.members[k].name}: {error}; the other members go on")

    def train(self) -> None:
        num_epochs = self.config.train.num_epochs
        first_epoch = min(run.epoch for run in self.runs)
        self.bar = loop.progress_bar(num_epochs, first_epoch, self.session.progress)
        session_start = time.perf_counter()
        stop = self.session.stop
        try:
            while waiting := self._waiting():
                epoch = min(self.runs[k].epoch for k in waiting) + 1
                active = [k for k in waiting if self.runs[k].epoch == epoch - 1]  # the others wait
                records = self._train_epoch(epoch, active)
                if records and self.runs[active[0]].eval_due():
                    self._evaluate(records)
                total = sum(r["images_per_sec"] for r in records.values())
                for k, record in records.items():
                    record |= {"sweep/members": len(active), "sweep/images_per_sec": total}
                    member = program.member_state(self.state, k)
                    stopping = self.runs[k].end_epoch(record, member, stop.signum is not None, session_start)
                    if self.session.progress:
                        name = self.members[k].name
                        self.bar.write(f"{name}: {loop.epoch_line(record, num_epochs)}")
                        if stopping:
                            self.bar.write(f"{name}: {loop.early_stopping_line(record, self.config)}")
                self.bar.update(epoch - self.bar.n)
                self.bar.set_postfix_str(f"{len(records)} members, {total:,.0f} img/s in all", refresh=False)
                if stop.signum is not None and self._waiting():
                    for run in self.runs:
                        run.manager.wait_until_finished()
                    raise loop.interrupted(stop.signum, epoch)
        finally:
            self.bar.close()

    def _train_epoch(self, epoch: int, active: list[int]) -> dict[int, dict]:
        """Trains the active members one epoch (the others frozen); their training records."""
        num = len(self.members)
        self.state = _with_step(self.state, {self.member_steps[k] for k in active}, self.members,
                                self.replicated)
        frozen = None if len(active) == num else jax.tree.map(jnp.copy, self.state)
        t_epoch = time.perf_counter()
        epoch_arg = jax.device_put(np.int32(epoch), self.replicated)
        self.state, step_metrics = self.train_epoch(self.state, self.train_images, epoch_arg)
        step_metrics = jax.device_get(step_metrics)  # waits for the epoch to finish
        train_time = time.perf_counter() - t_epoch
        if frozen is not None:
            self.state = _keep_frozen(jnp.isin(jnp.arange(num), jnp.asarray(active)), self.state, frozen)
        records = {}
        for k in active:
            self.member_steps[k] += self.runs[k].steps_per_epoch
            try:
                records[k] = self.runs[k].train_record(jax.tree.map(lambda m, k=k: m[k], step_metrics),
                                                       train_time, self.compile_time)
            except NonFiniteLossError as e:
                self._stop_member(k, e)
        self.compile_time = None  # recorded on the session's first epoch only
        return records

    def _evaluate(self, records: dict[int, dict]) -> None:
        """Evaluates every member at once and adds the results to the active members' records."""
        t_eval = time.perf_counter()
        params = state.eval_params(self.state)
        summaries = [{} for _ in self.members]
        for evaluator in self.evaluators:
            for summary, part in zip(summaries, evaluator.per_member(params)):
                summary |= part
        eval_time = time.perf_counter() - t_eval
        for k in list(records):
            try:
                self.runs[k].add_evaluation(records[k], summaries[k], eval_time)
            except NonFiniteLossError as e:
                self._stop_member(k, e)
                del records[k]


@jax.jit
def _keep_frozen(active_K: jax.Array, new: TrainState, old: TrainState) -> TrainState:
    """The new state for active members, the old one for frozen members."""
    def pick(n, o):
        return jnp.where(active_K.reshape(-1, *[1] * (n.ndim - 1)), n, o)

    return TrainState(new.step, *jax.tree.map(pick, tuple(new)[1:], tuple(old)[1:]))


def _with_step(state: TrainState, steps: set[int], members, sharding) -> TrainState:
    """The shared step counter set to the training members' step (they must agree)."""
    if len(steps) > 1:
        raise files.WorkdirError(
            f"the members of the group of {members[0].name} are at different steps {sorted(steps)} at "
            "the same epoch, so they cannot train in lock-step (was train.batch_size changed?); "
            "resume with the batch size they started with, or pass --restart")
    return state._replace(step=jax.device_put(np.int32(steps.pop()), sharding))


RATE_DISTORTION_FILE = "rate_distortion.png"


def save_rate_distortion(sweep_dir: str | Path, out: str | Path | None = None) -> Path:
    """Writes rate_distortion.png (`plotting.plot_rate_distortion`) into `out` (default: the
    sweep's directory); returns its path."""
    sweep_dir = Path(sweep_dir)
    figure = plotting.plot_rate_distortion(files.read_members(sweep_dir), spec.curves(sweep_dir))
    return plotting.save_figure(figure, Path(out or sweep_dir) / RATE_DISTORTION_FILE)
