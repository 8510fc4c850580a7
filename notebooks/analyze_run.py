# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Analysing one trained run
#
# Point `WORKDIR` at a training workdir (`scripts/train.py --workdir ...`; the default is `make
# train`'s, and a relative path is taken from the repository's root, wherever Jupyter started).
# Everything below reads that directory through `vae.*`: the metrics, the best checkpoint (lowest
# validation negative ELBO; the latest where the run has no validation split; set `CHECKPOINT =
# "latest"` for the newest) and the test set it was evaluated on. The test suite runs this notebook
# on a tiny run (`VAE_WORKDIR`).

# %% tags=["parameters"]
import os

WORKDIR = os.environ.get("VAE_WORKDIR", "runs/default")
IW_SAMPLES = int(os.environ.get("VAE_IW_SAMPLES", "100"))  # small k: a quick look, not a headline
IW_EXAMPLES = int(os.environ.get("VAE_IW_EXAMPLES", "500"))
CHECKPOINT = os.environ.get("VAE_CHECKPOINT", "best")  # best | latest

# %%
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vae.analysis import iwae, latents, plotting, sampling  # noqa: E402
from vae.data import dataset  # noqa: E402
from vae.model import ladder  # noqa: E402
from vae.train import trained  # noqa: E402
from vae.workdir import files  # noqa: E402

# The repository's root: the notebook's folder's parent under JupyterLab (`make notebook`), or the
# working directory itself. An absolute WORKDIR stays as it is.
root = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "configs").is_dir() and (p / "vae").is_dir())
run = root / WORKDIR
if not (run / files.METRICS_FILE).is_file():
    raise SystemExit(f"no trained run in {run}: run `make train` first, or set WORKDIR to a workdir")
shown = run.relative_to(root) if run.is_relative_to(root) else f"runs/{run.name}"  # no machine's folders
records = files.read_metrics(run)
config, model, epoch = trained.load_trained(run, checkpoint=CHECKPOINT)
used = trained.checkpoint_used(run, None, CHECKPOINT)
last = records[-1]
print(f"{shown}: {config.data.name}, {config.model.arch} model ({config.model.activation} "
      f"{tuple(config.model.hidden_dims)}), {config.model.prior} prior, "
      f"latent_dim {config.model.latent_dim}, β = {config.train.beta}; {len(records)} epochs logged, "
      f"{used} checkpoint of epoch {epoch}")
if "best/epoch" in last:
    print(f"best validation negative ELBO {last['best/val/elbo']:.2f} nats at epoch {last['best/epoch']}")
print(f"last epoch: test negative ELBO {last['test/elbo']:.2f} nats = reconstruction "
      f"{last['test/rec']:.2f} + KL {last['test/kl']:.2f}; {last['test/active_units']} active units; "
      f"{last['images_per_sec']:,.0f} images/s")

# %% [markdown]
# ## Learning curves: negative ELBO, reconstruction and KL

# %%
fig = plotting.plot_kl_curves({run.name: records})

# %% [markdown]
# ## Which latent dimensions are used: per-dimension KL and active units

# %%
if any("test/kl_per_dim" in r for r in records):
    fig = plotting.plot_kl_per_dim({run.name: records})
else:
    print("this prior's KL does not split over dimensions (VampPrior); active units are in the metrics")

# %% [markdown]
# ## A hierarchy's layers: where the bits go
#
# For a model of several latent layers (the ladder, `model.arch=ladder`; the two-level HVAE) the KL
# term is a sum over layers, each KL(q(z_l | x, z_>l) ‖ p(z_l | z_>l)) at a posterior sample of the
# layers above. A layer whose KL stays near zero carries nothing about x (it has collapsed onto its
# prior); its active units say how many of its dimensions vary with x. Then, for the ladder, what
# each layer draws: row k samples the top k layers from their priors (the same draws in every row)
# and puts every layer below at its prior mean, so going down the rows adds the detail of one more
# layer.

# %%
if any("test/kl_per_layer" in r for r in records):
    fig = plotting.plot_kl_per_layer({run.name: records})
    judged = plotting.final_test_record(records)
    for layer, (kl, size) in enumerate(zip(judged["test/kl_per_layer"], model.latent_dims), start=1):
        units = judged.get("test/active_units_per_layer")
        active = f", {units[layer - 1]} of {size} units active" if units else ""
        print(f"z_{layer}: KL {kl:.2f} nats ({kl / judged['test/kl']:.0%} of the KL term){active}")
else:
    print("one latent layer: the KL term has no layers to split into (see the per-dimension KL above)")

# %%
if isinstance(model, ladder.Ladder):
    num_layers = model.num_layers
    rows = [sampling.prior_samples(model, jax.random.key(1), 8,
                                   temperature=[0.0] * (num_layers - k) + [1.0] * k)
            for k in range(1, num_layers + 1)]
    fig = plotting.image_grid_figure(np.concatenate(rows), 8, "the top k layers drawn, the rest at their "
                                     "prior means", row_labels=[f"top {k}" for k in range(1, num_layers + 1)])

# %% [markdown]
# ## Samples from the prior and reconstructions of test images

# %%
fig = plotting.image_grid_figure(sampling.prior_samples(model, jax.random.key(0), 64), 8,
                           f"prior samples, epoch {epoch}")

# %%
test_images, test_labels = dataset.load_test_set(config.data)
x = test_images[:16].astype(np.float32) / 255.0
fig = plotting.image_grid_figure(sampling.reconstructions(model, x), 8, "test images | reconstructions")

# %% [markdown]
# ## The latent space: test-set posterior means, coloured by class
#
# The latent itself when it is 2-D, otherwise its first two principal components.

# %%
means, _ = latents.encode_images(model, test_images)
points, explained = latents.project_2d(means)
fig, ax = plt.subplots(figsize=(6.5, 5.5))
scatter = ax.scatter(points[:, 0], points[:, 1], c=test_labels, cmap="tab10", s=4, alpha=0.7)
names = dataset.class_names(config.data)
handles = [plt.Line2D([], [], marker="o", ls="", color=scatter.cmap(scatter.norm(c)),
                      label=names[c] if 0 <= c < len(names) else "no label")
           for c in np.unique(test_labels)]
ax.legend(handles=handles, fontsize=7, markerscale=1.2, loc="best")
axis = "z" if means.shape[1] == 2 else "PC"
ax.set_xlabel(f"{axis}1 ({explained[0]:.0%} of variance)")
ax.set_ylabel(f"{axis}2 ({explained[1]:.0%} of variance)")
ax.set_title("test-set posterior means E[z|x]")
fig.tight_layout()

# %% [markdown]
# ## Test log-likelihood: the importance-weighted bound with a small k
#
# `scripts/evaluate.py --iw_samples 5000` gives the headline number; a small k already shows the
# bound tightening below the negative ELBO.

# %%
result = iwae.evaluate_workdir(run, IW_SAMPLES, checkpoint=CHECKPOINT, max_examples=IW_EXAMPLES,
                                     progress=False)
print(f"first {result['num_examples']} test images: negative ELBO {result['test/elbo']:.2f} nats, "
      f"IWAE NLL (k={IW_SAMPLES}) {result['test/nll']:.2f} ± {result['test/nll_std_error']:.2f} nats "
      f"({result['test/nll_bits_per_dim']:.4f} bits/dim)")

# %% [markdown]
# ## What the KL term pays for: I_q(x; z) and the prior's mismatch
#
# Averaged over N images the KL term splits exactly into the information the code carries about
# the image, I_q(x; z), and KL(q(z) ‖ p(z)), the price of coding z with a prior built for another
# distribution than the aggregate posterior q(z) = (1/N) Σ_n q(z|x_n) (`vae.model.kl_split`). The
# evaluation above computed it on its test images from the checkpoint (so any workdir shows it);
# runs that record it every evaluation (`eval.kl_split_examples`) also show it across epochs. The
# estimate of I is at most log N. In a hierarchy the split is of the top layer's KL term, z the top
# layer's code.

# %%
n = result["test/split_examples"]
term = "KL term" if len(model.latent_dims) == 1 else f"top layer's KL term (z_{len(model.latent_dims)})"
print(f"first {n} test images, {used} checkpoint: {term} {result['test/split_kl']:.2f} nats = "
      f"I_q(x; z) {result['test/mutual_info']:.2f} ± {result['test/mutual_info_std_error']:.2f} "
      f"(log N = {np.log(n):.2f}; leave-one-out upper bound {result['test/mutual_info_upper']:.2f}) + "
      f"KL(q(z) ‖ p(z)) {result['test/marginal_kl']:.2f} ± {result['test/marginal_kl_std_error']:.2f}")
if "test/dimwise_kl" in result:
    print(f"KL(q(z) ‖ p(z)) = total correlation {result['test/total_correlation']:.2f} + "
          f"Σ_j KL(q(z_j) ‖ p(z_j)) {result['test/dimwise_kl']:.2f}")
if plotting.kl_split_prefix(records):
    fig = plotting.plot_kl_split({run.name: records})
else:
    print("this run's metrics predate the KL split: scripts/evaluate.py reports it on the whole test set")
