"""Trains a sweep: the members of `spec` (the cross product of its axes), each into its own workdir
under the sweep's (`train_members`): members whose configs differ only in `Hyper` numbers train as
one compiled program (`vae.sweep.program`), and each member's workdir is exactly a single run's,
resumed after a kill as a run is.
"""

import contextlib
import dataclasses
import sys
from pathlib import Path

import jax
import ml_collections

from vae.analysis import plotting
from vae.config import ConfigError, validate_config
from vae.data import dataset
from vae.sweep import program, spec
from vae.train import distributed, loop
from vae.train.run_dir import NonFiniteLossError
from vae.workdir import faults, files, lock


def train_sweep(config: ml_collections.ConfigDict, axes: list[tuple[str, list]], sweep_dir: str | Path,
                **kwargs) -> dict[str, list[dict]]:
    """Trains the cross product of `axes` (field, values) over `config` into `sweep_dir`; returns
    each member's metrics by name (`train_members` for the keywords)."""
    return train_members(spec.make_members(config, axes), sweep_dir, **kwargs)


@dataclasses.dataclass
class Session:
    """What the groups of one sweep command share."""

    mesh: jax.sharding.Mesh
    restart: bool
    progress: bool  # a progress bar and a line per epoch (process 0 only)
    member_loop: str
    stop: loop.StopRequests | None = None
    failures: dict = dataclasses.field(default_factory=dict)  # member name -> the error that stopped it


def check_members(members: list[spec.Member], sweep_dir: Path, num_devices: int, restart: bool,
                  configs_only: bool = False) -> None:
    """Every check that needs no data: each config, and (unless restarting, or `configs_only`) that
    each member's workdir holds nothing or a run of the same config."""
    for m in members:
        try:
            validate_config(m.config, num_devices)
            if not (restart or configs_only):
                files.check_resumable(sweep_dir / m.name, m.config)
        except (ConfigError, files.WorkdirError) as e:
            raise type(e)(f"member {m.name}: {e}") from None


def train_members(members: list[spec.Member], sweep_dir: str | Path, *, devices=None, restart: bool = False,
                  progress: bool = True, member_loop: str = "auto") -> dict[str, list[dict]]:
    """Trains each member into SWEEP/<name>, resuming each from its last checkpoint, the members of
    a group as one program (their step `member_loop`, see `vae.sweep.program`); returns their
    metrics by name. Every check (configs, resuming, data) runs before any compute; then
    SWEEP/sweep.json records the sweep and one line says which members share a program. A
    non-finite loss stops its member only; the others finish, then it is raised."""
    sweep_dir = Path(sweep_dir)
    mesh = distributed.make_mesh(devices)
    check_members(members, sweep_dir, mesh.devices.size, restart, configs_only=True)
    writer = distributed.is_writer()
    session = Session(mesh, restart, progress and writer, member_loop)
    histories = {}
    with contextlib.ExitStack() as stack:
        for m in members:  # process 0 holds the locks for all processes
            if writer:
                stack.enter_context(lock.training_lock(sweep_dir / m.name))
        stack.enter_context(faults.write_errors(sweep_dir))
        check_members(members, sweep_dir, mesh.devices.size, restart)  # a run already training is named first
        groups = spec.group_members(members)
        loaded = {}  # the data set of each data config
        for group in groups:
            data_config = group[0].config.data
            if data_config.to_json() not in loaded:
                loaded[data_config.to_json()] = dataset.load_dataset(data_config)
            loop.steps_per_epoch(group[0].config, loaded[data_config.to_json()])
        spec.write_sweep_file(sweep_dir, groups)
        largest = max(len(group) for group in groups)
        print(spec.plan(groups, program.member_loop(member_loop, largest)), file=sys.stderr)
        session.stop = stack.enter_context(loop.StopRequests(announce=writer))
        for group in groups:
            data = loaded[group[0].config.data.to_json()]
            histories |= program.train_group(group, sweep_dir, data, session)
    if session.failures:
        if len(members) == 1:
            raise next(iter(session.failures.values()))
        raise NonFiniteLossError(
            "; ".join(f"member {name}: {error}" for name, error in session.failures.items())
            + " (the other members finished)")
    by_name = {m.name: histories[m.name] for m in members}
    if all(any("test/kl" in r for r in h) for h in by_name.values()):
        save_rate_distortion(sweep_dir)
    return by_name


RATE_DISTORTION_FILE = "rate_distortion.png"


def save_rate_distortion(sweep_dir: str | Path, out: str | Path | None = None) -> Path:
    """Writes rate_distortion.png (`plotting.plot_rate_distortion`) into `out` (default: the
    sweep's directory); returns its path."""
    sweep_dir = Path(sweep_dir)
    figure = plotting.plot_rate_distortion(files.read_members(sweep_dir), spec.curves(sweep_dir))
    return plotting.save_figure(figure, Path(out or sweep_dir) / RATE_DISTORTION_FILE)
