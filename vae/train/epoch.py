"""An epoch built from the train step, for every training command: the one place the step body
is made and compiled.

A command trains K >= 1 members at once (a single run is one member; a sweep's group of members
that differ only in `Hyper` numbers, many). Their states are the epoch's carry, advanced in
lock-step with one shared step counter, two ways (`member_loop`):

- 'unrolled': each member's own step in turn, its numbers compiled in as a single run's, on the
  batch drawn once per seed. The carry is (step, [member's (params, opt_state, ema)] ...). A
  single run is this with K = 1: exactly the single step. On CPU the faster for K > 1 too: XLA's
  batched matmuls there need layout copies of the weights that 2-D ones avoid (docs/sweeps.md).
- 'vmap': one batched step over the members' stacked states (`MEMBER_AXES`), the numbers they
  differ in traced: an accelerator's choice for K > 1.

The epoch loop (`compile_loop`) is one compiled `lax.scan` over the steps, or one compiled step
per Python call ('steps': the conv models on CPU). The batches come from a source
(`vae.train.feed`): gathered on the device from the training set held there, or sent by the host.
The batch axis is sharded over a 1-D mesh ("data") of every process's devices; parameters and
optimizer state are replicated and XLA inserts the gradient all-reduce.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vae.model import build
from vae.train.state import SHUFFLE, TrainState, hyperparameters, root_key
from vae.train.step import make_train_step, step_key

LOOPS = ("scan", "steps")
MEMBER_LOOPS = ("auto", "vmap", "unrolled")
# Members on a leading axis of every parameter and optimizer leaf (the 'vmap' carry); the step shared.
MEMBER_AXES = TrainState(step=None, params=0, opt_state=0, ema_params=0)


def epoch_loop(config: ml_collections.ConfigDict) -> str:
    """'scan' (the whole loop is one program) or 'steps' (one program per step, called from
    Python). 'auto' picks 'steps' for the conv models on CPU, where XLA runs convolutions inside
    a loop body about 10x slower than alone (jax-ml/jax#12868), and 'scan' everywhere else."""
    choice = config.train.epoch_loop
    if choice == "auto":
        convolutional = build.ARCHITECTURES[config.model.arch].convolutional
        return "steps" if convolutional and jax.default_backend() == "cpu" else "scan"
    return choice


def member_loop(choice: str = "auto", num_members: int = 1) -> str:
    """'vmap' or 'unrolled' (see the module's docstring); 'auto': unrolled for one member or on
    CPU, vmap elsewhere."""
    if choice not in MEMBER_LOOPS:
        raise ValueError(f"the member loop must be one of {MEMBER_LOOPS}, got {choice!r}")
    if choice == "auto":
        return "unrolled" if num_members == 1 or jax.default_backend() == "cpu" else "vmap"
    return choice


# On CPU, copy insertion with region analysis proves that the optimizer may overwrite the
# parameters in place inside the epoch loop; without it XLA copies five of the MLP's eight
# parameter arrays (1.3 MB) every step. Copies only: the numbers are the same.
_CPU_COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}


def compile_lowered(lowered, mesh: Mesh):
    """`lowered.compile()`, with `_CPU_COMPILER_OPTIONS` on CPU where this XLA knows them."""
    if mesh.devices.flat[0].platform != "cpu":
        return lowered.compile()
    try:
        return lowered.compile(compiler_options=_CPU_COMPILER_OPTIONS)
    except jax.errors.JaxRuntimeError as error:  # an XLA without the option: compile as usual
        if "compile option" not in str(error):
            raise
        return lowered.compile()


def compile_loop(body, loop: str, mesh: Mesh, carry, consts, xs, *, donate_carry: bool = True,
                 out_shardings=None):
    """`run(carry, consts, xs) -> (carry, ys)`: body(carry, consts, x_i) -> (carry, y_i) over the
    leading axis of every leaf of xs, the ys stacked on axis 0, compiled now for arguments like
    the given ones (arrays or `jax.ShapeDtypeStruct`s with their shardings).

    loop='scan': one program, the steps a `lax.scan`; 'steps': one program per step, called from
    Python. Both run the same body on the same inputs: the same numbers. The carry is donated
    (`donate_carry`); outputs are replicated unless `out_shardings` says otherwise. Training,
    evaluation and the IWAE estimate all run through here.
    """
    if loop not in LOOPS:
        raise ValueError(f"the loop must be one of {LOOPS}, got {loop!r}")
    out_shardings = NamedSharding(mesh, P()) if out_shardings is None else out_shardings
    donate = (0,) if donate_carry else ()
    if loop == "scan":
        def scanned(carry, consts, xs):
            return jax.lax.scan(lambda c, x: body(c, consts, x), carry, xs)

        return compile_lowered(jax.jit(scanned, donate_argnums=donate, out_shardings=out_shardings).lower(
            carry, consts, xs), mesh)

    def one(carry, consts, xs, index):
        return body(carry, consts, jax.tree.map(lambda a: a[index], xs))

    replicated = NamedSharding(mesh, P())
    indices = [jax.device_put(np.int32(i), replicated) for i in range(jax.tree.leaves(xs)[0].shape[0])]
    step = compile_lowered(jax.jit(one, donate_argnums=donate, out_shardings=out_shardings).lower(
        carry, consts, xs, indices[0]), mesh)

    def stepwise(carry, consts, xs):
        ys = []
        for index in indices:
            carry, y = step(carry, consts, xs, index)
            ys.append(y)
        return carry, jax.tree.map(lambda *steps: jnp.stack(steps), *ys)

    return stepwise


# --- The batches' order --------------------------------------------------------------------------


def epoch_order(config: ml_collections.ConfigDict, num_train: int, epoch, seed):
    """The batches of an epoch, steps x B indices: a permutation keyed by (seed, epoch)."""
    batch_size = config.train.batch_size
    steps = num_train // batch_size
    shuffle_key = jax.random.fold_in(root_key(seed), SHUFFLE)
    order = jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), num_train)
    return order[: steps * batch_size].reshape(steps, batch_size)


def own_orders(configs: list[ml_collections.ConfigDict]) -> bool:
    """Whether the members need orders of their own: they have different seeds."""
    return len({c.seed for c in configs}) > 1


def compile_orders(configs: list[ml_collections.ConfigDict], num_train: int, mesh: Mesh):
    """The compiled epoch -> batch indices of the members, replicated (every process reads the
    same): steps x B where they share a seed, steps x K x B where they do not."""
    config = configs[0]

    def orders(epoch):
        if not own_orders(configs):
            return epoch_order(config, num_train, epoch, config.seed)
        return jnp.stack([epoch_order(config, num_train, epoch, c.seed) for c in configs], axis=1)

    replicated = NamedSharding(mesh, P())
    return jax.jit(orders, out_shardings=replicated).lower(
        jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)).compile()


# --- The members' states: the epoch's carry ------------------------------------------------------


def stack(states: list[TrainState], loop: str, sharding=None):
    """The carry of members' states (the first one's step counter): stacked on a leading axis
    for 'vmap', a list of their (params, opt_state, ema) for 'unrolled' (no copy)."""
    if loop == "unrolled":
        return states[0].step, [tuple(s)[1:] for s in states]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(tuple(s)[1:] for s in states))
    carry = TrainState(states[0].step, *stacked)
    return carry if sharding is None else jax.device_put(carry, sharding)


def member(carry, k: int) -> TrainState:
    """Member k's state, a single run's, from the carry."""
    if isinstance(carry, TrainState):  # 'vmap'
        return TrainState(carry.step, *jax.tree.map(lambda x: x[k], tuple(carry)[1:]))
    step, parts = carry
    return TrainState(step, *parts[k])


def with_step(carry, step, sharding):
    """The carry with its shared step counter set to `step`."""
    step = jax.device_put(np.int32(step), sharding)
    if isinstance(carry, TrainState):
        return carry._replace(step=step)
    return step, carry[1]


def freeze(carry, frozen: list[int]):
    """What `thaw` needs to put the `frozen` members back after an epoch they are carried through
    unchanged (a member that is done, or ahead of the others): copies of their states, whose
    buffers survive the epoch's donation."""
    if isinstance(carry, TrainState):  # 'vmap': the stacked arrays hold every member
        return frozen, jax.tree.map(jnp.copy, tuple(carry)[1:])
    return frozen, {k: jax.tree.map(jnp.copy, carry[1][k]) for k in frozen}


def thaw(carry, frozen_copies):
    """The carry after an epoch, with the frozen members' states as they were before it."""
    frozen, copies = frozen_copies
    if isinstance(carry, TrainState):
        num = jax.tree.leaves(carry.params)[0].shape[0]
        mask_K = jnp.isin(jnp.arange(num), jnp.asarray(frozen))
        return TrainState(carry.step, *_pick(mask_K, copies, tuple(carry)[1:]))
    step, parts = carry
    return step, [copies.get(k, part) for k, part in enumerate(parts)]


@jax.jit
def _pick(mask_K, old, new):
    """old where the member's mask is set, new elsewhere, for arrays with members on axis 0."""
    def pick(o, n):
        return jnp.where(mask_K.reshape(-1, *[1] * (n.ndim - 1)), o, n)

    return jax.tree.map(pick, old, new)


# --- The step body of K members ------------------------------------------------------------------


def varying_hyper(configs: list[ml_collections.ConfigDict]) -> dict[str, list]:
    """The Hyper fields in which the configs differ, with one value per config."""
    columns = zip(*(hyperparameters(c) for c in configs))
    return {name: list(column) for name, column in zip(hyperparameters(configs[0])._fields, columns)
            if len(set(column)) > 1}


def members_body(step, configs: list[ml_collections.ConfigDict], batch_of, loop: str):
    """body(carry, consts, x) -> (carry, metrics with K leading): one step of every member. x is
    this step's batch input (B indices or a B x D batch; K of them where the members have
    orders of their own); `batch_of(consts, x)` turns one into the uint8 batch."""
    own = own_orders(configs)
    if loop == "vmap":
        base = hyperparameters(configs[0])
        values = {name: jnp.asarray(v) for name, v in varying_hyper(configs).items()}

        def vmapped(carry, consts, x):
            def one(state, numbers, x_k):
                hyper = base._replace(**numbers)
                return step(state, batch_of(consts, x_k), step_key(hyper.seed, state.step), hyper)

            return jax.vmap(one, in_axes=(MEMBER_AXES, 0, 0 if own else None),
                            out_axes=(MEMBER_AXES, 0))(carry, values, x)

        return vmapped

    hypers = [hyperparameters(c) for c in configs]

    def unrolled(carry, consts, x):
        step_count, parts = carry
        drawn = {}  # seed -> (batch, key) of this step: drawn once for the members that share it
        outs = []
        for k, (part, hyper) in enumerate(zip(parts, hypers)):
            if hyper.seed not in drawn:
                drawn[hyper.seed] = (batch_of(consts, x[k] if own else x), step_key(hyper.seed, step_count))
            outs.append(step(TrainState(step_count, *part), *drawn[hyper.seed], hyper))
        new_parts = [tuple(state)[1:] for state, _ in outs]
        return (outs[0][0].step, new_parts), jax.tree.map(lambda *m: jnp.stack(m), *(m for _, m in outs))

    return unrolled


def compile_epoch(graphdef, configs: list[ml_collections.ConfigDict], mesh: Mesh, carry, source,
                  steps_per_epoch: int, dynamic: bool, loop: str):
    """(carry, epoch) -> (carry, per-step metrics steps x K x ...) of members whose configs differ
    only in Hyper numbers, compiled now: the epoch's batches from `source` (`vae.train.feed`), the
    train step over them for every member, scan or steps as a single run of configs[0] would."""
    step = make_train_step(graphdef, configs[0], steps_per_epoch, dynamic)
    body = members_body(step, configs, source.batch, loop)
    run = compile_loop(body, epoch_loop(configs[0]), mesh, carry, source.consts, source.abstract())
    return lambda carry, epoch: run(carry, source.consts, source(epoch))
