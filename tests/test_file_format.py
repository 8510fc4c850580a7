"""The compressed file against damaged and adversarial input (vae/coding/container.py): a count
no stack can hold, a stack that runs out while decoding, a last word of zero; each refused in
one line before any long decode or allocation."""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tests.conftest import run_in_process, tiny_config
from vae.coding import bbans, codec, container, file_name_code, first_image, fixed_point, latent_code
from vae.data import dataset
from vae.model.build import build_model
from vae.train import trained
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
    return run_in_process("decompress.py", "--workdir", tiny_run, path, "--out", tmp_path / "out.npy",
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
    head, out = model.encoder.head.linear, model.decoder.head
    for layer, bias in ((head, 0.0), (out, -20.0)):
        layer.kernel[...] = jnp.zeros_like(layer.kernel[...])
        layer.bias[...] = jnp.full_like(layer.bias[...], bias)
    return codec.Loaded(Path("nowhere"), config, model, 0, "bernoulli", codec.model_hash(config, model))


def test_images_that_cost_almost_nothing_are_padded_to_the_least_bits_an_image():
    """Black images under a certain model: the first image costs a few bits, each pop under q
    takes more than that from the stack. The file's stack still holds MIN_BITS_PER_IMAGE bits an
    image and never pops into its checksum word (PAD_WORDs above it make up both), and decodes
    to the images."""
    loaded = certain_model()
    black = np.zeros((60, 28, 28), np.uint8)
    data, figures = codec.compress(loaded, black, block_size=20, progress=False)
    header, words = container.unpack(data, "f")
    assert 8 * (len(data) - len(container.header_bytes(header))) >= 32 * 60
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


FORMAT_2_FILE = Path(__file__).parent / "data" / "format2_three_images.bbans"


def test_a_format_2_file_is_refused_in_one_line_naming_its_format(tiny_run, tmp_path):
    """A file of three named images that compress.py wrote in format 2 (before this coder, the
    header 0xB_): refused before any model runs, in one line naming its format and the commit
    whose decompress.py reads it."""
    data = FORMAT_2_FILE.read_bytes()
    assert data[0] == 0xBD and len(data) == 186
    result = decompress(tiny_run, data, tmp_path)
    one_line_error(result, "is in format 2 (its first byte is 0xBD), which an earlier compress.py wrote")
    commit = container.LAST_FORMAT_2_COMMIT
    assert f"decompress it with scripts/decompress.py of commit {commit}" in result.stderr
    with pytest.raises(container.FileError, match="format 5, written by a later compress.py"):
        container.unpack(bytes([5]) + data[1:], "f")


FORMAT_3_FILE = Path(__file__).parent / "data" / "format3_three_images.bbans"


def test_a_format_3_file_still_decodes(tiny_run, test_images, tmp_path):
    """Three named test images (a.png, b/c.png, d.jpg) that compress.py wrote in format 3, before
    files recorded their images' sizes: they decode with tiny_run's model, pixel for pixel. The file
    holds the tag of tiny_run's parameters to their last bit: a change to training that moves them
    by a rounding (a refused "another model") needs the file written again, with `codec.compress`
    of test_images[:3] named as below, by a commit whose same-size files are still format 3's."""
    data = FORMAT_3_FILE.read_bytes()
    assert data[0] == 3 and len(data) == 290
    opened = codec.open_file(tiny_run, data, "format3.bbans")
    assert opened.file_names == ["a.png", "b/c.png", "d.jpg"]
    images, _ = codec.decode(opened, progress=False)
    np.testing.assert_array_equal(np.asarray(images), test_images[:3])


def test_a_field_added_later_leaves_the_models_hash_as_it_was_at_its_old_value(tiny_run):
    """model.decoder_stages at 1 (what a run without it has) hashes as a config without the field,
    so that run's files keep their tag; another value is another model."""
    config, model, _ = trained.load_trained(tiny_run)
    assert config.model.decoder_stages == 1
    without = ml_collections.ConfigDict(config.to_dict())
    del without.model["decoder_stages"]
    staged = ml_collections.ConfigDict(config.to_dict())
    staged.model.decoder_stages = 4
    assert codec.model_hash(config, model) == codec.model_hash(without, model)
    assert codec.model_hash(staged, model) != codec.model_hash(config, model)


def test_the_header_check_refuses_a_damaged_header_or_a_cut_file(coded):
    """Any bit of the header after its version byte flipped, the file cut or grown by a byte or a
    word: refused when the header is read (its check covers the header and the file's length)."""
    data, named = coded
    header, _ = container.unpack(data, "f")
    length = len(container.header_bytes(header)) + container.CHECK_BYTES
    assert header.count == 60 and length == 6 + 1 + 1 + 1 + 1 + len(header.ramp) + 2
    for position in range(1, length):
        for bit in range(8):
            damaged = bytearray(data)
            damaged[position] ^= 1 << bit
            with pytest.raises(container.FileError, match="damaged or truncated"):
                container.unpack(bytes(damaged), "f")
    for cut in (data[:-1], data[:-4], data + b"\x01", named[:-1], named + bytes([7, 7, 7, 7])):
        with pytest.raises(container.FileError, match="damaged or truncated: its header's check fails"):
            container.unpack(cut, "f")


def test_a_file_of_a_coder_with_other_constants_is_refused_saying_so(tiny_run, test_images, tmp_path,
                                                                    monkeypatch):
    """A file written with another ROUND_BITS (the same format, the same model): refused in one
    line that says the coder's constants differ, naming both coder tags. Every constant and table
    the coder depends on moves the tag."""
    loaded = codec.load(tiny_run)
    here = container.coder_tag()
    with monkeypatch.context() as patched:
        patched.setattr(fixed_point, "ROUND_BITS", 1)
        other = container.coder_tag()
        data, _ = codec.compress(loaded, test_images[:5], progress=False)
    assert other != here and container.coder_tag() == here
    result = decompress(tiny_run, data, tmp_path)
    one_line_error(result, f"was written by a coder with other constants (coder tag {other:04x}, this one's "
                           f"{here:04x})")
    one_entry_more = fixed_point.PHI_TABLE + (np.arange(len(fixed_point.PHI_TABLE)) == 9)
    changes = [(latent_code, "GRID_STEPS", 128), (latent_code, "ROUND_BITS", 2),
               (first_image, "THRESHOLD", 0.7), (first_image, "RATIO_STEPS", 512), (bbans, "VARIANTS", 7),
               (file_name_code, "MAX_NAME_BYTES", 100), (fixed_point, "PHI_TABLE", one_entry_more),
               (container, "MIN_BITS_PER_IMAGE", 16)]
    for module, name, value in changes:
        with monkeypatch.context() as patched:
            patched.setattr(module, name, value)
            assert container.coder_tag() != here, name
