"""A run's train state and optimizer, its keys, and the numbers that change no shape.

`TrainState` is what a checkpoint holds; `Hyper` the numbers (β, warm-up, free bits, learning
rate, EMA decay, weight decay, clipping norm, skipping threshold, seed) that reach the step as an
explicit input. A run compiles them in as constants; a sweep's runs that share one program
(`program_key`) may trace the ones they differ in, one value per run (`vae.sweep.program`).
Every random draw is a pure function of (seed,
stream, epoch, step), so a resumed run repeats an uninterrupted one exactly.
"""

import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from vae import threefry
from vae.model import build

# Independent random streams, each folded into the run's root key.
INIT, SHUFFLE, STEP, TEST_EVAL, VAL_EVAL = range(5)


class TrainState(NamedTuple):
    step: jax.Array
    params: nnx.State
    opt_state: optax.OptState
    ema_params: nnx.State | None  # exponential moving average of params; None unless train.ema_decay


class Hyper(NamedTuple):
    """The numbers of a run that change no shape. Python numbers are compiled into the programs
    as constants; arrays are traced (in a sweep, the fields its runs differ in). Field names
    are those of the config (`HYPER_FIELDS`)."""

    seed: int | jax.Array
    beta: float | jax.Array
    kl_warmup_epochs: float | jax.Array
    free_bits: float | jax.Array
    learning_rate: float | jax.Array
    ema_decay: float | jax.Array
    weight_decay: float | jax.Array
    grad_clip_norm: float | jax.Array
    skip_threshold: float | jax.Array


# The config field of each Hyper field: what a sweep may vary inside one compiled program.
HYPER_FIELDS = {name: name if name == "seed" else f"train.{name}" for name in Hyper._fields}
# Hyper fields where 0 switches a transform off, which changes the optimizer state's structure.
_SWITCHES = ("ema_decay", "grad_clip_norm")


def hyperparameters(config: ml_collections.ConfigDict) -> Hyper:
    """The config's numbers as Python constants."""
    return Hyper(config.seed, *(config.train[name] for name in Hyper._fields[1:]))


def program_key(config: ml_collections.ConfigDict) -> str:
    """What a compiled program fixes: the whole config but the numbers of `Hyper` (of which only
    whether the EMA and clipping are on counts). Runs with the same key can train as one program."""
    record = json.loads(config.to_json_best_effort())
    for name, field in HYPER_FIELDS.items():
        *parents, leaf = field.split(".")
        node = record
        for parent in parents:
            node = node[parent]
        node[leaf] = node[leaf] > 0 if name in _SWITCHES else None
    return json.dumps(record, sort_keys=True)


def ema_decay_at(decay, step):
    """The parameter average's decay at optimiser step `step` (0, 1, ...): min(decay,
    (1 + step) / (10 + step)), as TensorFlow's averages warm it up. Early on the average spans
    the few steps there are instead of starting from the initial weights, so a short run
    evaluates what it learnt; after about 10 / (1 − decay) steps (5,000 at 0.998) it is the
    plain average with `decay`."""
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def eval_params(state: TrainState) -> nnx.State:
    """The parameters that are evaluated, checkpointed as 'best' and sampled from: the EMA if kept."""
    return state.params if state.ema_params is None else state.ema_params


def root_key(seed: int) -> jax.Array:
    """The run's root key: draws exactly `jax.random.key(seed)`'s bits, with each threefry hash
    compiled as one fused XLA loop instead of a five-step while loop on CPU (`vae.threefry`)."""
    return threefry.key(seed)


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
    return nnx.split(build.build_model(config.model, image_shape, key, pixel_means))


def init_state(config, image_shape, tx, pixel_means=None) -> tuple[nnx.GraphDef, TrainState]:
    graphdef, params = init_model(config, image_shape, pixel_means)
    ema = jax.tree.map(jnp.copy, params) if config.train.ema_decay > 0 else None  # own buffers: donated
    return graphdef, TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), ema)


def abstract_state(config, image_shape, tx) -> tuple[nnx.GraphDef, TrainState]:
    """`init_state`'s graph definition and the shapes and dtypes of its state, traced but never
    computed: what a checkpoint is restored into. Initialising the parameters for real runs every
    initialiser eagerly, a second of a script's start on a CPU."""
    graphdefs = []

    def init():
        graphdef, state = init_state(config, image_shape, tx)
        graphdefs.append(graphdef)
        return state

    shapes = jax.eval_shape(init)
    return graphdefs[0], shapes
