"""One run over many processes on JAX's distributed runtime (`jax.distributed`).

Multi-controller JAX: every process runs the same script on its own devices, and together they see
one global device list, over which the run's mesh is built. `join` starts or joins the runtime
before anything touches a device, from `--coordinator_address --num_processes --process_id` (the
names `jax.distributed.initialize` takes) or, when none is given, from a detected cluster (SLURM,
Open MPI, Cloud TPU), whose variables `jax.distributed.initialize()` reads itself; with neither, a
run is one process, as before. The runtime's timeouts are lowered from JAX's defaults and exposed
as flags: a dead peer stops the others after `--heartbeat_timeout_seconds`.

The rest are the few rules a multi-process run lives by: process 0 is the only writer; host data
become global arrays with public constructors (`jax.make_array_from_process_local_data`, each
process supplying only the rows its devices hold); decisions taken from host state (a stop
signal) are agreed on by a collective, so every process makes the same calls in the same order.
"""

import dataclasses
import glob
import importlib.util
import os
import re
import sys
from collections.abc import Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils

JOIN_FLAGS = ("coordinator_address", "num_processes", "process_id")


class JoinError(ValueError):
    """Joining flags that cannot start a run; the message says which to give."""


def _flag(default, help_text: str, minimum: int | None = None):
    """A field of `Settings`, which is also a script flag (`vae.cli_flags.add_settings_arguments`)."""
    metadata = {"help": help_text} | ({} if minimum is None else {"minimum": minimum})
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Settings:
    """How this process joins a run (all None: a detected cluster, else a single process); each
    field is a flag of the scripts that join runs."""

    coordinator_address: str | None = _flag(
        None, "host:port of process 0's coordinator, the same for every process (multi-process runs; "
              "default: detected from SLURM, Open MPI or TPU).")
    num_processes: int | None = _flag(None, "How many processes the run has (default: detected, else 1).", 1)
    process_id: int | None = _flag(
        None, "This process's index, 0 .. num_processes - 1; 0 writes the workdir.", 0)
    # Seconds. JAX's defaults are 300 / 100 / 300: a dead peer would stall a run for minutes.
    initialization_timeout: int = _flag(120, "Seconds to wait for every process to join the run.", 1)
    heartbeat_timeout_seconds: int = _flag(
        30, "Seconds without a heartbeat after which a process counts as dead and the others stop.", 1)
    shutdown_timeout_seconds: int = _flag(
        60, "Seconds a finishing process waits for the others to finish.", 1)


FLAGS_TITLE = "multi-process runs (jax.distributed)"


def detect_cluster(environ: Mapping[str, str] = os.environ) -> str | None:
    """The cluster `jax.distributed.initialize()` configures itself from, when it holds more than one
    process (SLURM: inside `srun` with more than one task; Open MPI: under `mpirun`; a Cloud TPU VM,
    including the workers of a pod slice); else None."""
    slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
    if all(key in environ for key in slurm) and int(environ["SLURM_NTASKS"]) > 1:
        return "SLURM"
    if "OMPI_MCA_orte_hnp_uri" in environ and int(environ.get("OMPI_COMM_WORLD_SIZE", "2")) > 1:
        return "Open MPI"
    if "TPU_WORKER_HOSTNAMES" in environ or "MEGASCALE_COORDINATOR_ADDRESS" in environ:
        return "Cloud TPU"
    tpu_chips = glob.glob("/dev/accel*") + glob.glob("/dev/vfio/[0-9]*")
    if tpu_chips and importlib.util.find_spec("libtpu") is not None:
        return "Cloud TPU"
    return None


def check_settings(settings: Settings, cluster: str | None) -> None:
    """Raises JoinError for joining flags that cannot work, before any process waits on them."""
    for name in ("initialization_timeout", "heartbeat_timeout_seconds", "shutdown_timeout_seconds"):
        if getattr(settings, name) < 1:
            raise JoinError(f"--{name} must be at least 1 second, got {getattr(settings, name)}")
    given = [name for name in JOIN_FLAGS if getattr(settings, name) is not None]
    if given and cluster is None and len(given) < len(JOIN_FLAGS):
        missing = ", ".join(f"--{name}" for name in JOIN_FLAGS if name not in given)
        raise JoinError(f"a multi-process run outside a detected cluster needs --coordinator_address, "
                        f"--num_processes and --process_id together; missing {missing}")
    if settings.num_processes is not None and settings.num_processes < 1:
        raise JoinError(f"--num_processes must be at least 1, got {settings.num_processes}")
    if settings.process_id is not None and not (
            0 <= settings.process_id < (settings.num_processes or settings.process_id + 1)):
        raise JoinError(f"--process_id must be in 0 .. num_processes - 1 "
                        f"({settings.num_processes}), got {settings.process_id}")
    address = settings.coordinator_address
    if address is not None and not re.fullmatch(r"\S+:\d{1,5}", address):
        raise JoinError(f"--coordinator_address must be host:port (e.g. node001:12345), got {address!r}")


def join(settings: Settings, environ: Mapping[str, str] = os.environ) -> str | None:
    """Joins the distributed runtime if flags ask for it or a cluster is detected; returns how
    ('flags' or the cluster's name), or None for a single-process run. Call it before anything
    touches a device (JAX refuses otherwise)."""
    cluster = detect_cluster(environ)
    check_settings(settings, cluster)
    given = {name: getattr(settings, name) for name in JOIN_FLAGS if getattr(settings, name) is not None}
    if not given and cluster is None:
        return None
    if settings.process_id in (None, 0):  # a line to explain the runtime's abort if the others never come
        where = f"{settings.num_processes or 'all'} processes via {settings.coordinator_address or cluster}"
        print(f"jax.distributed: joining {where}, waiting up to {settings.initialization_timeout} s",
              file=sys.stderr, flush=True)
    jax.distributed.initialize(
        **given,
        initialization_timeout=settings.initialization_timeout,
        heartbeat_timeout_seconds=settings.heartbeat_timeout_seconds,
        shutdown_timeout_seconds=settings.shutdown_timeout_seconds)
    return "flags" if given else cluster


def leave() -> None:
    """Leaves the runtime (waiting for the other processes to leave too), if this process joined."""
    if jax.distributed.is_initialized():
        jax.distributed.shutdown()


# --- Rules of a multi-process run ----------------------------------------------------------------


def is_writer() -> bool:
    """True on the one process that writes files and prints: process 0."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process gets here (after process 0 alone changed the workdir)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def agree_on_max(value: int) -> int:
    """The largest of every process's `value`: one answer all processes act on (e.g. a stop signal
    that reached only some of them)."""
    if jax.process_count() == 1:
        return value
    return int(np.max(multihost_utils.process_allgather(np.int32(value))))


def process_rows(sharding: jax.sharding.Sharding, global_shape: tuple[int, ...], axis: int = 0) -> np.ndarray:
    """Indices along `axis` of the rows this process's devices hold under `sharding`, in the order
    `jax.make_array_from_process_local_data` expects them."""
    spans = set()
    for index in sharding.addressable_devices_indices_map(global_shape).values():
        start, stop, _ = index[axis].indices(global_shape[axis])
        spans.add((start, stop))
    return np.concatenate([np.arange(start, stop) for start, stop in sorted(spans)])


def global_batch(host_batch: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """A global array from a batch every process holds in full; each process transfers only the rows
    its devices hold (axis 0)."""
    rows = process_rows(sharding, host_batch.shape)
    return jax.make_array_from_process_local_data(sharding, host_batch[rows], host_batch.shape)


def replicated(host_array: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """A global array replicated under `sharding` from data every process holds in full (no
    cross-process check or transfer, unlike `jax.device_put`)."""
    return jax.make_array_from_callback(host_array.shape, sharding, lambda index: host_array[index])



def make_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D mesh over `devices` (default: all, of every process) with the batch axis "data"."""
    return jax.sharding.Mesh(np.asarray(devices if devices is not None else jax.devices()), ("data",))


def flatten(images: np.ndarray) -> np.ndarray:
    """N x H x W x C -> N x D, the layout the model takes."""
    return images.reshape(images.shape[0], -1)


def pad_to_multiple(images: np.ndarray, multiple: int) -> np.ndarray:
    pad = (-images.shape[0]) % multiple
    return np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)]) if pad else images


def images_on_device(images: np.ndarray, mesh: jax.sharding.Mesh, pad_multiple: int = 1) -> jax.Array:
    """uint8 images as the programs take them: flat N x D (no layout copies around the matmuls),
    zero-padded to a multiple of `pad_multiple` rows, replicated on every device of the mesh (of
    every process: each process puts its own copy on its own devices)."""
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return replicated(pad_to_multiple(flatten(images), pad_multiple), sharding)
