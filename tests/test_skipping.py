"""Training stability for every model: the gradient's global norm in the metrics, and updates whose
norm is above `train.skip_threshold` (or not finite) skipped, counted and reported."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.conftest import tiny_config
from vae.train import loop, run_dir, state, step
from vae.workdir import files


def one_step(config, poison=False):
    """(state before, state after, metrics) of one train step on a random batch."""
    tx = state.make_optimizer(config.train, 10)
    graphdef, before = state.init_state(config, (28, 28, 1), tx)
    if poison:  # a non-finite parameter: every gradient is nan
        poisoned = jax.tree.map(lambda p: p.at[(0,) * p.ndim].set(jnp.nan), before.params)
        before = before._replace(params=poisoned)
    x_u8 = jnp.asarray(np.random.default_rng(0).integers(0, 256, (64, 784), dtype=np.uint8))
    train_step = step.make_train_step(graphdef, config, 10, dynamic=True)
    hyper = state.hyperparameters(config)
    copy = jax.tree.map(jnp.copy, before)
    after, metrics = jax.jit(train_step)(before, x_u8, step.step_key(hyper.seed, before.step), hyper)
    return copy, after, jax.device_get(metrics)


def assert_unchanged(before, after):
    for a, b in zip(jax.tree.leaves(tuple(before)[1:]), jax.tree.leaves(tuple(after)[1:])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_an_update_above_the_threshold_is_skipped_and_the_state_is_unchanged():
    before, after, metrics = one_step(tiny_config(train__skip_threshold=1e-6, train__ema_decay=0.9))
    assert metrics["skipped"] == 1.0 and 0 < metrics["grad_norm"] < np.inf
    assert_unchanged(before, after)  # parameters, Adam's moments and count, the parameter average
    assert int(after.step) == int(before.step) + 1  # the next batch still gets its own key


def test_an_update_below_the_threshold_or_without_one_is_applied():
    for threshold in (0.0, 1e9):
        before, after, metrics = one_step(tiny_config(train__skip_threshold=threshold))
        assert metrics["skipped"] == 0.0
        changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before.params),
                                                             jax.tree.leaves(after.params))]
        assert all(changed)


def test_the_norm_is_the_global_norm_of_the_gradient_before_clipping():
    config = tiny_config(train__grad_clip_norm=1e-3)
    tx = state.make_optimizer(config.train, 10)
    graphdef, initial = state.init_state(config, (28, 28, 1), tx)
    x_u8 = jnp.asarray(np.random.default_rng(0).integers(0, 256, (64, 784), dtype=np.uint8))
    hyper = state.hyperparameters(config)
    key = step.step_key(hyper.seed, initial.step)
    _, metrics = jax.jit(step.make_train_step(graphdef, config, 10, dynamic=True))(initial, x_u8, key, hyper)
    # The same gradient, taken directly (the step's binarisation and sample keys, the same loss).
    from flax import nnx

    from vae.data import pixels
    from vae.model import objectives

    @jax.jit
    def direct_gradient(params):
        binarize_key, sample_key = jax.random.split(key)
        x = pixels.to_model_input(x_u8, binarize_key)
        beta = objectives.kl_weight(initial.step, hyper.beta, hyper.kl_warmup_epochs * 10)
        return jax.grad(lambda p: objectives.training_loss(nnx.merge(graphdef, p), x, sample_key, beta)[0])(
            params)

    grads = direct_gradient(initial.params)
    direct = np.sqrt(sum(np.sum(np.square(np.asarray(g, np.float64))) for g in jax.tree.leaves(grads)))
    assert float(metrics["grad_norm"]) == pytest.approx(direct, rel=1e-4)
    assert float(metrics["grad_norm"]) > 1e-3  # clipping came after: the norm is the raw one


def test_a_non_finite_gradient_is_always_skipped():
    before, after, metrics = one_step(tiny_config(), poison=True)
    assert metrics["skipped"] == 1.0 and not np.isfinite(metrics["grad_norm"])
    assert_unchanged(before, after)


def test_the_epoch_record_counts_skips_and_averages_only_applied_updates(tmp_path):
    config = tiny_config(train__skip_threshold=10.0)
    run = run_dir.RunDir(tmp_path, config, steps=4, image_shape=(28, 28, 1))
    metrics = {"loss": np.array([200.0, np.nan, 1e6, 100.0]), "elbo": np.array([200.0, np.nan, 1e6, 100.0]),
               "grad_norm": np.array([3.0, np.nan, 50.0, 5.0]), "skipped": np.array([0.0, 1.0, 1.0, 0.0])}
    record = run.train_record(metrics, train_time=1.0, compile_time=None)
    run.close()
    assert record["train/skipped_updates"] == 2
    assert record["train/loss"] == 150.0 and record["train/elbo"] == 150.0  # the applied ones
    assert record["train/grad_norm"] == pytest.approx(58.0 / 3) and record["train/grad_norm_max"] == 50.0
    line = run_dir.skip_line(record, 10.0)
    assert line == ("epoch 1: skipped 2 of the epoch's updates (gradient norm above train.skip_threshold=10 "
                    "or not finite; the largest finite norm was 50)")


def test_an_epoch_that_skips_every_update_stops_the_run_in_one_line(tmp_path, fashion_mnist):
    config = tiny_config(train__skip_threshold=1e-6, train__num_epochs=2)
    with pytest.raises(run_dir.UpdatesSkippedError) as error:
        loop.train_and_evaluate(config, tmp_path / "run", progress=False)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("every update of epoch 1 was skipped (16 of 16: the gradient norm above "
                              "train.skip_threshold=1e-06 or not finite; the gradient norms were ")
    assert "no checkpoint had been written yet. Raise train.skip_threshold" in message
    assert not files.read_metrics(tmp_path / "run")


def test_every_run_records_its_gradient_norm_and_skips(tiny_run):
    for record in files.read_metrics(tiny_run):
        assert record["train/grad_norm"] > 0 and record["train/grad_norm_max"] >= record["train/grad_norm"]
        assert record["train/skipped_updates"] == 0


def steps_with_skips(config, steps_per_epoch: int, skip_at: set[int]):
    """The state after `steps_per_epoch` train steps on one batch, those in `skip_at` skipped (a tiny
    threshold for that step alone), and each step's skipped flag."""
    tx = state.make_optimizer(config.train, steps_per_epoch)
    graphdef, current = state.init_state(config, (28, 28, 1), tx)
    x_u8 = jnp.asarray(np.random.default_rng(0).integers(0, 256, (64, 784), dtype=np.uint8))
    train_step = jax.jit(step.make_train_step(graphdef, config, steps_per_epoch, dynamic=True))
    hyper = state.hyperparameters(config)
    skipped = []
    for n in range(steps_per_epoch):
        numbers = hyper._replace(skip_threshold=1e-6) if n in skip_at else hyper
        current, metrics = train_step(current, x_u8, step.step_key(hyper.seed, current.step), numbers)
        skipped.append(float(metrics["skipped"]))
    return current, skipped


def schedule_counts(opt_state) -> list[int]:
    is_schedule = lambda node: isinstance(node, optax.ScaleByScheduleState)  # noqa: E731
    return [int(node.count) for node in jax.tree.leaves(opt_state, is_leaf=is_schedule) if is_schedule(node)]


def test_skipped_updates_do_not_hold_the_learning_rate_schedule_back():
    config = tiny_config(train__lr_schedule="cosine", train__num_epochs=2)
    schedule = state.learning_rate(config.train, 4)  # 8 steps of cosine decay
    plain, plain_skips = steps_with_skips(config, 4, set())
    skipping, skips = steps_with_skips(config, 4, {1, 2})
    assert plain_skips == [0.0] * 4 and skips == [0.0, 1.0, 1.0, 0.0]
    assert int(skipping.step) == int(plain.step) == 4
    # The rate of the next step is the schedule's at step 4 in both runs, not at step 2.
    assert schedule_counts(skipping.opt_state) == schedule_counts(plain.opt_state) == [4]
    assert float(schedule(schedule_counts(skipping.opt_state)[0])) == pytest.approx(float(schedule(4)))
    assert float(schedule(4)) < 0.9 * float(schedule(2))  # the two differ: the check can fail
    # Adam's moments saw two updates, and its bias correction counts those.
    assert int(skipping.opt_state[0].count) == 2 and int(plain.opt_state[0].count) == 4
