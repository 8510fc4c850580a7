"""An epoch built from a step: the one place that chooses between one compiled `lax.scan` over
the steps and one compiled step per Python call (`compile_loop`), used by training (the data on
the device, or fed from the host), evaluation, the IWAE estimate and sweeps.

In one process the data live on the device for the whole run: an epoch is an on-device shuffle
(`epoch_order`), then the train step over its batches, each gathered on the device. The batch
axis is sharded over a 1-D mesh ("data") of every process's devices; parameters and optimizer
state are replicated and XLA inserts the gradient all-reduce.
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


def epoch_loop(config: ml_collections.ConfigDict) -> str:
    """'scan' (the whole loop is one program) or 'steps' (one program per step, called from
    Python). 'auto' picks 'steps' for the conv models on CPU, where XLA runs convolutions inside
    a loop body about 10x slower than alone (jax-ml/jax#12868), and 'scan' everywhere else."""
    choice = config.train.epoch_loop
    if choice == "auto":
        convolutional = config.model.arch in build.CONVOLUTIONAL_ARCHS
        return "steps" if convolutional and jax.default_backend() == "cpu" else "scan"
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
    (`donate_carry`); outputs are replicated unless `out_shardings` says otherwise.
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


def epoch_order(config: ml_collections.ConfigDict, num_train: int, epoch, seed):
    """The batches of an epoch, steps x B indices: a permutation keyed by (seed, epoch)."""
    batch_size = config.train.batch_size
    steps = num_train // batch_size
    shuffle_key = jax.random.fold_in(root_key(seed), SHUFFLE)
    order = jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), num_train)
    return order[: steps * batch_size].reshape(steps, batch_size)


def compile_order(order_fn, mesh: Mesh):
    """The compiled epoch -> batch indices of `order_fn`, replicated (every process reads the same)."""
    replicated = NamedSharding(mesh, P())
    return jax.jit(order_fn, out_shardings=replicated).lower(
        jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)).compile()


def compile_epoch_order(config: ml_collections.ConfigDict, num_train: int, mesh: Mesh):
    """The compiled epoch -> steps x B batch indices of a single run."""
    return compile_order(lambda epoch: epoch_order(config, num_train, epoch, config.seed), mesh)


def take_batch(images_u8, indices_B, mesh: Mesh):
    """The batch's uint8 images, sharded over "data"."""
    return jax.lax.with_sharding_constraint(images_u8[indices_B], NamedSharding(mesh, P("data")))


def device_batch_body(graphdef, config: ml_collections.ConfigDict, mesh: Mesh, num_train: int, dynamic: bool):
    """body(state, images_u8 N x D, indices_B) -> (state, metrics): the train step on the batch
    gathered on the device, its key `step_key(seed, step)`, the config's numbers compiled in."""
    step = make_train_step(graphdef, config, num_train // config.train.batch_size, dynamic)
    hyper = hyperparameters(config)

    def body(state, images_u8, indices_B):
        return step(state, take_batch(images_u8, indices_B, mesh), step_key(hyper.seed, state.step), hyper)

    return body


def compile_train_epoch(graphdef, config: ml_collections.ConfigDict, mesh: Mesh, state: TrainState,
                        images_u8, dynamic: bool):
    """(state, images_u8 N x D on the device, epoch) -> (state, per-step metrics), compiled now: the
    epoch's order, then the train step over its batches, each gathered on the device."""
    num_train = images_u8.shape[0]
    body = device_batch_body(graphdef, config, mesh, num_train, dynamic)
    order = compile_epoch_order(config, num_train, mesh)
    order_SxB = jax.ShapeDtypeStruct(order.out_info.shape, jnp.int32, sharding=NamedSharding(mesh, P()))
    run = compile_loop(body, epoch_loop(config), mesh, state, images_u8, order_SxB)
    return lambda state, images_u8, epoch: run(state, images_u8, order(epoch))
