"""Benchmarks what scripts/train.py and scripts/evaluate.py run, as shares of this machine's matmul ceiling.

    python scripts/benchmark.py --config configs/mlp_small.py [--config configs/paper_vae.py ...]
        [--torch] [--profile] [--epochs 5] [--batch_sizes 128,1024] [--iw_samples 1000,5000]
        [--devices 4] [--out docs/bench/NAME.json]

One JSON for every config given: the fp32 matmul ceiling measured in this process (at the start
and again at the end), and for each config and batch size the training images/s (median over the
epochs after the first), the negative-ELBO evaluation and the importance-weighted bound (images/s
and samples/s), each with its matmul FLOPs counted on the traced program and its share of the
ceiling; compile time, step-time percentiles, memory. The same command on any machine, GPU
included, gives comparable shares. --torch alternates JAX with two PyTorch loops (idiomatic,
tuned) one epoch at a time and reports their median ratio; --profile adds where the time of a
train step and of an IWAE batch goes (matmuls, random bits, optimizer update, gathers, ...).
"""

import os
import sys
import time

from vae import cli_flags
from vae.config import FieldError, load_config, override, validate_config

# benchmarks/ is the repository's, beside scripts/ (the package installs only vae)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

COMMAND_START = time.perf_counter()


def build_parser() -> cli_flags.ArgumentParser:
    parser = cli_flags.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", default=None,
                        help="a config file; repeat for several (default configs/mlp_small.py)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="overrides for every config, e.g. model.arch=conv train.learning_rate=3e-4")
    parser.add_argument("--batch_sizes", type=cli_flags.integer_list(1), default=None,
                        help="comma-separated; default: each config's")
    parser.add_argument("--epochs", type=cli_flags.integer(2), default=5,
                        help="epochs timed per batch size (>= 2: the first is not timed)")
    parser.add_argument("--devices", type=cli_flags.integer(1, 4096), default=None,
                        help="fake this many CPU devices")
    parser.add_argument("--torch", action="store_true", help="alternate with the PyTorch reference (MLP)")
    parser.add_argument("--profile", action="store_true", help="break a train step and an IWAE batch down")
    parser.add_argument("--step_samples", type=cli_flags.integer(1), default=200,
                        help="steps timed one by one")
    parser.add_argument("--eval_repeats", type=cli_flags.integer(1), default=5,
                        help="timed ELBO evaluations of the test set")
    parser.add_argument("--iw_samples", type=cli_flags.integer_list(1), default=[1000],
                        help="k for the IWAE throughput; comma-separated for several (the first leads)")
    parser.add_argument("--iw_images", type=cli_flags.integer(1), default=256,
                        help="images for the IWAE throughput, at most (whole batches)")
    parser.add_argument("--iw_seconds", type=cli_flags.real(0.0), default=10.0,
                        help="fewer IWAE images where a timed run would take longer (at least one batch)")
    parser.add_argument("--iw_repeats", type=cli_flags.integer(1), default=3, help="timed IWAE runs")
    parser.add_argument("--synthetic", action="store_true", help="random images instead of the data set")
    parser.add_argument("--train_images", type=cli_flags.integer(1), default=None,
                        help="use only the first N")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_check(load_configs)
    return parser


def load_configs(args) -> str | None:
    """args.configs: (path, config) of every --config, each with the --set overrides (typed like
    their fields, as a sweep's values)."""
    args.config = args.config or ["configs/mlp_small.py"]
    args.configs = []
    for path in args.config:
        try:
            config = load_config(path)
        except FieldError as e:
            return f"argument --config: {e}"
        for item in args.set:
            try:
                override(config, item)
            except FieldError as e:
                field, _, value = item.partition("=")
                return f"argument --set: cannot set {field} to {value!r} ({e})"
        args.configs.append((path, config))
    return None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.devices:  # before jax starts
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={args.devices}")
    import jax

    from benchmarks import harness
    from vae import cli

    configs = args.configs
    cli.quiet_logs()  # no compilation cache: compile times are measured
    with cli.user_errors():
        for _, config in configs:
            validate_config(config, jax.device_count())
        results = {"machine": harness.machine(), "command": " ".join(sys.argv), "synthetic": args.synthetic,
                   "matmul_ceiling": harness.matmul_ceiling(), "configs": []}
        ceiling = results["matmul_ceiling"]["gflops"] * 1e9
        print(f"fp32 matmul ceiling, measured now: {ceiling / 1e9:,.0f} GFLOP/s\n")
        for path, config in configs:
            results["configs"].append(measure_config(path, config, args, harness, ceiling))
        results["matmul_ceiling_at_end"] = harness.matmul_ceiling()
        results["memory"] = harness.peak_memory()
    if args.out:
        harness.write_json(args.out, results)
    return 0


def measure_config(path, config, args, harness, ceiling: float) -> dict:
    import json

    import jax

    train_images, test_images, dynamic = harness.load_images(config, args.synthetic)
    if args.train_images:
        train_images = train_images[: args.train_images]
    entry = {"config_file": path, "overrides": args.set, "config": json.loads(config.to_json_best_effort()),
             "runs": []}
    batch_sizes = args.batch_sizes or [config.train.batch_size]
    reference = None
    if args.torch:
        model = config.model
        if model.arch == "mlp" and model.activation == "relu" and model.prior == "standard_normal":
            from benchmarks import torch_reference

            reference = torch_reference.Reference(train_images, model.hidden_dims, model.latent_dim,
                                                  batch_sizes[0])
        else:
            entry["torch"] = "skipped: the PyTorch reference is the ReLU MLP VAE with a standard normal prior"
    for index, batch_size in enumerate(batch_sizes):
        config.train.batch_size = batch_size
        config.eval.batch_size = max(config.eval.batch_size - config.eval.batch_size % jax.device_count(),
                                     jax.device_count())
        validate_config(config, jax.device_count())
        # Per batch size: a VampPrior's FLOPs per image fall as its batch grows.
        flops = harness.flops(config, train_images.shape[1:], args.iw_samples[0], jax.device_count())
        entry.setdefault("matmul_flops", flops)  # the first batch size's (older JSONs have only this)
        run = measure(config, train_images, test_images, dynamic, args, harness,
                      reference if index == 0 else None, flops, ceiling, profile=args.profile and index == 0)
        entry["runs"].append(run)
        print_run(path, run)
    return entry


def measure(config, train_images, test_images, dynamic, args, harness, reference, flops, ceiling,
            profile: bool) -> dict:
    import statistics

    import jax

    from benchmarks import profiling
    from vae.analysis import iwae

    trainer = harness.Trainer(config, train_images, test_images, dynamic)
    first = trainer.run_epoch()
    run = {
        "batch_size": config.train.batch_size,
        "matmul_flops": flops,
        "devices": jax.device_count(),
        "epoch_loop": trainer.epoch_loop,
        "compile_sec": trainer.compile_sec,
        "command_to_first_epoch_sec": time.perf_counter() - COMMAND_START,
        "first_epoch_images_per_sec": trainer.images_per_epoch / first,
    }
    jax_rates, idiomatic, tuned, others = [], [], [], []
    for _ in range(args.epochs - 1):
        with harness.OtherProcesses() as other:
            jax_rates.append(trainer.images_per_epoch / trainer.run_epoch())
        others.append(other.share)
        if reference is not None:
            idiomatic.append(reference.epoch_idiomatic())
            tuned.append(reference.epoch_tuned())
    rate = statistics.median(jax_rates)
    run["train"] = {"images_per_sec": rate, "all_images_per_sec": jax_rates, "others_cpu": others,
                    "share_of_ceiling": rate * flops["train_per_image"] / ceiling}
    if reference is not None:
        run["torch"] = {
            "threads": reference.threads,
            "idiomatic_images_per_sec": statistics.median(idiomatic),
            "tuned_images_per_sec": statistics.median(tuned),
            "jax_over_idiomatic": statistics.median(j / i for j, i in zip(jax_rates, idiomatic)),
            "jax_over_tuned": statistics.median(j / t for j, t in zip(jax_rates, tuned)),
            "all_idiomatic_images_per_sec": idiomatic, "all_tuned_images_per_sec": tuned,
        }
    step_times = trainer.step_times(args.step_samples)
    run["step_time_ms"] = {k: v * 1e3 for k, v in harness.percentiles(step_times).items()}

    evaluation = harness.timed(trainer.evaluate_once, args.eval_repeats)
    eval_rate = len(test_images) / evaluation["seconds"]
    run["elbo_eval"] = {"images_per_sec": eval_rate, "others_cpu": evaluation["others_cpu"],
                        "share_of_ceiling": eval_rate * flops["elbo_eval_per_image"] / ceiling}

    def iwae_figures(k: int) -> dict:
        # One batch first (it compiles, then is timed once), then as many whole batches as fit in
        # --iw_seconds per timed run, at most --iw_images: a slow model (conv at k = 5000) is timed
        # on fewer images rather than for many minutes, and no batch is mostly padding.
        batch = iwae.iwae_shapes(k, jax.device_count())[0]
        probe = harness.timed(trainer.iwae_run(k, batch), 1)
        fit = int(args.iw_seconds * batch / probe["seconds"]) // batch * batch
        num_images = max(batch, min(args.iw_images - args.iw_images % batch, fit, len(test_images)))
        timing = harness.timed(trainer.iwae_run(k, num_images), args.iw_repeats, warmup=False)
        samples = num_images * k / timing["seconds"]
        return {"k": k, "images": num_images, "images_per_sec": num_images / timing["seconds"],
                "samples_per_sec": samples, "others_cpu": timing["others_cpu"],
                "share_of_ceiling": samples * flops["iwae_decoder_per_sample"] / ceiling,
                "share_of_ceiling_all_matmuls": samples * flops["iwae_per_sample"] / ceiling}

    run["iwae"] = iwae_figures(args.iw_samples[0])
    if len(args.iw_samples) > 1:
        run["iwae_more"] = [iwae_figures(k) for k in args.iw_samples[1:]]
    k, num_images = args.iw_samples[0], run["iwae"]["images"]
    if profile:
        train_parts = profiling.profile(trainer.run_epoch, trainer.epoch_hlo())
        iwae_parts = profiling.profile(trainer.iwae_run(k, num_images), trainer.iwae_hlo(k))
        run["profile"] = {
            "train_step": per_part(train_parts, trainer.steps, "ms",
                                   flops["train_per_image"] * config.train.batch_size, ceiling),
            "iwae_sample": per_part(iwae_parts, num_images * k / 1000, "us",
                                    flops["iwae_per_sample"] * 1000, ceiling),
        }
    return run


def per_part(seconds: dict, units: float, unit: str, matmul_flops: float, ceiling: float) -> dict:
    """Each part's share of the busy CPU time and its wall time per step (or per 1000 samples,
    in `unit`), apportioned by that share; and the matmuls' rate as a share of the ceiling."""
    wall, busy = seconds["wall"], sum(v for k, v in seconds.items() if k not in ("idle", "wall")) or 1.0
    scale = 1e3 if unit == "ms" else 1e6
    parts = {part: {"share_of_time": cpu / busy, f"wall_{unit}": wall * cpu / busy * scale / units}
             for part, cpu in seconds.items() if part not in ("idle", "wall")}
    matmul_wall = wall * seconds["matmuls"] / busy / units
    parts["matmuls"]["rate_share_of_ceiling"] = matmul_flops / matmul_wall / ceiling if matmul_wall else 0.0
    return {"wall_per_unit": wall * scale / units, "unit": unit, "parts": parts}


def print_run(path: str, run: dict) -> None:
    train, iwae = run["train"], run["iwae"]
    rows = [
        ("config / batch size / devices", f"{path} / {run['batch_size']} / {run['devices']}"),
        ("compile; command start -> first epoch done", f"{run['compile_sec']:.2f} s; "
                                                        f"{run['command_to_first_epoch_sec']:.1f} s"),
        ("training (median)", f"{train['images_per_sec']:,.0f} images/s, "
                              f"{train['share_of_ceiling']:.0%} of the ceiling"),
    ]
    if "torch" in run:
        t = run["torch"]
        rows += [("PyTorch idiomatic", f"{t['idiomatic_images_per_sec']:,.0f} images/s "
                                       f"(JAX {t['jax_over_idiomatic']:.2f}x)"),
                 ("PyTorch tuned", f"{t['tuned_images_per_sec']:,.0f} images/s "
                                   f"(JAX {t['jax_over_tuned']:.2f}x)")]
    p = run["step_time_ms"]
    rows += [
        ("step time p50 / p90 / p99 (one call per step)",
         f"{p['p50']:.2f} / {p['p90']:.2f} / {p['p99']:.2f} ms"),
        ("evaluation, negative ELBO", f"{run['elbo_eval']['images_per_sec']:,.0f} images/s, "
                                      f"{run['elbo_eval']['share_of_ceiling']:.0%} of the ceiling"),
        (f"evaluation, IWAE k={iwae['k']}", f"{iwae['images_per_sec']:,.1f} images/s, "
                                            f"{iwae['samples_per_sec']:,.0f} samples/s, decoder at "
                                            f"{iwae['share_of_ceiling']:.0%} of the ceiling"),
    ]
    rows += [(f"evaluation, IWAE k={more['k']}", f"{more['images_per_sec']:,.1f} images/s, "
                                                 f"{more['samples_per_sec']:,.0f} samples/s, decoder at "
                                                 f"{more['share_of_ceiling']:.0%} of the ceiling")
             for more in run.get("iwae_more", [])]
    for program, breakdown in run.get("profile", {}).items():
        unit, parts = breakdown["unit"], breakdown["parts"]
        per = "step" if program == "train_step" else "1000 samples"
        rows.append((f"profile: {unit} per {per}", f"{breakdown['wall_per_unit']:.3g} {unit}: " + ", ".join(
            f"{part} {v[f'wall_{unit}']:.3g} ({v['share_of_time']:.0%})" for part, v in parts.items()
            if v["share_of_time"] >= 0.005)))
        rate = parts["matmuls"]["rate_share_of_ceiling"]
        rows.append(("  matmuls' own rate", f"{rate:.0%} of the ceiling"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print()


if __name__ == "__main__":
    sys.exit(main())
