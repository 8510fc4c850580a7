"""The ELBO and its parts on the evaluated splits, every evaluation epoch and for a trained run.

One sample of the posterior per image, with a key that is the same every epoch (`eval_key`), so
epochs compare on the same posterior noise; the split's images are binarised once
(`vae.data.dataset`). The batches run through `epoch.compile_loop` (scan or steps, as training).
Figures are nats per image; active units follow Burda et al. (2015).

On one split (the validation split where the run has one, else the test split) the KL term of the
(top) latent is also split by the aggregate posterior of its first `eval.kl_split_examples`
images (`vae.model.kl_split`): I_q(x; z) + KL(q(z) ‖ p(z)), the total correlation and, for a
factorised prior, the per-dimension marginal KLs; one posterior draw per image, with a key of its
own, so the ELBO's figures are unchanged.
"""

import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vae.data import pixels
from vae.data.dataset import Dataset
from vae.model import kl_split
from vae.train import distributed
from vae.train.epoch import compile_loop, epoch_loop
from vae.train.state import TEST_EVAL, VAL_EVAL, stream_key


def eval_key(seed: int, split: str) -> jax.Array:
    """The key of one split's evaluation ('test' or 'val') of the run with this seed: the same every
    epoch, so epochs compare on the same posterior noise."""
    return stream_key(seed, TEST_EVAL if split == "test" else VAL_EVAL)


# Folded into a split's evaluation key: the KL split's draws, independent of the ELBO's.
KL_SPLIT_STREAM = 1
# The KL split's summary fields kept in a record (a mean each; standard errors for the two parts).
KL_SPLIT_FIELDS = ("mutual_info", "mutual_info_std_error", "mutual_info_upper", "marginal_kl",
                   "marginal_kl_std_error", "total_correlation")


# Rows x posteriors x latent units the split holds at once: a CPU's cache; an accelerator wants
# larger programs (256 MB of float32).
_SPLIT_CHUNK_ELEMENTS = {"cpu": kl_split.CHUNK_ELEMENTS}
_SPLIT_CHUNK_ELEMENTS_ACCELERATOR = 1 << 26


def kl_split_examples(config) -> int:
    """`eval.kl_split_examples`: 0 (no split) for a run whose config predates the field."""
    return int(config.eval.get("kl_split_examples", 0))


def make_kl_split(graphdef, config, mesh: Mesh, num_examples: int):
    """A (params, images_u8 N' x D on the device as `make_evaluate` takes them, key) -> the KL split
    of the first `num_examples` images (`vae.model.kl_split`), means and standard errors on the
    device: mutual_info, mutual_info_upper, marginal_kl, total_correlation, kl (their whole,
    mutual_info + marginal_kl), each with its standard error, and dimwise_kl (Z values) where the
    prior factorises (`log_prob_per_dim`). One draw per image; the rows compared with all
    posteriors are split over the devices."""
    batch_size = config.eval.batch_size
    num_batches = -(-num_examples // batch_size)
    batch_sharding = NamedSharding(mesh, P("data"))
    chunk_elements = _SPLIT_CHUNK_ELEMENTS.get(jax.default_backend(), _SPLIT_CHUNK_ELEMENTS_ACCELERATOR)

    def split_of(params, images_u8, key):
        model = nnx.merge(graphdef, params)

        def encode(x_u8):
            x_BxD = jax.lax.with_sharding_constraint(pixels.to_model_input(x_u8, None), batch_sharding)
            return model.encode(x_BxD)

        x_u8 = images_u8[:num_batches * batch_size].reshape(num_batches, batch_size, -1)
        mean_NxZ, log_var_NxZ = (t.reshape(-1, t.shape[-1])[:num_examples] for t in jax.lax.map(encode, x_u8))
        terms = kl_split.kl_split_terms(
            jax.random.fold_in(key, KL_SPLIT_STREAM), mean_NxZ, log_var_NxZ,
            lambda z: model.prior.log_prob(z, model.encode),
            log_prior_per_dim=getattr(model.prior, "log_prob_per_dim", None),
            chunk_rows=kl_split.rows_per_chunk(num_examples, mean_NxZ.shape[1], mesh.devices.size,
                                               chunk_elements),
            constrain_rows=lambda rows: jax.lax.with_sharding_constraint(rows, batch_sharding))
        return kl_split.summarize(terms)

    return jax.jit(split_of, out_shardings=NamedSharding(mesh, P()))


def summarize_kl_split(split: dict, num_examples: int, prefix: str) -> dict:
    """The record's fields of one KL split (nats per image): PREFIX/mutual_info (I_q(x; z), at most
    log N), its leave-one-out upper bound, PREFIX/marginal_kl (KL(q(z) ‖ p(z))), the two parts'
    standard errors, the total correlation, PREFIX/dimwise_kl and its list per dimension (factorised
    priors), PREFIX/split_kl (their whole) and PREFIX/split_examples (N)."""
    summary = {f"{prefix}/{name}": float(split[name]) for name in KL_SPLIT_FIELDS if name in split}
    if "dimwise_kl" in split:
        per_dim = np.asarray(split["dimwise_kl"], np.float64)
        summary[f"{prefix}/dimwise_kl"] = float(per_dim.sum())
        summary[f"{prefix}/dimwise_kl_per_dim"] = [round(float(v), 5) for v in per_dim]
    summary[f"{prefix}/split_kl"] = float(split["kl"])
    summary[f"{prefix}/split_examples"] = num_examples
    return summary


def make_evaluate(graphdef, config, mesh: Mesh):
    """A (params, images_u8 N x D with N padded to the eval batch, key) -> per-example ELBO terms
    on the host (rec, kl, kl_per_dim where the prior factorises, posterior mean), one sample each,
    compiled on its first call for each shape of images."""
    batch_size = config.eval.batch_size
    batch_sharding = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())

    def terms_of(params, x_BxD, key, index):
        return nnx.merge(graphdef, params).elbo_terms(x_BxD, jax.random.fold_in(key, index))

    def body(_, consts, index):
        params, images_u8, key = consts
        x_u8 = jax.lax.dynamic_slice_in_dim(images_u8, index * batch_size, batch_size)
        x_BxD = jax.lax.with_sharding_constraint(pixels.to_model_input(x_u8, None), batch_sharding)
        return None, terms_of(params, x_BxD, key, index)

    compiled = {}  # by the images' shape

    def evaluate(params, images_u8, key):
        num_batches = images_u8.shape[0] // batch_size
        indices = distributed.replicated(np.arange(num_batches, dtype=np.int32), replicated)
        consts = (params, images_u8, key)
        if images_u8.shape not in compiled:
            compiled[images_u8.shape] = compile_loop(body, epoch_loop(config), mesh, None, consts, indices,
                                                     donate_carry=False)
        _, terms = compiled[images_u8.shape](None, consts, indices)
        # Batches x batch -> examples on the host: on the device each reshape is a program of its own.
        return jax.tree.map(lambda t: t.reshape(-1, *t.shape[2:]), jax.device_get(terms))

    return evaluate


def summarize_eval(terms: dict, num_examples: int, num_pixels: int, threshold: float,
                   prefix: str = "test", layer_sizes: tuple[int, ...] | None = None) -> dict:
    """Means in nats per image, per-dimension KL (factorised priors) and active units (Burda et
    al., 2015) of one evaluated split; for a model of several latent layers, the KL of each layer
    and, given the layers' sizes (the model's `latent_dims`, z_1 first), the active units of each."""
    rec = np.asarray(terms["rec"][:num_examples], np.float64)
    kl = np.asarray(terms["kl"][:num_examples], np.float64)
    means = np.asarray(terms["mean"][:num_examples], np.float64)
    elbo = float(np.mean(rec + kl))
    activity = means.var(axis=0)  # Cov_x(E_q[z_u | x]) per dimension
    summary = {
        f"{prefix}/elbo": elbo,
        f"{prefix}/rec": float(rec.mean()),
        f"{prefix}/kl": float(kl.mean()),
        f"{prefix}/active_units": int(np.sum(activity > threshold)),
        f"{prefix}/bits_per_dim": elbo / (num_pixels * math.log(2.0)),
    }
    if "kl_per_dim" in terms:
        kl_per_dim = np.asarray(terms["kl_per_dim"][:num_examples], np.float64).mean(axis=0)
        summary[f"{prefix}/kl_per_dim"] = [round(float(v), 5) for v in kl_per_dim]
    if "kl_per_layer" in terms:
        kl_per_layer = np.asarray(terms["kl_per_layer"][:num_examples], np.float64).mean(axis=0)
        summary[f"{prefix}/kl_per_layer"] = [round(float(v), 5) for v in kl_per_layer]
        if layer_sizes is not None and sum(layer_sizes) == activity.shape[0]:
            ends = np.cumsum(layer_sizes)
            summary[f"{prefix}/active_units_per_layer"] = [
                int(np.sum(activity[end - size:end] > threshold)) for size, end in zip(layer_sizes, ends)]
    return summary


class Evaluator:
    """Evaluates parameters on one split every evaluation epoch, each run with its own key
    (`eval_key`: the same every epoch)."""

    def __init__(self, evaluate, mesh, images: np.ndarray, split: str, batch_size: int, threshold: float,
                 layer_sizes: tuple[int, ...], kl_split=None):
        self.evaluate = evaluate
        self.kl_split = kl_split  # (make_kl_split's function, N) or None
        self.images = distributed.images_on_device(images, mesh, batch_size)
        self.num = images.shape[0]
        self.num_pixels = math.prod(images.shape[1:])
        self.layer_sizes = layer_sizes  # the model's `latent_dims`, z_1 first
        self.split = split
        self.threshold = threshold

    def __call__(self, params, seed: int) -> dict:
        """The split's summary of the parameters of the run with this seed (which keys it)."""
        key = eval_key(seed, self.split)
        terms = jax.device_get(self.evaluate(params, self.images, key))
        summary = summarize_eval(terms, self.num, self.num_pixels, self.threshold, self.split,
                                 self.layer_sizes)
        if self.kl_split is not None:
            split_fn, num_examples = self.kl_split
            summary |= summarize_kl_split(jax.device_get(split_fn(params, self.images, key)), num_examples,
                                          self.split)
        return summary


def make_evaluators(graphdef, config, mesh, data: Dataset, layer_sizes: tuple[int, ...]) -> list[Evaluator]:
    """The validation (where the data set has one) and test evaluators of the runs `config` stands
    for (they may differ in Hyper numbers only; `layer_sizes`: the model's `latent_dims`). With
    `eval.kl_split_examples`, the first of them (validation, else test) also splits the KL term on
    that many of its images."""
    evaluate = make_evaluate(graphdef, config, mesh)
    splits = [("val", data.val_images)] if data.val_images is not None else []
    splits.append(("test", data.test_images))
    evaluators = []
    for index, (split, images) in enumerate(splits):
        num_split = (min(kl_split_examples(config), images.shape[0]) // mesh.devices.size) * mesh.devices.size
        split_fn = None
        if index == 0 and num_split >= 2:
            split_fn = (make_kl_split(graphdef, config, mesh, num_split), num_split)
        evaluators.append(Evaluator(evaluate, mesh, images, split, config.eval.batch_size,
                                    config.eval.active_unit_threshold, layer_sizes, split_fn))
    return evaluators
