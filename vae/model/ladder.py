"""The ladder: a deep top-down hierarchical VAE (LVAE, Sønderby et al., 2016; NVAE; VDVAE) with L
latent layers, the interface of `vae.VAE`.

Layers are numbered from the data up: z_1 next to x, z_L on top. Generation runs from the top down
through a deterministic state h (a vector, or feature maps for convolutional cells):

    h = learned constant;  for l = L ... 1:  z_l ~ p(z_l | h),  h = cell(h + proj(z_l));  x ~ p(x | h)

p(z_L) is the model's prior (N(0, I), or the VampPrior); below it each p(z_l | z_>l) is a diagonal
Gaussian computed from h, which holds every layer above. Inference shares that path: a bottom-up
network reads x once into one feature array per layer, and q(z_l | x, z_>l) is computed from the
same state h and layer l's features, so q and p of a layer see the same upper layers. `merge` makes
q from p and the posterior head's two numbers per unit, so each q starts at its p:

- "residual" (NVAE): q = N(mean_p + a, exp(log_var_p + b));
- "precision" (LVAE): q is the precision-weighted product of p and a bottom-up Gaussian
  N(a, exp(b + BOTTOM_UP_LOG_VAR_START)), which starts nearly flat.

The KL term is Σ_l KL(q(z_l | x, z_>l) ‖ p(z_l | z_>l)) at one posterior sample of the layers above,
each in closed form between two diagonal Gaussians (`vae.kl`); the top layer's is the prior's `kl`.

Order of per-layer outputs: every array or list over the layers (`kl_per_layer`, `latent_dims`,
per-layer temperatures) and over latent units (`kl_per_dim`, `mean`) lists z_1 first and z_L last,
as the HVAE lists z1 then z2: the last `latent_dim` units are the top layer's code. Functions that
take the layers above one (`posterior_below`, `prior_below`, `decode_layers`) take them top first,
the order in which they are drawn and coded (`vae.coding.host_model`).

`encode`, `decode` and the prior act on the top layer (`latent_dim` is its size): `decode(z_L)`
puts each layer below at its prior mean. Imports nothing of the package but `vae.kl`.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vae import kl

MERGES = ("residual", "precision")
# The precision merge's bottom-up Gaussian starts with log-variance 4 (variance 55): weight
# 1/(1 + e^4) = 0.018 against a unit-variance prior, so q starts within 2% of p.
BOTTOM_UP_LOG_VAR_START = 4.0


def merge(kind: str, prior_mean, prior_log_var, a, b) -> tuple[jax.Array, jax.Array]:
    """q's mean and log-variance from p's and the posterior head's (a, b) per unit (see the module)."""
    if kind == "residual":
        return prior_mean + a, prior_log_var + b
    # Precision weighting, written so that no precision is formed: the bottom-up weight is
    # σ_p^-2 / (σ_p^-2 + σ_d^-2) = sigmoid(log σ_p² − log σ_d²).
    shift = prior_log_var - (b + BOTTOM_UP_LOG_VAR_START)
    return prior_mean + (a - prior_mean) * jax.nn.sigmoid(shift), prior_log_var - jax.nn.softplus(shift)


def layer_temperatures(temperature, num_layers: int) -> list:
    """One temperature per layer, top first, from one number or a sequence of L (z_1 first)."""
    if isinstance(temperature, Sequence | jax.Array) and jnp.ndim(jnp.asarray(temperature)) == 1:
        if len(temperature) != num_layers:
            raise ValueError(f"temperature has {len(temperature)} entries; this model has {num_layers} "
                             "latent layers (give one number or one per layer, z_1 first)")
        return list(temperature)[::-1]
    return [temperature] * num_layers


class Ladder(nnx.Module):
    """L latent layers over one top-down state; parts from `ladder_cells` (`mlp_ladder`, `conv_ladder`)."""

    def __init__(self, bottom_up: nnx.Module, blocks: Sequence[nnx.Module], output: nnx.Module,
                 initial_state: jax.Array, prior: nnx.Module, likelihood: nnx.Module, merge_kind: str,
                 log_var_clip: Sequence[float], image_shape: Sequence[int]):
        if merge_kind not in MERGES:
            raise ValueError(f"model.ladder_merge must be one of {MERGES}, got {merge_kind!r}")
        self.bottom_up = bottom_up  # x -> features per layer, top first
        self.blocks = nnx.List(blocks)  # top first
        self.output = output  # the final state -> the decoder output
        self.initial_state = nnx.Param(jnp.asarray(initial_state))
        self.prior = prior
        self.likelihood = likelihood
        self.merge_kind = merge_kind
        self.log_var_clip = tuple(log_var_clip)
        self.image_shape = tuple(image_shape)
        self.num_layers = len(blocks)
        self.latent_dims = tuple(block.latent_dim for block in reversed(blocks))  # z_1 first
        self.latent_dim = blocks[0].latent_dim  # the top layer's: encode, decode, the prior

    # --- The top-down path ----------------------------------------------------------------------

    def _clip(self, log_var):
        return jnp.clip(log_var, *self.log_var_clip) if self.log_var_clip else log_var

    def _state(self, batch: int) -> jax.Array:
        state = self.initial_state[...]
        return jnp.broadcast_to(state, (batch, *state.shape))

    def _descend(self, batch: int, features=None, noise=None, given=None, temperatures=None, stop=None):
        """The top-down pass over the layers, top first: (final state, one record per layer).

        Layer i's z is given[i] where given; else, with `features` (inference), q's mean plus its
        standard deviation times noise[i] (the mean without noise); without features (generation),
        p's mean plus temperatures[i] times its standard deviation times noise[i]. A record holds
        z, p = (mean, log_var) and q (None without features). With `stop`, the pass ends at layer
        `stop` once its p and q are known: its record has no z, and the state returned is None.
        """
        h, records = self._state(batch), []
        for i, block in enumerate(self.blocks):
            h = block.enter(h)
            if i == 0:
                prior = (jnp.zeros((batch, block.latent_dim), h.dtype),) * 2
                update = None
            else:
                prior_mean, prior_log_var, update = block.prior(h)
                prior = (prior_mean, self._clip(prior_log_var))
            posterior = None
            if features is not None:
                mean, log_var = merge(self.merge_kind, *prior, *block.posterior(h, features[i]))
                posterior = (mean, self._clip(log_var))
            if i == stop:
                return None, [*records, {"p": prior, "q": posterior}]
            if update is not None:
                h = h + update
            if given is not None and given[i] is not None:
                z = given[i]
            else:
                mean, log_var = prior if posterior is None else posterior
                z = mean
                if noise is not None:
                    spread = jnp.exp(0.5 * log_var)
                    if posterior is None and temperatures is not None:
                        spread = temperatures[i] * spread
                    z = mean + spread * noise[i]
            records.append({"z": z, "p": prior, "q": posterior})
            h = block.absorb(h, z)
        return h, records

    def _noise(self, key: jax.Array, shape: tuple[int, ...]) -> list:
        """Standard normal noise per layer (top first), of shape (*shape, Z_layer): layer i's from the
        i-th of L keys split from `key`."""
        keys = jax.random.split(key, self.num_layers)
        return [jax.random.normal(k, (*shape, block.latent_dim)) for k, block in zip(keys, self.blocks)]

    def _layer_kls(self, records) -> tuple[list, list | None]:
        """KL of each layer (B each, top first) and per unit (None where the prior does not factorise)."""
        top = records[0]
        kl_top, per_dim_top = self.prior.kl(*top["q"], top["z"], self.encode)
        per_dims = [kl.gaussian_kl_per_dim(*r["q"], *r["p"]) for r in records[1:]]
        kls = [kl_top, *(jnp.sum(d, axis=-1) for d in per_dims)]
        return kls, None if per_dim_top is None else [per_dim_top, *per_dims]

    def _log_ratio(self, records) -> jax.Array:
        """log p(z) − log q(z|x) summed over the layers, one value per row."""
        top = records[0]
        log_p = self.prior.log_prob(top["z"], self.encode)
        log_p = log_p + sum(kl.gaussian_log_density(r["z"], *r["p"]) for r in records[1:])
        return log_p - sum(kl.gaussian_log_density(r["z"], *r["q"]) for r in records)

    # --- The interface every model has -----------------------------------------------------------

    def encode(self, x_BxD: jax.Array) -> tuple[jax.Array, jax.Array]:
        """q(z_L | x): mean and log-variance of the top layer, each B x Z_L."""
        return self.posterior_below(x_BxD, [])

    def decode(self, z_BxZ: jax.Array) -> jax.Array:
        """The decoder output from the top layer's code, each layer below at its prior mean."""
        h, _ = self._descend(z_BxZ.shape[0], given=[z_BxZ] + [None] * (self.num_layers - 1))
        return self.output(h)

    def elbo_terms(self, x_BxD: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
        """rec, kl (B); kl_per_layer (B x L); kl_per_dim (B x ΣZ, factorised priors); mean (B x ΣZ,
        `activity_means`): z_1's units first. One posterior sample of every layer."""
        batch = x_BxD.shape[0]
        features = self.bottom_up(x_BxD)
        h, records = self._descend(batch, features, self._noise(key, (batch,)))
        kls, per_dims = self._layer_kls(records)
        terms = {"rec": -self.likelihood.log_prob(self.output(h), x_BxD),
                 "kl": sum(kls),
                 "kl_per_layer": jnp.stack(kls[::-1], axis=-1),
                 "mean": self.activity_means(features)}
        if per_dims is not None:
            terms["kl_per_dim"] = jnp.concatenate(per_dims[::-1], axis=-1)
        return terms

    def activity_means(self, features) -> jax.Array:
        """What each unit's activity (Burda et al.'s Cov_x(E_q[u | x]) > threshold) is measured on,
        B x ΣZ, z_1's units first, along the pass with every layer at its posterior mean (so no
        layer's activity is another's noise): the top layer's posterior mean, and below it each
        layer's posterior mean less its prior mean given the same layers above, in the prior's
        standard deviations, (E_q[z_l | x, z_>l] − E_p[z_l | z_>l]) / σ_p(z_l | z_>l).

        Below the top, E_q[z_l | x, z_>l] varies with x through p(z_l | z_>l) alone even where q = p:
        such a unit carries nothing about x beyond the layers above, yet its posterior mean moves.
        Measured from the prior's mean it is exactly 0 there, and it varies with x only as far as
        the layer's own posterior departs from its prior; the prior's spread is the scale Burda et
        al.'s threshold is set against (their prior is N(0, I), where the two measures agree, as
        they do for the top layer, whose prior does not depend on x)."""
        _, records = self._descend(features[0].shape[0], features)
        top = records[0]["q"][0]
        below = [(r["q"][0] - r["p"][0]) * jnp.exp(-0.5 * r["p"][1]) for r in records[1:]]
        return jnp.concatenate([*below[::-1], top], axis=-1)

    def _log_weights(self, x_BxD: jax.Array, copies: int, noise: list) -> tuple[jax.Array, jax.Array]:
        """(log p(x|z), log p(z) − log q(z|x)) for `copies` x B rows (copy-major) with the given noise."""
        features = [jnp.tile(f, (copies,) + (1,) * (f.ndim - 1)) for f in self.bottom_up(x_BxD)]
        h, records = self._descend(copies * x_BxD.shape[0], features, noise)
        out = self.output(h).reshape(copies, x_BxD.shape[0], -1)
        return out, self._log_ratio(records).reshape(copies, -1)

    def log_weights(self, x_BxD: jax.Array, key: jax.Array, num_samples: int) -> dict[str, jax.Array]:
        """log p(x|z) and log p(z) − log q(z|x) over all layers for num_samples draws: each K x B. The
        bottom-up pass runs once per image."""
        k, b = num_samples, x_BxD.shape[0]
        noise = [n.reshape(k * b, -1) for n in self._noise(key, (k, b))]
        out_KxBxP, log_ratio = self._log_weights(x_BxD, k, noise)
        return {"log_lik": self.likelihood.log_prob(out_KxBxP, x_BxD[None]), "log_ratio": log_ratio}

    def iwae_log_weights(self, x_BxD: jax.Array, keys_CxB: jax.Array) -> jax.Array:
        """log p(x, z) − log q(z|x), C x B, one draw per key: each draw is `log_weights(x_i, key, 1)`'s
        (the same noise), with the bottom-up pass run once per image."""
        c = keys_CxB.shape[0]
        per_key = jax.vmap(lambda key: [n[0] for n in self._noise(key, (1,))])(keys_CxB.reshape(-1))
        out_CxBxP, log_ratio = self._log_weights(x_BxD, c, per_key)
        return self.likelihood.log_prob_grouped(out_CxBxP, x_BxD[None]) + log_ratio

    def reconstruct(self, x_BxD: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """The decoder output of x from posterior samples of every layer, or their means if key is None."""
        batch = x_BxD.shape[0]
        noise = None if key is None else self._noise(key, (batch,))
        h, _ = self._descend(batch, self.bottom_up(x_BxD), noise)
        return self.output(h)

    def sample(self, key: jax.Array, num_samples: int, temperature=1.0) -> jax.Array:
        """The decoder output of z_L ~ p(z_L), then each z_l ~ p(z_l | z_>l). `temperature` scales every
        layer's spread: one number, or one per layer (z_1 first); 0 gives the prior means all the way down."""
        temperatures = layer_temperatures(temperature, self.num_layers)
        top_key, key = jax.random.split(key)
        z_top = self.prior.sample(top_key, num_samples, self.latent_dim, temperatures[0], self.encode)
        given = [z_top] + [None] * (self.num_layers - 1)
        h, _ = self._descend(num_samples, noise=self._noise(key, (num_samples,)), given=given,
                             temperatures=temperatures)
        return self.output(h)

    @property
    def output_bias(self) -> nnx.Param:
        return self.output.output_bias

    # --- Layer by layer, for bits-back coding (`vae.coding.host_model`) -----------------------------

    def posterior_below(self, x_BxD: jax.Array, upper: Sequence[jax.Array]) -> tuple[jax.Array, jax.Array]:
        """q(z | x, upper) of the layer below `upper` (the latents of the layers above it, top first):
        mean and log-variance."""
        given = list(upper) + [None] * (self.num_layers - len(upper))
        _, records = self._descend(x_BxD.shape[0], self.bottom_up(x_BxD), given=given, stop=len(upper))
        return records[-1]["q"]

    def prior_below(self, upper: Sequence[jax.Array]) -> tuple[jax.Array, jax.Array]:
        """p(z | upper) of the layer below `upper` (at least one layer, top first): mean and log-variance."""
        given = list(upper) + [None] * (self.num_layers - len(upper))
        _, records = self._descend(upper[0].shape[0], given=given, stop=len(upper))
        return records[-1]["p"]

    def decode_layers(self, zs: Sequence[jax.Array]) -> jax.Array:
        """The decoder output of p(x | z) from every layer's latents, top first."""
        h, _ = self._descend(zs[0].shape[0], given=list(zs))
        return self.output(h)
