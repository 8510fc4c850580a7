"""The compiled program of a sweep's group (`driver.py`): one epoch of K members that differ only
in the numbers of `vae.train.state.Hyper`, their states stacked on a leading axis.

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
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vae.train import state
from vae.train.epoch import compile_loop, epoch_loop, epoch_order, take_batch
from vae.train.state import TrainState
from vae.train.step import make_train_step, step_key

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
    columns = zip(*(state.hyperparameters(c) for c in configs))
    return {name: list(column) for name, column in zip(state.Hyper._fields, columns)
            if len(set(column)) > 1}


def _vmapped_step(step, configs, mesh: Mesh, own_orders: bool):
    """One step of every member as one batched step over the stacked state: (state, images_u8,
    indices) -> (state, metrics with K leading). indices: B shared, or K x B (`own_orders`)."""
    base = state.hyperparameters(configs[0])
    values = {name: jnp.asarray(v) for name, v in varying_hyper(configs).items()}

    def vmapped(state, images_u8, indices):
        def member(s, numbers, idx):
            hyper = base._replace(**numbers)
            return step(s, take_batch(images_u8, idx, mesh), step_key(hyper.seed, s.step), hyper)

        return jax.vmap(member, in_axes=(MEMBER_AXES, 0, 0 if own_orders else None),
                        out_axes=(MEMBER_AXES, 0))(state, values, indices)

    return vmapped


def _unrolled_step(step, configs, mesh: Mesh, own_orders: bool):
    """One step of every member in turn, each with its own numbers compiled in: (carry, images_u8,
    indices) -> (carry, metrics with K leading); the carry is (step, [member's params, opt_state,
    ema] ...). The batch and its key are drawn once per seed."""
    hypers = [state.hyperparameters(c) for c in configs]

    def unrolled(carry, images_u8, indices):
        step_count, parts = carry
        drawn = {}  # seed -> (x_u8, key) of this step
        outs = []
        for k, (part, hyper) in enumerate(zip(parts, hypers)):
            if hyper.seed not in drawn:
                drawn[hyper.seed] = (take_batch(images_u8, indices[k] if own_orders else indices, mesh),
                                     step_key(hyper.seed, step_count))
            outs.append(step(TrainState(step_count, *part), *drawn[hyper.seed], hyper))
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
    step = make_train_step(graphdef, config, num_train // config.train.batch_size, dynamic)
    own_orders = len({c.seed for c in configs}) > 1  # members with their own seeds: their own order
    if loop == "vmap":
        members_step = _vmapped_step(step, configs, mesh, own_orders)
    else:
        members_step = _unrolled_step(step, configs, mesh, own_orders)

    def orders(epoch):  # steps x B, or steps x K x B
        if not own_orders:
            return epoch_order(config, num_train, epoch, config.seed)
        per_member = [epoch_order(config, num_train, epoch, c.seed) for c in configs]
        return jnp.stack(per_member, axis=1)

    replicated = NamedSharding(mesh, P())
    order = jax.jit(orders, out_shardings=replicated).lower(
        jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)).compile()
    order_shape = jax.ShapeDtypeStruct(order.out_info.shape, jnp.int32, sharding=replicated)
    # Once per epoch, between the stacked state and the loop's carry (no donation: the shapes differ).
    to_carry = jax.jit(lambda s: _to_carry(s, loop), out_shardings=replicated)
    from_carry = jax.jit(lambda c: _from_carry(c, loop), out_shardings=replicated)
    carry_shape = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                               to_carry.lower(state).compile().out_info)
    run = compile_loop(members_step, epoch_loop(config), mesh, carry_shape, images_u8, order_shape)

    def train_epoch(state, images, epoch):
        carry, metrics = run(to_carry(state), images, order(epoch))
        return from_carry(carry), jax.tree.map(lambda m: jnp.moveaxis(m, 0, 1), metrics)

    return train_epoch
