"""Figures from arrays and metric records: image grids, the KL term across epochs and the stack
of its parts (nats).

Each `*_figure` / `plot_*` function returns a matplotlib Figure (a notebook shows it inline);
`save_figure` writes one to PNG and closes it.
"""

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from vae.workdir.images import image_grid


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def image_grid_figure(images: np.ndarray, ncols: int, title: str | None = None,
                      row_labels: Sequence[str] | None = None, pixels_per_cell: float = 0.45) -> Figure:
    """A grid of images (pixel means in [0, 1]) with an optional title and row labels."""
    grid = image_grid(np.clip(images, 0.0, 1.0), ncols)
    nrows = math.ceil(len(images) / ncols)
    width = max(3.0, ncols * pixels_per_cell + (1.6 if row_labels else 0.2))
    if title:  # wrapped to the figure's width (about 0.08 inch a character at 10 points)
        title = textwrap.fill(title, width=max(20, int(width / 0.085)))
    title_height = 0.2 + 0.2 * title.count("\n") + 0.3 if title else 0.1
    fig, ax = plt.subplots(figsize=(width, nrows * pixels_per_cell + title_height))
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    if row_labels:
        h = images.shape[1] + 1
        ax.set_yticks([1 + h * (r + 0.5) for r in range(len(row_labels))], labels=list(row_labels),
                      fontsize=8)
        ax.tick_params(length=0)
    else:
        ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout(pad=0.2)
    return fig


def save_image_grid(images: np.ndarray, path: str | Path, ncols: int, title: str | None = None,
                    row_labels: Sequence[str] | None = None) -> Path:
    """Saves a grid of images as a PNG."""
    return save_figure(image_grid_figure(images, ncols, title, row_labels), path)


def _series(records: Sequence[Mapping], key: str) -> tuple[np.ndarray, np.ndarray]:
    points = [(r["epoch"], r[key]) for r in records if key in r]
    if not points:
        return np.array([]), np.array([])
    epochs, values = zip(*points)
    return np.asarray(epochs), np.asarray(values, dtype=float)


def plot_kl_curves(runs: Mapping[str, Sequence[Mapping]]) -> Figure:
    """KL (the focus), reconstruction and negative ELBO per epoch, train solid, validation dotted
    (where the run has a validation split) and test dashed, one colour per run so runs (e.g.
    different β) can be compared."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    panels = [("kl", "KL(q(z|x) ‖ p(z))"), ("rec", "reconstruction  −log p(x|z)"),
              ("elbo", "negative ELBO")]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn = set()
    for i, (label, records) in enumerate(runs.items()):
        colour = colours[i % len(colours)]
        for ax, (key, _) in zip(axes, panels):
            for split, style in (("train", "-"), ("val", ":"), ("test", "--")):
                epochs, values = _series(records, f"{split}/{key}")
                if len(epochs):
                    drawn.add(split)
                    ax.plot(epochs, values, style, color=colour, label=f"{label} ({split})",
                            marker="o" if len(epochs) < 3 else None)
    for ax, (_, title) in zip(axes, panels):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel("nats per image")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    styles = {"train": "train solid", "val": "validation dotted", "test": "test dashed"}
    legend = ", ".join(text for split, text in styles.items() if split in drawn)  # only the splits drawn
    fig.suptitle(f"The KL term across epochs ({legend})")
    fig.tight_layout()
    return fig


def kl_split_prefix(records: Sequence[Mapping]) -> str | None:
    """The split whose KL term a run's records split ('val' or 'test'), None if none does."""
    for prefix in ("val", "test"):
        if any(f"{prefix}/mutual_info" in r for r in records):
            return prefix
    return None


def plot_kl_split(runs: Mapping[str, Sequence[Mapping]], per_row: int = 3) -> Figure:
    """For each run, the KL term across epochs as the stack of its parts (`vae.model.kl_split`):
    I_q(x; z) at the bottom, then KL(q(z) ‖ p(z)), itself split into the total correlation and the
    per-dimension marginal KLs where the prior factorises; the dashed line is log N, the most the
    estimate of I can show on N images, the dotted one I's leave-one-out upper bound. Nats per
    image, on the evaluated split's first N images."""
    runs = {label: records for label, records in runs.items() if kl_split_prefix(records)}
    if not runs:
        raise ValueError("no run has the KL split in its metrics (eval.kl_split_examples)")
    ncols = min(per_row, len(runs))
    nrows = math.ceil(len(runs) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(7.0, 5.6 * ncols), 4.3 * nrows + 0.9), squeeze=False,
                             sharey=True, layout="constrained")
    for ax in axes.flat[len(runs):]:
        ax.set_visible(False)
    top = 0.0
    for ax, (label, records) in zip(axes.flat, runs.items()):
        prefix = kl_split_prefix(records)
        records = [r for r in records if f"{prefix}/mutual_info" in r]
        epochs = np.array([r["epoch"] for r in records])
        mutual_info = np.array([r[f"{prefix}/mutual_info"] for r in records])
        marginal = np.array([r[f"{prefix}/marginal_kl"] for r in records])
        ax.fill_between(epochs, 0, mutual_info, color="tab:blue", alpha=0.75, label="I_q(x; z)")
        if all(f"{prefix}/dimwise_kl" in r for r in records):
            tc = np.array([r[f"{prefix}/total_correlation"] for r in records])
            ax.fill_between(epochs, mutual_info, mutual_info + tc, color="tab:orange", alpha=0.75,
                            label="KL(q(z) ‖ p(z)): total correlation")
            ax.fill_between(epochs, mutual_info + tc, mutual_info + marginal, color="tab:green", alpha=0.75,
                            label="KL(q(z) ‖ p(z)): Σ_j KL(q(z_j) ‖ p(z_j))")
        else:
            ax.fill_between(epochs, mutual_info, mutual_info + marginal, color="tab:red", alpha=0.6,
                            label="KL(q(z) ‖ p(z)) (a prior that does not factorise)")
        num = records[-1][f"{prefix}/split_examples"]
        ax.axhline(math.log(num), ls="--", color="0.3", lw=1, label=f"log N (N = {num:,})")
        ax.plot(epochs, [r[f"{prefix}/mutual_info_upper"] for r in records], ":", color="tab:blue",
                lw=1.2, label="I, leave-one-out upper bound")
        if any(f"{prefix}/kl" in r for r in records):
            kl_epochs, kl_values = _series(records, f"{prefix}/kl")
            ax.plot(kl_epochs, kl_values, "-", color="black", lw=1, label=f"{prefix} KL term (all images)")
        ax.set_title(f"{label} ({'validation' if prefix == 'val' else 'test'} split)",
                     fontsize=10 if len(label) < 40 else 7)
        ax.set_xlabel("epoch")
        ax.set_ylabel("nats per image")
        top = max(top, *(r[f"{prefix}/split_kl"] for r in records), math.log(num))
        ax.grid(alpha=0.3)
    axes.flat[0].set_ylim(0, 1.08 * top)  # shared by every panel
    legend = {}  # every panel's entries, once each
    for ax in axes.flat[:len(runs)]:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(name, handle)
    fig.legend(list(legend.values()), list(legend), fontsize=7, loc="outside lower center", ncols=3)
    fig.suptitle("What the KL term pays for: E_x KL(q(z|x) ‖ p(z)) = I_q(x; z) + KL(q(z) ‖ p(z))",
                 fontsize=10)
    return fig


def plot_kl_per_dim(runs: Mapping[str, Sequence[Mapping]], per_row: int = 4) -> Figure:
    """For each run, a heat map of the test KL of every latent dimension across epochs (dimensions
    ordered by their final KL, most used at the top) above its count of active units; at most
    `per_row` runs side by side (a sweep's members wrap onto more rows)."""
    runs = {label: [r for r in records if "test/kl_per_dim" in r] for label, records in runs.items()}
    runs = {label: records for label, records in runs.items() if records}
    if not runs:
        raise ValueError("no run has per-dimension KL in its metrics yet")
    ncols = min(per_row, len(runs))
    nrows = math.ceil(len(runs) / ncols)
    fig, axes = plt.subplots(2 * nrows, ncols, figsize=(6.0 * ncols, 6.5 * nrows), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1] * nrows}, layout="constrained")
    for index in range(len(runs), nrows * ncols):
        row, col = divmod(index, ncols)
        axes[2 * row, col].set_visible(False)
        axes[2 * row + 1, col].set_visible(False)
    for index, (label, records) in enumerate(runs.items()):
        epochs = np.array([r["epoch"] for r in records])
        kl_ExZ = np.array([r["test/kl_per_dim"] for r in records])
        order = np.argsort(-kl_ExZ[-1])
        row, col = divmod(index, ncols)
        heat_ax, units_ax = axes[2 * row, col], axes[2 * row + 1, col]
        units_ax.sharex(heat_ax)
        image = heat_ax.imshow(kl_ExZ[:, order].T, aspect="auto", cmap="viridis", origin="upper",
                               extent=(epochs[0] - 0.5, epochs[-1] + 0.5, len(order) - 0.5, -0.5),
                               interpolation="nearest")
        heat_ax.set_title(label, fontsize=10 if len(label) < 40 else 7)
        heat_ax.set_ylabel("latent dimension (by final KL)")
        step = max(1, len(order) // 10)
        heat_ax.set_yticks(range(0, len(order), step), labels=[f"z{d}" for d in order[::step]])
        fig.colorbar(image, ax=[heat_ax, units_ax], label="KL (nats)", shrink=0.9)
        _, units = _series(records, "test/active_units")
        units_ax.step(epochs, units, where="mid", color="tab:red")
        units_ax.set_ylim(-0.5, kl_ExZ.shape[1] + 0.5)
        units_ax.set_xlabel("epoch")
        units_ax.set_ylabel("active units")
        units_ax.grid(alpha=0.3)
    fig.suptitle("Test KL per latent dimension across epochs, and active units")
    return fig


def plot_kl_per_layer(runs: Mapping[str, Sequence[Mapping]]) -> Figure:
    """Where the bits go in a hierarchy (the ladder, the HVAE), one row per run: left, the test KL
    term across epochs as the stack of its layers' KLs (z_1, next to x, at the bottom); right, each
    layer's KL at the epoch the run is judged by (`final_test_record`), with its active units."""
    runs = {label: [r for r in records if "test/kl_per_layer" in r] for label, records in runs.items()}
    runs = {label: records for label, records in runs.items() if records}
    if not runs:
        raise ValueError("no run has a KL per layer in its metrics (a model of several latent layers)")
    fig, axes = plt.subplots(len(runs), 2, figsize=(13.0, 3.9 * len(runs) + 0.6), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 2]}, layout="constrained")
    cmap = plt.get_cmap("viridis")
    for (stack_ax, bar_ax), (label, records) in zip(axes, runs.items()):
        epochs = np.array([r["epoch"] for r in records])
        kl_ExL = np.array([r["test/kl_per_layer"] for r in records], dtype=float)
        num_layers = kl_ExL.shape[1]
        colours = [cmap(0.9 * layer / max(1, num_layers - 1)) for layer in range(num_layers)]
        stack_ax.stackplot(epochs, kl_ExL.T, colors=colours, alpha=0.85,
                           labels=[f"z_{layer + 1}" for layer in range(num_layers)])
        stack_ax.set_xlabel("epoch")
        stack_ax.set_ylabel("test KL (nats per image)")
        stack_ax.set_title(f"{label}: the KL term, layer by layer (z_1 next to x at the bottom)", fontsize=9)
        stack_ax.grid(alpha=0.3)
        stack_ax.legend(fontsize=7, loc="upper left", ncols=max(1, num_layers // 8), reverse=True)
        judged = final_test_record(records)
        bars = bar_ax.bar(np.arange(1, num_layers + 1), judged["test/kl_per_layer"], color=colours)
        units = judged.get("test/active_units_per_layer")
        if units is not None:
            bar_ax.bar_label(bars, labels=[f"{u}" for u in units], fontsize=7, padding=2)
        bar_ax.set_xticks(np.arange(1, num_layers + 1), labels=[f"z_{i}" for i in range(1, num_layers + 1)],
                          fontsize=7 if num_layers > 10 else 9)
        bar_ax.set_ylabel("test KL (nats per image)")
        active = "; above each bar its active units" if units is not None else ""
        bar_ax.set_title(f"epoch {judged['epoch']}: KL of each layer{active}", fontsize=9)
        bar_ax.grid(alpha=0.3, axis="y")
    return fig


def final_test_record(records: Sequence[Mapping]) -> Mapping | None:
    """The epoch a run is judged by: the best epoch's record (lowest validation negative ELBO, the
    checkpoint sampling and evaluation load) where the run has a validation split, else the last
    record with test metrics; None before the first evaluation."""
    tested = [r for r in records if "test/kl" in r]
    if not tested:
        return None
    best = tested[-1].get("best/epoch")
    return next((r for r in tested if r["epoch"] == best), tested[-1])


def _iso_elbo_lines(ax) -> None:
    """Dashed lines of constant negative ELBO = rate + distortion across the axes, each labelled
    where it enters them (through the left or the top edge), along the line."""
    x_lo, x_hi = ax.get_xlim()
    y_lo, y_hi = ax.get_ylim()
    xs = np.linspace(x_lo, x_hi, 2)
    for level in plt.MaxNLocator(10).tick_values(x_lo + y_lo, x_hi + y_hi):
        ax.plot(xs, level - xs, ls="--", lw=0.8, color="0.7", zorder=0)
        x, y = (x_lo, level - x_lo) if level - x_lo <= y_hi else (level - y_hi, y_hi)
        if y_lo <= y <= y_hi and x_lo <= x <= x_hi:
            ax.annotate(f"−ELBO {level:g}", (x, y), xytext=(4, -4), textcoords="offset points", fontsize=7,
                        color="0.45", rotation=-45, rotation_mode="anchor", ha="left", va="top",
                        transform_rotates_text=True)
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo, y_hi)


def _mutual_info(record: Mapping) -> float | None:
    prefix = kl_split_prefix([record])
    return None if prefix is None else record[f"{prefix}/mutual_info"]


def plot_rate_distortion(runs: Mapping[str, Sequence[Mapping]],
                         curves: Mapping[str, Sequence[str]] | None = None) -> Figure:
    """Left: rate (test KL) against distortion (test reconstruction NLL), nats per image, one point
    per run labelled by its name (`final_test_record`), on dashed lines of constant negative ELBO;
    `curves` joins runs (e.g. one β sweep per seed) by a line; where every run records the KL
    split, the points are coloured by I_q(x; z). Right: each run's per-dimension
    test KL, largest first, on a log scale: the units that collapse as β grows fall to ~0. Runs
    without a per-dimension KL (the VampPrior's KL does not split over dimensions) are named there."""
    points = {label: final_test_record(records) for label, records in runs.items()}
    points = {label: record for label, record in points.items() if record is not None}
    if not points:
        raise ValueError("no run has test metrics yet")
    labels = list(points)
    rate = np.array([points[label]["test/kl"] for label in labels])
    distortion = np.array([points[label]["test/rec"] for label in labels])
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, (ax, dims_ax) = plt.subplots(1, 2, figsize=(13.5, 5.4), layout="constrained")

    for names in (curves or {}).values():
        index = [labels.index(n) for n in names if n in points]
        ax.plot(rate[index], distortion[index], "-", color="0.55", lw=1, zorder=1)
    information = [_mutual_info(points[label]) for label in labels]
    by_information = all(v is not None for v in information)
    if by_information:  # every member's I_q(x; z) is known: it colours the points
        dots = ax.scatter(rate, distortion, c=information, cmap="viridis", s=44, zorder=3,
                          edgecolors="0.2", linewidths=0.5)
        fig.colorbar(dots, ax=ax, label="I_q(x; z) (nats; at most log N)", shrink=0.85)
    for i, label in enumerate(labels):
        if not by_information:
            ax.scatter(rate[i], distortion[i], color=colours[i % len(colours)], s=36, zorder=3)
        ax.annotate(label, (rate[i], distortion[i]), xytext=(5, 4), textcoords="offset points", fontsize=8)
    span = max(np.ptp(rate), np.ptp(distortion), 1.0)
    ax.set_xlim(max(0.0, rate.min() - 0.12 * span), rate.max() + 0.25 * span)
    ax.set_ylim(distortion.min() - 0.12 * span, distortion.max() + 0.12 * span)
    _iso_elbo_lines(ax)
    ax.set_xlabel("rate: test KL (nats per image)")
    ax.set_ylabel("distortion: test reconstruction NLL (nats per image)")
    ax.set_title("Rate and distortion (dashed: constant negative ELBO = rate + distortion)", fontsize=10)
    ax.grid(alpha=0.25)

    missing = []
    for i, label in enumerate(labels):
        kl_per_dim = points[label].get("test/kl_per_dim")
        if kl_per_dim is None:
            missing.append(label)
            continue
        kl_sorted = np.sort(np.asarray(kl_per_dim, dtype=float))[::-1]
        dims_ax.plot(np.arange(1, len(kl_sorted) + 1), np.maximum(kl_sorted, 1e-4), marker="o", ms=3,
                     color=colours[i % len(colours)],
                     label=f"{label} ({points[label].get('test/active_units', '?')} active)")
    if missing:
        dims_ax.text(0.02, 0.02, "no per-dimension KL (VampPrior: its KL does not split over\n"
                     f"dimensions): {', '.join(missing)}", transform=dims_ax.transAxes, fontsize=8,
                     va="bottom", color="0.3")
    if len(missing) < len(labels):
        dims_ax.set_yscale("log")
        dims_ax.legend(fontsize=7)
    dims_ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    dims_ax.set_xlabel("latent dimension, by test KL (largest first)")
    dims_ax.set_ylabel("test KL per dimension (nats; floor 1e-4)")
    dims_ax.set_title("Which units each run uses", fontsize=10)
    dims_ax.grid(alpha=0.25)
    return fig
