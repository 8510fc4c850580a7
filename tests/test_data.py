"""Data: offline preparation, loading (mocked and real Fashion-MNIST), binarisation, errors."""

import gzip
import hashlib
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests.conftest import tiny_config
from vae import data


@pytest.fixture
def mocked_fashion_mnist(monkeypatch):
    # The mock serves examples from code: nothing is built, so skip the "is it built" checks.
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    monkeypatch.setattr(data, "_check_format", lambda *args: None)
    monkeypatch.setattr(data, "check_split", lambda *args: None)
    # Nor is anything on disk to cache: decode straight from the mock.
    monkeypatch.setattr(data.split_cache, "load_split", lambda builder, split, decode: decode(split))
    with tfds.testing.mock_data(num_examples=50, policy=tfds.testing.MockPolicy.USE_CODE):
        yield


def test_load_split_under_mock_data(mocked_fashion_mnist):
    images, labels = data.load_split("fashion_mnist", "train", None)
    assert images.shape == (50, 28, 28, 1) and images.dtype == np.uint8
    assert labels.shape == (50,) and labels.min() >= 0 and labels.max() < 10


def test_load_dataset_binarises_the_test_set_once(mocked_fashion_mnist):
    config = tiny_config()
    config.data.train_split, config.data.test_split = "train", "test"
    a = data.load_dataset(config.data)
    b = data.load_dataset(config.data)
    assert set(np.unique(a.test_images)) <= {0, 255}
    np.testing.assert_array_equal(a.test_images, b.test_images)
    assert a.dynamic and a.image_shape == (28, 28, 1)
    assert a.train_images.max() > 1  # dynamic: grey levels kept, drawn per batch on the device


def test_static_binarisation_is_fixed_and_follows_intensity():
    images = np.tile(np.arange(256, dtype=np.uint8), (400, 1))
    binary = data.binarize_static(images, seed=3)
    np.testing.assert_array_equal(binary, data.binarize_static(images, seed=3))
    assert not np.array_equal(binary, data.binarize_static(images, seed=4))
    assert set(np.unique(binary)) == {0, 255}
    frequency = (binary == 255).mean(axis=0)
    np.testing.assert_allclose(frequency, np.arange(256) / 255, atol=0.08)
    assert frequency[0] == 0 and frequency[255] == 1


def test_dynamic_binarisation_draws_fresh_bits_with_the_right_mean():
    images = jnp.full((2000, 4), 51, jnp.uint8)  # intensity 0.2
    a = data.to_model_input(images, jax.random.key(0))
    b = data.to_model_input(images, jax.random.key(1))
    assert set(np.unique(a)) <= {0.0, 1.0}
    assert float(a.mean()) == pytest.approx(0.2, abs=0.01)
    assert not np.array_equal(a, b)
    np.testing.assert_allclose(data.to_model_input(images, None), 0.2)


def test_restore_upstream_gzip_rebuilds_the_header_byte_for_byte(tmp_path):
    payload = b"\x00\x00\x08\x01" + bytes(range(200))
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="train-labels-idx1-ubyte", mode="wb", fileobj=buffer, mtime=1504176606) as f:
        f.write(payload)
    upstream = buffer.getvalue()
    assert upstream[3] == 0x08  # FNAME set, the name follows the 10-byte header
    name_end = upstream.index(b"\x00", 10) + 1
    # Debian's copy: flags and time stamp cleared, no file name; the compressed payload is the same.
    debian = upstream[:3] + b"\x00" + (123456).to_bytes(4, "little") + upstream[8:10] + upstream[name_end:]
    src = tmp_path / "train-labels-idx1-ubyte.gz"
    src.write_bytes(debian)
    data.restore_upstream_gzip(src, tmp_path / "restored.gz")
    assert (tmp_path / "restored.gz").read_bytes() == upstream


def test_debian_files_give_tfds_checksums():
    source = data.DEBIAN_FASHION_MNIST_DIR
    if not source.is_dir():
        pytest.skip("dataset-fashion-mnist is not installed")
    import importlib.resources

    checksums_file = importlib.resources.files("tensorflow_datasets") / "url_checksums" / "fashion_mnist.txt"
    expected = {line.split("\t")[3]: line.split("\t")[2]
                for line in checksums_file.read_text().splitlines() if line.strip()}
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        staged = data.stage_debian_fashion_mnist(Path(tmp))
        for name, sha in expected.items():
            assert hashlib.sha256((staged / name).read_bytes()).hexdigest() == sha


def test_real_fashion_mnist(fashion_mnist):
    images, labels = data.load_split(fashion_mnist, "test", None)
    assert images.shape == (10_000, 28, 28, 1) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10
    assert 60 < images.mean() < 80  # Fashion-MNIST's mean intensity is about 73 of 255
    small, _ = data.load_split(fashion_mnist, "train[:100]", None)
    assert small.shape == (100, 28, 28, 1)


def test_unprepared_data_set_names_the_command(tmp_path):
    with pytest.raises(data.DataError, match="prepare_data.py --dataset mnist"):
        data.check_prepared("mnist", str(tmp_path))


def test_unknown_data_set_and_split_are_clear_errors(tmp_path, fashion_mnist):
    with pytest.raises(data.DataError, match="unknown TFDS data set"):
        data.check_prepared("no_such_dataset_xyz", str(tmp_path))
    with pytest.raises(data.DataError, match="validation"):
        data.load_split(fashion_mnist, "validation", None)
