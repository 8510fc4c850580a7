"""A data set as a run uses it: the train, validation and test splits in host memory as uint8
images, the evaluated splits binarised once with fixed seeds (`pixels`), training binarised per
step or once as the config asks. The images come from a prepared TFDS data set (`source`) or,
with data.name=folder:PATH, from a folder of the user's own images (`folder`); nothing past this
module tells the two apart.

Imports nothing of the package outside `vae.data`.
"""

import dataclasses
from collections.abc import Callable

import ml_collections
import numpy as np

from vae.data import folder, pixels, source
from vae.data.source import DataError


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A data set in host memory; test images are already binarised as the config asks."""

    name: str
    train_images: np.ndarray  # N x H x W x C uint8 intensities (static: {0, 255})
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    dynamic: bool  # True: training batches are binarised afresh every time they are used
    val_images: np.ndarray | None = None  # binarised once, like the test set; None without a split
    val_labels: np.ndarray | None = None
    # Where the training images change every epoch (a folder's random crops, data.crops_per_image):
    # epoch (1, 2, ...) -> that epoch's training images, encoded like train_images (epoch 1's).
    epoch_images: Callable[[int], np.ndarray] | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])

    def pixel_means(self) -> np.ndarray:
        """Each pixel's mean intensity over the training images, in [0, 1]: under dynamic
        binarisation, the probability that the pixel is on."""
        return self.train_images.reshape(self.train_images.shape[0], -1).mean(axis=0) / 255.0


# Seeds of the splits that are binarised once, offsets from data.test_binarize_seed.
_BINARIZE_SEED_OFFSET = {"test": 0, "train": 1, "validation": 2}


def load_eval_split(data_config: ml_collections.ConfigDict,
                    which: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """The test (or validation) split as every evaluation sees it: binarised once with a fixed
    seed; uint8 images and labels."""
    split = data_config.test_split if which == "test" else data_config.validation_split
    images, labels = open_source(data_config).load_split(split)
    return _encode_eval(images, data_config, which), labels


def _encode_eval(images: np.ndarray, data_config: ml_collections.ConfigDict, which: str) -> np.ndarray:
    seed = data_config.test_binarize_seed + _BINARIZE_SEED_OFFSET[which]
    return pixels.encode_fixed(images, data_config.binarize, seed)


def load_test_set(data_config: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray]:
    """The test split, binarised once with the fixed test seed; uint8 images and labels."""
    return load_eval_split(data_config, "test")


def load_dataset(data_config: ml_collections.ConfigDict) -> Dataset:
    """Loads both splits and applies the config's binarisation."""
    if data_config.binarize not in pixels.BINARIZE_MODES:
        raise DataError(
            f"data.binarize must be one of {pixels.BINARIZE_MODES}, got {data_config.binarize!r}")
    opened = _checked_source(data_config)  # every split checked, before reading
    read = opened.load_split
    train_images, train_labels, epoch_images = _read_train(opened, data_config.train_split)
    test_images, test_labels = read(data_config.test_split)
    test_images = _encode_eval(test_images, data_config, "test")
    val_images = val_labels = None
    if data_config.validation_split:
        val_images, val_labels = read(data_config.validation_split)
        val_images = _encode_eval(val_images, data_config, "validation")
    dynamic = data_config.binarize == "dynamic"  # else encoded once, like the evaluated splits
    if not dynamic:
        train_seed = data_config.test_binarize_seed + _BINARIZE_SEED_OFFSET["train"]
        train_images = pixels.encode_fixed(train_images, data_config.binarize, train_seed)
        if epoch_images is not None:
            crops = epoch_images
            epoch_images = lambda epoch: pixels.encode_fixed(crops(epoch), data_config.binarize, train_seed)
    return Dataset(
        name=data_config.name,
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        dynamic=dynamic,
        val_images=val_images,
        val_labels=val_labels,
        epoch_images=epoch_images,
    )


def open_source(data_config: ml_collections.ConfigDict) -> source.TfdsSource | folder.FolderSource:
    """Where data.name's images come from, checked (prepared, or a readable folder): a TFDS data
    set or a folder of images, with one interface (check_split, check_disjoint, load_split,
    image_shape, class_names). The one place the two are told apart."""
    if folder.is_folder(data_config.name):
        return folder.open_folder(data_config)
    return source.TfdsSource(data_config.name, data_config.data_dir)


def _read_train(opened, split: str) -> tuple[np.ndarray, np.ndarray, Callable[[int], np.ndarray] | None]:
    """The training split's images and labels, and epoch -> images where they change every epoch
    (a folder's random crops; a folder's tiles or crops are cut there, its evaluated splits'
    tiles in its `load_split`)."""
    if isinstance(opened, folder.FolderSource):
        return opened.load_train(split)
    return *opened.load_split(split), None


def _checked_source(data_config: ml_collections.ConfigDict) -> source.TfdsSource | folder.FolderSource:
    """Checks the data source and every split the config names before any image is read; returns
    the source. A folder is listed once, and its images decoded (or read from the cache) once
    for all its splits."""
    opened = open_source(data_config)
    opened.check_split(data_config.train_split)
    opened.check_split(data_config.test_split)
    if data_config.validation_split:
        opened.check_split(data_config.validation_split)
        opened.check_disjoint(data_config.train_split, data_config.validation_split)
    return opened


def image_shape(data_config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """(H, W, C) of the images a run on `data_config` sees, none decoded: from TFDS's metadata,
    or from a folder's first image and data.image_size."""
    return open_source(data_config).image_shape()


def class_names(data_config: ml_collections.ConfigDict) -> list[str]:
    """The label names of the data set (a folder's class sub-folders; [] where its images are in
    none)."""
    return open_source(data_config).class_names
