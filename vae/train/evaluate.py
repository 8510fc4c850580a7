"""The ELBO and its parts on the evaluated splits, every evaluation epoch and for a trained run.

One sample of the posterior per image, with a key that is the same every epoch (`eval_key`), so
epochs compare on the same posterior noise; the split's images are binarised once
(`vae.data.dataset`). The batches run through `epoch.compile_loop` (scan or steps, as training).
Figures are nats per image; active units follow Burda et al. (2015).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vae.data import pixels
from vae.data.dataset import Dataset
from vae.train import distributed
from vae.train.epoch import compile_loop, epoch_loop
from vae.train.state import TEST_EVAL, VAL_EVAL, root_key


def eval_key(config, split: str) -> jax.Array:
    """The key of one split's evaluation ('test' or 'val'): the same every epoch, so epochs compare
    on the same posterior noise."""
    return jax.random.fold_in(root_key(config.seed), TEST_EVAL if split == "test" else VAL_EVAL)


def make_evaluate(graphdef, config, mesh: Mesh, members: bool = False):
    """A (params, images_u8 N x D with N padded to the eval batch, key) -> per-example ELBO terms
    (rec, kl, kl_per_dim where the prior factorises, posterior mean), one sample each, compiled on
    its first call. members=True: params and keys of a sweep's members stacked, terms K x N x ...."""
    batch_size = config.eval.batch_size
    batch_sharding = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())

    def terms_of(params, x_BxD, key, index):
        return nnx.merge(graphdef, params).elbo_terms(x_BxD, jax.random.fold_in(key, index))

    if members:
        terms_of = jax.vmap(terms_of, in_axes=(0, None, 0, None))

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
        if members:  # batches x K x B x ... -> K x N x ...
            return jax.tree.map(lambda t: jnp.moveaxis(t, 0, 1).reshape(t.shape[1], -1, *t.shape[3:]), terms)
        return jax.tree.map(lambda t: t.reshape(-1, *t.shape[2:]), terms)

    return evaluate


def summarize_eval(terms: dict, num_examples: int, num_pixels: int, threshold: float,
                   prefix: str = "test") -> dict:
    """Means in nats per image, per-dimension KL (factorised priors) and active units (Burda et
    al., 2015) of one evaluated split."""
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
    return summary


class Evaluator:
    """Evaluates parameters on one split every evaluation epoch: one run's, or with `keys` (one per
    member) the stacked parameters of a sweep's members."""

    def __init__(self, evaluate, config, mesh, images: np.ndarray, split: str, keys=None):
        self.evaluate = evaluate
        self.images = distributed.images_on_device(images, mesh, config.eval.batch_size)
        self.num = images.shape[0]
        self.num_pixels = math.prod(images.shape[1:])
        self.key = eval_key(config, split) if keys is None else keys
        self.prefix = split
        self.threshold = config.eval.active_unit_threshold

    def _summary(self, terms) -> dict:
        return summarize_eval(terms, self.num, self.num_pixels, self.threshold, self.prefix)

    def __call__(self, params) -> dict:
        return self._summary(jax.device_get(self.evaluate(params, self.images, self.key)))

    def per_member(self, params) -> list[dict]:
        terms = jax.device_get(self.evaluate(params, self.images, self.key))
        return [self._summary(jax.tree.map(lambda t, k=k: t[k], terms)) for k in range(len(self.key))]


def make_evaluators(evaluate, config, mesh, dataset: Dataset, keys_of=None) -> list[Evaluator]:
    """The validation (where the data set has one) and test evaluators; `keys_of(split)` gives a
    sweep's per-member keys."""
    splits = [("val", dataset.val_images)] if dataset.val_images is not None else []
    return [Evaluator(evaluate, config, mesh, images, split, keys_of(split) if keys_of else None)
            for split, images in [*splits, ("test", dataset.test_images)]]
