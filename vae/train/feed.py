"""Where an epoch's batches come from: their order and the sources the epoch (`vae.train.epoch`)
reads them from.

The order of an epoch is a permutation of the training set keyed by (seed, epoch), cut into
steps x B indices (`epoch_order`); given several seeds, one order each, steps x S x B.

- `DeviceBatches`: the training set lives on every device and each step gathers its batch there
  from the epoch's order (indices): one process, nothing crosses from the host during an epoch.
- `HostBatches`: each process sends only the rows of every batch its devices hold, gathered from
  its copy of the training set in host memory: a run over several processes. A streaming loader
  would replace the in-memory gather and nothing else.

Both give the same batches (the same order) and so the same numbers. A source offers `consts`
(what every step reads: the images on the device, or nothing), `abstract()` (the shape of an
epoch's inputs, to compile for), `source(epoch)` (those inputs) and `batch(consts, x)` (one step's
uint8 batch from one step's input, sharded over "data").
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vae.train import distributed
from vae.train.state import SHUFFLE, root_key


def epoch_order(batch_size: int, num_train: int, epoch, seed):
    """The batches of an epoch, steps x B indices: a permutation keyed by (seed, epoch)."""
    steps = num_train // batch_size
    shuffle_key = jax.random.fold_in(root_key(seed), SHUFFLE)
    order = jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), num_train)
    return order[: steps * batch_size].reshape(steps, batch_size)


def compile_orders(batch_size: int, num_train: int, seeds: int | tuple[int, ...], mesh: Mesh):
    """The compiled epoch -> batch indices, replicated (every process reads the same): steps x B
    for one seed, steps x S x B for a tuple of S seeds."""
    def orders(epoch):
        if isinstance(seeds, int):
            return epoch_order(batch_size, num_train, epoch, seeds)
        return jnp.stack([epoch_order(batch_size, num_train, epoch, seed) for seed in seeds], axis=1)

    replicated = NamedSharding(mesh, P())
    return jax.jit(orders, out_shardings=replicated).lower(
        jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)).compile()


def batch_source(choice: str) -> str:
    """'device' (the training set lives on every device and each step gathers its batch there) or
    'host' (each process sends only the rows of every batch its devices hold, see `HostBatches`);
    `choice` is train.batch_source: 'auto' picks 'host' when the run spans several processes,
    'device' otherwise."""
    if choice == "auto":
        return "host" if jax.process_count() > 1 else "device"
    return choice


class DeviceBatches:
    """Steps x B indices per epoch (steps x S x B for several seeds); each step gathers its batch
    from the training set on the device."""

    def __init__(self, images: np.ndarray, mesh: Mesh, orders):
        self.mesh = mesh
        self.replicated = NamedSharding(mesh, P())
        self.consts = distributed.images_on_device(images, mesh)
        self.orders = orders

    def abstract(self) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(self.orders.out_info.shape, np.int32, sharding=self.replicated)

    def __call__(self, epoch: int) -> jax.Array:
        return self.orders(jax.device_put(np.int32(epoch), self.replicated))

    def load(self, images: np.ndarray) -> None:
        """New training images of the same shape (an epoch's random crops)."""
        self.consts = distributed.images_on_device(images, self.mesh)

    def batch(self, images_u8, indices_B):
        return jax.lax.with_sharding_constraint(images_u8[indices_B], NamedSharding(self.mesh, P("data")))


class HostBatches:
    """An epoch's batches as one global uint8 array, steps x B x D (steps x S x B x D for several
    seeds), sharded over the batch axis; each process gathers only the rows its devices hold and
    `jax.make_array_from_process_local_data` assembles the global array."""

    consts = None

    def __init__(self, images: np.ndarray, mesh: Mesh, orders):
        self.mesh = mesh
        self.images_NxD = distributed.flatten(images)
        self.orders = orders
        order_shape = self.orders.out_info.shape  # steps x B, or steps x S x B
        self.shape = (*order_shape, self.images_NxD.shape[1])
        batch_axis = len(order_shape) - 1
        self.sharding = NamedSharding(mesh, P(*[None] * batch_axis, "data"))
        self.rows = distributed.process_rows(self.sharding, self.shape, axis=batch_axis)
        self.replicated = NamedSharding(mesh, P())

    def abstract(self) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(self.shape, np.uint8, sharding=self.sharding)

    def __call__(self, epoch: int) -> jax.Array:
        order = np.asarray(self.orders(jax.device_put(np.int32(epoch), self.replicated)))
        local = self.images_NxD[order[..., self.rows]]
        return jax.make_array_from_process_local_data(self.sharding, local, self.shape)

    def load(self, images: np.ndarray) -> None:
        """New training images of the same shape (an epoch's random crops)."""
        self.images_NxD = distributed.flatten(images)

    def batch(self, _, x_u8_BxD):
        return jax.lax.with_sharding_constraint(x_u8_BxD, NamedSharding(self.mesh, P("data")))


def batches(choice: str, batch_size: int, seeds: int | tuple[int, ...], images: np.ndarray, mesh: Mesh):
    """The source `batch_source(choice)` names, of the orders of `seeds` (`compile_orders`)."""
    source = HostBatches if batch_source(choice) == "host" else DeviceBatches
    return source(images, mesh, compile_orders(batch_size, images.shape[0], seeds, mesh))
