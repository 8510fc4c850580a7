"""Aggregate training throughput of a sweep's vmapped program against a single run, in one process.

    python scripts/benchmark_sweep.py --config configs/mlp_small.py --members 2,4,8,16 \
        --vary train.beta [--loops unrolled,vmap] [--rounds 4] [--out docs/bench/sweep_beta.json]

Builds the single run's epoch program and, for each K and member loop (`vae.sweep.program`),
the program `scripts/sweep.py` runs for K members differing in --vary (train.beta: β from 2^-2 to
2^2 spread over K, one shared seed; seed: seeds 0 ... K-1, each member with its own data order
and binarisation). Each round trains one epoch of every program in turn, so drift on a shared
machine hits all alike; the first round (compilation, warm-up) is not counted. Reports median
images/s (all members together), the median per-round ratio to the single run, the ratio of the
best rounds, and the ratio of images per second of the process's CPU time (less disturbed by
other processes on a shared machine).
"""

import json
import os
import statistics
import sys

from vae import cli_flags

# benchmarks/ is the repository's, beside scripts/ (the package installs only vae)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_parser() -> cli_flags.ArgumentParser:
    parser = cli_flags.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_config("configs/mlp_small.py")
    parser.add_argument("--members", type=cli_flags.integer_list(1), default=[2, 4, 8, 16],
                        help="comma-separated sweep sizes K")
    parser.add_argument("--vary", default="train.beta", choices=("train.beta", "seed"))
    parser.add_argument("--loops", default="unrolled,vmap", help="member loops to time, comma-separated")
    parser.add_argument("--rounds", type=cli_flags.integer(2), default=4,
                        help="rounds of one epoch each (>= 2: the first is not counted)")
    parser.add_argument("--train_images", type=cli_flags.integer(1), default=None,
                        help="use only the first N")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_check(check)
    return parser


def check(args) -> str | None:
    loops = args.loops.split(",")
    if not loops or any(loop not in ("vmap", "unrolled") for loop in loops):
        return f"argument --loops: must be comma-separated vmap, unrolled; got {args.loops!r}"
    return None


def member_configs(config, vary: str, num: int) -> list:
    import numpy as np

    from vae.sweep import spec

    if vary == "seed":
        values = list(range(num))
    else:
        values = [float(b) for b in np.geomspace(0.25, 4.0, num)] if num > 1 else [1.0]
    return [m.config for m in spec.make_members(config, [(vary, values)])]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import jax

    from benchmarks import harness
    from vae import cli
    from vae.config import validate_config

    config = args.config
    sizes = args.members
    cli.quiet_logs()  # no compilation cache: compile times are measured
    with cli.user_errors():
        validate_config(config, jax.device_count())
        train_images, test_images, dynamic = harness.load_images(config, synthetic=False)
        if args.train_images:
            train_images = train_images[: args.train_images]
        trainers = {("single", 1): harness.Trainer(config, train_images, test_images, dynamic)}
        for loop in args.loops.split(","):
            for k in sizes:
                trainers[loop, k] = harness.Trainer(config, train_images, test_images, dynamic,
                                                      members=member_configs(config, args.vary, k), loop=loop)
        rates = {key: [] for key in trainers}
        cpu_rates = {key: [] for key in trainers}
        for round_index in range(args.rounds):
            for key, trainer in trainers.items():
                rate = trainer.images_per_epoch / trainer.run_epoch()
                if round_index > 0:
                    rates[key].append(rate)
                    cpu_rates[key].append(trainer.images_per_cpu_sec)
            print(f"round {round_index + 1}/{args.rounds}: " + ", ".join(
                f"{loop} K={k} {rates[loop, k][-1] if rates[loop, k] else 0:,.0f}" for loop, k in trainers),
                flush=True)
    results = {"machine": harness.machine(), "config": json.loads(config.to_json_best_effort()),
               "vary": args.vary, "train_images": len(train_images), "load_average": os.getloadavg(),
               "runs": []}
    single, single_cpu = rates["single", 1], cpu_rates["single", 1]
    for (loop, k), trainer in trainers.items():
        run = {"loop": loop, "members": k, "compile_sec": trainer.compile_sec,
               "images_per_sec": statistics.median(rates[loop, k]), "images_per_sec_all": rates[loop, k],
               "best_images_per_sec": max(rates[loop, k]),
               "ratio_to_single": statistics.median(r / s for r, s in zip(rates[loop, k], single)),
               "best_ratio_to_single": max(rates[loop, k]) / max(single),
               "images_per_cpu_sec_all": cpu_rates[loop, k],
               "cpu_ratio_to_single": statistics.median(
                   c / s for c, s in zip(cpu_rates[loop, k], single_cpu))}
        results["runs"].append(run)
        print(f"{loop:8s} K={k:<3d} {run['images_per_sec']:>9,.0f} images/s in all "
              f"(best {run['best_images_per_sec']:,.0f}): {run['ratio_to_single']:.2f}x the single run "
              f"(best/best {run['best_ratio_to_single']:.2f}x, per CPU second "
              f"{run['cpu_ratio_to_single']:.2f}x), compile {run['compile_sec']:.1f} s")
    if args.out:
        harness.write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
