"""Trains a sweep: the cross product of the --sweep lists, each member into WORKDIR/<name>.

    python scripts/sweep.py --config configs/default.py --workdir runs/beta \
        --sweep train.beta=0.25,0.5,1,2,4 [--sweep seed=0,1] [--config.train.num_epochs=10]

Members that differ only in shape-free numbers (β, free bits, KL warm-up, learning rate, EMA decay,
weight decay, clipping norm, seed) train together as one vmapped program; a field that changes
the program (latent size, widths, architecture, ...) splits the sweep into groups, one program
each, trained one after another. Each member's workdir is a single run's (scripts/sample.py,
plot_kl.py and evaluate.py take it as is); WORKDIR gets sweep.json and rate_distortion.png. Run
the same command again to resume.
"""

import sys
import time

from absl import app, flags

from vae import cli
from vae.sweep import driver, program, spec

_CONFIG = cli.define_config()
_WORKDIR = flags.DEFINE_string("workdir", None, "The sweep's directory; each member trains into a "
                               "subdirectory named by its values.", required=True)
_SWEEP = flags.DEFINE_multi_string("sweep", None, "FIELD=V1,V2,...: a config field and its values "
                                   "(repeat for a cross product).", required=True)
_RESTART = flags.DEFINE_bool("restart", False, "Delete every member's checkpoints and metrics first.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar and one line per member and epoch.")
_MEMBER_LOOP = flags.DEFINE_enum("member_loop", "auto", program.MEMBER_LOOPS,
                                 "How a group's program runs its members' step: vmap, unrolled, or auto "
                                 "(unrolled on CPU, vmap elsewhere).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.start()
    start = time.perf_counter()
    with cli.user_errors():
        axes = [spec.parse_axis(axis, _CONFIG.value) for axis in _SWEEP.value]
        histories = driver.train_sweep(_CONFIG.value, axes, _WORKDIR.value, restart=_RESTART.value,
                                      progress=_PROGRESS.value, member_loop=_MEMBER_LOOP.value)
    for name, history in histories.items():
        last = history[-1] if history else {}
        print(f"{name}: epoch {last.get('epoch', 0)}, test -elbo {last.get('test/elbo', float('nan')):.2f} "
              f"= rec {last.get('test/rec', float('nan')):.2f} + kl {last.get('test/kl', float('nan')):.2f} "
              f"nats", file=sys.stderr)
    print(f"done in {time.perf_counter() - start:.0f} s: {len(histories)} members in {_WORKDIR.value}",
          file=sys.stderr)


if __name__ == "__main__":
    cli.run_script(lambda: app.run(main, flags_parser=cli.parse_flags))
