"""The set-up of a training, built in one place (`build`) for the training loop (`vae.train.loop`),
a sweep's groups (`vae.sweep.program`) and the benchmarks: the mesh's shardings, the optimizer, the
initial state (the decoder's output bias at the training set's pixel means, as every run starts),
the feed (`vae.train.feed`, chosen by train.batch_source), the compiled epoch and the evaluators.
What a checkpoint restores into it is the workdir's business (`vae.train.run.RunDir.restore`).
"""

import dataclasses
import functools
import time

import jax
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vae.data import dataset
from vae.train import config_checks, epoch, feed, pictures, state
from vae.train.evaluate import Evaluator, make_evaluators
from vae.train.step import make_train_step


def steps_per_epoch(config: ml_collections.ConfigDict, data: dataset.Dataset) -> int:
    """Optimiser steps per epoch, after checking that the model and batch fit the data."""
    config_checks.validate_image_shape(config, data.image_shape)
    num_train = data.train_images.shape[0]
    if num_train < config.train.batch_size:
        raise config_checks.ConfigError(
            f"train.batch_size={config.train.batch_size} is larger than the training split "
            f"({num_train} images); lower it or use a larger split")
    return num_train // config.train.batch_size


@dataclasses.dataclass
class Setup:
    """What a training compiles and starts from, for the runs of `config` (they may differ in the
    numbers of `state.Hyper` only)."""

    config: ml_collections.ConfigDict
    data: dataset.Dataset
    mesh: Mesh
    steps_per_epoch: int
    tx: optax.GradientTransformation
    seeds: int | tuple[int, ...]  # whose batch orders the feed gives (`feed.compile_orders`)

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    @functools.cached_property
    def graphdef(self) -> nnx.GraphDef:
        return state.abstract_state(self.config, self.data.image_shape, self.tx)[0]

    @functools.cached_property
    def train_step(self):
        """(state, x_u8_BxD, key, hyper) -> (state, metrics) (`step.make_train_step`)."""
        return make_train_step(self.graphdef, self.config, self.steps_per_epoch, self.data.dynamic)

    @functools.cached_property
    def source(self) -> feed.DeviceBatches | feed.HostBatches:
        """The feed of the epochs' batches: the one place a training takes its training images."""
        t = self.config.train
        return feed.batches(t.batch_source, t.batch_size, self.seeds, self.data.train_images, self.mesh)

    def init_state(self, config: ml_collections.ConfigDict) -> state.TrainState:
        """A fresh state for the run of this config (its seed), replicated over the mesh."""
        _, initial = state.init_state(config, self.data.image_shape, self.tx, self.data.pixel_means())
        return jax.device_put(initial, self.replicated)

    def body(self, hyper: state.Hyper):
        """The epoch's step body of one run with these numbers (`epoch.step_body`)."""
        return epoch.step_body(self.train_step, hyper, self.source.batch)

    def compile_epoch(self, carry, body) -> tuple[object, float]:
        """(carry, epoch) -> (carry, per-step metrics), compiled now for `carry` (`epoch.compile_epoch`),
        and the seconds compiling took."""
        start = time.perf_counter()
        train_epoch = epoch.compile_epoch(body, epoch.epoch_loop(self.config), self.mesh, carry, self.source)
        return train_epoch, time.perf_counter() - start

    def evaluators(self) -> list[Evaluator]:
        """The validation (where the data set has one) and test evaluators (`evaluate.make_evaluators`)."""
        return make_evaluators(self.graphdef, self.config, self.mesh, self.data)

    def pictures(self):
        """TensorBoard's pictures of parameters (`pictures.make_pictures`), one program for every run."""
        return pictures.make_pictures(self.graphdef, self.data.test_images)


def build(config: ml_collections.ConfigDict, data: dataset.Dataset, mesh: Mesh,
          seeds: int | tuple[int, ...] | None = None) -> Setup:
    """The set-up of `config` on `data` over `mesh`, after checking that they fit; the feed's batch
    orders are those of `seeds` (default: the config's seed; a tuple gives one order per seed, see
    `feed.compile_orders`). The programs are traced and compiled when first asked for."""
    steps = steps_per_epoch(config, data)
    tx = state.make_optimizer(config.train, steps)
    return Setup(config, data, mesh, steps, tx, config.seed if seeds is None else seeds)
