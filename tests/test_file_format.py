"""The compressed file against damaged and adversarial input (vae/coding/container.py): a count
no stack can hold, a stack that runs out while decoding, a last word of zero; each refused in
one line before any long decode or allocation."""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import run_in_process, tiny_config
from vae.coding import codec, container
from vae.data import dataset
from vae.model.build import build_model
from vae.workdir import files


@pytest.fixture(scope="module")
def test_images(tiny_run):
    images, _ = dataset.load_test_set(files.read_config(tiny_run).data)
    return images[:60, ..., 0]  # 0/255, 28 x 28


@pytest.fixture(scope="module")
def coded(tiny_run, test_images):
    """A file of 60 test images and one of 3 named images."""
    loaded = codec.load(tiny_run)
    data, _ = codec.compress(loaded, test_images, block_size=8, progress=False)
    named, _ = codec.compress(loaded, test_images[:3], file_names=["a.png", "b.png", "c.png"],
                              progress=False)
    return data, named


def one_line_error(result, match):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert match in lines[0], lines[0]


def decompress(tiny_run, data, tmp_path):
    path = tmp_path / "f.bbans"
    path.write_bytes(data)
    return run_in_process("decompress.py", "--workdir", tiny_run, path, "--out", tmp_path / "out",
                          "--noprogress")


def test_a_named_file_whose_last_word_is_zero_is_refused_in_one_line(tiny_run, coded, tmp_path):
    """A top word of zero, which no coder writes (constriction refuses such words): one line,
    for a file with names (whose stack is opened first) and one without."""
    data, named = coded
    for original in (named, data):
        result = decompress(tiny_run, original[:-4] + bytes(4), tmp_path)
        one_line_error(result, "its last byte is zero")
        assert not (tmp_path / "out").exists()


def test_a_header_that_claims_more_images_than_its_stack_holds_is_refused(coded):
    """A count beyond MIN_BITS_PER_IMAGE bits of stack an image: refused when the header is read,
    before any model is loaded or array allocated, whatever the header's own checks say."""
    data, _ = coded
    header, words = container.unpack(data, "f")
    stack_bits = 8 * (len(data) - len(container.header_bytes(header)))
    assert header.count * 32 <= stack_bits  # a real file holds its count, 32 bits an image at least
    for count in (stack_bits // 32 + 1, stack_bits // 2, 2**62):
        forged = container.pack(dataclasses.replace(header, count=count), words)
        with pytest.raises(container.FileError, match=f"claims {count:,} images, more than"):
            container.unpack(forged, "f")


def certain_model():
    """A random tiny VAE made certain: q(z|x) is its prior N(0, I) whatever x, and p(x|z) says
    black with probability 1 - 2e-9 whatever z. A black image then costs next to nothing."""
    config = tiny_config()
    model = build_model(config.model, (28, 28, 1), jax.random.key(0))
    head = model.encoder.head.linear
    head.kernel.value, head.bias.value = jnp.zeros_like(head.kernel.value), jnp.zeros_like(head.bias.value)
    out = model.decoder.head
    out.kernel.value, out.bias.value = jnp.zeros_like(out.kernel.value), jnp.full_like(out.bias.value, -20.0)
    return codec.Loaded(Path("nowhere"), config, model, 0, "bernoulli", codec.model_hash(config, model))


def test_images_that_cost_almost_nothing_are_padded_to_the_least_bits_an_image():
    """Black images under a certain model: the first image costs a few bits, each pop under q
    takes more than that from the stack. The file's stack still holds MIN_BITS_PER_IMAGE bits an
    image and never pops into its checksum word (PAD_WORDs above it make up both), and decodes
    to the images."""
    loaded = certain_model()
    black = np.zeros((300, 28, 28), np.uint8)
    data, figures = codec.compress(loaded, black, block_size=50, progress=False)
    header, words = container.unpack(data, "f")
    assert 8 * (len(data) - len(container.header_bytes(header))) >= 32 * 300
    opened = codec.Opened(loaded, "f", len(data), header, None, words)
    decoded, _ = codec.decode(opened, progress=False)
    np.testing.assert_array_equal(decoded, black)
    assert container.MIN_BITS_PER_IMAGE == 32
    assert container.pad_words_needed(400, 0) == 400 + 1 and container.pad_words_needed(400, 400 * 4) == 0


def test_a_stack_that_runs_out_stops_decoding_at_once(tiny_run, coded, tmp_path):
    """The stack's lower half cut away (the header rewritten to match, as a forger would): the
    blocks above decode, then the stack runs out, and decoding stops there in one line instead of
    decoding garbage to the end."""
    data, _ = coded
    header, words = container.unpack(data, "f")
    forged = container.pack(header, words[len(words) // 2:])
    result = decompress(tiny_run, forged, tmp_path)
    one_line_error(result, "the stack ran out at images ")
    first = int(result.stderr.split("the stack ran out at images ")[1].split("-")[0])
    assert 0 < first < header.count  # the blocks above the cut decoded, the rest never started
