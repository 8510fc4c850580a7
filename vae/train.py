"""Training: the train state, one jitted data-parallel epoch, evaluation, and the resumable loop.

The data live on the device for the whole run. Each epoch is a single compiled program: an
on-device shuffle, then a `lax.scan` over steps that gathers a batch, binarises it and updates
the parameters, so the host is involved once per epoch. The batch axis is sharded over a 1-D
device mesh ("data"); parameters and optimizer state are replicated, and XLA inserts the
gradient all-reduce. Every random draw is a pure function of (seed, epoch, step), so a resumed
run repeats an uninterrupted one exactly.
"""

import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from vae import data, models, objectives, validation
from vae import workdir as wd

# Independent random streams, each folded into the run's root key.
_INIT, _SHUFFLE, _STEP, _EVAL = range(4)


class TrainState(NamedTuple):
    step: jax.Array
    params: nnx.State
    opt_state: optax.OptState


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


class Interrupted(RuntimeError):
    """SIGINT or SIGTERM stopped the run at an epoch boundary, after a checkpoint was written."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class _StopRequests:
    """Records SIGINT/SIGTERM instead of dying mid-write; a second signal stops at once."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # asked twice: abandon the epoch, keep the last checkpoint
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this epoch's checkpoint "
              "(send it again to stop at once)", file=sys.stderr)

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False


def root_key(seed: int) -> jax.Array:
    return jax.random.key(seed)


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over `devices` (default: all) with the batch axis "data"."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), ("data",))


def make_optimizer(train_config: ml_collections.ConfigDict, steps_per_epoch: int):
    total_steps = max(1, train_config.num_epochs * steps_per_epoch)
    lr = train_config.learning_rate
    if train_config.lr_schedule == "cosine":
        lr = optax.cosine_decay_schedule(lr, total_steps)
    elif train_config.lr_schedule == "warmup_cosine":
        warmup = int(train_config.warmup_epochs * steps_per_epoch)
        lr = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total_steps, warmup + 1))
    if train_config.optimizer == "adamw":
        optimizer = optax.adamw(lr, weight_decay=train_config.weight_decay)
    else:
        optimizer = optax.adam(lr)
    if train_config.grad_clip_norm > 0:
        optimizer = optax.chain(optax.clip_by_global_norm(train_config.grad_clip_norm), optimizer)
    return optimizer


def init_model(config: ml_collections.ConfigDict, image_shape) -> tuple[nnx.GraphDef, nnx.State]:
    """The model's graph definition and freshly initialised parameters for this seed."""
    model = models.build_model(config.model, image_shape, jax.random.fold_in(root_key(config.seed), _INIT))
    return nnx.split(model)


def init_state(config, image_shape, tx) -> tuple[nnx.GraphDef, TrainState]:
    graphdef, params = init_model(config, image_shape)
    return graphdef, TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))


def make_train_step(graphdef, tx, config, steps_per_epoch: int, dynamic: bool):
    """The pure (state, x_u8 B x D) -> (state, metrics) update; its keys depend on (seed, step) only."""
    warmup_steps = config.train.kl_warmup_epochs * steps_per_epoch
    beta, free_bits = config.train.beta, config.train.free_bits
    step_key = jax.random.fold_in(root_key(config.seed), _STEP)

    def train_step(state: TrainState, x_u8):
        binarize_key, sample_key = jax.random.split(jax.random.fold_in(step_key, state.step))
        x = data.to_model_input(x_u8, binarize_key if dynamic else None)
        beta_t = objectives.kl_weight(state.step, beta, warmup_steps)

        def loss_fn(params):
            model = nnx.merge(graphdef, params)
            return objectives.training_loss(model, x, sample_key, beta_t, free_bits)

        grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(state.step + 1, params, opt_state), metrics | {"beta": beta_t}

    return train_step


def _batch_step(train_step, mesh: Mesh):
    """(state, images_u8 N x D, indices_B) -> train_step on that batch, sharded over "data"."""
    batch_sharding = NamedSharding(mesh, P("data"))

    def batch_step(state: TrainState, images_u8, indices_B):
        return train_step(state, jax.lax.with_sharding_constraint(images_u8[indices_B], batch_sharding))

    return batch_step


def _epoch_order(config, num_train: int, epoch):
    """The batches of an epoch, steps x B indices: a permutation keyed by (seed, epoch)."""
    batch_size = config.train.batch_size
    steps = num_train // batch_size
    shuffle_key = jax.random.fold_in(root_key(config.seed), _SHUFFLE)
    order = jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), num_train)
    return order[: steps * batch_size].reshape(steps, batch_size)


def make_train_epoch(graphdef, tx, config, mesh: Mesh, num_train: int, dynamic: bool):
    """A jitted (state, images_u8 N x D, epoch) -> (state, metrics over steps) for one epoch:
    an on-device shuffle, then a scan of the train step over the batches."""
    steps = num_train // config.train.batch_size
    batch_step = _batch_step(make_train_step(graphdef, tx, config, steps, dynamic), mesh)

    def train_epoch(state: TrainState, images_u8, epoch):
        return jax.lax.scan(lambda state, indices_B: batch_step(state, images_u8, indices_B), state,
                            _epoch_order(config, images_u8.shape[0], epoch))

    return jax.jit(train_epoch, donate_argnums=0, out_shardings=NamedSharding(mesh, P()))


def epoch_loop(config) -> str:
    """'scan' (the whole epoch is one program) or 'steps' (one program per step, called from
    Python). 'auto' picks 'steps' for the conv model on CPU, where XLA runs convolutions inside
    a loop body about 10x slower than alone (jax-ml/jax#12868), and 'scan' everywhere else."""
    choice = config.train.epoch_loop
    if choice == "auto":
        return "steps" if config.model.arch == "conv" and jax.default_backend() == "cpu" else "scan"
    return choice


def compile_train_epoch(graphdef, tx, config, mesh: Mesh, state: TrainState, images_u8,
                        dynamic: bool):
    """The epoch function (state, images_u8, epoch) -> (state, per-step metrics), compiled now.

    Both loops run the same step with the same keys and keep the data on the device; they differ
    only in who iterates over the steps (XLA's while loop, or Python).
    """
    replicated = NamedSharding(mesh, P())
    epoch0 = jax.device_put(np.int32(0), replicated)
    num_train = images_u8.shape[0]
    if epoch_loop(config) == "scan":
        return make_train_epoch(graphdef, tx, config, mesh, num_train, dynamic).lower(
            state, images_u8, epoch0).compile()

    steps = num_train // config.train.batch_size
    batch_step = _batch_step(make_train_step(graphdef, tx, config, steps, dynamic), mesh)

    def step_at(state, images_u8, order_SxB, index):
        return batch_step(state, images_u8, order_SxB[index])

    order_fn = jax.jit(lambda epoch: _epoch_order(config, num_train, epoch), out_shardings=replicated)
    order = order_fn.lower(epoch0).compile()
    indices = [jax.device_put(np.int32(i), replicated) for i in range(steps)]
    step = jax.jit(step_at, donate_argnums=0, out_shardings=replicated).lower(
        state, images_u8, order(epoch0), indices[0]).compile()

    def train_epoch(state, images_u8, epoch):
        order_SxB = order(epoch)
        metrics = []
        for index in indices:
            state, step_metrics = step(state, images_u8, order_SxB, index)
            metrics.append(step_metrics)
        return state, jax.tree.map(lambda *xs: jnp.stack(xs), *metrics)

    return train_epoch


def make_evaluate(graphdef, config, mesh: Mesh):
    """A jitted params, images_u8 (N x D, N padded to the eval batch) -> per-example rec, kl, mean."""
    batch_size = config.eval.batch_size
    eval_key = jax.random.fold_in(root_key(config.seed), _EVAL)
    batch_sharding = NamedSharding(mesh, P("data"))

    def evaluate(params, images_u8):
        model = nnx.merge(graphdef, params)
        batches = images_u8.reshape(-1, batch_size, *images_u8.shape[1:])

        def body(_, inputs):
            index, x_u8 = inputs
            x = jax.lax.with_sharding_constraint(data.to_model_input(x_u8, None), batch_sharding)
            return None, objectives.elbo_terms(model, x, jax.random.fold_in(eval_key, index))

        _, terms = jax.lax.scan(body, None, (jnp.arange(batches.shape[0]), batches))
        return jax.tree.map(lambda t: t.reshape(-1, *t.shape[2:]), terms)

    return jax.jit(evaluate, out_shardings=NamedSharding(mesh, P()))


def flatten(images: np.ndarray) -> np.ndarray:
    """N x H x W x C -> N x D, the layout the model takes."""
    return images.reshape(images.shape[0], -1)


def images_on_device(images: np.ndarray, mesh: Mesh, pad_multiple: int = 1) -> jax.Array:
    """uint8 images as the programs take them: flat N x D (no layout copies around the matmuls),
    zero-padded to a multiple of `pad_multiple` rows, replicated on every device of the mesh."""
    return jax.device_put(pad_to_multiple(flatten(images), pad_multiple), NamedSharding(mesh, P()))


def pad_to_multiple(images: np.ndarray, multiple: int) -> np.ndarray:
    pad = (-images.shape[0]) % multiple
    return np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)]) if pad else images


def summarize_eval(terms: dict, num_examples: int, num_pixels: int, threshold: float,
                   prefix: str = "test") -> dict:
    """Test-set means in nats per image, per-dimension KL and active units (Burda et al., 2015)."""
    rec = np.asarray(terms["rec"][:num_examples], np.float64)
    kl_per_dim = np.asarray(terms["kl_per_dim"][:num_examples], np.float64)
    means = np.asarray(terms["mean"][:num_examples], np.float64)
    kl = kl_per_dim.sum(axis=-1)
    elbo = float(np.mean(rec + kl))
    activity = means.var(axis=0)  # Cov_x(E_q[z_u | x]) per dimension
    return {
        f"{prefix}/elbo": elbo,
        f"{prefix}/rec": float(rec.mean()),
        f"{prefix}/kl": float(kl.mean()),
        f"{prefix}/kl_per_dim": [round(float(v), 5) for v in kl_per_dim.mean(axis=0)],
        f"{prefix}/active_units": int(np.sum(activity > threshold)),
        f"{prefix}/bits_per_dim": elbo / (num_pixels * math.log(2.0)),
    }


def _kept(last_good: int) -> str:
    return (f"the last good checkpoint (epoch {last_good}) is kept" if last_good
            else "no checkpoint had been written yet")


def _check_finite(per_step_loss: np.ndarray, epoch: int, first_step: int, last_good: int) -> None:
    bad = np.flatnonzero(~np.isfinite(per_step_loss))
    if bad.size:
        raise NonFiniteLossError(
            f"the loss became {per_step_loss[bad[0]]} at epoch {epoch}, step {first_step + int(bad[0]) + 1}"
            f"; {_kept(last_good)}. Lower train.learning_rate or set train.grad_clip_norm.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path, *,
                       devices=None, restart: bool = False, progress: bool = True) -> list[dict]:
    """Trains `config` into `workdir`, resuming from its last checkpoint; returns the metrics."""
    workdir = Path(workdir)
    mesh = make_mesh(devices)
    num_devices = mesh.devices.size
    validation.validate_config(config, num_devices)
    if not restart:
        wd.check_resumable(workdir, config)
    dataset = data.load_dataset(config.data)
    validation.validate_image_shape(config, dataset.image_shape)
    num_train = dataset.train_images.shape[0]
    steps_per_epoch = num_train // config.train.batch_size
    if steps_per_epoch < 1:
        raise validation.ConfigError(
            f"train.batch_size={config.train.batch_size} is larger than the training split "
            f"({num_train} images); lower it or use a larger split")

    if restart:
        wd.clear_run(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    wd.write_config(workdir, config)

    tx = make_optimizer(config.train, steps_per_epoch)
    graphdef, state = init_state(config, dataset.image_shape, tx)
    replicated = NamedSharding(mesh, P())
    state = jax.device_put(state, replicated)
    manager = wd.checkpoint_manager(workdir, config.train.keep_checkpoints)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                            state._asdict())
    start_epoch, restored = wd.restore_latest(manager, abstract)
    if restored is not None:
        state = TrainState(**restored)
    history = wd.truncate_metrics(workdir, start_epoch)
    wall_offset = history[-1].get("wall_time_sec", 0.0) if history else 0.0

    train_images = images_on_device(dataset.train_images, mesh)
    test_images = images_on_device(dataset.test_images, mesh, config.eval.batch_size)
    num_test = dataset.test_images.shape[0]

    t0 = time.perf_counter()
    train_epoch = compile_train_epoch(graphdef, tx, config, mesh, state, train_images, dataset.dynamic)
    evaluate = make_evaluate(graphdef, config, mesh)
    compile_time = time.perf_counter() - t0
    run_start = time.perf_counter()

    num_epochs = config.train.num_epochs
    bar = tqdm(total=num_epochs, initial=start_epoch, unit="epoch", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    last_good = start_epoch
    with _StopRequests() as stop:
        try:
            for epoch in range(start_epoch + 1, num_epochs + 1):
                first_step = (epoch - 1) * steps_per_epoch  # no device round trip
                t_epoch = time.perf_counter()
                epoch_arg = jax.device_put(np.int32(epoch), replicated)
                state, step_metrics = train_epoch(state, train_images, epoch_arg)
                step_metrics = jax.device_get(step_metrics)  # waits for the epoch to finish
                train_time = time.perf_counter() - t_epoch
                _check_finite(step_metrics["loss"], epoch, first_step, last_good)

                record = {"epoch": epoch, "step": first_step + steps_per_epoch}
                record |= {f"train/{k}": float(np.mean(v)) for k, v in step_metrics.items()}
                record["images_per_sec"] = steps_per_epoch * config.train.batch_size / train_time
                record["epoch_time_sec"] = train_time
                if epoch == start_epoch + 1:
                    record["compile_time_sec"] = compile_time
                if epoch % config.eval.every_epochs == 0 or epoch == num_epochs:
                    t_eval = time.perf_counter()
                    terms = jax.device_get(evaluate(state.params, test_images))
                    record |= summarize_eval(terms, num_test, math.prod(dataset.image_shape),
                                             config.eval.active_unit_threshold)
                    record["eval_time_sec"] = time.perf_counter() - t_eval
                    if not math.isfinite(record["test/elbo"]):
                        raise NonFiniteLossError(
                            f"the test negative ELBO is {record['test/elbo']} after epoch {epoch}; "
                            f"{_kept(last_good)}")
                record["wall_time_sec"] = wall_offset + time.perf_counter() - run_start
                # Metrics first, then the checkpoint: a resume drops lines newer than its checkpoint.
                wd.append_metrics(workdir, record)
                history.append(record)
                if epoch % config.train.checkpoint_every_epochs == 0 or epoch == num_epochs or stop.signum:
                    wd.save_checkpoint(manager, epoch, state._asdict())
                    last_good = epoch
                bar.update(1)
                bar.set_postfix_str(_postfix(record), refresh=False)
                if progress:
                    bar.write(_epoch_line(record, num_epochs))
                if stop.signum is not None and epoch < num_epochs:
                    manager.wait_until_finished()
                    raise Interrupted(
                        f"stopped by {signal.Signals(stop.signum).name} after epoch {epoch}, which is "
                        f"checkpointed; run the same command again to resume", stop.signum)
        finally:
            bar.close()
            manager.wait_until_finished()
            manager.close()
    return history


def _postfix(record: dict) -> str:
    return f"{record['images_per_sec']:,.0f} img/s"


def _epoch_line(record: dict, num_epochs: int) -> str:
    line = (f"epoch {record['epoch']}/{num_epochs}  train -elbo {record['train/elbo']:.2f} "
            f"(rec {record['train/rec']:.2f}, kl {record['train/kl']:.2f})")
    if "test/elbo" in record:
        line += (f"  test -elbo {record['test/elbo']:.2f} (rec {record['test/rec']:.2f}, "
                 f"kl {record['test/kl']:.2f}, {record['test/active_units']} active)")
    return line + f"  {record['images_per_sec']:,.0f} img/s"


def load_trained(workdir: str | Path, epoch: int | None = None):
    """(config, model, epoch) of a trained workdir's latest (or given) checkpoint.

    The data set is not loaded: its image shape is read from TFDS's metadata.
    """
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise wd.WorkdirError(f"workdir {workdir} does not exist")
    config = wd.read_config(workdir)
    builder = data.check_prepared(config.data.name, config.data.data_dir)
    image_shape = tuple(builder.info.features["image"].shape)
    tx = make_optimizer(config.train, steps_per_epoch=1)  # only its state's structure is used
    graphdef, state = init_state(config, image_shape, tx)
    # Onto this process's first device, whatever the run was trained on (4 GPUs -> a laptop).
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                            state._asdict())
    if not (workdir / wd.CHECKPOINT_DIR).is_dir():
        raise wd.WorkdirError(f"{workdir} has no checkpoints yet; train it first")
    manager = wd.checkpoint_manager(workdir, read_only=True)
    try:
        restored_epoch, restored = wd.restore_latest(manager, abstract, step=epoch)
    finally:
        manager.close()
    if restored is None:
        raise wd.WorkdirError(f"{workdir} has no usable checkpoint; train it first")
    return config, nnx.merge(graphdef, restored["params"]), restored_epoch
