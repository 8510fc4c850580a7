"""Trains a sweep: K configs at once, each group of members (`vae.sweep_spec`) as one compiled
program whose step is vmapped over the members' stacked states. Each member trains into its own
workdir under the sweep's through the bookkeeping a single run uses (`train.RunDir`), so its
workdir is exactly a single run's, and it resumes after a kill as a run does.

A group's members advance in lock-step, one epoch of all of them per call. A member that is done
(its epochs, early stopping, or a non-finite loss, which stops that member only) or ahead of the
others (a kill fell between two members' checkpoints) is frozen: its state is carried through the
epoch unchanged while the others train.
"""

import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vae import data, plotting, programs, train, validation
from vae import sweep_spec as spec
from vae import workdir as wd
from vae.programs import TrainState

RATE_DISTORTION_FILE = "rate_distortion.png"


def train_sweep(config: ml_collections.ConfigDict, axes: list[tuple[str, list]], sweep_dir: str | Path, *,
                devices=None, restart: bool = False, progress: bool = True) -> dict[str, list[dict]]:
    """Trains the cross product of `axes` over `config` into `sweep_dir`; returns each member's
    metrics by name. Every check (configs, resuming, data) runs before any compute."""
    sweep_dir = Path(sweep_dir)
    members = spec.make_members(config, axes)
    mesh = programs.make_mesh(devices)
    for member in members:
        try:
            train.check_run(member.config, sweep_dir / member.name, mesh.devices.size, restart)
        except (validation.ConfigError, wd.WorkdirError) as e:
            raise type(e)(f"member {member.name}: {e}") from None
    groups = spec.group_members(members)
    datasets = {}
    for group in groups:
        data_config = group[0].config.data
        if data_config.to_json() not in datasets:
            datasets[data_config.to_json()] = data.load_dataset(data_config)
        train.steps_per_epoch(group[0].config, datasets[data_config.to_json()])
    spec.write_sweep_file(sweep_dir, axes, groups)
    if progress:
        print(spec.plan(axes, groups), file=sys.stderr)

    histories, failures = {}, {}
    with train.StopRequests() as stop:
        for group in groups:
            dataset = datasets[group[0].config.data.to_json()]
            histories |= _train_group(group, sweep_dir, mesh, dataset, restart, progress, stop, failures)
    if all(any("test/kl" in r for r in h) for h in histories.values()):
        save_rate_distortion(sweep_dir)
    if failures:
        raise train.NonFiniteLossError(
            "; ".join(f"member {name}: {message}" for name, message in failures.items())
            + " (the other members finished)")
    return histories


def _train_group(group: list[spec.Member], sweep_dir: Path, mesh, dataset: data.Dataset, restart: bool,
                 progress: bool, stop, failures: dict) -> dict[str, list[dict]]:
    """Restores every member of one group and trains those not done as one program."""
    config = group[0].config  # what the program compiles in, the members share
    steps = train.steps_per_epoch(config, dataset)
    replicated = NamedSharding(mesh, P())
    tx = programs.make_optimizer(config.train, steps)
    runs, states = [], []
    try:
        for member in group:
            runs.append(train.RunDir(sweep_dir / member.name, member.config, steps, restart))
            graphdef, state = programs.init_state(member.config, dataset.image_shape, tx,
                                                  dataset.pixel_means())
            states.append(runs[-1].restore(jax.device_put(state, replicated), replicated))
        live = [k for k, run in enumerate(runs) if not run.finished()]
        if live:
            _train_members(graphdef, [group[k] for k in live], [runs[k] for k in live],
                           [states[k] for k in live], dataset, mesh, progress, stop, failures)
    finally:
        for run in runs:
            run.close()
    return {member.name: run.history for member, run in zip(group, runs)}


def _train_members(graphdef, members, runs, states, dataset, mesh, progress, stop, failures) -> None:
    """The epochs of one group's program until every member is done, failed or interrupted."""
    configs = [m.config for m in members]
    config, num = configs[0], len(members)
    replicated = NamedSharding(mesh, P())
    state = stack_members(states, replicated)
    member_steps = [int(s.step) for s in states]
    train_images = programs.images_on_device(dataset.train_images, mesh)
    t0 = time.perf_counter()
    train_epoch = programs.compile_train_epoch(graphdef, config, mesh, state, train_images, dataset.dynamic,
                                               spec.varying_hyper(configs))
    evaluate = programs.make_evaluate(graphdef, config, mesh, members=True)
    compile_time = time.perf_counter() - t0
    evaluators = train.make_evaluators(
        evaluate, config, mesh, dataset,
        keys_of=lambda split: jnp.stack([programs.eval_key(c, split) for c in configs]))
    session_start = time.perf_counter()
    failed = [False] * num
    num_epochs = config.train.num_epochs
    bar = train.progress_bar(num_epochs, min(run.epoch for run in runs), progress)

    def stop_member(k, error):  # a non-finite loss stops its member only
        failed[k] = True
        failures[members[k].name] = str(error)
        bar.write(f"{members[k].name}: {error}; the other members go on")

    try:
        while waiting := [k for k in range(num) if not (failed[k] or runs[k].finished())]:
            epoch = min(runs[k].epoch for k in waiting) + 1
            active = [k for k in waiting if runs[k].epoch == epoch - 1]
            state = _with_step(state, {member_steps[k] for k in active}, members, replicated)
            frozen = None if len(active) == num else jax.tree.map(jnp.copy, state)
            t_epoch = time.perf_counter()
            epoch_arg = jax.device_put(np.int32(epoch), replicated)
            state, step_metrics = train_epoch(state, train_images, epoch_arg)
            step_metrics = jax.device_get(step_metrics)  # waits for the epoch to finish
            train_time = time.perf_counter() - t_epoch
            if frozen is not None:
                state = _keep_frozen(jnp.isin(jnp.arange(num), jnp.asarray(active)), state, frozen)
            records = {}
            for k in active:
                member_steps[k] += runs[k].steps_per_epoch
                try:
                    records[k] = runs[k].train_record(jax.tree.map(lambda m, k=k: m[k], step_metrics),
                                                      train_time, compile_time)
                except train.NonFiniteLossError as e:
                    stop_member(k, e)
            compile_time = None
            if records and runs[active[0]].eval_due():
                t_eval = time.perf_counter()
                params = programs.eval_params(state)
                summaries = [{} for _ in range(num)]
                for evaluator in evaluators:
                    for summary, part in zip(summaries, evaluator.per_member(params)):
                        summary |= part
                eval_time = time.perf_counter() - t_eval
                for k in list(records):
                    try:
                        runs[k].add_evaluation(records[k], summaries[k], eval_time)
                    except train.NonFiniteLossError as e:
                        stop_member(k, e)
                        del records[k]
            total = sum(r["images_per_sec"] for r in records.values())
            for k, record in records.items():
                record |= {"sweep/members": len(active), "sweep/images_per_sec": total}
                stopping = runs[k].end_epoch(record, member_state(state, k), stop.signum is not None,
                                             session_start)
                if progress:
                    bar.write(f"{members[k].name}: {train.epoch_line(record, num_epochs)}")
                    if stopping:
                        bar.write(f"{members[k].name}: {train.early_stopping_line(record, config)}")
            bar.update(epoch - bar.n)
            bar.set_postfix_str(f"{len(records)} members, {total:,.0f} img/s in all", refresh=False)
            if stop.signum is not None and any(not (failed[k] or runs[k].finished()) for k in range(num)):
                for run in runs:
                    run.manager.wait_until_finished()
                raise train.interrupted(stop.signum, epoch)
    finally:
        bar.close()


def stack_members(states: list[TrainState], sharding) -> TrainState:
    """Members' states stacked on a leading axis (`programs.MEMBER_AXES`); the step of the first."""
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(tuple(s)[1:] for s in states))
    return jax.device_put(TrainState(states[0].step, *stacked), sharding)


def member_state(state: TrainState, k: int) -> TrainState:
    """Member k of a stacked state: a single run's state."""
    return TrainState(state.step, *jax.tree.map(lambda x: x[k], tuple(state)[1:]))


@jax.jit
def _keep_frozen(active_K: jax.Array, new: TrainState, old: TrainState) -> TrainState:
    """The new state for active members, the old one for frozen members."""
    def pick(n, o):
        return jnp.where(active_K.reshape(-1, *[1] * (n.ndim - 1)), n, o)

    return TrainState(new.step, *jax.tree.map(pick, tuple(new)[1:], tuple(old)[1:]))


def _with_step(state: TrainState, steps: set[int], members, sharding) -> TrainState:
    """The shared step counter set to the training members' step (they must agree)."""
    if len(steps) > 1:
        raise wd.WorkdirError(
            f"the members of the group of {members[0].name} are at different steps {sorted(steps)} at "
            "the same epoch, so they cannot train in lock-step (was train.batch_size changed?); "
            "resume with the batch size they started with, or pass --restart")
    return state._replace(step=jax.device_put(np.int32(steps.pop()), sharding))


# --- Reading a sweep ---------------------------------------------------------------------------


def read_members(sweep_dir: str | Path) -> dict[str, list[dict]]:
    """Member name -> its metric records, for the members that have any."""
    runs = {name: wd.read_metrics(path) for name, path in spec.member_workdirs(sweep_dir).items()}
    return {name: records for name, records in runs.items() if records}


def save_rate_distortion(sweep_dir: str | Path) -> Path:
    """Writes SWEEP/rate_distortion.png (`plotting.plot_rate_distortion`); returns its path."""
    sweep_dir = Path(sweep_dir)
    figure = plotting.plot_rate_distortion(read_members(sweep_dir), spec.curves(sweep_dir))
    return plotting.save_figure(figure, sweep_dir / RATE_DISTORTION_FILE)
