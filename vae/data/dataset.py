"""A data set as a run uses it: the train, validation and test splits in host memory as uint8
images, the evaluated splits binarised once with fixed seeds (`pixels`), training binarised per
step or once as the config asks.

Imports nothing of the package outside `vae.data`.
"""

import dataclasses

import ml_collections
import numpy as np

from vae.data import pixels, source
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
    images, labels = source.load_split(data_config.name, split, data_config.data_dir)
    seed = data_config.test_binarize_seed + _BINARIZE_SEED_OFFSET[which]
    return pixels.encode_fixed(images, data_config.binarize, seed), labels


def load_test_set(data_config: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray]:
    """The test split, binarised once with the fixed test seed; uint8 images and labels."""
    return load_eval_split(data_config, "test")


def load_dataset(data_config: ml_collections.ConfigDict) -> Dataset:
    """Loads both splits and applies the config's binarisation."""
    if data_config.binarize not in pixels.BINARIZE_MODES:
        raise DataError(
            f"data.binarize must be one of {pixels.BINARIZE_MODES}, got {data_config.binarize!r}")
    builder = source.check_prepared(data_config.name, data_config.data_dir)  # every split, before reading
    source.check_split(builder, data_config.train_split)
    source.check_split(builder, data_config.test_split)
    if data_config.validation_split:
        source.check_split(builder, data_config.validation_split)
        source.check_disjoint(builder, data_config.train_split, data_config.validation_split)
    train_images, train_labels = source.load_split(data_config.name, data_config.train_split,
                                                   data_config.data_dir)
    test_images, test_labels = load_test_set(data_config)
    val_images = val_labels = None
    if data_config.validation_split:
        val_images, val_labels = load_eval_split(data_config, "validation")
    dynamic = data_config.binarize == "dynamic"  # else encoded once, like the evaluated splits
    if not dynamic:
        train_images = pixels.encode_fixed(train_images, data_config.binarize,
                                           data_config.test_binarize_seed + _BINARIZE_SEED_OFFSET["train"])
    return Dataset(
        name=data_config.name,
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        dynamic=dynamic,
        val_images=val_images,
        val_labels=val_labels,
    )
