"""The results table: one row per evaluated workdir, read from its config.json, metrics.jsonl and
eval.json (written by `scripts/evaluate.py`), beside the published figure for the same model family.

Nothing in the table is typed by hand: `scripts/results.py runs/a runs/b > docs/results_runs.md`. The
curve table (`curve_table`) says how far each run got per epoch budget: its validation negative
ELBO, and the wall time it took, every N epochs.
"""

import json
import math
import re
import shlex
from pathlib import Path

from vae.model import build
from vae.workdir import files

# Test NLL (nats, dynamically binarised Fashion-MNIST, k = 5000 importance samples), Norouzi et
# al. (2020), Exemplar VAE, table of density estimation; MLP models are gated 784-300-300 with
# 40-d latents (Tomczak & Welling, 2018).
PUBLISHED = {
    ("fashion_mnist", "mlp", "standard_normal"): ("VAE, Gaussian prior", 228.70, 0.15),
    ("fashion_mnist", "mlp", "vampprior"): ("VAE, VampPrior", 227.35, 0.05),
    ("fashion_mnist", "hvae", "standard_normal"): ("HVAE, Gaussian prior", 227.37, 0.10),
    ("fashion_mnist", "hvae", "vampprior"): ("HVAE, VampPrior", 226.72, 0.08),
}
STRONGEST_PUBLISHED_CONV = ("ConvHVAE, Gaussian prior", 225.38, 0.08)
COLUMNS = ("run", "config", "model", "trained on (validated on)", "epochs (best)", "train wall", "test -ELBO",
           "test NLL (k)", "I(x; z) of KL (≤ log N)", "active units", "published (same family)", "command")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise files.WorkdirError(
            f"{path.parent} has no {path.name}: run scripts/evaluate.py on it first") from None


# A progress flag changes no figure of a run, and its spelling has changed (absl's --progress=false,
# argparse's --noprogress): the table's command leaves it out, so that it runs with today's scripts.
_PROGRESS_FLAG = re.compile(r"(?<!\S)--(?:progress|noprogress|no-progress|no_progress)(?:=\S*)?(?!\S)")


def reproducing_command(command: str) -> str:
    """A recorded command without its progress flag, the rest as recorded (the page that shows
    it also shows its workdir without the machine's folders: `scripts.docs.markdown`)."""
    return " ".join(_PROGRESS_FLAG.sub(" ", command).split())


def config_file(command: str) -> str:
    """The --config file named in a recorded train.py command ('' if none: the script's default)."""
    words = shlex.split(command)
    for i, word in enumerate(words):
        if word == "--config" and i + 1 < len(words):
            return words[i + 1]
        if word.startswith("--config="):
            return word.split("=", 1)[1]
    return ""


def describe_model(config: dict) -> str:
    """The run's model in a few words: architecture and widths (`build.ARCHITECTURES`), prior,
    objective, pixels."""
    m = config["model"]
    architecture = build.ARCHITECTURES.get(m["arch"])
    if architecture is None:  # a workdir of an architecture this version does not have
        arch = f"model.arch={m['arch']}"
    else:
        arch = f"{architecture.title} {architecture.describe(m)}"
    prior = {"standard_normal": "N(0, I)", "vampprior": f"VampPrior K={m['num_pseudo_inputs']}"}.get(
        m["prior"], m["prior"])
    t = config["train"]
    objective = "ELBO" if t["objective"] == "elbo" else f"IWAE k={t['num_samples']}"
    return f"{arch}, {prior}, {objective}, {describe_pixels(config)}"


def describe_pixels(config: dict) -> str:
    """What p(x|z) models: binarised pixels (Bernoulli) or the 256 levels of 8-bit ones."""
    m, binarize = config["model"], config["data"].get("binarize", "dynamic")
    likelihood = m.get("likelihood", "bernoulli")
    if likelihood == "bernoulli":
        return f"Bernoulli ({binarize} binarisation)"
    if likelihood == "logistic_mixture":
        return f"8-bit, logistic mixture K={m.get('mixture_components', 5)}"
    return f"8-bit, {likelihood}"


def _workdir_and_eval(path: Path) -> tuple[Path, dict]:
    """A workdir and its strongest evaluation (of eval.json and evals/, `files.save_evaluation`);
    or one evaluation file (an eval.json written elsewhere, `evaluate.py --out W/quick`, or one of
    evals/) and the workdir above it that holds config.json."""
    if path.is_file():
        for parent in path.parents:
            if (parent / files.CONFIG_FILE).is_file():
                return parent, _read_json(path)
        raise files.WorkdirError(f"no workdir (a directory with {files.CONFIG_FILE}) above {path}")
    evaluations = files.read_evaluations(path)
    if not evaluations:
        raise files.WorkdirError(f"{path} has no {files.EVAL_FILE}: run scripts/evaluate.py on it first")
    return path, evaluations[-1][1]


def run_row(path: str | Path) -> dict:
    """The table's fields for one evaluated workdir (its strongest evaluation), or for one of its
    evaluation files."""
    path, result = _workdir_and_eval(Path(path))
    config = _read_json(path / files.CONFIG_FILE)
    metrics = files.read_metrics(path)
    if not metrics:
        raise files.WorkdirError(f"{path} has no metrics: it has not trained")
    last = metrics[-1]
    # The published rows are of dynamically binarised images: an 8-bit or static run has none.
    binarised = (config["model"].get("likelihood", "bernoulli") == "bernoulli"
                 and config["data"].get("binarize", "dynamic") == "dynamic")
    published = binarised and PUBLISHED.get(
        (config["data"]["name"], config["model"]["arch"], config["model"]["prior"])) or None
    return {
        "run": path.name,
        "config": config_file(config["run"]["command"]),
        "model": describe_model(config),
        "data": (config["data"]["train_split"], config["data"].get("validation_split", "")),
        "seed": config["seed"],
        "epochs": last["epoch"],
        "evaluated_epoch": result["epoch"],
        "checkpoint": result.get("checkpoint", "latest"),
        "train_wall_sec": last.get("wall_time_sec", math.nan),
        "test_elbo": result["test/elbo"],
        "test_nll": result["test/nll"],
        "test_nll_se": result["test/nll_std_error"],
        "test_nll_bits_per_dim": result.get("test/nll_bits_per_dim"),
        "test_elbo_bits_per_dim": result.get("test/bits_per_dim"),
        "iw_samples": result["iw_samples"],
        "num_examples": result["num_examples"],
        "active_units": result["test/active_units"],
        # The KL split over the test set (eval.json written before it: None).
        "mutual_info": result.get("test/mutual_info"),
        "split_kl": result.get("test/split_kl"),
        "split_examples": result.get("test/split_examples"),
        "latent_units": len(last.get("test/kl_per_dim", [])) or None,
        "published": published,
        "command": reproducing_command(config["run"]["command"]),
    }


def _minutes(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.2f} h"


def format_row(row: dict) -> list[str]:
    published = "–"
    if row["published"]:
        name, value, pm = row["published"]
        published = f"{value:.2f} ± {pm:.2f} ({name})"
    nll = f"**{row['test_nll']:.2f}** ± {row['test_nll_se']:.2f} (k={row['iw_samples']})"
    if row["num_examples"] != 10_000:
        nll += f", {row['num_examples']} images"
    if row.get("test_nll_bits_per_dim") is not None:
        nll += f"; {row['test_nll_bits_per_dim']:.4f} bits/dim"
    elbo = f"{row['test_elbo']:.2f}"
    if row.get("test_elbo_bits_per_dim") is not None:
        elbo += f" ({row['test_elbo_bits_per_dim']:.4f} bits/dim)"
    best = f"{row['epochs']} ({row['evaluated_epoch']}, {row['checkpoint']})"
    units = str(row["active_units"]) + (f" / {row['latent_units']}" if row["latent_units"] else "")
    train, val = row["data"]
    data = f"`{train}`" + (f" (`{val}`)" if val else "")
    return [row["run"], f"`{row['config']}`" if row["config"] else "default", row["model"], data, best,
            _minutes(row["train_wall_sec"]), elbo, nll, _information(row), units,
            published, f"`{row['command']}`"]


def _information(row: dict) -> str:
    """I_q(x; z) of the KL term it is part of, and its ceiling log N; '–' without the split."""
    if row.get("mutual_info") is None:
        return "–"
    return (f"{row['mutual_info']:.2f} of {row['split_kl']:.2f} "
            f"(≤ {math.log(row['split_examples']):.2f})")


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(" --- " for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(format_row(row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def validation_curve(path: str | Path, required: bool = True) -> dict | None:
    """One run's validation negative ELBO per epoch, with the training wall time to reach it; an
    unevaluated or unfinished run has one too. A run that never validated: an error, or None
    where not `required`."""
    path = Path(path)
    metrics = [m for m in files.read_metrics(path) if "val/elbo" in m]
    if not metrics:
        if not required:
            return None
        raise files.WorkdirError(f"{path} has no validation metrics: train it with data.validation_split")
    return {"run": path.name,
            "points": {m["epoch"]: (m["val/elbo"], m.get("wall_time_sec", math.nan)) for m in metrics},
            "last": metrics[-1]["epoch"],
            "best": min(metrics, key=lambda m: m["val/elbo"])["epoch"]}


def curve_table(curves: list[dict], every: int) -> str:
    """Markdown: validation -ELBO (and training time) at epochs every, 2·every, ..., the last, the best."""
    if every < 1:
        raise ValueError(f"the curve's epoch step must be at least 1, got {every}")
    longest = max(curve["last"] for curve in curves)
    epochs = list(range(every, longest + 1, every))

    def cell(curve, epoch):
        if epoch not in curve["points"]:
            return "–"
        elbo, wall = curve["points"][epoch]
        return f"{elbo:.2f} ({_minutes(wall)})"

    header = ["run"] + [f"epoch {e}" for e in epochs] + ["last epoch", "best epoch"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for curve in curves:
        ends = [f"{curve[key]}: {cell(curve, curve[key])}" for key in ("last", "best")]
        lines.append("| " + " | ".join([curve["run"]] + [cell(curve, e) for e in epochs] + ends) + " |")
    return "\n".join(lines) + "\n"
