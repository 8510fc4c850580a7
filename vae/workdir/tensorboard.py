"""TensorBoard event files of a run, in WORKDIR/tensorboard/ (`tensorboard --logdir runs`).

Written with tensorboardX, which needs no TensorFlow. Per epoch: every number of the epoch's
metrics record as a scalar (`tag`: the timings under time/, the best epoch under val/, so the
dashboard opens on the test split's figures), and every list (the per-dimension KL of factorised
priors) as a histogram; every `IMAGES_EVERY` epochs, and at the first and last, a grid of prior
samples and of test images beside their reconstructions. The x axis is the epoch.
`metrics.jsonl` stays the record of truth: these files are a view of it, and a resumed run first
hides the events of the epochs it will train again (tensorboardX's `purge_step`).

TensorBoard is a view: a failure to write its files (a full disk, a removed directory) is
reported once and the run goes on; `metrics.jsonl` and the checkpoints fail loudly instead.
"""

import contextlib
import math
import sys
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from vae.workdir import files, images

IMAGES_EVERY = 5
NUM_SAMPLES = 64
NUM_RECONSTRUCTIONS = 16
_SAMPLE_SEED = 0  # the same prior draws every epoch, so the grids show the model change


class Board:
    """The run's TensorBoard writer: `log(record, params)` after each epoch's metrics line."""

    def __init__(self, workdir: Path, graphdef, test_images_u8: np.ndarray, start_epoch: int,
                 num_epochs: int, enabled: bool = True):
        self.num_epochs = num_epochs
        self.test_images = test_images_u8[:NUM_RECONSTRUCTIONS].astype(np.float32) / 255.0

        def pictures(params, flat_BxD):
            """Prior samples' and the test images' reconstructions' likelihood means: one compiled
            program (cached), where running the model op by op cost a third of a second per grid."""
            model = nnx.merge(graphdef, params)
            samples = model.likelihood.mean(model.sample(jax.random.key(_SAMPLE_SEED), NUM_SAMPLES))
            return samples, model.likelihood.mean(model.reconstruct(flat_BxD))

        self._pictures = jax.jit(pictures)
        self.writer = None
        if enabled:  # one writer: process 0 of a multi-process run
            self._guard("open", lambda: self._open(Path(workdir) / files.TENSORBOARD_DIR, start_epoch))

    def _open(self, logdir: Path, start_epoch: int) -> None:
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(logdir), purge_step=start_epoch + 1, flush_secs=30)

    def _guard(self, what: str, write) -> None:
        """Runs one write; a failure turns the board off with one warning line."""
        try:
            write()
        except Exception as e:  # noqa: BLE001 - a view must never stop the run
            print(f"warning: TensorBoard events are no longer written ({what}: "
                  f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                  "metrics.jsonl is complete", file=sys.stderr)
            _abandon(self.writer)
            self.writer = None

    def log(self, record: dict, params) -> None:
        if self.writer is None:
            return
        epoch = record["epoch"]
        self._guard("metrics", lambda: self._metrics(record, epoch))
        if self.writer is not None and (epoch % IMAGES_EVERY == 0 or epoch in (1, self.num_epochs)):
            self._guard("images", lambda: self._images(params, epoch))
        if self.writer is not None:
            self._guard("flush", self.writer.flush)

    def _metrics(self, record: dict, epoch: int) -> None:
        for key, value in record.items():
            if isinstance(value, bool) or key in ("epoch", "step"):  # the x axis, and what it implies
                continue
            if isinstance(value, int | float) and math.isfinite(value):
                self.writer.add_scalar(tag(key), value, epoch)
            elif isinstance(value, list) and value:
                self.writer.add_histogram(tag(key), np.asarray(value, np.float64), epoch)

    def _images(self, params, epoch: int) -> None:
        flat = self.test_images.reshape(len(self.test_images), -1)
        samples, recon = jax.device_get(self._pictures(jax.device_get(params), flat))
        shape = self.test_images.shape[1:]
        grid = _grid(samples.reshape(-1, *shape), 8)
        self.writer.add_image("samples/prior", grid, epoch, dataformats=_formats(grid))
        pairs = np.stack([self.test_images, recon.reshape(-1, *shape)], axis=1)
        pairs = pairs.reshape(-1, *self.test_images.shape[1:])
        grid = _grid(pairs, 8)
        self.writer.add_image("samples/reconstructions", grid, epoch, dataformats=_formats(grid))

    def close(self) -> None:
        if self.writer is not None:
            self._guard("close", self.writer.close)


def tag(key: str) -> str:
    """The TensorBoard tag of a metrics key: timings and throughputs under time/ (they would sort
    first ungrouped), the best epoch's figures under val/ (where they belong); the rest as in
    metrics.jsonl."""
    if key.endswith("_time_sec") or key.endswith("images_per_sec"):
        return "time/" + key.replace("/", "_")
    if key.startswith("best/"):
        return "val/best_" + key.removeprefix("best/").replace("/", "_")
    return key


def _formats(grid: np.ndarray) -> str:
    return "HW" if grid.ndim == 2 else "HWC"


def _grid(means: np.ndarray, ncols: int) -> np.ndarray:
    """N x H x W x C pixel means -> one uint8 image, grey (C = 1) or colour (rows of ncols)."""
    return np.round(images.image_grid(np.clip(means, 0.0, 1.0), ncols) * 255.0).astype(np.uint8)


class _Closed:
    """Stands in for the event writer of a file that can no longer be written: tensorboardX closes
    every writer again at exit (an atexit hook), which would print a traceback per failed flush."""

    def add_event(self, *args, **kwargs) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _abandon(writer) -> None:
    """Closes a writer whose files can no longer be written, for good (its file writers' event
    writers replaced by `_Closed`, so nothing flushes them again at exit)."""
    if writer is None:
        return
    file_writers = list((getattr(writer, "all_writers", None) or {}).values())  # close() drops them
    with contextlib.suppress(Exception):
        writer.close()
    for file_writer in file_writers:
        file_writer.event_writer = _Closed()
