"""Lowered for accelerators: the train step, the IWAE evaluation and sampling of the default config,
the ladder and the 8-bit config export (`jax.export`) for CUDA and for TPU, on this machine without
either, so nothing in them is CPU-only. The 8-bit model's mixture goes through the native kernel's
operation (`vae.native.mixture`): its CUDA and TPU modules hold the XLA path, not the CPU custom
call, and exporting builds nothing."""

import functools
import re

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from configs import default, fmnist_8bit, ladder
from vae.data import pixels
from vae.model import likelihoods, objectives
from vae.native import build, mixture
from vae.train import state, step

CONFIGS = {"default": default, "ladder": ladder, "fmnist_8bit": fmnist_8bit}
PLATFORMS = ("cuda", "tpu")
IMAGE_SHAPE = (28, 28, 1)
BATCH, CHUNK, NUM_SAMPLES, STEPS_PER_EPOCH = 2, 3, 5, 10


@pytest.fixture(autouse=True)
def nothing_is_built(monkeypatch):
    """Any build of the kernel while exporting fails the test."""
    mixture._kernel_registered.cache_clear()
    monkeypatch.setattr(build, "load", lambda *args: pytest.fail("exporting built the native kernel"))
    yield
    mixture._kernel_registered.cache_clear()


@functools.cache
def _abstract(name: str):
    """(config, graphdef, the train state's shapes): the model is never initialised for real."""
    config = CONFIGS[name].get_config()
    tx = state.make_optimizer(config.train, STEPS_PER_EPOCH)
    graphdef, train_state = state.abstract_state(config, IMAGE_SHAPE, tx)
    return config, graphdef, train_state


def _functions(name: str):
    """(function, argument shapes) of the train step, the IWAE evaluation's chunk and sampling."""
    config, graphdef, train_state = _abstract(name)
    key = jax.eval_shape(lambda: state.root_key(0))
    images_u8 = jax.ShapeDtypeStruct((BATCH, 784), jnp.uint8)
    dynamic = config.data.binarize == "dynamic"
    train_step = step.make_train_step(graphdef, config, STEPS_PER_EPOCH, dynamic=dynamic)
    hyper = state.hyperparameters(config)

    def iwae_chunk(params, images_u8, image_index_B, key, chunk_index):
        x = pixels.to_model_input(images_u8, None)
        return objectives.iwae_chunk_logsumexp(nnx.merge(graphdef, params), x, key, image_index_B,
                                               chunk_index, CHUNK, NUM_SAMPLES)

    def sample(params, images_u8, key):
        """What vae.analysis.sampling shows: prior samples (means and draws), reconstructions."""
        model = nnx.merge(graphdef, params)
        prior_key, draw_key = jax.random.split(key)
        out = model.sample(prior_key, BATCH)
        reconstruction = model.reconstruct(pixels.to_model_input(images_u8, None))
        return model.likelihood.mean(out), model.likelihood.sample(draw_key, out), model.likelihood.mean(
            reconstruction)

    index_B, chunk_index = jax.ShapeDtypeStruct((BATCH,), jnp.int32), jax.ShapeDtypeStruct((), jnp.int32)
    return {
        "train step": (lambda s, x, k: train_step(s, x, k, hyper), (train_state, images_u8, key)),
        "IWAE": (iwae_chunk, (train_state.params, images_u8, index_B, key, chunk_index)),
        "sampling": (sample, (train_state.params, images_u8, key)),
    }


@pytest.mark.parametrize("name", CONFIGS)
def test_the_programs_export_for_cuda_and_tpu(name):
    """Each program exports for each platform with no custom call in it (no CPU kernel, no host
    callback); the 8-bit IWAE's traced program holds the kernel's operation, its exports the XLA
    path."""
    for what, (function, args) in _functions(name).items():
        jitted = jax.jit(function)
        if name == "fmnist_8bit" and what == "IWAE":  # the kernel's operation is in this program
            assert "vae_mixture_log_prob" in str(jitted.trace(*args).jaxpr)
        for platform in PLATFORMS:
            exported = jax.export.export(jitted, platforms=(platform,))(*args)
            assert exported.platforms == (platform,)
            module = exported.mlir_module()
            assert re.findall(r"custom_call @(\w+)", module) == [], (name, what, platform)


def test_the_sharded_mixture_exports_for_cuda_and_tpu():
    """Under a mesh (the sharded IWAE evaluation on the 4 devices) the mixture's operation is local
    to each device (`jax.shard_map`), and what each device runs on CUDA or TPU is the XLA path."""
    mesh = Mesh(jax.devices(), ("data",))
    out = jax.ShapeDtypeStruct((3, 8, 784 * 15), jnp.float32, sharding=NamedSharding(mesh, P(None, "data")))
    x = jax.ShapeDtypeStruct((8, 784), jnp.float32, sharding=NamedSharding(mesh, P("data")))
    grouped = jax.jit(lambda o, x: likelihoods.LogisticMixture(5).log_prob_grouped(o, x[None]))
    assert "shard_map" in str(grouped.trace(out, x).jaxpr)
    for platform in PLATFORMS:
        exported = jax.export.export(grouped, platforms=(platform,))(out, x)
        module = exported.mlir_module()
        assert exported.nr_devices == 4 and "sdy.manual_computation" in module  # the shard_map
        assert re.findall(r"custom_call @(\w+)", module) == []
