"""Start-up of the scripts, start to exit: one epoch of configs/mlp_small.py, sample.py and
plot_kl.py on that run, each timed end to end in a fresh process (medians of a few runs, after one
unmeasured run that warms the compilation cache and the file cache), and what each imports
(`python -X importtime`): its whole import time and the heavy packages it loads; and how many
programs it compiles, and how many of them the persistent compilation cache served (`JAX_LOG_COMPILES`).

    python benchmarks/startup.py [--runs 3] [--config configs/mlp_small.py]

Prints a table. The training's own wall time (`wall_time_sec` in metrics.jsonl, its median) is
printed beside its start-to-exit time, with the median of their difference in each run: what
starting and ending the process costs, which moves less than the epoch's time under load. CPU time
(user + system, the command's threads together) is printed too: on a machine shared with other
jobs it moves less than wall time. A line above the table says how many of the modules the
commands import have no bytecode cache: with PYTHONDONTWRITEBYTECODE set, Python compiles those
from source in every process.
"""

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The packages whose import is worth naming: each is loaded only by a command that uses it.
HEAVY = ("jax", "flax", "orbax.checkpoint", "tensorflow_datasets", "matplotlib.pyplot", "tensorboardX",
         "PIL.Image", "optax", "constriction")
_IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def commands(config: str, workdir: Path, out: Path) -> dict[str, list[str]]:
    """The timed commands, by name (run from the repository's root)."""
    return {
        "train.py, 1 epoch": ["scripts/train.py", "--config", config, "--workdir", str(workdir),
                              "--config.train.num_epochs=1", "--restart", "--noprogress"],
        "sample.py": ["scripts/sample.py", "--workdir", str(workdir), "--out", str(out)],
        "plot_kl.py": ["scripts/plot_kl.py", "--workdir", str(workdir), "--out", str(out)],
    }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(args: list[str], python_flags: tuple[str, ...] = (),
        environ: dict | None = None) -> tuple[float, float, str]:
    """(seconds start to exit, CPU seconds, stderr) of one command in a fresh interpreter; fails
    loudly."""
    env = dict(os.environ, PYTHONPATH=str(REPO), **(environ or {}))
    cpu, start = _children_cpu(), time.perf_counter()
    done = subprocess.run([sys.executable, *python_flags, *args], cwd=REPO, env=env, capture_output=True,
                          text=True)
    seconds, cpu = time.perf_counter() - start, _children_cpu() - cpu
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds, cpu, done.stderr


_BYTECODE_PROBE = """
import importlib.util, os, sys
import flax.nnx, jax, matplotlib.pyplot, orbax.checkpoint, tensorflow_datasets, vae.train.loop
sources = [m.__spec__ for m in list(sys.modules.values())
           if getattr(m, "__spec__", None) and (m.__spec__.origin or "").endswith(".py")]
missing = sum(not os.path.exists(importlib.util.cache_from_source(s.origin)) for s in sources)
print(missing, len(sources))
"""


def bytecode_line() -> str:
    """How many of the modules the commands import have no bytecode cache, and whether Python
    may write one."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", _BYTECODE_PROBE], cwd=REPO, env=env, capture_output=True,
                          text=True, check=True)
    missing, total = done.stdout.split()[-2:]
    writes = ("not written (PYTHONDONTWRITEBYTECODE)" if os.environ.get("PYTHONDONTWRITEBYTECODE")
              else "written")
    return (f"Bytecode: {missing} of {total} modules imported by these commands have no cache; "
            f"caches are {writes}.")


def import_times(stderr: str) -> dict[str, float]:
    """Seconds by module from `-X importtime` output: each module's cumulative import time (its
    imports included), and 'all' for the whole process's."""
    times, total = {}, 0
    for line in stderr.splitlines():
        match = _IMPORT_LINE.match(line)
        if match:
            own, cumulative, _, name = match.groups()
            total += int(own)
            times.setdefault(name, int(cumulative) / 1e6)
    return {"all": total / 1e6, **times}


def measure(config: str, runs: int, root: Path) -> list[dict]:
    workdir, out = root / "run", root / "out"
    rows = []
    for name, args in commands(config, workdir, out).items():
        run(args)  # warms the compilation cache (and leaves the trained run for the readers)
        seconds, cpu, own = [], [], []
        for _ in range(runs):
            took, cpu_took, _ = run(args)
            seconds.append(took)
            cpu.append(cpu_took)
            if name.startswith("train.py"):
                last = (workdir / "metrics.jsonl").read_text().splitlines()[-1]
                own.append(json.loads(last)["wall_time_sec"])
        row = {"command": name, "median_s": statistics.median(seconds), "min_s": min(seconds),
               "cpu_s": statistics.median(cpu)}
        if own:  # the run's own wall time, and the rest: starting and ending the process
            row["run_wall_s"] = statistics.median(own)
            row["outside_s"] = statistics.median(t - w for t, w in zip(seconds, own))
        stderr = run(args, ("-X", "importtime"), {"JAX_LOG_COMPILES": "1"})[2]
        row["imports"] = import_times(stderr)
        row["programs"] = stderr.count("Compiling ")
        row["from_cache"] = stderr.count("Persistent compilation cache hit")
        rows.append(row)
    return rows


def table(rows: list[dict], runs: int) -> str:
    lines = [f"| command | start to exit, median of {runs} (min) | CPU, median | the run's own wall time "
             "(the rest) "
             "| programs compiled (from the cache) | imports, all | heavy imports (cumulative s) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for row in rows:
        imports = row["imports"]
        heavy = ", ".join(f"{m} {imports[m]:.2f}" for m in HEAVY if m in imports) or "none"
        own = f"{row['run_wall_s']:.2f} s ({row['outside_s']:.2f} s)" if "run_wall_s" in row else ""
        lines.append(f"| {row['command']} | {row['median_s']:.2f} s ({row['min_s']:.2f}) "
                     f"| {row['cpu_s']:.2f} s | {own} | {row['programs']} ({row['from_cache']}) "
                     f"| {imports['all']:.2f} s | {heavy} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, choices=range(1, 101), default=3, metavar="N",
                        help="measured runs of each command (1-100)")
    parser.add_argument("--config", default="configs/mlp_small.py")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        rows = measure(args.config, args.runs, Path(root))
    print(bytecode_line())
    print(table(rows, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
