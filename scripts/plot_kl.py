"""The KL term across epochs for one or more workdirs (works while they are still training).

    python scripts/plot_kl.py --workdir runs/beta1 runs/beta4 [--labels "β=1" "β=4"] [--out DIR]
    python scripts/plot_kl.py --workdir runs/beta        # a sweep's workdir: its members overlaid

Writes kl_curves.png (KL, reconstruction and negative ELBO per epoch, runs overlaid),
kl_split.png (the KL term as the stack of its parts, I_q(x; z) and KL(q(z) ‖ p(z)), one panel per
run), kl_per_dim.png (per-dimension KL heat maps and active units) and, for models of several
latent layers (the ladder, the HVAE), kl_per_layer.png (the KL term stacked by layer across epochs,
and each layer's KL and active units at the judged epoch) into the first workdir or --out. A
sweep's workdir (scripts/sweep.py) stands for its members, labelled by their names (prefixed by
its --labels entry where given), and gets rate_distortion.png (into --out where given).
"""

import sys
from pathlib import Path

from vae import cli, cli_flags
from vae.analysis import plotting
from vae.workdir import files


def build_parser() -> cli_flags.ArgumentParser:
    parser = cli_flags.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", nargs="+", required=True)
    parser.add_argument("--labels", nargs="+", default=None, help="one legend label per workdir")
    parser.add_argument("--out", default=None, help="output directory (default: the first workdir)")
    parser.add_check(check)
    return parser


def check(args) -> str | None:
    if args.labels is not None and len(args.labels) != len(args.workdir):
        return f"--labels needs one label per workdir ({len(args.workdir)}), got {len(args.labels)}"
    return None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    labels = args.labels or [Path(w).name for w in args.workdir]
    cli.start()
    with cli.user_errors():
        runs = {}
        for label, path in zip(labels, args.workdir):
            if not Path(path).is_dir():
                raise files.WorkdirError(f"workdir {path} does not exist")
            if files.is_sweep(path):
                members = files.read_members(path)
                prefix = f"{label}/" if args.labels else ""
                runs |= {f"{prefix}{name}": records for name, records in members.items()}
                if not members:
                    raise files.WorkdirError(f"no member of the sweep {path} has metrics yet")
                continue
            records = files.read_metrics(Path(path))
            if not records:
                raise files.WorkdirError(
                    f"{path} has no metrics yet: training writes metrics.jsonl after its first epoch")
            runs[label] = records
        out = Path(args.out or args.workdir[0])
        out.mkdir(parents=True, exist_ok=True)
        print(plotting.save_figure(plotting.plot_kl_curves(runs), out / "kl_curves.png"))
        if any(plotting.kl_split_prefix(records) for records in runs.values()):
            print(plotting.save_figure(plotting.plot_kl_split(runs), out / "kl_split.png"))
        factorised = {label: records for label, records in runs.items()
                      if any("test/kl_per_dim" in r for r in records)}
        if factorised:
            print(plotting.save_figure(plotting.plot_kl_per_dim(factorised), out / "kl_per_dim.png"))
        if any("test/kl_per_layer" in r for records in runs.values() for r in records):
            print(plotting.save_figure(plotting.plot_kl_per_layer(runs), out / "kl_per_layer.png"))
        if len(factorised) < len(runs):
            print(f"no per-dimension KL for {sorted(set(runs) - set(factorised))}: a VampPrior's KL does "
                  "not split over dimensions", file=sys.stderr)
        for path in args.workdir:
            if files.is_sweep(path) and any(
                    "test/kl" in r for m in files.read_members(path).values() for r in m):
                from vae.sweep import driver  # JAX and the sweep code: for sweeps only

                print(driver.save_rate_distortion(path, out if args.out else None))
    return 0


if __name__ == "__main__":
    cli.run_script(main)
