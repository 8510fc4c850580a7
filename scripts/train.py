r"""Trains a VAE from a config file into a workdir, resuming if the workdir holds a run.

    python scripts/train.py --config configs/default.py --workdir runs/x \
        --config.train.num_epochs=5 --config.train.beta=2

Over several processes (one per host or per GPU), every process runs the same command plus
`--coordinator_address host:port --num_processes N --process_id i`, or none of them inside a
SLURM step, under mpirun or on a Cloud TPU VM (detected); `scripts/launch_local.py` does it on
one machine. See docs/distributed.md.
"""

import sys

from vae import cli, cli_flags
from vae.train import distributed, loop


def build_parser() -> cli_flags.ArgumentParser:
    parser = cli_flags.ArgumentParser(description=__doc__)
    parser.add_config()
    parser.add_argument("--workdir", required=True,
                        help="directory for config.json, metrics.jsonl and the checkpoints")
    parser.add_argument("--restart", action="store_true",
                        help="delete the workdir's checkpoints and metrics first")
    cli_flags.add_progress_argument(parser)
    cli_flags.add_settings_arguments(parser, distributed.Settings, distributed.FLAGS_TITLE)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cli.start()
    with cli.distributed_run(cli_flags.settings_from(args, distributed.Settings)):
        history = loop.train_and_evaluate(args.config, args.workdir, restart=args.restart,
                                          progress=not args.no_progress)
        writer = distributed.is_writer()
    if history and writer:
        last = history[-1]
        print(f"done: epoch {last['epoch']}, test -elbo {last.get('test/elbo', float('nan')):.2f} "
              f"nats, workdir {args.workdir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    cli.run_script(main)
