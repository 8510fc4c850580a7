"""Trains a VAE from a config file into a workdir, resuming if the workdir holds a run.

    python scripts/train.py --config configs/default.py --workdir runs/x \
        --config.train.num_epochs=5 --config.train.beta=2

Over several processes (one per host or per GPU), every process runs the same command plus
`--coordinator_address host:port --num_processes N --process_id i`, or none of them inside a
SLURM step, under mpirun or on a Cloud TPU VM (detected); `scripts/launch_local.py` does it on
one machine. See docs/distributed.md.
"""

import sys

from absl import app, flags

from vae import cli
from vae.train import distributed, loop

_CONFIG = cli.define_config()
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for config.json, metrics and checkpoints.",
                               required=True)
_RESTART = flags.DEFINE_bool("restart", False, "Delete the workdir's checkpoints and metrics first.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar and one line per epoch.")
_JOIN = distributed.define_absl_flags()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.start()
    with cli.distributed_run(_JOIN()):
        history = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value, restart=_RESTART.value,
                                           progress=_PROGRESS.value)
        writer = distributed.is_writer()
    if history and writer:
        last = history[-1]
        print(f"done: epoch {last['epoch']}, test -elbo {last.get('test/elbo', float('nan')):.2f} "
              f"nats, workdir {_WORKDIR.value}", file=sys.stderr)


if __name__ == "__main__":
    cli.run_script(lambda: app.run(main, flags_parser=cli.parse_flags))
