"""Where an epoch's batches come from, and the epoch as the training loop runs it (`compile_epoch`).

In one process the training set lives on every device and each step gathers its batch there
(`programs.compile_train_epoch`). In a run over several processes the same batches come from the
host instead: each process sends only the rows of every batch its devices hold (`HostFeed`), and
`compile_fed_epoch` runs the same train step over them. Both give the same numbers.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vae import distributed, programs


def batch_source(config) -> str:
    """'device' (the training set lives on every device and each step gathers its batch there) or
    'host' (each process sends only the rows of every batch its devices hold, see `HostFeed`).
    'auto' picks 'host' when the run spans several processes, 'device' otherwise."""
    choice = config.train.batch_source
    if choice == "auto":
        return "host" if jax.process_count() > 1 else "device"
    return choice


class HostFeed:
    """An epoch's batches as one global uint8 array, steps x B x D, sharded over the batch axis.

    The batches are the device path's (the same permutation, keyed by seed and epoch); each process
    gathers, from its copy of the training set in host memory, only the rows its devices hold, and
    `jax.make_array_from_process_local_data` assembles the global array. A streaming loader would
    replace the in-memory gather and nothing else.
    """

    def __init__(self, config, images: np.ndarray, mesh: Mesh):
        self.images_NxD = programs.flatten(images)
        num_train, num_pixels = self.images_NxD.shape
        batch_size = config.train.batch_size
        self.shape = (num_train // batch_size, batch_size, num_pixels)
        self.sharding = NamedSharding(mesh, P(None, "data"))
        self.rows = distributed.process_rows(self.sharding, self.shape, axis=1)
        self.order = programs.compile_epoch_order(config, num_train, mesh)
        self.replicated = NamedSharding(mesh, P())

    def abstract(self) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(self.shape, np.uint8, sharding=self.sharding)

    def __call__(self, epoch: int) -> jax.Array:
        order_SxB = np.asarray(self.order(jax.device_put(np.int32(epoch), self.replicated)))
        local = self.images_NxD[order_SxB[:, self.rows]]
        return jax.make_array_from_process_local_data(self.sharding, local, self.shape)


def compile_fed_epoch(graphdef, config, mesh: Mesh, state: programs.TrainState,
                      batches: jax.ShapeDtypeStruct, dynamic: bool):
    """The epoch function (state, batches_u8 S x B x D) -> (state, per-step metrics), compiled now,
    for batches that come from the host (`HostFeed`); scan or steps as `epoch_loop` says."""
    steps = batches.shape[0]
    train_step = programs.make_train_step(graphdef, config, steps, dynamic)
    hyper = programs.hyperparameters(config)  # compiled in
    batch_sharding = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())

    def step_on(state, x_u8_BxD):
        return train_step(state, jax.lax.with_sharding_constraint(x_u8_BxD, batch_sharding), hyper)

    if programs.epoch_loop(config) == "scan":
        epoch = jax.jit(lambda state, batches: jax.lax.scan(step_on, state, batches), donate_argnums=0,
                        out_shardings=replicated)
        return programs.compile_lowered(epoch.lower(state, batches), mesh)
    indices = programs.step_indices(steps, mesh)
    step = jax.jit(lambda state, batches, index: step_on(state, batches[index]), donate_argnums=0,
                   out_shardings=replicated)
    step = programs.compile_lowered(step.lower(state, batches, indices[0]), mesh)
    return lambda state, batches: programs.run_steps(step, state, indices, batches)


def compile_epoch(graphdef, config, mesh: Mesh, state: programs.TrainState, train_images: np.ndarray,
                  dynamic: bool):
    """The epoch as the training loop runs it, (state, epoch) -> (state, per-step metrics), compiled
    now, with the batches from where `batch_source` says."""
    if batch_source(config) == "host":
        feed = HostFeed(config, train_images, mesh)
        fed_epoch = compile_fed_epoch(graphdef, config, mesh, state, feed.abstract(), dynamic)
        return lambda state, epoch: fed_epoch(state, feed(epoch))
    images_u8 = programs.images_on_device(train_images, mesh)
    train_epoch = programs.compile_train_epoch(graphdef, config, mesh, state, images_u8, dynamic)
    replicated = NamedSharding(mesh, P())
    return lambda state, epoch: train_epoch(state, images_u8, jax.device_put(np.int32(epoch), replicated))
