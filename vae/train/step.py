"""THE training step: one pure function of (state, batch, key, hyperparameters).

    train_step(state, x_u8_BxD, key, hyper) -> (state, metrics)

The batch is uint8 pixels; the step encodes them (a fresh binarisation where the data set asks
for one), takes the gradient of the objective the config names, applies the optimizer and the
parameter average, and returns the batch means of the loss and its parts, the gradient's global
norm and whether the update was skipped. The key is `step_key(seed, step)`: a pure function of the
run's seed and the step counter, so a resumed run repeats an uninterrupted one. What is compiled in
(the model's graph, the objective, the optimizer's transforms, the steps per epoch) is bound by
`make_train_step`; the numbers come from `hyper` (constants, or traced for a sweep's runs). The
step is jitted in one place, the epoch built from it (`vae.train.epoch`).

Update skipping (as in VDVAE): an update whose gradient norm is not finite, or above
`train.skip_threshold` where that is > 0, is not applied: the parameters, the optimizer's moments
and the parameter average stay as they were, and the step counter still advances (the next batch
gets its own key and learning rate). The learning-rate schedule is a function of that counter: its
count in the optimizer's state is set to the step before each update (`schedule_at`), so skipped
updates do not hold it back. The epoch counts them (`train/skipped_updates`).
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from vae.data import pixels
from vae.model import objectives
from vae.train.state import STEP, Hyper, TrainState, ema_decay_at, make_optimizer, root_key


def step_key(seed, step) -> jax.Array:
    """The key of optimiser step `step` of a run with this seed."""
    return jax.random.fold_in(jax.random.fold_in(root_key(seed), STEP), step)


def skip_update(grad_norm: jax.Array, threshold) -> jax.Array:
    """Whether an update with this gradient norm is skipped: a norm that is not finite, or above a
    threshold > 0."""
    return ~jnp.isfinite(grad_norm) | ((threshold > 0) & (grad_norm > threshold))


def _is_schedule(node) -> bool:
    return isinstance(node, optax.ScaleByScheduleState)


def schedule_at(opt_state: optax.OptState, step) -> optax.OptState:
    """`opt_state` with every learning-rate schedule's count set to optimiser step `step`: the rate
    follows the run's steps, not the updates applied (Adam's own count, of its moment updates, is
    left alone)."""
    return jax.tree.map(lambda node: node._replace(count=jnp.asarray(step, node.count.dtype))
                        if _is_schedule(node) else node, opt_state, is_leaf=_is_schedule)


def train_step(state: TrainState, x_u8_BxD: jax.Array, key: jax.Array, hyper: Hyper, *,
               graphdef: nnx.GraphDef, config: ml_collections.ConfigDict, steps_per_epoch: int,
               dynamic: bool) -> tuple[TrainState, dict]:
    """One optimiser step on one batch; metrics: loss, rec, kl, elbo (and iwae) batch means, beta,
    grad_norm (global, before any clipping) and skipped (1.0 where the update was skipped)."""
    t = config.train
    binarize_key, sample_key = jax.random.split(key)
    x_BxD = pixels.to_model_input(x_u8_BxD, binarize_key if dynamic else None)
    beta_t = objectives.kl_weight(state.step, hyper.beta, hyper.kl_warmup_epochs * steps_per_epoch)

    def loss_fn(params):
        return objectives.training_loss(nnx.merge(graphdef, params), x_BxD, sample_key, beta_t,
                                        objective=t.objective, free_bits=hyper.free_bits,
                                        num_samples=t.num_samples)

    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
    grad_norm = optax.tree.norm(grads)
    skipped = skip_update(grad_norm, hyper.skip_threshold)
    tx = make_optimizer(t, steps_per_epoch, hyper)
    updates, opt_state = tx.update(grads, schedule_at(state.opt_state, state.step), state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema_params
    if ema is not None:
        decay = ema_decay_at(hyper.ema_decay, state.step)
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
        metrics = metrics | {"ema_decay": decay}
    new = TrainState(state.step + 1, params, opt_state, ema)
    kept = jax.tree.map(lambda old, update: jnp.where(skipped, old, update), tuple(state)[1:],
                        tuple(new)[1:])
    params, opt_state, ema = kept
    return (TrainState(state.step + 1, params, schedule_at(opt_state, state.step + 1), ema),
            metrics | {"beta": beta_t, "grad_norm": grad_norm, "skipped": skipped.astype(jnp.float32)})


def make_train_step(graphdef, config: ml_collections.ConfigDict, steps_per_epoch: int, dynamic: bool):
    """`train_step` with what is compiled in bound: (state, x_u8_BxD, key, hyper) -> (state, metrics)."""
    return functools.partial(train_step, graphdef=graphdef, config=config, steps_per_epoch=steps_per_epoch,
                             dynamic=dynamic)
