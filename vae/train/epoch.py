"""The epoch built from the train step: the one place a training's step body is compiled.

An epoch is the train step over the epoch's batches (`step_body`), its state the carry. The loop
over the steps (`compile_loop`) is one compiled `lax.scan`, or one compiled step per Python call
('steps': the conv models on CPU); evaluation and the IWAE estimate run through it too. The
batches come from a source (`vae.train.feed`): gathered on the device from the training set held
there, or sent by the host. The batch axis is sharded over a 1-D mesh ("data") of every process's
devices; parameters and optimizer state are replicated and XLA inserts the gradient all-reduce.
`compile_epoch` takes any body of this form: a sweep (`vae.sweep.program`) passes one that steps
several runs at once.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vae.model import build
from vae.train.state import Hyper
from vae.train.step import step_key

LOOPS = ("scan", "steps")


def epoch_loop(config: ml_collections.ConfigDict) -> str:
    """'scan' (the whole loop is one program) or 'steps' (one program per step, called from
    Python). 'auto' picks 'steps' for the conv models on CPU, where XLA runs convolutions inside
    a loop body about 10x slower than alone (jax-ml/jax#12868), and 'scan' everywhere else."""
    choice = config.train.epoch_loop
    if choice == "auto":
        convolutional = build.ARCHITECTURES[config.model.arch].convolutional
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


# --- The epoch of one model ---------------------------------------------------------------------


def step_body(train_step, hyper: Hyper, batch_of):
    """body(state, consts, x) -> (state, metrics): the train step on one step's batch, keyed by
    (seed, step). x is this step's batch input (B indices or a B x D batch); `batch_of(consts, x)`
    turns it into the uint8 batch (`vae.train.feed`)."""
    def body(state, consts, x):
        return train_step(state, batch_of(consts, x), step_key(hyper.seed, state.step), hyper)

    return body


def compile_epoch(body, loop: str, mesh: Mesh, carry, source):
    """(carry, epoch) -> (carry, per-step metrics): `body` over the epoch's batches from `source`
    (`vae.train.feed`), compiled now as `compile_loop` does (`loop`: 'scan' or 'steps')."""
    run = compile_loop(body, loop, mesh, carry, source.consts, source.abstract())
    return lambda carry, epoch: run(carry, source.consts, source(epoch))
