"""Where an epoch's batches come from, and the epoch as the training loop runs it (`compile_epoch`).

In one process the training set lives on every device and each step gathers its batch there
(`epoch.compile_train_epoch`). In a run over several processes the same batches come from the
host instead: each process sends only the rows of every batch its devices hold (`HostFeed`), and
`compile_fed_epoch` runs the same train step over them. Both give the same numbers.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vae.train import distributed
from vae.train.epoch import compile_epoch_order, compile_loop, compile_train_epoch, epoch_loop
from vae.train.state import TrainState, hyperparameters
from vae.train.step import make_train_step, step_key


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
        self.images_NxD = distributed.flatten(images)
        num_train, num_pixels = self.images_NxD.shape
        batch_size = config.train.batch_size
        self.shape = (num_train // batch_size, batch_size, num_pixels)
        self.sharding = NamedSharding(mesh, P(None, "data"))
        self.rows = distributed.process_rows(self.sharding, self.shape, axis=1)
        self.order = compile_epoch_order(config, num_train, mesh)
        self.replicated = NamedSharding(mesh, P())

    def abstract(self) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(self.shape, np.uint8, sharding=self.sharding)

    def __call__(self, epoch: int) -> jax.Array:
        order_SxB = np.asarray(self.order(jax.device_put(np.int32(epoch), self.replicated)))
        local = self.images_NxD[order_SxB[:, self.rows]]
        return jax.make_array_from_process_local_data(self.sharding, local, self.shape)


def compile_fed_epoch(graphdef, config, mesh: Mesh, state: TrainState, batches: jax.ShapeDtypeStruct,
                      dynamic: bool):
    """The epoch function (state, batches_u8 S x B x D) -> (state, per-step metrics), compiled now,
    for batches that come from the host (`HostFeed`); scan or steps as `epoch_loop` says."""
    step = make_train_step(graphdef, config, batches.shape[0], dynamic)
    hyper = hyperparameters(config)  # compiled in
    batch_sharding = NamedSharding(mesh, P("data"))

    def body(state, _, x_u8_BxD):
        x_u8_BxD = jax.lax.with_sharding_constraint(x_u8_BxD, batch_sharding)
        return step(state, x_u8_BxD, step_key(hyper.seed, state.step), hyper)

    run = compile_loop(body, epoch_loop(config), mesh, state, None, batches)
    return lambda state, batches: run(state, None, batches)


def compile_epoch(graphdef, config, mesh: Mesh, state: TrainState, train_images: np.ndarray,
                  dynamic: bool):
    """The epoch as the training loop runs it, (state, epoch) -> (state, per-step metrics), compiled
    now, with the batches from where `batch_source` says."""
    if batch_source(config) == "host":
        feed = HostFeed(config, train_images, mesh)
        fed_epoch = compile_fed_epoch(graphdef, config, mesh, state, feed.abstract(), dynamic)
        return lambda state, epoch: fed_epoch(state, feed(epoch))
    images_u8 = distributed.images_on_device(train_images, mesh)
    train_epoch = compile_train_epoch(graphdef, config, mesh, state, images_u8, dynamic)
    replicated = NamedSharding(mesh, P())
    return lambda state, epoch: train_epoch(state, images_u8, jax.device_put(np.int32(epoch), replicated))
