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
import numpy as np
import optax
from flax import nnx

from vae import threefry
from vae.config import schema
from vae.config.load import get_field
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
    are those of the config (`vae.config.schema.HYPER_FIELDS`, in this order)."""

    seed: int | jax.Array
    beta: float | jax.Array
    kl_warmup_epochs: float | jax.Array
    free_bits: float | jax.Array
    learning_rate: float | jax.Array
    ema_decay: float | jax.Array
    weight_decay: float | jax.Array
    grad_clip_norm: float | jax.Array
    skip_threshold: float | jax.Array


# Hyper fields where 0 switches a transform off, which changes the optimizer state's structure.
_SWITCHES = ("ema_decay", "grad_clip_norm")


def hyperparameters(config: ml_collections.ConfigDict) -> Hyper:
    """The config's numbers as Python constants."""
    return Hyper(*(get_field(config, field) for field in schema.HYPER_FIELDS.values()))


def program_key(config: ml_collections.ConfigDict) -> str:
    """What a compiled program fixes: the whole config but the numbers of `Hyper` (of which only
    whether the EMA and clipping are on counts). Runs with the same key can train as one program."""
    record = json.loads(config.to_json_best_effort())
    for name, field in schema.HYPER_FIELDS.items():
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


def _fits_int32(seed: int) -> bool:
    return np.iinfo(np.int32).min <= seed <= np.iinfo(np.int32).max


@jax.jit
def _compiled_stream_key(seed: jax.Array, stream: jax.Array) -> jax.Array:
    return jax.random.fold_in(root_key(seed), stream)


def stream_key(seed: int, stream: int) -> jax.Array:
    """The key of one of the run's independent random streams, fold_in(root_key(seed), stream): one
    compiled program for every seed that fits in int32 and every stream (made op by op, the seed
    and the fold were programs of their own); op by op for a larger seed, which jax.random.key
    wraps."""
    if _fits_int32(seed):
        return _compiled_stream_key(np.int32(seed), np.int32(stream))
    return jax.random.fold_in(root_key(seed), stream)


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
    """The model's graph definition and freshly initialised parameters for this seed.

    The parameters are drawn inside one compiled program (`build.initialises_compiled`), with the
    same bits as op by op: run op by op, each initialiser's few operations are each a program of
    their own to trace, lower and load, a large part of a script's start on a CPU. The output bias
    is then set from the pixel means op by op (`build.set_initial_output_bias`): compiled, its
    logarithms could round differently."""
    graphdef, params = _compiled_init(config.model, tuple(image_shape), config.seed)
    if config.model.init_output_bias and pixel_means is not None:
        model = nnx.merge(graphdef, params)
        build.set_initial_output_bias(model, config.model, pixel_means)
        graphdef, params = nnx.split(model)
    return graphdef, params


def _model_key(seed) -> jax.Array:
    return jax.random.fold_in(root_key(seed), INIT)


def _split_model(model_config, image_shape: tuple[int, ...], seed) -> tuple[nnx.GraphDef, nnx.State]:
    return nnx.split(build.build_model(model_config, image_shape, _model_key(seed)))


# Compiled once per model config and image shape in a process; the seed is an input.
_compiled_split_model = jax.jit(_split_model, static_argnums=(0, 1))


def _compiled_init(model_config: ml_collections.ConfigDict, image_shape: tuple[int, ...], seed: int):
    """nnx.split of the model built from `seed`'s key, without its output bias from the data: in one
    compiled program where that gives the same bits (`build.initialises_compiled`) and the seed
    fits in int32, else op by op (jax.random.key wraps a larger seed)."""
    if build.initialises_compiled(model_config) and _fits_int32(seed):
        frozen = ml_collections.FrozenConfigDict(model_config)  # hashable: a static argument
        return _compiled_split_model(frozen, image_shape, np.int32(seed))
    return _split_model(model_config, image_shape, seed)


def init_state(config, image_shape, tx, pixel_means=None) -> tuple[nnx.GraphDef, TrainState]:
    """The graph definition and a fresh train state: the parameters (`init_model`), then in one
    compiled program the step, the optimizer's state and, where train.ema_decay > 0, the parameter
    average's own buffers (they are donated)."""
    graphdef, params = init_model(config, image_shape, pixel_means)
    with_ema = config.train.ema_decay > 0

    def rest(params):
        ema = jax.tree.map(jnp.copy, params) if with_ema else None
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), ema)

    fresh = jax.jit(rest)(params)
    return graphdef, fresh._replace(params=params)


def abstract_state(config, image_shape, tx) -> tuple[nnx.GraphDef, TrainState]:
    """`init_state`'s graph definition and the shapes and dtypes of its state, traced but never
    computed: what a checkpoint is restored into, with no initialiser run."""
    graphdefs = []

    def init():
        graphdef, state = init_state(config, image_shape, tx)
        graphdefs.append(graphdef)
        return state

    shapes = jax.eval_shape(init)
    return graphdefs[0], shapes
