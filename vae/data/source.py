"""A prepared TFDS image data set, read into memory: the checks that say what to run when it is
not there, the splits decoded once into uint8 arrays (`split_cache`), and the label names.

Loading never touches the network: preparation is an explicit step (`prepare.py`,
`scripts/prepare_data.py`), and a data set that is not prepared stops a run at once with the
command to run. A folder of the user's own images (data.name=folder:PATH) is the other source,
`folder.py`. Imports nothing of the package outside `vae.data`.
"""

import os
from pathlib import Path

import numpy as np

from vae.data import split_cache


class DataError(Exception):
    """A data problem the user can fix; the message says what to run."""


FOLDER_PREFIX = "folder:"  # data.name=folder:PATH names a folder of images (`folder.py`)


def prepare_command(name: str, data_dir: str | None) -> str:
    flags = f" --data_dir {data_dir}" if data_dir else ""
    return f"python scripts/prepare_data.py --dataset {name}{flags}"


def resolve_data_dir(data_dir: str | None) -> str | None:
    """The TFDS data dir to use: the given one (user-expanded), or None for TFDS's default."""
    return os.path.expanduser(data_dir) if data_dir else None


def tfds_builder(name: str, data_dir: str | None, **kwargs):
    import tensorflow_datasets as tfds

    if name.startswith(FOLDER_PREFIX):
        raise DataError(f"data.name={name!r} is a folder of images, not a TFDS data set")
    if looks_like_a_path(name):
        raise DataError(
            f"data.name={name!r} is a path, but data.name takes the name of a TFDS image data set "
            f"(fashion_mnist, mnist, kmnist, ...); for a folder of your own images write "
            f"data.name={FOLDER_PREFIX}{name}")
    try:
        return tfds.builder(name, data_dir=data_dir, **kwargs)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"unknown TFDS data set {name!r} (see `tfds.list_builders()`)") from None
    except PermissionError as e:
        raise DataError(f"the data directory cannot be read: {e}") from None
    except (ValueError, TypeError) as e:  # a name TFDS cannot parse
        first_line = (str(e).strip().splitlines() or [""])[0]
        raise DataError(f"data.name={name!r} is not a TFDS data set name: {first_line}") from None


def looks_like_a_path(name: str) -> bool:
    """A file-system path rather than a TFDS name ('mnist', 'emnist/letters', 'cifar10:3.0.2')."""
    return name.startswith(("~", "/", "./", "../")) or os.path.isdir(os.path.expanduser(name))


def check_format(builder, name: str, data_dir: str | None) -> None:
    file_format = str(getattr(builder.info.file_format, "value", builder.info.file_format))
    if file_format != "array_record":
        raise DataError(
            f"{name} in {builder.data_dir} was built as {file_format}, but loading needs array_record."
            f" Move that directory away and run `{prepare_command(name, data_dir)}`.")


def check_prepared(name: str, data_dir: str | None):
    """Returns the TFDS builder of a prepared image data set, or raises DataError saying what to run."""
    data_dir = resolve_data_dir(data_dir)
    if data_dir is not None and os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise DataError(f"the data directory {data_dir} is a file, not a directory; fix data.data_dir")
    if data_dir is not None and os.path.exists(data_dir) and not os.access(data_dir, os.R_OK | os.X_OK):
        raise DataError(f"the data directory {data_dir} is not readable; fix its permissions")
    builder = tfds_builder(name, data_dir)
    try:
        prepared = builder.is_prepared()
    except PermissionError as e:
        raise DataError(f"the data directory cannot be read: {e}") from None
    if not prepared:
        where = data_dir or "TFDS's default data dir"
        raise DataError(
            f"data set {name!r} is not prepared in {where}. Run `{prepare_command(name, data_dir)}`"
            f" first (or `make data DATASET={name}`).")
    check_format(builder, name, data_dir)
    features = builder.info.features
    image = features["image"] if "image" in features.keys() else None
    if image is None or len(image.shape) != 3 or image.np_dtype != np.uint8:
        raise DataError(f"{name!r} has no uint8 'image' feature of shape (H, W, C): not an image data set")
    return builder


def check_split(builder, split: str) -> None:
    """Raises DataError if `split` (TFDS split syntax, e.g. 'train[:512]') does not exist."""
    try:
        builder.info.splits[split]
    except (KeyError, ValueError, AssertionError) as e:
        raise DataError(
            f"split {split!r} is not in {builder.name} (splits: {sorted(builder.info.splits)}): {e}"
        ) from None


def _example_ranges(builder, split: str) -> list[tuple[str, int, int]]:
    """(shard file, first, end) of every example range a split reads."""
    return [(Path(f.filename).name, f.skip, f.skip + f.take)
            for f in builder.info.splits[split].file_instructions]


def check_disjoint(builder, split_a: str, split_b: str) -> None:
    """Raises DataError if two splits share an example (e.g. validation carved from training)."""
    for file_a, lo_a, hi_a in _example_ranges(builder, split_a):
        for file_b, lo_b, hi_b in _example_ranges(builder, split_b):
            if file_a == file_b and max(lo_a, lo_b) < min(hi_a, hi_b):
                raise DataError(
                    f"data.validation_split={split_b!r} overlaps data.train_split={split_a!r} "
                    f"({min(hi_a, hi_b) - max(lo_a, lo_b)} shared examples); carve them apart, e.g. "
                    f"train_split='train[:50000]' and validation_split='train[50000:]'")


def load_split(name: str, split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """All images (N x H x W x C uint8) and labels (N int32) of a prepared split, in TFDS's order.

    Decoded once, then read from the cache beside the TFDS data (`split_cache`).
    """
    return _load_split(check_prepared(name, data_dir), split, data_dir)


def _load_split(builder, split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    check_split(builder, split)
    return split_cache.load_split(builder, split, lambda part: decode_split(builder, part, data_dir))


def decode_split(builder, split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """A split decoded from the TFDS data itself (no cache)."""
    import tensorflow_datasets as tfds

    source = tfds.data_source(builder.name, split=split, data_dir=resolve_data_dir(data_dir),
                              download=False)
    return _stack_examples(source, builder.info.features["image"].shape)


def _stack_examples(source, image_shape) -> tuple[np.ndarray, np.ndarray]:
    n = len(source)
    images = np.empty((n, *image_shape), dtype=np.uint8)
    labels = np.full((n,), -1, dtype=np.int32)
    batch = 4096
    for start in range(0, n, batch):
        indices = list(range(start, min(n, start + batch)))
        try:
            examples = source.__getitems__(indices)
        except TypeError:  # tfds.testing.mock_data only serves items one at a time
            examples = [source[i] for i in indices]
        for i, example in zip(indices, examples):
            images[i] = example["image"]
            if "label" in example:
                labels[i] = example["label"]
    return images, labels


class TfdsSource:
    """A prepared TFDS data set as `dataset.py` reads it (the interface `folder.FolderSource`
    shares): its splits checked, read, and described."""

    def __init__(self, name: str, data_dir: str | None):
        self.name, self.data_dir = name, data_dir
        self.builder = check_prepared(name, data_dir)

    def check_split(self, split: str) -> None:
        check_split(self.builder, split)

    def check_disjoint(self, split_a: str, split_b: str) -> None:
        check_disjoint(self.builder, split_a, split_b)

    def load_split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        return _load_split(self.builder, split, self.data_dir)  # the builder checked once for all splits

    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.builder.info.features["image"].shape)

    @property
    def class_names(self) -> list[str]:
        """The label names (e.g. 'T-shirt/top', ...), or the label numbers."""
        features = self.builder.info.features
        if "label" in features.keys() and hasattr(features["label"], "names"):
            return list(features["label"].names)
        return [str(i) for i in range(1000)]
