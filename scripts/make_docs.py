"""Regenerates every picture of the docs and the β table from runs of the current configs, and writes
docs/figures.md: which run made each picture, with its command, epochs, wall time and final figures.

    python scripts/make_docs.py                      # or: make docs (about 45 minutes on 2 cores)
    python scripts/make_docs.py --only z2 beta       # some runs and their pictures
    python scripts/make_docs.py --epochs_scale 0.1   # a quick check of the whole pipeline

Each run trains into RUNS_DIR/<name> with the exact user command (scripts/train.py or
scripts/sweep.py); a finished run is not trained again (both resume), so a second call only redraws.
docs/figures.md shows each command with RUNS_DIR as given, or relative to the current directory
(`markdown.shown_path`): never an absolute path of the machine that made it.
The pictures are drawn by scripts/sample.py and scripts/plot_kl.py, as a user would, into --out
(default docs/); the β table goes into docs/sweeps.md (--readme). With the default run, the
notebooks are executed and published into --out's notebooks/ (scripts/publish_notebooks.py, which
alone is the quicker command). docs/results_runs.md is not made here: its runs train for hours
(scripts/results.py).
Imports no JAX: every step is a subprocess.
"""

import datetime
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# scripts/docs/markdown.py is the repository's, imported as scripts.docs.markdown from its root
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts.docs import markdown  # noqa: E402
from vae import cli_flags  # noqa: E402

BETA_TABLE = "beta-table"  # the generated β table of docs/sweeps.md: <!-- beta-table:begin --> ... :end -->


@dataclass(frozen=True)
class Run:
    name: str
    script: str  # scripts/train.py | scripts/sweep.py
    args: tuple[str, ...]
    epochs: int  # scaled by --epochs_scale
    purpose: str


RUNS = (
    Run("default", "scripts/train.py", ("--config", "configs/default.py"), 100,
        "the default model (the two-level HVAE): samples, reconstructions, interpolations, traversal, "
        "the KL term by layer"),
    Run("vae", "scripts/train.py", ("--config", "configs/vae.py"), 180,
        "the one-level VAE, whose KL term is one closed form over its dimensions: the KL term across "
        "epochs, per dimension and its split"),
    Run("z2", "scripts/train.py", ("--config", "configs/vae.py", "--config.model.latent_dim=2"), 20,
        "a 2-d latent space, for the manifold"),
    Run("prior", "scripts/sweep.py", ("--config", "configs/vae.py", "--sweep",
                                      "model.prior=standard_normal,vampprior",
                                      "--config.train.kl_warmup_epochs=2"), 10,
        "the KL split with the standard normal and with the VampPrior"),
    Run("beta", "scripts/sweep.py", ("--config", "configs/mlp_small.py", "--sweep",
                                     "train.beta=0.25,0.5,1,2,4,8"), 10,
        "the rate-distortion picture and the β table"),
)


@dataclass(frozen=True)
class Picture:
    file: str  # its name in --out
    run: str
    script: str
    args: tuple[str, ...]  # after --workdir RUN --out TMP
    written: str  # the file the script writes into TMP


PICTURES = (
    Picture("prior.png", "default", "scripts/sample.py", ("--mode", "prior"), "prior.png"),
    Picture("reconstruct.png", "default", "scripts/sample.py", ("--mode", "reconstruct"), "reconstruct.png"),
    Picture("interpolate.png", "default", "scripts/sample.py", ("--mode", "interpolate"), "interpolate.png"),
    Picture("traverse.png", "default", "scripts/sample.py", ("--mode", "traverse"), "traverse.png"),
    Picture("kl_per_layer.png", "default", "scripts/plot_kl.py", (), "kl_per_layer.png"),
    Picture("kl_curves.png", "vae", "scripts/plot_kl.py", (), "kl_curves.png"),
    Picture("kl_per_dim.png", "vae", "scripts/plot_kl.py", (), "kl_per_dim.png"),
    Picture("kl_split.png", "vae", "scripts/plot_kl.py", (), "kl_split.png"),
    Picture("manifold.png", "z2", "scripts/sample.py", ("--mode", "manifold", "--steps", "15"),
            "manifold.png"),
    Picture("kl_split_prior.png", "prior", "scripts/plot_kl.py", (), "kl_split.png"),
    Picture("rate_distortion.png", "beta", "scripts/plot_kl.py", (), "rate_distortion.png"),
)


def build_parser() -> cli_flags.ArgumentParser:
    parser = cli_flags.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs_dir", default="runs/docs", help="where the runs train (default runs/docs)")
    parser.add_argument("--out", default="docs", help="where the pictures and figures.md go")
    parser.add_argument("--readme", default="docs/sweeps.md",
                        help="the page whose β table is rewritten ('' for none)")
    parser.add_argument("--only", nargs="+", choices=[r.name for r in RUNS], default=None,
                        help="these runs and their pictures only")
    parser.add_argument("--epochs_scale", type=cli_flags.real(0.0), default=1.0,
                        help="train each run for this fraction of its epochs (at least 1), for a quick check")
    parser.add_argument("--train_split", default=None,
                        help="a TFDS split for every run instead of the configs' (train[:2048]: quick)")
    return parser


def run_command(run: Run, workdir: Path, epochs_scale: float, train_split: str | None) -> list[str]:
    """The command line that trains `run` into `workdir`."""
    epochs = max(1, round(run.epochs * epochs_scale))
    extra = [f"--config.train.num_epochs={epochs}", "--noprogress"]
    if train_split:
        extra.append(f"--config.data.train_split={train_split}")
    return [run.script, *run.args, "--workdir", str(workdir), *extra]


def shown_commands(names, runs_dir: Path, epochs_scale: float,
                   train_split: str | None) -> dict[str, list[str]]:
    """The commands of the runs `names` as docs/figures.md shows them: RUNS_DIR as given, or
    relative to the current directory (`markdown.shown_path`), never a machine's absolute path."""
    shown_dir = Path(markdown.shown_path(str(runs_dir)))
    return {r.name: run_command(r, shown_dir / r.name, epochs_scale, train_split)
            for r in RUNS if r.name in names}


def _call(words: list[str]) -> float:
    """Runs `python words...`; its wall time in seconds. Stops make_docs on a failure."""
    print(f"$ python {shlex.join(words)}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *words])
    if done.returncode != 0:
        raise SystemExit(f"error: `python {shlex.join(words)}` exited {done.returncode}")
    return time.perf_counter() - start


def _records(workdir: Path) -> dict[str, list[dict]]:
    """Metric records by member ('' for a single run)."""
    from vae.workdir import files  # numpy and orbax-free readers

    if files.is_sweep(workdir):
        return files.read_members(workdir)
    return {"": files.read_metrics(workdir)}


def summary(records: list[dict]) -> str:
    """One run's epochs, training wall time and last test figures, in words."""
    last = records[-1]
    wall = last.get("wall_time_sec", math.nan)
    parts = [f"{last['epoch']} epochs", f"{wall / 60:.1f} min of training" if math.isfinite(wall) else ""]
    parts.append(f"test −ELBO {last['test/elbo']:.2f} (KL {last['test/kl']:.2f}, rec {last['test/rec']:.2f})")
    for prefix in ("val", "test"):
        if f"{prefix}/mutual_info" in last:
            parts.append(f"I_q(x; z) ≈ {last[f'{prefix}/mutual_info']:.2f} nats on {prefix} images")
            break
    return ", ".join(p for p in parts if p)


def beta_table(members: dict[str, list[dict]]) -> str:
    """The β sweep's last test figures, one row per member in order of β."""
    rows = []
    for name, records in members.items():
        last = records[-1]
        beta = float(name.split("beta=")[1].split(",")[0])
        rows.append((beta, last))
    lines = ["| β | test −ELBO | rate (KL) | distortion (rec) | active units |",
             "| ---: | ---: | ---: | ---: | ---: |"]
    for beta, last in sorted(rows, key=lambda row: row[0]):
        lines.append(f"| {beta:g} | {last['test/elbo']:.2f} | {last['test/kl']:.2f} | "
                     f"{last['test/rec']:.2f} | {last['test/active_units']} |")
    return "\n".join(lines)


def _git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout.strip()
        return commit + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def figures_page(commands: dict[str, list[str]], records: dict[str, dict[str, list[dict]]],
                 pictures: list[Picture], times: dict[str, float], beta: str | None) -> str:
    """docs/figures.md: each picture beside the run and command that made it."""
    by_name = {r.name: r for r in RUNS}
    lines = ["# The pictures of the docs and where they come from", "",
             f"Generated by `python scripts/make_docs.py` (`make docs`) at code {_git_commit()} on "
             f"{datetime.date.today().isoformat()}; every picture is drawn from the run named beside it, "
             "trained by the command shown. Wall times are this machine's (2 CPU cores).", "",
             "| picture | run | drawn by |", "| --- | --- | --- |"]
    for p in pictures:
        drawn_by = shlex.join([p.script, "--workdir", "...", *p.args])
        lines.append(f"| [{p.file}]({p.file}) | {p.run} | `python {drawn_by}` |")
    lines += ["", "## Runs", ""]
    for name, command in commands.items():
        lines += [f"### {name}: {by_name[name].purpose}", "", f"    python {shlex.join(command)}", ""]
        if name in times:
            lines.append(f"Command wall time here: {times[name] / 60:.1f} min.")
            lines.append("")
        for member, member_records in records[name].items():
            if member_records:
                lines.append(f"- {member + ': ' if member else ''}{summary(member_records)}")
        lines.append("")
    if beta:
        lines += ["## The β sweep's figures", "", beta, ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    selected = {r.name for r in RUNS if args.only is None or r.name in args.only}
    runs_dir, out = Path(args.runs_dir), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    commands = {r.name: run_command(r, runs_dir / r.name, args.epochs_scale, args.train_split) for r in RUNS}
    times = {name: _call(commands[name]) for name in commands if name in selected}
    with tempfile.TemporaryDirectory() as tmp:
        for p in (p for p in PICTURES if p.run in selected):
            drawn = Path(tmp) / p.file
            _call([p.script, "--workdir", str(runs_dir / p.run), *p.args, "--out", str(drawn)])
            shutil.copyfile(drawn / p.written, out / p.file)
            print(out / p.file)
    if "default" in selected:  # the notebooks executed, analyze_run on the default run
        _call(["scripts/publish_notebooks.py", "--workdir", str(runs_dir / "default"),
               "--out", str(out / "notebooks")])
    # The page lists every run trained so far, by this call or an earlier one.
    records = {name: _records(runs_dir / name) for name in commands if (runs_dir / name).is_dir()}
    commands = shown_commands(records, runs_dir, args.epochs_scale, args.train_split)
    pictures = [p for p in PICTURES if p.run in records]
    beta = beta_table(records["beta"]) if "beta" in records else None
    if beta and args.readme and "beta" in selected:
        readme = Path(args.readme)
        readme.write_text(markdown.replace_section(readme.read_text(), BETA_TABLE, beta, args.readme))
        print(readme)
    page = out / "figures.md"
    page.write_text(figures_page(commands, records, pictures, times, beta))
    print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
