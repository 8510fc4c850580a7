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
# # KL divergence from first principles
#
# KL(P‖Q) = Σ p(x) log(p(x)/q(x)) is the *extra surprise* we suffer, on average, when the world
# follows P but we predict with Q. Every number below is computed with `vae.kl`, the same code the
# VAE trains with; nothing is typed in by hand.

# %%
import math

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

from vae import kl

np.set_printoptions(precision=4, suppress=True)

# %% [markdown]
# ## 1. Is it a dog or a panda?
#
# The picture shows a dog: the truth is P = (dog 1, panda 0). A poor network says Q = (0.3, 0.7),
# a better one Q = (0.9, 0.1).

# %%
P = np.array([1.0, 0.0])
Q_poor, Q_good = np.array([0.3, 0.7]), np.array([0.9, 0.1])
kl_poor = float(kl.kl_divergence(P, Q_poor, unit="bits"))
kl_good = float(kl.kl_divergence(P, Q_good, unit="bits"))
print(f"KL(P‖Q_poor) = {kl_poor:.3f} bits")
print(f"KL(P‖Q_good) = {kl_good:.3f} bits")

# %% [markdown]
# Term by term, the panda term is 0·log(0/q): the truth never shows a panda, so however wrong Q
# is about pandas it costs nothing there. By convention (and by the limit p log p → 0) 0·log 0 = 0.

# %%
terms = np.asarray(jax.scipy.special.rel_entr(P, Q_poor)) / math.log(2)
print("per-outcome terms (bits):", {k: round(float(v), 4) for k, v in zip(["dog", "panda"], terms)})
print("the panda term is exactly", terms[1])

# %% [markdown]
# The other way round is fatal: if Q gives **zero** probability to something that happens, the
# surprise is infinite.

# %%
print("KL((0.5, 0.5) ‖ (1, 0)) =", float(kl.kl_divergence([0.5, 0.5], [1.0, 0.0])))

# %% [markdown]
# ## 2. The forest: asymmetry, codes and cross-entropy
#
# Animals in a forest: P = (squirrel 0.6, rabbit 0.3, deer 0.1); our model Q = (0.5, 0.4, 0.1).

# %%
animals = ["squirrel", "rabbit", "deer"]
P_forest, Q_forest = np.array([0.6, 0.3, 0.1]), np.array([0.5, 0.4, 0.1])
forward = float(kl.kl_divergence(P_forest, Q_forest))
reverse = float(kl.kl_divergence(Q_forest, P_forest))
print(f"KL(P‖Q) = {forward:.4f} nats,  KL(Q‖P) = {reverse:.4f} nats: not symmetric")

# %% [markdown]
# **The coding view.** A code built for a distribution gives an outcome of probability q a code
# word of −log₂ q bits. Sending messages drawn from P with the code built for P costs H(P) bits
# per message on average (the entropy, the best possible); with the code built for Q it costs the
# cross-entropy H(P, Q). The difference is exactly KL(P‖Q): the extra bits per message.

# %%
h_p = float(kl.entropy(P_forest, unit="bits"))
h_pq = float(kl.cross_entropy(P_forest, Q_forest, unit="bits"))
kl_bits = float(kl.kl_divergence(P_forest, Q_forest, unit="bits"))
print(f"H(P) = {h_p:.4f} bits, H(P,Q) = {h_pq:.4f} bits, KL(P‖Q) = {kl_bits:.4f} bits")
print(f"H(P) + KL(P‖Q) - H(P,Q) = {h_p + kl_bits - h_pq:.2e}")

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.bar(["entropy H(P)"], [h_p], color="tab:blue")
ax.bar(["KL(P‖Q)"], [kl_bits], color="tab:red")
ax.bar(["cross-entropy H(P,Q)"], [h_p], color="tab:blue", label="H(P)")
stack = ax.bar(["cross-entropy H(P,Q)"], [kl_bits], bottom=[h_p], color="tab:red", label="KL(P‖Q)")
for x, value in enumerate([h_p, kl_bits, h_pq]):
    ax.annotate(f"{value:.4f}", (x, value), ha="center", va="bottom")
ax.legend(loc="center right")
ax.set_ylabel("bits per message")
ax.set_title("cross-entropy = entropy + KL (the forest)")
fig.tight_layout()

# %% [markdown]
# ## 3. Entropy: from certainty to a fair die
#
# A die that always shows 1 is no surprise at all (entropy 0); a fair die is the most surprising
# six-sided die, with entropy log 6. In between, mix the two.

# %%
certain = np.eye(6)[0]
fair = np.full(6, 1 / 6)
mix = np.linspace(0, 1, 51)
dice = (1 - mix[:, None]) * certain + mix[:, None] * fair
entropies = np.asarray(kl.entropy(dice))
print(f"H(certain) = {float(kl.entropy(certain))} nats, H(fair) = {float(kl.entropy(fair)):.4f} nats,"
      f" log 6 = {math.log(6):.4f}")

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(mix, entropies)
ax.axhline(math.log(6), ls="--", color="gray")
ax.annotate("log 6 (fair die)", (0.02, math.log(6) - 0.12))
ax.set_xlabel("weight of the fair die in the mixture")
ax.set_ylabel("entropy (nats)")
ax.set_title("From certainty to a fair die")
fig.tight_layout()

# %% [markdown]
# ## 4. Two Gaussians: closed form and Monte Carlo
#
# For Gaussians the KL has a closed form, used by the VAE. A Monte-Carlo estimate,
# the mean of log p(x) − log q(x) over samples x ~ P, converges to it.

# %%
mean_p, log_var_p = jnp.array([0.0]), jnp.array([0.0])
mean_q, log_var_q = jnp.array([1.0]), jnp.array([math.log(2.0)])
exact = float(kl.gaussian_kl(mean_p, log_var_p, mean_q, log_var_q))
sample_sizes = np.unique(np.logspace(1, 5.5, 25).astype(int))
estimates, errors = [], []
for i, n in enumerate(sample_sizes):
    estimate, std_error = kl.monte_carlo_kl(
        jax.random.key(i),
        lambda key, n: kl.sample_gaussian(key, mean_p, log_var_p, n),
        lambda x: kl.gaussian_log_density(x, mean_p, log_var_p),
        lambda x: kl.gaussian_log_density(x, mean_q, log_var_q),
        int(n))
    estimates.append(float(estimate))
    errors.append(float(std_error))
print(f"closed form {exact:.5f} nats; Monte Carlo with {sample_sizes[-1]} samples "
      f"{estimates[-1]:.5f} ± {errors[-1]:.5f}")

fig, ax = plt.subplots(figsize=(6.5, 3.5))
ax.errorbar(sample_sizes, estimates, yerr=errors, fmt="o", ms=3, label="Monte Carlo ± 1 s.e.")
ax.axhline(exact, color="tab:red", label=f"closed form {exact:.4f}")
ax.set_xscale("log")
ax.set_xlabel("samples")
ax.set_ylabel("KL(P‖Q) (nats)")
ax.set_title("Monte-Carlo KL converges to the closed form")
ax.legend()
fig.tight_layout()

# %%
xs = np.linspace(-5, 6, 500)
true = (0.0, 0.0)
close = (0.3, math.log(1.2))
poor = (2.5, math.log(0.3))


def density(x, mean, log_var):
    return np.exp(np.asarray(kl.gaussian_log_density(x[:, None], jnp.array([mean]), jnp.array([log_var]))))


fig, ax = plt.subplots(figsize=(6.5, 3.5))
ax.plot(xs, density(xs, *true), "k", lw=2, label="P (true)")
for (mean, log_var), name, colour in ((close, "close Q", "tab:green"), (poor, "poor Q", "tab:red")):
    value = float(kl.gaussian_kl(jnp.array([true[0]]), jnp.array([true[1]]),
                                 jnp.array([mean]), jnp.array([log_var])))
    ax.plot(xs, density(xs, mean, log_var), color=colour, label=f"{name}: KL(P‖Q) = {value:.3f} nats")
ax.set_xlabel("x")
ax.set_ylabel("density")
ax.legend()
ax.set_title("Low KL: Q close to P; high KL: Q far from P")
fig.tight_layout()

# %% [markdown]
# ## 5. Forward vs reverse KL: covering modes or seeking one
#
# Fit a single Gaussian Q to a two-peaked mixture P. Minimising the **forward** KL(P‖Q) punishes Q
# wherever P has mass and Q does not, so Q spreads to cover both peaks. Minimising the **reverse**
# KL(Q‖P) punishes Q wherever Q has mass and P does not, so Q settles on one peak. The VAE's KL
# term, KL(q(z|x) ‖ p(z)), is a reverse KL. Both objectives are computed exactly by quadrature on
# a fine grid and minimised with Adam.

# %%
grid = jnp.linspace(-12.0, 12.0, 4001)
dx = float(grid[1] - grid[0])
weights, means, log_vars = jnp.array([0.5, 0.5]), jnp.array([-3.0, 3.0]), jnp.log(jnp.array([0.8, 0.8]))
component_log_densities = jax.vmap(
    lambda m, lv: kl.gaussian_log_density(grid[:, None], m[None], lv[None]))(means, log_vars)
log_p = jax.nn.logsumexp(jnp.log(weights)[:, None] + component_log_densities, axis=0)


def log_q(params):
    return kl.gaussian_log_density(grid[:, None], params[:1], params[1:])


def forward_kl(params):  # KL(P‖Q)
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q(params))) * dx


def reverse_kl(params):  # KL(Q‖P)
    lq = log_q(params)
    return jnp.sum(jnp.exp(lq) * (lq - log_p)) * dx


def fit(objective, init, steps=1500):
    optimizer = optax.adam(0.05)
    params, state = jnp.asarray(init), optimizer.init(jnp.asarray(init))

    @jax.jit
    def step(params, state):
        value, grad = jax.value_and_grad(objective)(params)
        updates, state = optimizer.update(grad, state)
        return optax.apply_updates(params, updates), state, value

    for _ in range(steps):
        params, state, value = step(params, state)
    return params, float(value)


init = [0.5, 0.0]  # mean slightly right of centre, variance 1
fit_forward, value_forward = fit(forward_kl, init)
fit_reverse, value_reverse = fit(reverse_kl, init)
for name, params, value in (("forward KL(P‖Q)", fit_forward, value_forward),
                            ("reverse KL(Q‖P)", fit_reverse, value_reverse)):
    print(f"{name}: mean {float(params[0]):+.3f}, std {math.exp(0.5 * float(params[1])):.3f}, "
          f"KL {value:.4f} nats")

fig, ax = plt.subplots(figsize=(7, 3.8))
ax.fill_between(grid, jnp.exp(log_p), color="gray", alpha=0.35, label="P: two-peaked mixture")
ax.plot(grid, jnp.exp(log_q(fit_forward)), "tab:blue", lw=2, label="argmin KL(P‖Q): mode-covering")
ax.plot(grid, jnp.exp(log_q(fit_reverse)), "tab:red", lw=2, label="argmin KL(Q‖P): mode-seeking")
ax.set_xlim(-8, 8)
ax.set_xlabel("x")
ax.set_ylabel("density")
ax.legend(fontsize=8)
ax.set_title("One Gaussian fitted to two peaks")
fig.tight_layout()

# %% [markdown]
# ## 6. Back to the VAE
#
# The encoder gives each image a diagonal-Gaussian posterior q(z|x) = N(μ, σ²); the KL term
# pulls it toward the prior N(0, 1), one dimension at a time:
# KL = ½ (μ² + σ² − 1 − log σ²). It is zero only at μ = 0, σ = 1: a dimension that carries no
# information about x.

# %%
mu = np.linspace(-3, 3, 121)
log_var = np.linspace(-4, 2, 121)
MU, LV = np.meshgrid(mu, log_var)
kl_map = np.asarray(kl.standard_normal_kl_per_dim(MU, LV))
fig, ax = plt.subplots(figsize=(6, 4))
contours = ax.contourf(MU, np.exp(0.5 * LV), kl_map, levels=30, cmap="viridis")
fig.colorbar(contours, label="KL(q ‖ p) (nats)")
ax.plot([0], [1], "w*", ms=12)
ax.set_xlabel("posterior mean μ")
ax.set_ylabel("posterior std σ")
ax.set_title("One latent dimension's KL to the N(0,1) prior (zero at ★)")
fig.tight_layout()

# %% [markdown]
# The training objective is reconstruction + β·KL. Larger β makes information in z more
# expensive: the total KL falls and dimensions **collapse** to the prior (per-dimension KL near
# zero: they say nothing about x). Here three small VAEs (`configs/mlp_small.py`) with 16 latent
# dimensions are trained on a slice of Fashion-MNIST with β = 1, 4 and 16, using `vae.train.loop`
# exactly as `scripts/train.py` does.

# %%
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from vae.config import load_config  # noqa: E402
from vae.data import source  # noqa: E402
from vae.train import loop  # noqa: E402

# The repository's root (configs/ is there): the notebook's folder's parent under JupyterLab, or
# the working directory itself.
root = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "configs").is_dir() and (p / "vae").is_dir())
small = load_config(root / "configs" / "mlp_small.py")
try:
    source.check_prepared(small.data.name, small.data.data_dir)
except source.DataError as error:
    raise SystemExit(str(error)) from None
results = {}
runs = tempfile.TemporaryDirectory()  # kept until the end: section 8 compresses with the β = 1 model
for beta in (1.0, 4.0, 16.0):
    config = load_config(root / "configs" / "mlp_small.py")
    config.data.train_split, config.data.test_split = "train[:4096]", "test[:1000]"
    config.model.latent_dim, config.train.num_epochs, config.train.beta = 16, 6, beta
    history = loop.train_and_evaluate(config, f"{runs.name}/beta{beta}", progress=False)
    results[beta] = history[-1]
COLLAPSED = 0.05  # nats: a dimension below this carries almost no information about x
for beta, record in results.items():
    collapsed = sum(k < COLLAPSED for k in record["test/kl_per_dim"])
    print(f"β = {beta:g}: test KL {record['test/kl']:.2f} nats, reconstruction {record['test/rec']:.2f} "
          f"nats, {collapsed} of 16 dimensions collapsed (KL < {COLLAPSED} nats)")

fig, ax = plt.subplots(figsize=(8, 3.5))
width = 0.27
for i, (beta, record) in enumerate(results.items()):
    per_dim = np.sort(record["test/kl_per_dim"])[::-1]
    ax.bar(np.arange(16) + (i - 1) * width, per_dim, width, label=f"β = {beta:g}")
ax.axhline(COLLAPSED, color="gray", ls=":", label=f"{COLLAPSED} nats")
ax.set_yscale("log")
ax.set_xlabel("latent dimension (sorted by KL)")
ax.set_ylabel("test KL (nats, log scale)")
ax.set_title("Larger β: less KL, more collapsed dimensions")
ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
fig.tight_layout()

# %% [markdown]
# ## 7. What the KL term pays for: information, and a code built for another distribution
#
# Section 2's coding view, now inside the VAE. Averaged over N images, the KL term splits exactly
# (Hoffman & Johnson, 2016):
#
# E_x KL(q(z|x) ‖ p(z)) = I_q(x; z) + KL(q(z) ‖ p(z)),
#
# with q(z) = (1/N) Σ_n q(z|x_n) the **aggregate posterior**, the distribution of the codes the
# encoder actually emits. The first part is the information the code carries about the image; the
# second is section 2's extra bits: coding z with the prior p(z), a code built for another
# distribution than q(z). With a factorised prior the second part splits again into the total
# correlation of q(z) (its dimensions' dependence) and a KL per dimension (Chen et al., 2018).
# `vae.model.kl_split` estimates each part with log q(z) computed against all N posteriors; every
# evaluation of the runs above recorded them (`eval.kl_split_examples` test images). The estimate
# of I can never exceed log N: N images can be told apart by at most log N nats.

# %%
for beta, record in results.items():
    n = record["test/split_examples"]
    print(f"β = {beta:g}: KL {record['test/split_kl']:.2f} = I {record['test/mutual_info']:.2f} "
          f"(± {record['test/mutual_info_std_error']:.2f}; log N = {math.log(n):.2f}) "
          f"+ KL(q(z)‖p(z)) {record['test/marginal_kl']:.2f} (± {record['test/marginal_kl_std_error']:.2f}) "
          f"= I + TC {record['test/total_correlation']:.2f} "
          f"+ Σ_j KL(q(z_j)‖p(z_j)) {record['test/dimwise_kl']:.2f}")

fig, ax = plt.subplots(figsize=(7, 3.8))
betas = [f"β = {beta:g}" for beta in results]
parts = [("test/mutual_info", "I_q(x; z)", "tab:blue"),
         ("test/total_correlation", "total correlation of q(z)", "tab:orange"),
         ("test/dimwise_kl", "Σ_j KL(q(z_j) ‖ p(z_j))", "tab:green")]
bottom = np.zeros(len(results))
for key, label, colour in parts:
    values = np.array([record[key] for record in results.values()])
    ax.bar(betas, values, bottom=bottom, color=colour, label=label)
    bottom += values
ax.axhline(math.log(n), ls="--", color="0.3", lw=1, label=f"log N (N = {n:,})")
ax.set_ylabel("nats per image")
ax.set_title("The KL term split: information + the prior's mismatch")
ax.legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# Larger β buys less of both parts, but not in the same proportion: the mismatch shrinks faster
# than the information, as the encoder's codes are pressed toward the prior's shape. At β = 1 the
# estimate of I comes near log N, which is the ceiling of the estimate on N images, not of the
# code; the mismatch part takes up what I's estimate cannot show. A learned prior, such as the
# VampPrior (`model.prior=vampprior`), attacks the second part from the other side: p(z) moves
# toward q(z), and the code keeps its information.

# %% [markdown]
# ## 8. KL in real bits: a coder, not a formula
#
# Section 2 said that coding messages from P with the code built for Q costs KL(P‖Q) extra bits
# per message. Here those are file sizes. An ANS coder (`constriction`, through this notebook's
# tools in `notebooks/kl_coding.py`) turns a probability table into a real code: a million animals
# drawn from the forest's P, coded once with the code built for P and once with the code built for Q.

# %%
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

# The notebook's tools, beside it in notebooks/ (JupyterLab starts here, the test suite in the root).
root = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "notebooks" / "kl_coding.py").is_file())
sys.path.insert(0, str(root / "notebooks"))
import kl_coding  # noqa: E402

N = 1_000_000
draws = np.random.default_rng(0).choice(len(P_forest), size=N, p=P_forest)
file_p = kl_coding.ans_file_bits(draws, P_forest)
file_q = kl_coding.ans_file_bits(draws, Q_forest)
extra = (file_q - file_p) / N
log_ratio = np.log2(P_forest / Q_forest)[draws]  # each draw's extra bits under the ideal codes
std_error = log_ratio.std(ddof=1) / math.sqrt(N)
overhead = {name: file / kl_coding.information_bits(draws, code) - 1
            for name, file, code in (("P", file_p, P_forest), ("Q", file_q, Q_forest))}
print(f"coded for P: {file_p / 8:,.0f} bytes = {file_p / N:.4f} bits per animal (H(P) = {h_p:.4f})")
print(f"coded for Q: {file_q / 8:,.0f} bytes = {file_q / N:.4f} bits per animal (H(P,Q) = {h_pq:.4f})")
print(f"extra bits per animal: {extra:.5f}; KL(P‖Q) = {kl_bits:.5f} bits; sampling error ±{std_error:.5f}")
print(f"extra bits within 3 standard errors of KL(P‖Q): {abs(extra - kl_bits) < 3 * std_error}")
print(f"the coder's overhead over the ideal code length −Σ log2 q(x): {100 * overhead['P']:.4f}% "
      f"(code for P), {100 * overhead['Q']:.4f}% (code for Q); below 0.1%: {max(overhead.values()) < 1e-3}")

fig, ax = plt.subplots(figsize=(6, 3.5))
sizes = [file_p / 8 / 1e3, file_q / 8 / 1e3, (file_q - file_p) / 8 / 1e3]
ax.bar(["file coded for P\n≈ N·H(P)", "file coded for Q\n≈ N·H(P,Q)", "difference\n≈ N·KL(P‖Q)"], sizes,
       color=["tab:blue", "tab:purple", "tab:red"])
for x, value in enumerate(sizes):
    ax.annotate(f"{value:,.1f} kB", (x, value), ha="center", va="bottom")
ax.set_ylabel("kilobytes for a million animals")
ax.set_title("cross-entropy = entropy + KL, as file sizes")
fig.tight_layout()

# %% [markdown]
# The dog and the panda (section 1): the truth is always "dog". A million dogs coded under the
# poor network's Q cost KL(P‖Q_poor) bits each, under the good one KL(P‖Q_good), and under P itself
# nothing but the coder's start (P gives the dog probability 1: no surprise, no bits). There is no
# sampling error here: every message is a dog.

# %%
dogs = np.zeros(N, np.int64)
start_bits = 32 * len(kl_coding.START_WORDS)
for name, code, expected in (("P", P, 0.0), ("Q_poor", Q_poor, kl_poor), ("Q_good", Q_good, kl_good)):
    bits = kl_coding.ans_file_bits(dogs, code) - start_bits
    print(f"a million dogs coded for {name}: {bits / 8:,.0f} bytes = {bits / N:.4f} bits per dog "
          f"(KL(P‖{name}) = {expected:.4f} bits)")

# %% [markdown]
# **The VAE.** A VAE codes an image with bits-back coding (`vae.coding`, the same code as
# `scripts/compress.py`): pop z from the stack under q(z|x) (bits taken back), push the image under
# p(x|z), push z under the prior. What the code pays for z is the prior's cost minus the bits
# back: the rate, a one-sample estimate of the KL term. Here the β = 1 model of section 6 codes its
# 1,000 test images one by one on one stack (the first without bits back: nothing is on the stack
# yet), and each image's code length is the stack's growth while it is coded.

# %%
lengths = kl_coding.image_code_lengths(f"{runs.name}/beta1.0")
rest = slice(1, None)  # every image after the first
print(f"per image, mean over {len(lengths['code']) - 1} images: code {lengths['code'][rest].mean():.2f} "
      f"bits, -ELBO {lengths['elbo'][rest].mean():.2f} bits; z pushed under the prior "
      f"{lengths['latents'][rest].mean():.2f} bits, bits back {lengths['bits_back'][rest].mean():.2f}, "
      f"rate {lengths['rate'][rest].mean():.2f} bits against the KL term's {lengths['kl'][rest].mean():.2f}")
gap = lengths["code"][rest].mean() / lengths["elbo"][rest].mean() - 1
print(f"code length over the -ELBO: {100 * gap:+.3f}%; within 0.5%: {abs(gap) < 0.005}")

fig, axes = plt.subplots(1, 2, figsize=(10, 4))
axes[0].scatter(lengths["elbo"][rest], lengths["code"][rest], s=4, alpha=0.5)
low, high = lengths["elbo"][rest].min(), lengths["elbo"][rest].max()
axes[0].plot([low, high], [low, high], color="gray", ls="--", label="code = -ELBO")
axes[0].set_xlabel("-ELBO of the image (bits)")
axes[0].set_ylabel("its code length on the stack (bits)")
axes[0].legend()
axes[1].scatter(lengths["kl"][rest], lengths["rate"][rest], s=4, alpha=0.5, color="tab:red")
low, high = lengths["kl"][rest].min(), lengths["kl"][rest].max()
axes[1].plot([low, high], [low, high], color="gray", ls="--", label="rate = KL")
axes[1].set_xlabel("KL(q(z|x) ‖ p(z)) of the image (bits)")
axes[1].set_ylabel("what the code paid for z after bits back (bits)")
axes[1].legend()
fig.suptitle("Bits-back coding: each image's code length is its -ELBO, the rate its KL")
fig.tight_layout()
runs.cleanup()
