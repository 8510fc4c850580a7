"""Data: offline preparation, loading (mocked and real Fashion-MNIST), binarisation, errors."""

import gzip
import hashlib
import io
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests.conftest import tiny_config
from vae.data import dataset, pixels, prepare, source


@pytest.fixture
def mocked_fashion_mnist(monkeypatch):
    # The mock serves examples from code: nothing is built, so skip the "is it built" checks.
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    monkeypatch.setattr(source, "check_format", lambda *args: None)
    monkeypatch.setattr(source, "check_split", lambda *args: None)
    # Nor is anything on disk to cache: decode straight from the mock.
    monkeypatch.setattr(source.split_cache, "load_split", lambda builder, split, decode: decode(split))
    with tfds.testing.mock_data(num_examples=50, policy=tfds.testing.MockPolicy.USE_CODE):
        yield


def test_load_split_under_mock_data(mocked_fashion_mnist):
    images, labels = source.load_split("fashion_mnist", "train", None)
    assert images.shape == (50, 28, 28, 1) and images.dtype == np.uint8
    assert labels.shape == (50,) and labels.min() >= 0 and labels.max() < 10


def test_load_dataset_binarises_the_test_set_once(mocked_fashion_mnist):
    config = tiny_config()
    config.data.train_split, config.data.test_split = "train", "test"
    a = dataset.load_dataset(config.data)
    b = dataset.load_dataset(config.data)
    assert set(np.unique(a.test_images)) <= {0, 255}
    np.testing.assert_array_equal(a.test_images, b.test_images)
    assert a.dynamic and a.image_shape == (28, 28, 1)
    assert a.train_images.max() > 1  # dynamic: grey levels kept, drawn per batch on the device


def test_static_binarisation_is_fixed_and_follows_intensity():
    images = np.tile(np.arange(256, dtype=np.uint8), (400, 1))
    binary = pixels.binarize_static(images, seed=3)
    np.testing.assert_array_equal(binary, pixels.binarize_static(images, seed=3))
    assert not np.array_equal(binary, pixels.binarize_static(images, seed=4))
    assert set(np.unique(binary)) == {0, 255}
    frequency = (binary == 255).mean(axis=0)
    np.testing.assert_allclose(frequency, np.arange(256) / 255, atol=0.08)
    assert frequency[0] == 0 and frequency[255] == 1


def test_dynamic_binarisation_draws_fresh_bits_with_the_right_mean():
    images = jnp.full((2000, 4), 51, jnp.uint8)  # intensity 0.2
    a = pixels.to_model_input(images, jax.random.key(0))
    b = pixels.to_model_input(images, jax.random.key(1))
    assert set(np.unique(a)) <= {0.0, 1.0}
    assert float(a.mean()) == pytest.approx(0.2, abs=0.01)
    assert not np.array_equal(a, b)
    np.testing.assert_allclose(pixels.to_model_input(images, None), 0.2)


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
    prepare.restore_upstream_gzip(src, tmp_path / "restored.gz")
    assert (tmp_path / "restored.gz").read_bytes() == upstream


def test_debian_files_give_tfds_checksums():
    source = prepare.DEBIAN_FASHION_MNIST_DIR
    if not source.is_dir():
        pytest.skip("dataset-fashion-mnist is not installed")
    import importlib.resources

    checksums_file = importlib.resources.files("tensorflow_datasets") / "url_checksums" / "fashion_mnist.txt"
    expected = {line.split("\t")[3]: line.split("\t")[2]
                for line in checksums_file.read_text().splitlines() if line.strip()}
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        staged = prepare.stage_debian_fashion_mnist(Path(tmp))
        for name, sha in expected.items():
            assert hashlib.sha256((staged / name).read_bytes()).hexdigest() == sha


def test_real_fashion_mnist(fashion_mnist):
    images, labels = source.load_split(fashion_mnist, "test", None)
    assert images.shape == (10_000, 28, 28, 1) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10
    assert 60 < images.mean() < 80  # Fashion-MNIST's mean intensity is about 73 of 255
    small, _ = source.load_split(fashion_mnist, "train[:100]", None)
    assert small.shape == (100, 28, 28, 1)


def test_unprepared_data_set_names_the_command(tmp_path):
    with pytest.raises(source.DataError, match="prepare_data.py --dataset mnist"):
        source.check_prepared("mnist", str(tmp_path))


def test_unknown_data_set_and_split_are_clear_errors(tmp_path, fashion_mnist):
    with pytest.raises(source.DataError, match="unknown TFDS data set"):
        source.check_prepared("no_such_dataset_xyz", str(tmp_path))
    with pytest.raises(source.DataError, match="validation"):
        source.load_split(fashion_mnist, "validation", None)


# --- building without TensorFlow -------------------------------------------------------------------


def write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes()))


def test_idx_files_are_read_and_images_encoded_losslessly(tmp_path):
    from PIL import Image

    from vae.data import mnist_builder

    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "images.gz", images)
    np.testing.assert_array_equal(mnist_builder.read_idx(tmp_path / "images.gz", 3), images)
    with Image.open(io.BytesIO(mnist_builder.png_bytes(images[2]))) as png:
        assert png.format == "PNG"
        np.testing.assert_array_equal(np.asarray(png), images[2])
    with pytest.raises(ValueError, match="IDX file of 1-D"):
        mnist_builder.read_idx(tmp_path / "images.gz", 1)
    write_idx(tmp_path / "short.gz", images)
    raw = gzip.decompress((tmp_path / "short.gz").read_bytes())
    (tmp_path / "short.gz").write_bytes(gzip.compress(raw[:-9]))  # a truncated file
    with pytest.raises(ValueError, match="its header says"):
        mnist_builder.read_idx(tmp_path / "short.gz", 3)


def test_the_tf_free_builder_is_tfds_own_fashion_mnist():
    from vae.data import mnist_builder

    ours, theirs = mnist_builder.builder_class("fashion_mnist"), tfds.image_classification.FashionMNIST
    assert issubclass(ours, theirs) and ours.name == theirs.name == "fashion_mnist"
    assert ours.VERSION == theirs.VERSION and ours.URL == theirs.URL
    assert tfds.builder("fashion_mnist").__class__ is theirs  # TFDS's registry is unchanged


PREPARE_AND_TRAIN = """
import sys
import numpy as np, tensorflow_datasets as tfds
from tests.conftest import tiny_config
from vae.data import dataset
from vae.data import pixels
from vae.data import prepare
from vae.data import source
from vae.train import loop
data_dir = sys.argv[1]
prepare.prepare("fashion_mnist", data_dir)
for split in ("train", "test"):
    ours = source.decode_split(tfds.builder("fashion_mnist", data_dir=data_dir), split, data_dir)
    theirs = source.decode_split(tfds.builder("fashion_mnist"), split, None)  # the TensorFlow-built set
    assert ours[0].shape[0] == {"train": 60000, "test": 10000}[split]
    assert np.array_equal(ours[0], theirs[0]) and np.array_equal(ours[1], theirs[1]), split
config = tiny_config(train__num_epochs=1)
config.data.data_dir = data_dir
loop.train_and_evaluate(config, sys.argv[2], progress=False)
assert not [m for m in sys.modules if m.split(".")[0] == "tensorflow"]  # even where it is installed
print("ok")
"""


@pytest.mark.slow  # a minute: all 70,000 images built and compared; the builder's parts are quick tests above
def test_preparing_and_training_never_import_tensorflow(tmp_path, fashion_mnist):
    """Fashion-MNIST built from Debian's files without TensorFlow: all 70,000 images and labels
    equal the TensorFlow-built set's, and a run trains on it, with tensorflow never imported."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO, xla_flags

    if not prepare.DEBIAN_FASHION_MNIST_DIR.is_dir():
        pytest.skip("dataset-fashion-mnist is not installed")
    env = dict(os.environ, XLA_FLAGS=xla_flags(1))
    result = subprocess.run([sys.executable, "-c", PREPARE_AND_TRAIN, str(tmp_path / "tfds"),
                             str(tmp_path / "run")], capture_output=True, text=True, cwd=REPO, env=env,
                            timeout=600)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


def test_a_data_set_that_needs_tensorflow_says_how_to_get_it(tmp_path, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorflow" else real_find_spec(name, *a))
    needs_tf = r"with TensorFlow, which is not installed: run `pip install -e '\.\[tfds-build\]'`"
    with pytest.raises(source.DataError, match=needs_tf):
        prepare.prepare("cifar10", str(tmp_path))


# --- the cache of decoded splits ---------------------------------------------------------------------


@pytest.fixture
def data_copy(tmp_path, fashion_mnist):
    """A copy of the prepared Fashion-MNIST in a data dir of its own (the cache goes beside it)."""
    import shutil

    builder = source.check_prepared(fashion_mnist, None)
    shutil.copytree(builder.data_dir, tmp_path / "fashion_mnist" / str(builder.info.version))
    return str(tmp_path)


def counting_decodes(monkeypatch):
    calls = []
    real = source.decode_split

    def decode(builder, split, data_dir):
        calls.append(split)
        return real(builder, split, data_dir)

    monkeypatch.setattr(source, "decode_split", decode)
    return calls


def test_cached_splits_equal_the_decoded_ones(data_copy, monkeypatch):
    builder = source.check_prepared("fashion_mnist", data_copy)
    calls = counting_decodes(monkeypatch)
    for split in ("test", "test[:1000]", "test[9000:]", "test[10%:20%]+test[:5]"):
        images, labels = source.load_split("fashion_mnist", split, data_copy)
        expected = source.decode_split(builder, split, data_copy)
        np.testing.assert_array_equal(images, expected[0])
        np.testing.assert_array_equal(labels, expected[1])
    assert calls.count("test[0:10000]") == 1  # the whole shard, decoded once, then cached
    from vae.data import split_cache

    assert split_cache.cache_file(builder, "fashion_mnist-test.array_record-00000-of-00001").is_file()


def test_the_cache_is_rebuilt_when_the_data_change_or_it_is_damaged(data_copy, monkeypatch, capfd):
    import os

    from vae.data import split_cache

    builder = source.check_prepared("fashion_mnist", data_copy)
    shard = builder.info.splits["test"].filenames[0]
    first = source.load_split("fashion_mnist", "test", data_copy)
    calls = counting_decodes(monkeypatch)
    source.load_split("fashion_mnist", "test", data_copy)
    assert calls == []
    os.utime(os.path.join(builder.data_dir, shard), ns=(1, 1))  # the data set was rebuilt
    source.load_split("fashion_mnist", "test", data_copy)
    assert len(calls) == 1
    path = split_cache.cache_file(builder, shard)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
    again = source.load_split("fashion_mnist", "test", data_copy)
    assert len(calls) == 2 and "unreadable" in capfd.readouterr().err
    np.testing.assert_array_equal(again[0], first[0])
    assert not list(path.parent.glob(".*tmp"))  # written atomically: no temporary file left


def test_a_data_dir_that_cannot_hold_the_cache_still_loads(data_copy, monkeypatch, capfd):
    from vae.data import split_cache

    def no_room(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(split_cache.np, "savez", no_room)
    images, _ = source.load_split("fashion_mnist", "test[:10]", data_copy)
    assert images.shape == (10, 28, 28, 1)
    assert "cannot cache decoded images" in capfd.readouterr().err
    builder = source.check_prepared("fashion_mnist", data_copy)
    assert not list(split_cache.cache_file(builder, "x").parent.glob("*"))  # nothing half-written


def test_offline_download_fails_at_once_and_leaves_nothing(tmp_path, monkeypatch):
    def unreachable(address, timeout=None):
        raise OSError(f"{address[0]}: no route")

    monkeypatch.setattr(prepare.socket, "create_connection", unreachable)
    start = time.perf_counter()
    with pytest.raises(source.DataError, match=r"no network: storage\.googleapis\.com cannot be"):
        prepare.prepare("mnist", str(tmp_path))
    assert time.perf_counter() - start < 10
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_failed_build_removes_its_partial_files(tmp_path):
    builder = source.tfds_builder("mnist", str(tmp_path))
    partial = Path(builder.data_dir).parent / "incomplete.ABC123_3.0.1"
    (partial / "x").mkdir(parents=True)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "file.tmp.0123").write_text("half")
    (downloads / "done.gz").write_text("whole")
    prepare.remove_partial_build(builder, tmp_path)
    assert not partial.exists() and sorted(p.name for p in downloads.iterdir()) == ["done.gz"]


def test_an_unprepared_data_set_names_its_own_make_command(tmp_path):
    with pytest.raises(source.DataError, match=r"make data DATASET=mnist"):
        source.check_prepared("mnist", str(tmp_path))
