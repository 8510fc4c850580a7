"""TFDS image data sets -> in-memory uint8 arrays -> the device; binarisation; offline preparation.

Preparation is an explicit step (`scripts/prepare_data.py`): loading never touches the network,
and a data set that is not prepared stops a run at once with the command to run.

Fashion-MNIST is prepared offline from Debian's `dataset-fashion-mnist` files. Debian's packaging
cleared the gzip headers' file name and time stamp; writing them back gives the upstream bytes
exactly, so TFDS's registered sha256 checksums pass and the data is provably the upstream data.
"""

import dataclasses
import gzip
import importlib.util
import os
import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vae import split_cache

BINARIZE_MODES = ("dynamic", "static", "none")
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
# Time stamps of the upstream Fashion-MNIST .gz files (train-*, t10k-*), as TFDS checksums them.
_UPSTREAM_GZIP_MTIME = {"train": 1504176606, "t10k": 1504176627}
_GZIP_FLAG_FNAME = 0x08


class DataError(Exception):
    """A data problem the user can fix; the message says what to run."""


def prepare_command(name: str, data_dir: str | None) -> str:
    flags = f" --data_dir {data_dir}" if data_dir else ""
    return f"python scripts/prepare_data.py --dataset {name}{flags}"


def resolve_data_dir(data_dir: str | None) -> str | None:
    """The TFDS data dir to use: the given one (user-expanded), or None for TFDS's default."""
    return os.path.expanduser(data_dir) if data_dir else None


# --- Offline preparation ---------------------------------------------------------------------


def restore_upstream_gzip(src: Path, dst: Path) -> None:
    """Copies a Debian Fashion-MNIST .gz file to dst with its upstream gzip header written back."""
    raw = src.read_bytes()
    if raw[:3] != b"\x1f\x8b\x08":
        raise DataError(f"{src} is not a gzip file")
    if raw[3] & _GZIP_FLAG_FNAME:  # already carries its file name: keep as is
        dst.write_bytes(raw)
        return
    if raw[3] != 0:
        raise DataError(f"{src} has gzip flags {raw[3]:#x}; expected Debian's bare header")
    kind = "train" if src.name.startswith("train") else "t10k"
    original_name = src.name.removesuffix(".gz").encode("latin-1") + b"\0"
    header = raw[:3] + bytes([_GZIP_FLAG_FNAME]) + struct.pack("<I", _UPSTREAM_GZIP_MTIME[kind])
    dst.write_bytes(header + raw[8:10] + original_name + raw[10:])
    if gzip.decompress(dst.read_bytes()) != gzip.decompress(raw):
        raise DataError(f"rewriting the gzip header of {src} changed its contents")


def stage_debian_fashion_mnist(manual_dir: Path, source_dir: Path = DEBIAN_FASHION_MNIST_DIR) -> Path:
    """Writes the four upstream-identical Fashion-MNIST files into manual_dir for TFDS."""
    files = sorted(source_dir.glob("*-ubyte.gz")) if source_dir.is_dir() else []
    if len(files) != 4:
        raise DataError(
            f"Debian's Fashion-MNIST files are not in {source_dir}. Install them with "
            "`apt-get install dataset-fashion-mnist` (as root), or run on a machine with a network.")
    manual_dir.mkdir(parents=True, exist_ok=True)
    for src in files:
        restore_upstream_gzip(src, manual_dir / src.name)
    return manual_dir


def prepare(name: str, data_dir: str | None = None, manual_dir: str | None = None) -> str:
    """Builds `name` in TFDS's array_record format (once); returns the built data set's directory.

    Fashion-MNIST is built offline from Debian's files when they are installed; any other data set
    (or Fashion-MNIST without them) is downloaded as TFDS normally does, which needs a network.
    The MNIST family (mnist, fashion_mnist, kmnist) is built without TensorFlow
    (`vae.mnist_builder`); TFDS builds every other data set with TensorFlow, which the
    `tfds-build` extra installs.
    """
    import tensorflow_datasets as tfds

    from vae import mnist_builder

    data_dir = resolve_data_dir(data_dir)
    builder = _builder(name, data_dir, file_format="array_record")
    if builder.is_prepared():
        _check_format(builder, name, data_dir)
        return builder.data_dir
    if name in mnist_builder.NAMES:
        builder = mnist_builder.builder_class(name)(data_dir=data_dir, file_format="array_record")
    elif importlib.util.find_spec("tensorflow") is None:
        raise DataError(f"TFDS builds {name!r} with TensorFlow, which is not installed: run "
                        f"`pip install -e '.[tfds-build]'` once, then `{prepare_command(name, data_dir)}`")
    download_config = None
    if manual_dir is None and name == "fashion_mnist" and DEBIAN_FASHION_MNIST_DIR.is_dir():
        root = Path(data_dir or tfds.core.constants.DATA_DIR).expanduser()
        manual_dir = str(stage_debian_fashion_mnist(root / "manual" / name))
    if manual_dir is not None:
        download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    try:
        builder.download_and_prepare(download_config=download_config)
    except Exception as e:  # noqa: BLE001 - a wrong checksum, no network, a full disk: one line
        first_line = (str(e).strip().splitlines() or [""])[0]
        raise DataError(f"building {name} failed: {type(e).__name__}: {first_line}") from e
    return builder.data_dir


# --- Loading -----------------------------------------------------------------------------------


def _builder(name: str, data_dir: str | None, **kwargs):
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=data_dir, **kwargs)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"unknown TFDS data set {name!r} (see `tfds.list_builders()`)") from None
    except PermissionError as e:
        raise DataError(f"the data directory cannot be read: {e}") from None


def _check_format(builder, name: str, data_dir: str | None) -> None:
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
    builder = _builder(name, data_dir)
    try:
        prepared = builder.is_prepared()
    except PermissionError as e:
        raise DataError(f"the data directory cannot be read: {e}") from None
    if not prepared:
        where = data_dir or "TFDS's default data dir"
        raise DataError(
            f"data set {name!r} is not prepared in {where}. Run `{prepare_command(name, data_dir)}`"
            " first (or `make data`).")
    _check_format(builder, name, data_dir)
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

    Decoded once, then read from the cache beside the TFDS data (`vae.split_cache`).
    """
    builder = check_prepared(name, data_dir)
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


# --- Binarisation ------------------------------------------------------------------------------


def binarize_static(images_u8: np.ndarray, seed: int) -> np.ndarray:
    """Each pixel ~ Bernoulli(intensity / 255), drawn once from `seed`: uint8 in {0, 255}.

    Drawn with JAX's counter-based generator, so the result is the same on every machine.
    """
    key = jax.random.key(seed)
    keep = jax.random.bernoulli(key, jnp.asarray(images_u8, jnp.float32) / 255.0)
    return np.asarray(keep, dtype=np.uint8) * np.uint8(255)


def to_model_input(images_u8: jax.Array, key: jax.Array | None) -> jax.Array:
    """uint8 images -> float32 model input: a fresh Bernoulli draw per pixel if key, else x / 255."""
    probs = images_u8.astype(jnp.float32) * (1.0 / 255.0)
    if key is None:
        return probs
    return jax.random.bernoulli(key, probs).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A data set in host memory; test images are already binarised as the config asks."""

    name: str
    train_images: np.ndarray  # N x H x W x C uint8 intensities (static: {0, 255})
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    dynamic: bool  # True: training batches get a fresh Bernoulli draw every time they are used
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
    """The test (or validation) split as every evaluation sees it: binarised once with a fixed seed
    (grey levels for binarize='none'); uint8 images and labels."""
    split = data_config.test_split if which == "test" else data_config.validation_split
    images, labels = load_split(data_config.name, split, data_config.data_dir)
    if data_config.binarize != "none":
        images = binarize_static(images, data_config.test_binarize_seed + _BINARIZE_SEED_OFFSET[which])
    return images, labels


def load_test_set(data_config: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray]:
    """The test split, binarised once with the fixed test seed; uint8 images and labels."""
    return load_eval_split(data_config, "test")


def load_dataset(data_config: ml_collections.ConfigDict) -> Dataset:
    """Loads both splits and applies the config's binarisation."""
    if data_config.binarize not in BINARIZE_MODES:
        raise DataError(f"data.binarize must be one of {BINARIZE_MODES}, got {data_config.binarize!r}")
    builder = check_prepared(data_config.name, data_config.data_dir)  # every split, before reading
    check_split(builder, data_config.train_split)
    check_split(builder, data_config.test_split)
    if data_config.validation_split:
        check_split(builder, data_config.validation_split)
        check_disjoint(builder, data_config.train_split, data_config.validation_split)
    train_images, train_labels = load_split(data_config.name, data_config.train_split, data_config.data_dir)
    test_images, test_labels = load_test_set(data_config)
    val_images = val_labels = None
    if data_config.validation_split:
        val_images, val_labels = load_eval_split(data_config, "validation")
    if data_config.binarize == "static":
        train_images = binarize_static(
            train_images, data_config.test_binarize_seed + _BINARIZE_SEED_OFFSET["train"])
    return Dataset(
        name=data_config.name,
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        dynamic=data_config.binarize == "dynamic",
        val_images=val_images,
        val_labels=val_labels,
    )


def class_names(name: str, data_dir: str | None = None) -> list[str]:
    """The label names of a prepared data set (e.g. 'T-shirt/top', ...), or the label numbers."""
    features = check_prepared(name, data_dir).info.features
    if "label" in features.keys() and hasattr(features["label"], "names"):
        return list(features["label"].names)
    return [str(i) for i in range(1000)]
