"""TFDS's MNIST-family builders (mnist, fashion_mnist, kmnist) without TensorFlow.

TFDS 4.9 builds these only with TensorFlow, for three small things: its gzip extractor and its
IDX readers use `tf.io.gfile`, and it PNG-encodes numpy images with `tf.image.encode_png`. The
subclass here keeps TFDS's own builder (name, version, features, split names, `DatasetInfo`, its
writer and the registered download checksums) and replaces only those: the four files are
downloaded without extraction (`dl_manager.download`, so files in `manual_dir` are still matched
by name and checked against TFDS's sha256), read with `gzip` and numpy, and every image is
yielded as PNG bytes made by Pillow. Read back with `tfds.data_source`, the pixels and labels
equal those of a TensorFlow build.
"""

import functools
import gzip
import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

# The four file names of the MNIST format (as TFDS's builders name them), by role.
FILES = {
    "train_data": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_data": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
_IDX_UBYTE = 0x08  # the IDX type code of unsigned bytes
NAMES = ("mnist", "fashion_mnist", "kmnist")


def _tfds_builders() -> dict:
    classes = tfds.image_classification
    return {"mnist": classes.MNIST, "fashion_mnist": classes.FashionMNIST, "kmnist": classes.KMNIST}


def read_idx(path, ndim: int) -> np.ndarray:
    """The uint8 array of a gzip-compressed IDX file (the MNIST format), its header checked."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 + 4 * ndim or raw[:2] != b"\0\0" or raw[2] != _IDX_UBYTE or raw[3] != ndim:
        raise ValueError(f"{path} is not an IDX file of {ndim}-D unsigned bytes")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path} holds {body.size} bytes, its header says {shape}")
    return body.reshape(shape)


def png_bytes(image_HxW: np.ndarray) -> bytes:
    """A grey-level uint8 image as PNG (lossless: decoding gives the same pixels)."""
    buffer = io.BytesIO()
    Image.fromarray(image_HxW, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


@functools.cache
def builder_class(name: str) -> type:
    """A TF-free subclass of TFDS's builder `name` (one of NAMES), with the same name and version."""
    parent = _tfds_builders()[name]

    class WithoutTensorFlow(parent, skip_registration=True):
        __doc__ = f"TFDS's {parent.__name__} builder, built without TensorFlow."
        name = parent.name  # TFDS's name: the same directory, read back by TFDS's own builder

        @property
        def url_infos(self):  # the parent's registered checksums, not a file beside this module
            return parent.url_infos

        def _split_generators(self, dl_manager):
            paths = dl_manager.download({role: self.URL + file for role, file in FILES.items()})
            return [
                tfds.core.SplitGenerator(name=split, gen_kwargs=dict(
                    data_path=paths[f"{prefix}_data"], label_path=paths[f"{prefix}_labels"]))
                for split, prefix in ((tfds.Split.TRAIN, "train"), (tfds.Split.TEST, "test"))
            ]

        def _generate_examples(self, data_path, label_path):
            images = read_idx(data_path, 3)
            labels = read_idx(label_path, 1)
            if len(images) != len(labels):
                raise ValueError(f"{data_path} has {len(images)} images but {label_path} "
                                 f"{len(labels)} labels")
            for index, (image, label) in enumerate(zip(images, labels)):
                yield index, {"image": png_bytes(image), "label": int(label)}

    WithoutTensorFlow.__name__ = WithoutTensorFlow.__qualname__ = f"{parent.__name__}WithoutTensorFlow"
    return WithoutTensorFlow
