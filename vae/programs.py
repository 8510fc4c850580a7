"""The compiled programs of a run: the train state, the optimizer, one data-parallel train step,
the epoch built from it, and the evaluation. `vae.train` drives them, and `vae.sweep` drives the
same programs vmapped over the members of a sweep.

In one process the data live on the device for the whole run. An epoch is an on-device shuffle,
then the train step over its batches: a gather, a binarisation and an update per step, either as
one compiled `lax.scan` or one compiled step per Python call (see `epoch_loop`). In a run over
several processes the same batches come from the host instead, each process sending only its
rows (`vae.feeding`). The batch axis is sharded over a 1-D mesh ("data") of every process's
devices; parameters and optimizer state are replicated and XLA inserts the gradient all-reduce.
Every random draw is a pure function of (seed, epoch, step), so a resumed run repeats an
uninterrupted one exactly.

The numbers that change no shape (β, warm-up, free bits, learning rate, EMA decay, weight decay,
clipping norm, seed) reach the step as `Hyper`, an explicit input. A single run compiles them in as
constants; a sweep's program (`vae.sweep_program`) traces the ones its members differ in, one value per
member, and vmaps the step over the members' stacked states.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vae import data, distributed, models, objectives, threefry

# Independent random streams, each folded into the run's root key.
INIT, SHUFFLE, STEP, TEST_EVAL, VAL_EVAL = range(5)


class TrainState(NamedTuple):
    step: jax.Array
    params: nnx.State
    opt_state: optax.OptState
    ema_params: nnx.State | None  # exponential moving average of params; None unless train.ema_decay


class Hyper(NamedTuple):
    """The numbers of a run that change no shape. Python numbers are compiled into the programs
    as constants; arrays are traced (in a sweep, the fields its members differ in). Field names
    are those of the config (`HYPER_FIELDS`)."""

    seed: int | jax.Array
    beta: float | jax.Array
    kl_warmup_epochs: float | jax.Array
    free_bits: float | jax.Array
    learning_rate: float | jax.Array
    ema_decay: float | jax.Array
    weight_decay: float | jax.Array
    grad_clip_norm: float | jax.Array


# The config field of each Hyper field: what a sweep may vary inside one compiled program.
HYPER_FIELDS = {name: name if name == "seed" else f"train.{name}" for name in Hyper._fields}


def hyperparameters(config: ml_collections.ConfigDict) -> Hyper:
    """The config's numbers as Python constants."""
    return Hyper(config.seed, *(config.train[name] for name in Hyper._fields[1:]))


def eval_params(state: TrainState) -> nnx.State:
    """The parameters that are evaluated, checkpointed as 'best' and sampled from: the EMA if kept."""
    return state.params if state.ema_params is None else state.ema_params


def root_key(seed: int) -> jax.Array:
    """The run's root key: draws exactly `jax.random.key(seed)`'s bits, with each threefry hash
    compiled as one fused XLA loop instead of a five-step while loop on CPU (`vae.threefry`)."""
    return threefry.key(seed)


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over `devices` (default: all, of every process) with the batch axis "data"."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), ("data",))


def learning_rate(train_config: ml_collections.ConfigDict, steps_per_epoch: int, peak=None):
    """The learning rate, a number or an optax schedule over optimiser steps. `peak` replaces
    train.learning_rate; a traced one scales the schedule of peak 1 (optax's schedules branch on
    their values, which a traced number cannot do)."""
    peak = train_config.learning_rate if peak is None else peak
    if isinstance(peak, jax.Array) and train_config.lr_schedule != "constant":
        unit = learning_rate(train_config, steps_per_epoch, 1.0)
        return lambda count: peak * unit(count)
    total_steps = max(1, train_config.num_epochs * steps_per_epoch)
    lr, final = peak, train_config.final_lr_fraction
    if train_config.lr_schedule == "cosine":
        return optax.cosine_decay_schedule(lr, total_steps, alpha=final)
    if train_config.lr_schedule == "warmup_cosine":
        warmup = int(train_config.warmup_epochs * steps_per_epoch)
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total_steps, warmup + 1),
                                                  end_value=lr * final)
    return lr


def normalize_each_tensor(eps: float = 1e-7) -> optax.GradientTransformation:
    """Divides each parameter tensor's gradient by its L2 norm (the published VampPrior / HVAE
    runs' "AdamNormGrad"), so every tensor moves at the same rate whatever its gradient's scale."""
    return optax.stateless_with_tree_map(lambda g, _: g / (jnp.linalg.norm(g) + eps))


def make_optimizer(train_config: ml_collections.ConfigDict, steps_per_epoch: int, hyper: Hyper | None = None):
    """The optimizer; which transforms it chains follows `train_config`, its numbers come from
    `hyper` when given (traced in a sweep), else from `train_config` (the same field names)."""
    numbers = train_config if hyper is None else hyper
    lr = learning_rate(train_config, steps_per_epoch, numbers.learning_rate)
    if train_config.optimizer == "adamw":
        optimizer = optax.adamw(lr, weight_decay=numbers.weight_decay)
    else:
        optimizer = optax.adam(lr)
    before = []
    if train_config.normalize_grads:
        before.append(normalize_each_tensor())
    if train_config.grad_clip_norm > 0:
        before.append(optax.clip_by_global_norm(numbers.grad_clip_norm))
    return optax.chain(*before, optimizer) if before else optimizer


def init_model(config: ml_collections.ConfigDict, image_shape, pixel_means=None):
    """The model's graph definition and freshly initialised parameters for this seed."""
    key = jax.random.fold_in(root_key(config.seed), INIT)
    return nnx.split(models.build_model(config.model, image_shape, key, pixel_means))


def init_state(config, image_shape, tx, pixel_means=None) -> tuple[nnx.GraphDef, TrainState]:
    graphdef, params = init_model(config, image_shape, pixel_means)
    ema = jax.tree.map(jnp.copy, params) if config.train.ema_decay > 0 else None  # own buffers: donated
    return graphdef, TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), ema)


def step_inputs(x_u8, step, seed, dynamic: bool):
    """(model input x B x D, posterior-sampling key) of one step: a pure function of (batch,
    seed, step), so members of a sweep that share a seed share it."""
    step_key = jax.random.fold_in(root_key(seed), STEP)
    binarize_key, sample_key = jax.random.split(jax.random.fold_in(step_key, step))
    return data.to_model_input(x_u8, binarize_key if dynamic else None), sample_key


def make_update(graphdef, config, steps_per_epoch: int):
    """The pure (state, x B x D, sample_key, hyper) -> (state, metrics) update on a drawn batch.
    The config gives what is compiled in (model, objective, optimizer's transforms), `hyper` the
    numbers."""
    t = config.train

    def update(state: TrainState, x, sample_key, hyper: Hyper):
        beta_t = objectives.kl_weight(state.step, hyper.beta, hyper.kl_warmup_epochs * steps_per_epoch)

        def loss_fn(params):
            return objectives.training_loss(nnx.merge(graphdef, params), x, sample_key, beta_t,
                                            objective=t.objective, free_bits=hyper.free_bits,
                                            num_samples=t.num_samples)

        grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
        tx = make_optimizer(t, steps_per_epoch, hyper)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema, decay = state.ema_params, hyper.ema_decay
        if ema is not None:
            ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
        return TrainState(state.step + 1, params, opt_state, ema), metrics | {"beta": beta_t}

    return update


def make_train_step(graphdef, config, steps_per_epoch: int, dynamic: bool):
    """The pure (state, x_u8 B x D, hyper) -> (state, metrics) step; its keys depend on (seed,
    step) only."""
    update = make_update(graphdef, config, steps_per_epoch)

    def train_step(state: TrainState, x_u8, hyper: Hyper):
        x, sample_key = step_inputs(x_u8, state.step, hyper.seed, dynamic)
        return update(state, x, sample_key, hyper)

    return train_step


def take_batch(images_u8, indices_B, mesh: Mesh):
    """The batch's uint8 images, sharded over "data"."""
    return jax.lax.with_sharding_constraint(images_u8[indices_B], NamedSharding(mesh, P("data")))


def make_batch_step(train_step, mesh: Mesh):
    """(state, images_u8 N x D, indices_B, hyper) -> train_step on that batch, sharded over "data"."""

    def batch_step(state: TrainState, images_u8, indices_B, hyper: Hyper):
        return train_step(state, take_batch(images_u8, indices_B, mesh), hyper)

    return batch_step


def epoch_order(config, num_train: int, epoch, seed):
    """The batches of an epoch, steps x B indices: a permutation keyed by (seed, epoch)."""
    batch_size = config.train.batch_size
    steps = num_train // batch_size
    shuffle_key = jax.random.fold_in(root_key(seed), SHUFFLE)
    order = jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), num_train)
    return order[: steps * batch_size].reshape(steps, batch_size)


def make_train_epoch(graphdef, config, mesh: Mesh, num_train: int, dynamic: bool):
    """A jitted (state, images_u8 N x D, epoch) -> (state, metrics over steps) for one epoch:
    an on-device shuffle, then a scan of the train step over the batches."""
    steps = num_train // config.train.batch_size
    batch_step = make_batch_step(make_train_step(graphdef, config, steps, dynamic), mesh)
    hyper = hyperparameters(config)  # compiled in

    def train_epoch(state: TrainState, images_u8, epoch):
        return jax.lax.scan(lambda state, indices_B: batch_step(state, images_u8, indices_B, hyper),
                            state, epoch_order(config, images_u8.shape[0], epoch, config.seed))

    return jax.jit(train_epoch, donate_argnums=0, out_shardings=NamedSharding(mesh, P()))


def epoch_loop(config) -> str:
    """'scan' (the whole epoch is one program) or 'steps' (one program per step, called from
    Python). 'auto' picks 'steps' for the conv models on CPU, where XLA runs convolutions inside
    a loop body about 10x slower than alone (jax-ml/jax#12868), and 'scan' everywhere else."""
    choice = config.train.epoch_loop
    if choice == "auto":
        convolutional = config.model.arch in ("conv", "conv_hvae")
        return "steps" if convolutional and jax.default_backend() == "cpu" else "scan"
    return choice


# On CPU, copy insertion with region analysis proves that the optimizer may overwrite the
# parameters in place inside the epoch loop; without it XLA copies five of the MLP's eight
# parameter arrays (1.3 MB) every step. Copies only: the numbers are the same.
_CPU_COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}


def compile_lowered(lowered, mesh: Mesh):
    """`lowered.compile()`, with `_CPU_COMPILER_OPTIONS` on CPU where this XLA knows them: how every
    training program (single run, host-fed, sweep) is compiled."""
    if mesh.devices.flat[0].platform != "cpu":
        return lowered.compile()
    try:
        return lowered.compile(compiler_options=_CPU_COMPILER_OPTIONS)
    except jax.errors.JaxRuntimeError as error:  # an XLA without the option: compile as usual
        if "compile option" not in str(error):
            raise
        return lowered.compile()


def compile_train_epoch(graphdef, config, mesh: Mesh, state: TrainState, images_u8, dynamic: bool):
    """The epoch function (state, images_u8, epoch) -> (state, per-step metrics), compiled now.

    Both loops run the same step with the same keys and keep the data on the device; they differ
    only in who iterates over the steps (XLA's while loop, or Python).
    """
    num_train = images_u8.shape[0]
    if epoch_loop(config) == "scan":
        epoch0 = jax.device_put(np.int32(0), NamedSharding(mesh, P()))
        return compile_lowered(make_train_epoch(graphdef, config, mesh, num_train, dynamic).lower(
            state, images_u8, epoch0), mesh)
    steps = num_train // config.train.batch_size
    batch_step = make_batch_step(make_train_step(graphdef, config, steps, dynamic), mesh)
    hyper = hyperparameters(config)
    return compile_stepwise_epoch(lambda state, images, indices: batch_step(state, images, indices, hyper),
                                  lambda epoch: epoch_order(config, num_train, epoch, config.seed),
                                  mesh, state, images_u8)


def compile_stepwise_epoch(step_fn, order_fn, mesh: Mesh, state, images_u8, metrics_axis: int = 0):
    """An epoch as one compiled program per step, called from Python: step_fn(state, images_u8,
    indices) -> (state, metrics) over the leading axis of order_fn(epoch) (the steps). The per-step
    metrics are stacked on `metrics_axis`."""
    replicated = NamedSharding(mesh, P())
    epoch0 = jax.device_put(np.int32(0), replicated)

    def step_at(state, images_u8, order, index):
        return step_fn(state, images_u8, order[index])

    order = _compile_order(order_fn, mesh)
    indices = step_indices(order(epoch0).shape[0], mesh)
    step = compile_lowered(jax.jit(step_at, donate_argnums=0, out_shardings=replicated).lower(
        state, images_u8, order(epoch0), indices[0]), mesh)

    def train_epoch(state, images_u8, epoch):
        return run_steps(step, state, indices, images_u8, order(epoch), metrics_axis=metrics_axis)

    return train_epoch


def _compile_order(order_fn, mesh: Mesh):
    """The compiled epoch -> batch indices of `order_fn`, replicated (every process reads the same)."""
    replicated = NamedSharding(mesh, P())
    return jax.jit(order_fn, out_shardings=replicated).lower(
        jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)).compile()


def compile_epoch_order(config, num_train: int, mesh: Mesh):
    """The compiled epoch -> steps x B batch indices of a single run."""
    return _compile_order(lambda epoch: epoch_order(config, num_train, epoch, config.seed), mesh)


def step_indices(steps: int, mesh: Mesh) -> list[jax.Array]:
    return [jax.device_put(np.int32(i), NamedSharding(mesh, P())) for i in range(steps)]


def run_steps(step, state, indices, *inputs, metrics_axis: int = 0):
    """A Python loop of the compiled `step(state, *inputs, index)`; metrics stacked over steps
    (on `metrics_axis`)."""
    metrics = []
    for index in indices:
        state, step_metrics = step(state, *inputs, index)
        metrics.append(step_metrics)
    return state, jax.tree.map(lambda *xs: jnp.stack(xs, axis=metrics_axis), *metrics)


def make_evaluate(graphdef, config, mesh: Mesh, members: bool = False):
    """A (params, images_u8 N x D with N padded to the eval batch, key) -> per-example ELBO terms
    (rec, kl, kl_per_dim where the prior factorises, posterior mean), one sample each: one compiled
    program scanning over the batches, or, where `epoch_loop` is 'steps' (the conv models on CPU),
    one compiled program per batch called from Python. Same keys, same numbers. members=True:
    params and keys of a sweep's members stacked, terms K x N x ...."""
    batch_size = config.eval.batch_size
    batch_sharding = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())

    def batch_terms(params, x_u8, key, index):
        x = jax.lax.with_sharding_constraint(data.to_model_input(x_u8, None), batch_sharding)
        return nnx.merge(graphdef, params).elbo_terms(x, jax.random.fold_in(key, index))

    if epoch_loop(config) == "steps":
        def batch_at(params, images_u8, key, index):
            x_u8 = jax.lax.dynamic_slice_in_dim(images_u8, index * batch_size, batch_size)
            return batch_terms(params, x_u8, key, index)

        if members:
            batch_at = jax.vmap(batch_at, in_axes=(0, None, 0, None))
        step = jax.jit(batch_at, out_shardings=replicated)

        def evaluate_stepwise(params, images_u8, key):
            num_batches = images_u8.shape[0] // batch_size
            indices = [jax.device_put(np.int32(i), replicated) for i in range(num_batches)]
            terms = [step(params, images_u8, key, index) for index in indices]
            return jax.tree.map(lambda *batches: jnp.concatenate(batches, axis=int(members)), *terms)

        return evaluate_stepwise

    def evaluate(params, images_u8, key):
        batches = images_u8.reshape(-1, batch_size, *images_u8.shape[1:])
        _, terms = jax.lax.scan(lambda _, inputs: (None, batch_terms(params, inputs[1], key, inputs[0])),
                                None, (jnp.arange(batches.shape[0]), batches))
        return jax.tree.map(lambda t: t.reshape(-1, *t.shape[2:]), terms)

    if members:
        evaluate = jax.vmap(evaluate, in_axes=(0, None, 0))
    return jax.jit(evaluate, out_shardings=replicated)


def eval_key(config, split: str) -> jax.Array:
    """The key of one split's evaluation ('test' or 'val'): the same every epoch, so epochs compare
    on the same posterior noise."""
    return jax.random.fold_in(root_key(config.seed), TEST_EVAL if split == "test" else VAL_EVAL)


def flatten(images: np.ndarray) -> np.ndarray:
    """N x H x W x C -> N x D, the layout the model takes."""
    return images.reshape(images.shape[0], -1)


def images_on_device(images: np.ndarray, mesh: Mesh, pad_multiple: int = 1) -> jax.Array:
    """uint8 images as the programs take them: flat N x D (no layout copies around the matmuls),
    zero-padded to a multiple of `pad_multiple` rows, replicated on every device of the mesh (of
    every process: each process puts its own copy on its own devices)."""
    return distributed.replicated(pad_to_multiple(flatten(images), pad_multiple), NamedSharding(mesh, P()))


def pad_to_multiple(images: np.ndarray, multiple: int) -> np.ndarray:
    pad = (-images.shape[0]) % multiple
    return np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)]) if pad else images
