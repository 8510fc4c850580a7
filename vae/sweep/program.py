"""A sweep's group as one compiled program: the one-run epoch body (`vae.train.epoch`) wrapped for
K members whose configs differ only in `Hyper` numbers, their states as one carry, and the group's
training, epoch by epoch, with the one run's per-epoch pieces (`vae.train.loop`) for each member.

The members advance in lock-step with one shared step counter, two ways (`member_loop`):

- 'unrolled': each member's own step in turn, its numbers compiled in as a single run's, on the
  batch drawn once per seed. The carry is (step, [member's (params, opt_state, ema)] ...). On CPU
  the faster for K > 1: XLA's batched matmuls there need layout copies of the weights that 2-D
  ones avoid (docs/sweeps.md). A member's numbers are those of its single run, bit for bit.
- 'vmap': one batched step over the members' stacked states (`MEMBER_AXES`), the numbers they
  differ in traced: an accelerator's choice.

A member that is done (its epochs, early stopping, or a non-finite loss, which stops that member
only) or ahead of the others (a kill fell between two members' checkpoints) is carried through the
group's epochs unchanged (`freeze`, `thaw`) while the others train.
"""

import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from vae.data import dataset
from vae.sweep.spec import Member
from vae.train import loop
from vae.train.run_dir import NonFiniteLossError, RunDir
from vae.train.state import TrainState, eval_params, hyperparameters
from vae.train.step import step_key
from vae.workdir import files

MEMBER_LOOPS = ("auto", "vmap", "unrolled")
# Members on a leading axis of every parameter and optimizer leaf (the 'vmap' carry); the step shared.
MEMBER_AXES = TrainState(step=None, params=0, opt_state=0, ema_params=0)


def member_loop(choice: str = "auto", num_members: int = 1) -> str:
    """'vmap' or 'unrolled' (see the module's docstring); 'auto': unrolled for one member or on
    CPU, vmap elsewhere."""
    if choice not in MEMBER_LOOPS:
        raise ValueError(f"the member loop must be one of {MEMBER_LOOPS}, got {choice!r}")
    if choice == "auto":
        return "unrolled" if num_members == 1 or jax.default_backend() == "cpu" else "vmap"
    return choice


def own_orders(configs: list[ml_collections.ConfigDict]) -> bool:
    """Whether the members need batch orders of their own: they have different seeds."""
    return len({c.seed for c in configs}) > 1


def feed_seeds(configs: list[ml_collections.ConfigDict]) -> int | tuple[int, ...]:
    """The seeds whose orders the group's feed gives: one shared, or one per member."""
    return tuple(c.seed for c in configs) if own_orders(configs) else configs[0].seed


# --- The members' states: the epoch's carry ------------------------------------------------------


def stack(states: list[TrainState], loop: str, sharding=None):
    """The carry of members' states (the first one's step counter): stacked on a leading axis
    for 'vmap', a list of their (params, opt_state, ema) for 'unrolled' (no copy)."""
    if loop == "unrolled":
        return states[0].step, [tuple(s)[1:] for s in states]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(tuple(s)[1:] for s in states))
    carry = TrainState(states[0].step, *stacked)
    return carry if sharding is None else jax.device_put(carry, sharding)


def member(carry, k: int) -> TrainState:
    """Member k's state, a single run's, from the carry."""
    if isinstance(carry, TrainState):  # 'vmap'
        return TrainState(carry.step, *jax.tree.map(lambda x: x[k], tuple(carry)[1:]))
    step, parts = carry
    return TrainState(step, *parts[k])


def with_step(carry, step, sharding):
    """The carry with its shared step counter set to `step`."""
    step = jax.device_put(np.int32(step), sharding)
    if isinstance(carry, TrainState):
        return carry._replace(step=step)
    return step, carry[1]


def freeze(carry, frozen: list[int]):
    """What `thaw` needs to put the `frozen` members back after an epoch they are carried through
    unchanged (a member that is done, or ahead of the others): copies of their states, whose
    buffers survive the epoch's donation."""
    if isinstance(carry, TrainState):  # 'vmap': the stacked arrays hold every member
        return frozen, jax.tree.map(jnp.copy, tuple(carry)[1:])
    return frozen, {k: jax.tree.map(jnp.copy, carry[1][k]) for k in frozen}


def thaw(carry, frozen_copies):
    """The carry after an epoch, with the frozen members' states as they were before it."""
    frozen, copies = frozen_copies
    if isinstance(carry, TrainState):
        num = jax.tree.leaves(carry.params)[0].shape[0]
        mask_K = jnp.isin(jnp.arange(num), jnp.asarray(frozen))
        return TrainState(carry.step, *_pick(mask_K, copies, tuple(carry)[1:]))
    step, parts = carry
    return step, [copies.get(k, part) for k, part in enumerate(parts)]


@jax.jit
def _pick(mask_K, old, new):
    """old where the member's mask is set, new elsewhere, for arrays with members on axis 0."""
    def pick(o, n):
        return jnp.where(mask_K.reshape(-1, *[1] * (n.ndim - 1)), o, n)

    return jax.tree.map(pick, old, new)


# --- The step body of K members ------------------------------------------------------------------


def varying_hyper(configs: list[ml_collections.ConfigDict]) -> dict[str, list]:
    """The Hyper fields in which the configs differ, with one value per config."""
    columns = zip(*(hyperparameters(c) for c in configs))
    return {name: list(column) for name, column in zip(hyperparameters(configs[0])._fields, columns)
            if len(set(column)) > 1}


def members_body(train_step, configs: list[ml_collections.ConfigDict], batch_of, loop: str):
    """body(carry, consts, x) -> (carry, metrics with K leading): one step of every member, each
    a single run's step (`vae.train.epoch.step_body`). x is this step's batch input (B indices or
    a B x D batch; K of them where the members have orders of their own); `batch_of(consts, x)`
    turns one into the uint8 batch."""
    own = own_orders(configs)
    if loop == "vmap":
        base = hyperparameters(configs[0])
        values = {name: jnp.asarray(v) for name, v in varying_hyper(configs).items()}

        def vmapped(carry, consts, x):
            def one(state, numbers, x_k):
                hyper = base._replace(**numbers)
                return train_step(state, batch_of(consts, x_k), step_key(hyper.seed, state.step), hyper)

            return jax.vmap(one, in_axes=(MEMBER_AXES, 0, 0 if own else None),
                            out_axes=(MEMBER_AXES, 0))(carry, values, x)

        return vmapped

    hypers = [hyperparameters(c) for c in configs]

    def unrolled(carry, consts, x):
        step_count, parts = carry
        drawn = {}  # seed -> (batch, key) of this step: drawn once for the members that share it
        outs = []
        for k, (part, hyper) in enumerate(zip(parts, hypers)):
            if hyper.seed not in drawn:
                drawn[hyper.seed] = (batch_of(consts, x[k] if own else x), step_key(hyper.seed, step_count))
            outs.append(train_step(TrainState(step_count, *part), *drawn[hyper.seed], hyper))
        new_parts = [tuple(state)[1:] for state, _ in outs]
        return (outs[0][0].step, new_parts), jax.tree.map(lambda *m: jnp.stack(m), *(m for _, m in outs))

    return unrolled


def build(configs: list[ml_collections.ConfigDict], data: dataset.Dataset, mesh) -> loop.Setup:
    """The training set-up (`vae.train.loop.build`) of a group, its feed giving the members' orders."""
    return loop.build(configs[0], data, mesh, seeds=feed_seeds(configs))


def compile_group(built: loop.Setup, configs: list[ml_collections.ConfigDict], carry, loop: str):
    """The group's compiled epoch (carry, epoch) -> (carry, per-step metrics steps x K x ...) and
    the seconds compiling took: scan or steps as a single run of configs[0] would."""
    return built.compile_epoch(carry, members_body(built.train_step, configs, built.source.batch, loop))


# --- Training a group ----------------------------------------------------------------------------


def train_group(group: list[Member], sweep_dir: Path, data: dataset.Dataset,
                session) -> dict[str, list[dict]]:
    """Restores every member of one group (each from SWEEP/<name>, exactly a single run's workdir)
    and trains those not done as one program; returns their metrics by name. `session` holds what
    the groups of one command share (`vae.sweep.driver.Session`)."""
    built = build([m.config for m in group], data, session.mesh)
    runs, states = [], []
    try:
        for m in group:
            run = RunDir(sweep_dir / m.name, m.config, built.steps_per_epoch, session.restart,
                         image_shape=data.image_shape)
            runs.append(run)
            initial = built.initial if m.config is built.config else built.init_state(m.config)
            states.append(run.restore(initial, built.replicated))
            if session.progress and run.epoch:
                print(_prefix(m) + loop.resume_line(run.workdir, run), file=sys.stderr, flush=True)
        live = [k for k, run in enumerate(runs) if not run.finished()]
        if live:
            Group([group[k] for k in live], [runs[k] for k in live], [states[k] for k in live], built,
                  session).train()
    finally:
        for run in runs:
            run.close()
    return {m.name: run.history for m, run in zip(group, runs)}


def _prefix(m: Member) -> str:
    return f"{m.name}: "


class Group:
    """One group's compiled programs and its members' runs."""

    def __init__(self, members: list[Member], runs: list[RunDir], states: list[TrainState],
                 built: loop.Setup, session):
        self.members, self.runs, self.session, self.built = members, runs, session, built
        configs = [m.config for m in members]
        self.loop = member_loop(session.member_loop, len(members))
        self.carry = stack(states, self.loop, built.replicated)
        self.member_steps = [int(s.step) for s in states]
        self.failed = [False] * len(members)
        self.train_epoch, self.compile_time = compile_group(built, configs, self.carry, self.loop)
        self.evaluators = built.evaluators()
        shown = built.pictures()  # compiled once for the group
        for run in runs:
            run.open_board(shown)

    def _waiting(self) -> list[int]:
        return [k for k, run in enumerate(self.runs) if not (self.failed[k] or run.finished())]

    def _stop_member(self, k: int, error: Exception) -> None:
        """A non-finite loss stops its member only; its last good checkpoint is kept."""
        self.failed[k] = True
        self.session.failures[self.members[k].name] = error
        tqdm.write(f"{self.members[k].name}: {error}; the other members go on", file=sys.stderr)

    def train(self) -> None:
        num_epochs = self.built.config.train.num_epochs
        progress = self.session.progress
        session_start = time.perf_counter()
        with loop.progress_bar(num_epochs, min(run.epoch for run in self.runs), progress) as bar:
            while waiting := self._waiting():
                number = min(self.runs[k].epoch for k in waiting) + 1
                active = [k for k in waiting if self.runs[k].epoch == number - 1]  # the others wait
                records, signum = self._train_epoch(number, active)
                if records and self.runs[active[0]].eval_due():
                    self._evaluate(records)
                total = sum(r["images_per_sec"] for r in records.values())
                for k, record in records.items():
                    record |= {"sweep/members": len(active), "sweep/images_per_sec": total}
                    loop.end_epoch(self.runs[k], record, member(self.carry, k), signum, session_start,
                                   bar if progress else None, _prefix(self.members[k]))
                bar.update(number - bar.n)
                bar.set_postfix_str(f"{len(records)} members, {total:,.0f} img/s in all", refresh=False)
                if signum and self._waiting():
                    for run in self.runs:
                        run.manager.wait_until_finished()
                    raise loop.interrupted(signum, number)

    def _train_epoch(self, number: int, active: list[int]) -> tuple[dict[int, dict], int]:
        """Trains the active members one epoch (the others carried through unchanged); their
        training records, and the stop signal every process agrees on."""
        if len(self.members) > 1:
            self.carry = with_step(self.carry, _shared_step(self.member_steps, active, self.members),
                                   self.built.replicated)
        frozen = [k for k in range(len(self.members)) if k not in active]
        saved = freeze(self.carry, frozen) if frozen else None
        self.built.load_epoch(number)
        self.carry, step_metrics, train_time, signum = loop.run_epoch(self.train_epoch, self.carry, number,
                                                                      self.session.stop)
        if saved is not None:
            self.carry = thaw(self.carry, saved)
        records = {}
        for k in active:
            self.member_steps[k] += self.runs[k].steps_per_epoch
            try:
                member_metrics = jax.tree.map(lambda m, k=k: np.asarray(m)[:, k], step_metrics)
                records[k] = loop.epoch_record(self.runs[k], member_metrics, train_time, self.compile_time,
                                               _prefix(self.members[k]))
            except NonFiniteLossError as e:
                self._stop_member(k, e)
        self.compile_time = None  # recorded on the session's first epoch only
        return records, signum

    def _evaluate(self, records: dict[int, dict]) -> None:
        """Evaluates the active members and adds the results to their records."""
        t_eval = time.perf_counter()
        summaries = {k: loop.evaluation(eval_params(member(self.carry, k)), self.evaluators,
                                        self.members[k].config.seed) for k in records}
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
