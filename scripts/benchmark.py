"""Benchmarks the trainer that scripts/train.py runs, optionally against a PyTorch reference.

    python scripts/benchmark.py --config configs/mlp_small.py [--epochs 5] [--torch] [--devices 4]
        [--batch-sizes 128,512,4096] [--out docs/benchmark.json]

For each batch size: compile time, time from command start to the first finished epoch,
training images/s (median over the epochs after the first), step-time percentiles, evaluation
images/s (ELBO and importance-weighted), peak memory, and the share of the machine's fp32 matmul
ceiling. With --torch, JAX and two PyTorch loops (idiomatic, tuned) train alternately, one epoch
each per round, in this process, and their median ratio is reported.
"""

import os
import sys
import time

from vae import flags

COMMAND_START = time.perf_counter()


def parse(argv):
    parser = flags.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/mlp_small.py")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="config overrides, e.g. model.arch=conv train.learning_rate=3e-4")
    parser.add_argument("--batch-sizes", type=flags.integer_list(1), default=None,
                        help="comma-separated; default: the config's")
    parser.add_argument("--epochs", type=flags.integer(2), default=5,
                        help="epochs timed per batch size (>= 2: the first is not timed)")
    parser.add_argument("--devices", type=flags.integer(1, 4096), default=None,
                        help="fake this many CPU devices")
    parser.add_argument("--torch", action="store_true", help="alternate with the PyTorch reference")
    parser.add_argument("--step-samples", type=flags.integer(1), default=200, help="steps timed one by one")
    parser.add_argument("--iw-samples", type=flags.integer(1), default=1000, help="k for the IWAE throughput")
    parser.add_argument("--iw-images", type=flags.integer(1), default=256,
                        help="images for the IWAE throughput")
    parser.add_argument("--synthetic", action="store_true", help="random images instead of the data set")
    parser.add_argument("--train-images", type=flags.integer(1), default=None, help="use only the first N")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.config):
        parser.error(f"argument --config: no config file {args.config!r}")
    for item in args.set:
        if "=" not in item:
            parser.error(f"argument --set: expected FIELD=VALUE, got {item!r}")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if args.devices:  # before jax starts
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={args.devices}")
    import json
    import runpy

    from vae import benchmark, cli, sweep_spec, validation

    config = runpy.run_path(args.config)["get_config"]()
    for item in args.set:  # typed like the field, as --sweep's values (`sweep_spec.override`)
        try:
            sweep_spec.override(config, item)
        except validation.ConfigError as e:
            field, _, value = item.partition("=")
            print(f"error: argument --set: cannot set {field} to {value!r} ({e})", file=sys.stderr)
            return 2
    batch_sizes = args.batch_sizes or [config.train.batch_size]

    import jax

    cli.quiet_logs()
    with cli.user_errors():
        validation.validate_config(config, jax.device_count())
        train_images, test_images, dynamic = benchmark.load_images(config, args.synthetic)
        if args.train_images:
            train_images = train_images[: args.train_images]
        results = {"machine": benchmark.machine(), "config": json.loads(config.to_json_best_effort()),
                   "synthetic": args.synthetic, "runs": []}
        peak = benchmark.matmul_peak_flops()
        flops = benchmark.mlp_train_flops_per_image(config, int(train_images[0].size))
        results["matmul_peak_gflops"] = peak / 1e9
        results["train_flops_per_image"] = flops
        results["ceiling_images_per_sec"] = peak / flops if flops else None
        reference = None
        if args.torch:
            from vae import torch_reference

            reference = torch_reference.Reference(train_images, config.model.hidden_dims,
                                                  config.model.latent_dim, config.train.batch_size)
        for batch_size in batch_sizes:
            config.train.batch_size = batch_size
            config.eval.batch_size = max(config.eval.batch_size - config.eval.batch_size % jax.device_count(),
                                         jax.device_count())
            validation.validate_config(config, jax.device_count())
            run = measure(config, train_images, test_images, dynamic, args, benchmark,
                          reference if batch_size == batch_sizes[0] else None, peak, flops)
            results["runs"].append(run)
            print_run(run)
        results["memory"] = benchmark.peak_memory()
    if args.out:
        benchmark.write_json(args.out, results)
    return 0


def measure(config, train_images, test_images, dynamic, args, benchmark, reference, peak, flops) -> dict:
    import statistics

    import jax

    trainer = benchmark.Trainer(config, train_images, test_images, dynamic)
    first = trainer.run_epoch()
    run = {
        "batch_size": config.train.batch_size,
        "devices": jax.device_count(),
        "compile_sec": trainer.compile_sec,
        "command_to_first_epoch_sec": time.perf_counter() - COMMAND_START,
        "first_epoch_images_per_sec": first,
    }
    jax_rates, idiomatic, tuned = [], [], []
    for _ in range(args.epochs - 1):
        jax_rates.append(trainer.run_epoch())
        if reference is not None:
            idiomatic.append(reference.epoch_idiomatic())
            tuned.append(reference.epoch_tuned())
    run["images_per_sec"] = statistics.median(jax_rates)
    run["images_per_sec_all"] = jax_rates
    if peak and flops:
        run["share_of_ceiling"] = run["images_per_sec"] * flops / peak
    if reference is not None:
        run["torch_idiomatic_images_per_sec"] = statistics.median(idiomatic)
        run["torch_tuned_images_per_sec"] = statistics.median(tuned)
        run["ratio_to_torch_idiomatic"] = statistics.median(j / i for j, i in zip(jax_rates, idiomatic))
        run["ratio_to_torch_tuned"] = statistics.median(j / t for j, t in zip(jax_rates, tuned))
        run["torch_threads"] = reference.threads
    step_times = trainer.step_times(args.step_samples)
    run["step_time_ms"] = {k: v * 1e3 for k, v in benchmark.percentiles(step_times).items()}
    run["eval_images_per_sec"] = trainer.eval_images_per_sec()
    run["iwae_k"] = args.iw_samples
    run["iwae_images_per_sec"] = trainer.iwae_images_per_sec(test_images, args.iw_samples, args.iw_images)
    return run


def print_run(run: dict) -> None:
    rows = [
        ("batch size / devices", f"{run['batch_size']} / {run['devices']}"),
        ("compile", f"{run['compile_sec']:.2f} s"),
        ("command start -> first epoch done", f"{run['command_to_first_epoch_sec']:.1f} s"),
        ("training (median)", f"{run['images_per_sec']:,.0f} images/s"),
    ]
    if "share_of_ceiling" in run:
        rows.append(("share of the fp32 matmul ceiling", f"{run['share_of_ceiling']:.0%}"))
    if "torch_idiomatic_images_per_sec" in run:
        rows += [
            ("PyTorch idiomatic", f"{run['torch_idiomatic_images_per_sec']:,.0f} images/s "
                                  f"(JAX {run['ratio_to_torch_idiomatic']:.2f}x)"),
            ("PyTorch tuned", f"{run['torch_tuned_images_per_sec']:,.0f} images/s "
                              f"(JAX {run['ratio_to_torch_tuned']:.2f}x)"),
        ]
    p = run["step_time_ms"]
    rows += [
        ("step time p50 / p90 / p99 (one call per step)",
         f"{p['p50']:.2f} / {p['p90']:.2f} / {p['p99']:.2f} ms"),
        ("evaluation, negative ELBO", f"{run['eval_images_per_sec']:,.0f} images/s"),
        (f"evaluation, IWAE k={run['iwae_k']}", f"{run['iwae_images_per_sec']:,.1f} images/s"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print()


if __name__ == "__main__":
    sys.exit(main())
