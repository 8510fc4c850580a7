"""The fused threefry keys draw exactly the bits of jax.random's default keys, everywhere a run uses them."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae import threefry


def pair(seed):
    return jax.random.key(seed), threefry.key(seed)


def assert_same(a, b):
    if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
        a, b = jax.random.key_data(a), jax.random.key_data(b)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("seed", [0, 1, 1234, 2**31 - 1])
def test_keys_split_and_fold_in_like_jax(seed):
    ours, theirs = threefry.key(seed), jax.random.key(seed)
    assert_same(theirs, ours)
    assert_same(jax.random.fold_in(theirs, 17), jax.random.fold_in(ours, 17))
    assert_same(jax.random.split(theirs, 5), jax.random.split(ours, 5))
    assert_same(jax.random.split(theirs, (2, 3)), jax.random.split(ours, (2, 3)))
    assert_same(jax.random.fold_in(jax.random.split(theirs)[1], 2**31 + 5),
                jax.random.fold_in(jax.random.split(ours)[1], 2**31 + 5))


@pytest.mark.parametrize("shape", [(), (1,), (7,), (128, 784), (3, 5, 11)])
def test_draws_are_jaxs_bit_for_bit(shape):
    theirs, ours = pair(42)
    for draw in (lambda k: jax.random.bits(k, shape), lambda k: jax.random.bits(k, shape, jnp.uint16),
                 lambda k: jax.random.bits(k, shape, jnp.uint8), lambda k: jax.random.uniform(k, shape),
                 lambda k: jax.random.normal(k, shape), lambda k: jax.random.bernoulli(k, 0.3, shape),
                 lambda k: jax.random.randint(k, shape, -5, 1000)):
        assert_same(draw(theirs), draw(ours))
    if jax.config.jax_enable_x64:
        assert_same(jax.random.bits(theirs, shape, jnp.uint64), jax.random.bits(ours, shape, jnp.uint64))


def test_what_a_run_draws_is_jaxs_under_jit_and_vmap():
    theirs, ours = pair(0)
    probs = jax.random.uniform(jax.random.key(9), (64, 784))

    @jax.jit
    def step(key, step_index):  # the train step's draws: binarisation and the posterior sample
        binarize_key, sample_key = jax.random.split(jax.random.fold_in(key, step_index))
        return jax.random.bernoulli(binarize_key, probs), jax.random.normal(sample_key, (64, 20))

    for a, b in zip(step(theirs, 3), step(ours, 3)):
        assert_same(a, b)
    assert_same(jax.random.permutation(jax.random.fold_in(theirs, 1), 60_000),
                jax.random.permutation(jax.random.fold_in(ours, 1), 60_000))
    per_image = jax.jit(jax.vmap(lambda k, i: jax.random.normal(jax.random.fold_in(k, i), (3, 40)),
                                 (None, 0)))
    assert_same(per_image(theirs, jnp.arange(10)), per_image(ours, jnp.arange(10)))


def training_bits_agree():
    """The train epoch with fused keys and the CPU compile options against jax.random keys and a
    plain compile: the same parameters, optimizer state and metrics, bit for bit. Changes this
    process's keys and options: for a process of its own."""
    from tests.conftest import tiny_config
    from vae.train import distributed, epoch, feed, state, step

    config = tiny_config()
    mesh = distributed.make_mesh(jax.devices()[:1])
    images = np.random.default_rng(0).integers(0, 256, (256, 784), dtype=np.uint8)
    steps = 256 // config.train.batch_size
    tx = state.make_optimizer(config.train, steps)

    def two_epochs():
        graphdef, carry = state.init_state(config, (28, 28, 1), tx)
        orders = feed.compile_orders(config.train.batch_size, len(images), config.seed, mesh)
        source = feed.DeviceBatches(images, mesh, orders)
        body = epoch.step_body(step.make_train_step(graphdef, config, steps, True),
                               state.hyperparameters(config), source.batch)
        epoch_fn = epoch.compile_epoch(body, epoch.epoch_loop(config), mesh, carry, source)
        metrics = []
        for number in (1, 2):
            carry, step_metrics = epoch_fn(carry, number)
            metrics.append(step_metrics)
        return carry, metrics

    new = two_epochs()
    threefry.key, epoch._CPU_COMPILER_OPTIONS = jax.random.key, {}
    old = two_epochs()
    for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow  # a training of its own; the draws themselves are quick-tested bit for bit
def test_training_is_bit_for_bit_what_it_was():
    """`training_bits_agree` as a user's run compiles: in a process with XLA's default flags. (The
    suite's compile-speed flags, tests/conftest.py, round the two programs differently.)"""
    from tests.conftest import REPO

    script = ("import jax; jax.devices(); "  # the backend starts on these flags before tests.conftest
              "from tests.test_threefry import training_bits_agree; training_bits_agree(); print('ok')")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                            env=dict(os.environ, XLA_FLAGS="", TF_CPP_MIN_LOG_LEVEL="3"), timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
