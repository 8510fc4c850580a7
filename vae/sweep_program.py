"""The compiled program of a sweep's group (`vae.sweep`): one epoch of K members that differ only
in the numbers of `programs.Hyper`, their states stacked on a leading axis.

The members advance in lock-step and share one step counter, so whatever depends only on (seed,
epoch, step) is computed once for all members that share a seed: the data order, the batch and
its binarisation. Two ways to run the members' step inside the one program:

- 'vmap': one batched step over the stacked states, the numbers the members differ in traced;
- 'unrolled': each member's own step in turn, its numbers compiled in as in a single run, on the
  batch drawn once. On CPU this is the faster: XLA's batched matmuls there need layout copies of
  the weights that the 2-D ones avoid (docs/benchmarks.md). 'auto' picks it on CPU, 'vmap'
  elsewhere.

Either way an epoch takes and returns the stacked state (`MEMBER_AXES`), and member k's numbers
equal those of the single run with its config, within float tolerance (tested).
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vae import programs
from vae.programs import TrainState

# Members on a leading axis of every parameter and optimizer leaf; the step counter shared.
MEMBER_AXES = TrainState(step=None, params=0, opt_state=0, ema_params=0)
MEMBER_LOOPS = ("auto", "vmap", "unrolled")


def member_loop(choice: str = "auto") -> str:
    """'vmap' or 'unrolled' (see the module's docstring); 'auto' by the backend."""
    if choice not in MEMBER_LOOPS:
        raise ValueError(f"the member loop must be one of {MEMBER_LOOPS}, got {choice!r}")
    if choice == "auto":
        return "unrolled" if jax.default_backend() == "cpu" else "vmap"
    return choice


def stack(states: list[TrainState], sharding=None) -> TrainState:
    """Members' states stacked on a leading axis, with the first one's step counter."""
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(tuple(s)[1:] for s in states))
    state = TrainState(states[0].step, *stacked)
    return state if sharding is None else jax.device_put(state, sharding)


def member_state(state: TrainState, k: int) -> TrainState:
    """Member k of a stacked state: a single run's state."""
    return TrainState(state.step, *jax.tree.map(lambda x: x[k], tuple(state)[1:]))


def num_members(state: TrainState) -> int:
    return jax.tree.leaves(state.params)[0].shape[0]


def varying_hyper(configs: list[ml_collections.ConfigDict]) -> dict[str, list]:
    """The Hyper fields in which the configs differ, with one value per config."""
    columns = zip(*(programs.hyperparameters(c) for c in configs))
    return {name: list(column) for name, column in zip(programs.Hyper._fields, columns)
            if len(set(column)) > 1}


def _vmapped_step(batch_step, configs, own_orders: bool):
    """One step of every member as one batched step over the stacked state: (state, images_u8,
    indices) -> (state, metrics with K leading). indices: B shared, or K x B (`own_orders`)."""
    base = programs.hyperparameters(configs[0])
    values = {name: jnp.asarray(v) for name, v in varying_hyper(configs).items()}

    def vmapped(state, images_u8, indices):
        def member(s, numbers, idx):
            return batch_step(s, images_u8, idx, base._replace(**numbers))

        return jax.vmap(member, in_axes=(MEMBER_AXES, 0, 0 if own_orders else None),
                        out_axes=(MEMBER_AXES, 0))(state, values, indices)

    return vmapped


def _unrolled_step(update, configs, mesh: Mesh, dynamic: bool, own_orders: bool):
    """One step of every member in turn, each with its own numbers compiled in: (carry, images_u8,
    indices) -> (carry, metrics with K leading); the carry is (step, [member's params, opt_state,
    ema] ...). The batch and its binarisation are drawn once per seed."""
    hypers = [programs.hyperparameters(c) for c in configs]

    def unrolled(carry, images_u8, indices):
        step, parts = carry
        drawn = {}  # seed -> (x, sample key) of this step
        outs = []
        for k, (part, hyper) in enumerate(zip(parts, hypers)):
            if hyper.seed not in drawn:
                x_u8 = programs.take_batch(images_u8, indices[k] if own_orders else indices, mesh)
                drawn[hyper.seed] = programs.step_inputs(x_u8, step, hyper.seed, dynamic)
            outs.append(update(TrainState(step, *part), *drawn[hyper.seed], hyper))
        new_parts = [tuple(state)[1:] for state, _ in outs]
        return (outs[0][0].step, new_parts), jax.tree.map(lambda *m: jnp.stack(m), *(m for _, m in outs))

    return unrolled


def _to_carry(state: TrainState, loop: str):
    if loop == "vmap":
        return state
    return state.step, [tuple(member_state(state, k))[1:] for k in range(num_members(state))]


def _from_carry(carry, loop: str) -> TrainState:
    if loop == "vmap":
        return carry
    step, parts = carry
    return TrainState(step, *jax.tree.map(lambda *xs: jnp.stack(xs), *parts))


def compile_members_epoch(graphdef, configs: list[ml_collections.ConfigDict], mesh: Mesh, state: TrainState,
                          images_u8, dynamic: bool, loop: str = "auto"):
    """The epoch function (stacked state, images_u8, epoch) -> (stacked state, metrics K x steps)
    of members whose configs differ only in Hyper numbers, compiled now; the epoch loop (scan or
    Python) as a single run of configs[0] would use."""
    config, loop = configs[0], member_loop(loop)
    num_train = images_u8.shape[0]
    steps = num_train // config.train.batch_size
    own_orders = len({c.seed for c in configs}) > 1  # members with their own seeds: their own order
    if loop == "vmap":
        train_step = programs.make_train_step(graphdef, config, steps, dynamic)
        members_step = _vmapped_step(programs.make_batch_step(train_step, mesh), configs, own_orders)
    else:
        members_step = _unrolled_step(programs.make_update(graphdef, config, steps), configs, mesh, dynamic,
                                      own_orders)

    def orders(epoch):  # steps x B, or steps x K x B
        if not own_orders:
            return programs.epoch_order(config, num_train, epoch, config.seed)
        per_member = [programs.epoch_order(config, num_train, epoch, c.seed) for c in configs]
        return jnp.stack(per_member, axis=1)

    if programs.epoch_loop(config) == "steps":
        def step_fn(state, images, indices):
            carry, metrics = members_step(_to_carry(state, loop), images, indices)
            return _from_carry(carry, loop), metrics

        return programs.compile_stepwise_epoch(step_fn, orders, mesh, state, images_u8, metrics_axis=1)

    def train_epoch(state, images, epoch):
        carry, metrics = jax.lax.scan(lambda c, indices: members_step(c, images, indices),
                                      _to_carry(state, loop), orders(epoch))
        return _from_carry(carry, loop), jax.tree.map(lambda m: jnp.moveaxis(m, 0, 1), metrics)

    replicated = NamedSharding(mesh, P())
    epoch0 = jax.device_put(np.int32(0), replicated)
    return programs.compile_lowered(jax.jit(train_epoch, donate_argnums=0, out_shardings=replicated).lower(
        state, images_u8, epoch0), mesh)
