"""TensorBoard event files of a run, written into the workdir itself, so that `tensorboard --logdir
runs` names each run after its workdir. Only writes: the numbers come from the epoch's metrics
record, the pictures from the training (`vae.train.pictures`) as numpy arrays; no JAX here.

Written with tensorboardX, which needs no TensorFlow. TensorBoard orders its groups (a tag's part
before the first /) by name, so each group's name starts with its place (`tag`):

    1_kl      the KL term of each split (`1_kl/test`, ...) and its split into I(x; z) and the
              prior's mismatch (`1_kl/test/mutual_info`, `1_kl/test/marginal_kl`)
    2_elbo    the negative ELBO of each split and its reconstruction term (`2_elbo/test/rec`),
              the training loss where it is not the bound itself, the IWAE bound
    3_images  prior samples; test images and their reconstructions, in the same places of two grids
    4_test, 5_train, 6_val   every other number of the split (the best epoch under 6_val), and
              every list (the per-dimension KL) as a histogram
    7_time    timings and throughputs

Left out, as they repeat a curve or never change: the KL split's own KL term (`split_kl`, the KL
term again on N of the images) and its N (`split_examples`), and the keys the training names
(`left_out`: the loss where it equals the negative ELBO, β where it is constant). The x axis is the
epoch. Images at epoch 1, every `IMAGES_EVERY` epochs and the last.

`metrics.jsonl` stays the record of truth: these files are a view of it, and a resumed run first
hides the events of the epochs it will train again (tensorboardX's `purge_step`). A workdir that
already has a `tensorboard/` folder (the earlier layout) goes on writing there.

TensorBoard is a view: a failure to write its files (a full disk, a removed directory) is
reported once and the run goes on; `metrics.jsonl` and the checkpoints fail loudly instead.
"""

import contextlib
import math
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

from vae.workdir import files, images

IMAGES_EVERY = 5

KL, ELBO, IMAGES, TIME = "1_kl", "2_elbo", "3_images", "7_time"
SPLIT_GROUPS = {"test": "4_test", "train": "5_train", "val": "6_val"}
_KL_PARTS = ("mutual_info", "marginal_kl")
_ELBO_PARTS = ("rec", "loss", "iwae")
_LEFT_OUT = ("split_kl", "split_examples")


class Pictures(NamedTuple):
    """The board's images: likelihood means N x H x W x C in [0, 1], computed by the training."""
    prior_samples: np.ndarray
    test_inputs: np.ndarray
    test_reconstructions: np.ndarray  # of test_inputs, in the same order


class Board:
    """The run's TensorBoard writer: `log(record, pictures)` after each epoch's metrics line, with
    pictures where `shows_pictures(epoch)`."""

    def __init__(self, workdir: Path, start_epoch: int, num_epochs: int,
                 left_out: frozenset[str] = frozenset(), enabled: bool = True):
        self.num_epochs, self.left_out = num_epochs, frozenset(left_out)
        self.writer = None
        if enabled:  # one writer: process 0 of a multi-process run
            self._guard("open", lambda: self._open(event_dir(Path(workdir)), start_epoch))

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

    def shows_pictures(self, epoch: int) -> bool:
        """Whether `log` of this epoch writes pictures (so the training computes them only then)."""
        return self.writer is not None and (epoch % IMAGES_EVERY == 0 or epoch in (1, self.num_epochs))

    def log(self, record: dict, pictures: Pictures | None = None) -> None:
        if self.writer is None:
            return
        epoch = record["epoch"]
        self._guard("metrics", lambda: self._metrics(record, epoch))
        if self.writer is not None and pictures is not None:
            self._guard("images", lambda: self._images(pictures, epoch))
        if self.writer is not None:
            self._guard("flush", self.writer.flush)

    def _metrics(self, record: dict, epoch: int) -> None:
        for key, value in record.items():
            name = None if key in self.left_out else tag(key)
            if name is None or isinstance(value, bool):
                continue
            if isinstance(value, int | float) and math.isfinite(value):
                self.writer.add_scalar(name, value, epoch)
            elif isinstance(value, list) and value:
                self.writer.add_histogram(name, np.asarray(value, np.float64), epoch)

    def _images(self, pictures: Pictures, epoch: int) -> None:
        for name, means in pictures._asdict().items():
            grid = _grid(means, 8)
            self.writer.add_image(f"{IMAGES}/{name}", grid, epoch, dataformats=_formats(grid))

    def close(self) -> None:
        if self.writer is not None:
            self._guard("close", self.writer.close)


def event_dir(workdir: Path) -> Path:
    """Where a run's events go: the workdir (TensorBoard's run name is the folder's path under its
    --logdir), or its `tensorboard/` folder where an earlier version wrote them, so that a resumed
    run stays one run and still hides the events of the epochs it trains again."""
    earlier = workdir / files.TENSORBOARD_DIR
    return earlier if earlier.is_dir() else workdir


def tag(key: str) -> str | None:
    """The TensorBoard tag of a metrics key (module docstring), None for one left out."""
    if key in ("epoch", "step"):  # the x axis, and what it implies
        return None
    if key.endswith("_time_sec") or key.endswith("images_per_sec") or key.startswith("sweep/"):
        return f"{TIME}/" + key.replace("/", "_")
    if key.startswith("best/"):  # best/epoch, best/val/elbo: the validation split's
        return f"{SPLIT_GROUPS['val']}/best_" + key.removeprefix("best/val/").removeprefix("best/")
    split, _, name = key.partition("/")
    if split not in SPLIT_GROUPS or not name:
        return key
    if name in _LEFT_OUT:
        return None
    if name == "kl":
        return f"{KL}/{split}"
    if name in _KL_PARTS:
        return f"{KL}/{split}/{name}"
    if name == "elbo":
        return f"{ELBO}/{split}"
    if name in _ELBO_PARTS:
        return f"{ELBO}/{split}/{name}"
    return f"{SPLIT_GROUPS[split]}/{name}"


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
