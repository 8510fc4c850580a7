"""A trained run read back from its workdir: its config and the model with the evaluated
parameters (the moving average where the run keeps one), from the best, the latest or one
epoch's checkpoint. What sampling, evaluation and the notebooks start from.
"""

from pathlib import Path

import jax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vae.data import dataset
from vae.train import distributed
from vae.train.state import TrainState, abstract_state, eval_params, make_optimizer
from vae.workdir import checkpoints, files

CHECKPOINTS = ("best", "latest")


def checkpoint_used(workdir: str | Path, epoch: int | None, checkpoint: str) -> str:
    """Which checkpoint `load_trained` restores: 'best', 'latest' or 'epoch'."""
    if epoch is not None:
        return "epoch"
    has_best = checkpoints.has_checkpoints(Path(workdir), files.BEST_DIR)
    return "best" if checkpoint == "best" and has_best else "latest"


def load_trained(workdir: str | Path, epoch: int | None = None, checkpoint: str = "best"):
    """(config, model, epoch) of a trained workdir.

    `checkpoint='best'` (the default) is the epoch with the lowest validation negative ELBO where
    the run has a validation split, else the latest; 'latest' is the newest checkpoint; `epoch`
    picks one of the latest checkpoints by number. The model carries the evaluated parameters
    (the moving average where the run keeps one). The data set is not loaded: the image shape is
    config.json's record of it (older workdirs: TFDS's metadata, or a folder's first image).
    """
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {CHECKPOINTS}, got {checkpoint!r}")
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise files.WorkdirError(f"workdir {workdir} does not exist")
    config = files.read_config(workdir)
    # Recorded by training; an older workdir's is read from the data set's metadata.
    image_shape = files.read_image_shape(workdir) or dataset.image_shape(config.data)
    tx = make_optimizer(config.train, steps_per_epoch=1)  # only its state's structure is used
    graphdef, state = abstract_state(config, image_shape, tx)
    # Onto this process's first device, whatever the run was trained on (4 GPUs -> a laptop); in a
    # multi-process run, replicated over every process's devices (all processes restore together).
    sharding = (NamedSharding(distributed.make_mesh(), P()) if jax.process_count() > 1
                else jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                            state._asdict())
    if not (workdir / files.CHECKPOINT_DIR).is_dir():
        raise files.WorkdirError(f"{workdir} has no checkpoints yet; train it first")
    use_best = checkpoint_used(workdir, epoch, checkpoint) == "best"
    restored_epoch, restored = checkpoints.restore_for_reading(workdir, abstract, epoch, use_best)
    if restored is None:
        raise files.WorkdirError(f"{workdir} has no usable checkpoint; train it first")
    return config, nnx.merge(graphdef, eval_params(TrainState(**restored))), restored_epoch
