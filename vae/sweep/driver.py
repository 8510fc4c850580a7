"""Trains a sweep: the members of `spec` (the cross product of its axes), each into its own workdir
under the sweep's, through the one training loop (`vae.train.loop.train_members`): members whose
configs differ only in `Hyper` numbers train as one compiled program, and each member's workdir is
exactly a single run's, resumed after a kill as a run is.
"""

import sys
from pathlib import Path

import ml_collections

from vae.analysis import plotting
from vae.sweep import spec
from vae.train import distributed, epoch, loop
from vae.workdir import files


def train_sweep(config: ml_collections.ConfigDict, axes: list[tuple[str, list]], sweep_dir: str | Path,
                **kwargs) -> dict[str, list[dict]]:
    """Trains the cross product of `axes` (field, values) over `config` into `sweep_dir`; returns
    each member's metrics by name (`train_members` for the keywords)."""
    return train_members(spec.make_members(config, axes), sweep_dir, **kwargs)


def train_members(members: list[spec.Member], sweep_dir: str | Path, *, devices=None, restart: bool = False,
                  progress: bool = True, member_loop: str = "auto") -> dict[str, list[dict]]:
    """Trains each member into SWEEP/<name>; returns their metrics by name. Every check runs
    before any compute; then SWEEP/sweep.json records the sweep and one line says which members
    share a program."""
    sweep_dir = Path(sweep_dir)
    runs = [loop.Member(m.config, sweep_dir / m.name, m.name) for m in members]
    loop.check_members(runs, distributed.make_mesh(devices).devices.size, restart)
    groups = loop.group_members(members)
    spec.write_sweep_file(sweep_dir, groups)
    largest = max(len(group) for group in groups)
    print(spec.plan(groups, epoch.member_loop(member_loop, largest)), file=sys.stderr)  # who shares a program
    histories = loop.train_members(runs, devices=devices, restart=restart, progress=progress,
                                   member_loop=member_loop, fault_dir=sweep_dir)
    by_name = {run.name: history for run, history in zip(runs, histories)}
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
