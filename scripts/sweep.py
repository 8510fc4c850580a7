r"""Trains a sweep: the cross product of the --sweep lists, each member into WORKDIR/<name>.

    python scripts/sweep.py --config configs/default.py --workdir runs/beta \
        --sweep train.beta=0.25,0.5,1,2,4 [--sweep seed=0,1] [--config.train.num_epochs=10]

Members that differ only in shape-free numbers (β, free bits, KL warm-up, learning rate, EMA decay,
weight decay, clipping norm, skipping threshold, seed) train together as one compiled program; a
field that changes the program (latent size, widths, architecture, ...) splits the sweep into
groups, one program each, trained one after another. Each member's workdir is a single run's
(scripts/sample.py, plot_kl.py and evaluate.py take it as is); WORKDIR gets sweep.json and
rate_distortion.png. Run the same command again to resume.
"""

import sys
import time

from vae import cli, cli_flags
from vae.sweep import driver, program, spec


def build_parser() -> cli_flags.ArgumentParser:
    parser = cli_flags.ArgumentParser(description=__doc__)
    parser.add_config()
    parser.add_argument("--workdir", required=True,
                        help="the sweep's directory; each member trains into a subdirectory named by "
                             "its values")
    parser.add_argument("--sweep", action="append", required=True, metavar="FIELD=V1,V2,...",
                        help="a config field and its values (repeat for a cross product)")
    parser.add_argument("--restart", action="store_true",
                        help="delete every member's checkpoints and metrics first")
    parser.add_argument("--member_loop", choices=program.MEMBER_LOOPS, default="auto",
                        help="how a group's program runs its members' step: vmap, unrolled, or auto "
                             "(unrolled on CPU, vmap elsewhere)")
    cli_flags.add_progress_argument(parser)
    parser.add_check(parse_axes)
    return parser


def parse_axes(args) -> str | None:
    """args.axes: each --sweep as (field, values), typed like the config's field."""
    try:
        args.axes = [spec.parse_axis(axis, args.config) for axis in args.sweep]
    except spec.SweepError as e:
        return f"argument --sweep: {e}"
    return None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cli.start()
    start = time.perf_counter()
    with cli.user_errors():
        histories = driver.train_sweep(args.config, args.axes, args.workdir, restart=args.restart,
                                       progress=not args.no_progress, member_loop=args.member_loop)
    for name, history in histories.items():
        last = history[-1] if history else {}
        print(f"{name}: epoch {last.get('epoch', 0)}, test -elbo {last.get('test/elbo', float('nan')):.2f} "
              f"= rec {last.get('test/rec', float('nan')):.2f} + kl {last.get('test/kl', float('nan')):.2f} "
              f"nats", file=sys.stderr)
    print(f"done in {time.perf_counter() - start:.0f} s: {len(histories)} members in {args.workdir}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    cli.run_script(main)
