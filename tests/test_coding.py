"""Bits-back compression (vae.coding): exact round trips with small random models, one image, the
file format's checks (another model, damaged, truncated), pixel values a Bernoulli model cannot
code, the models the codec refuses, the file length against the -ELBO of a small trained model,
and the two scripts end to end."""

import dataclasses
import math
import os
import shutil
import subprocess
import sys
import zlib

import constriction
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from notebooks import kl_coding  # the KL notebook's coding tools
from tests.conftest import REPO, run_in_process, tiny_config
from vae.coding import bbans, codec, container, fixed_point, multiset, pixel_code
from vae.coding.errors import CodingError, DecodeMismatch
from vae.coding.host_model import host_model
from vae.coding.latent_code import GaussianCode, LatentBins, PriorCode
from vae.data import dataset
from vae.model.build import build_model
from vae.train import loop
from vae.workdir import files
from vae.workdir.files import WorkdirError

IMAGE_SHAPE = (28, 28, 1)
BOTTOM = 0x80000000 | 12345  # a file's checksum word, where encoding starts


def random_model(seed=0, **overrides):
    config = tiny_config(**overrides)
    return config, build_model(config.model, IMAGE_SHAPE, jax.random.key(seed))


def random_symbols(count, seed=0):
    """Binary images with some structure: each image's pixels on with its own probability."""
    rng = np.random.default_rng(seed)
    p_N = rng.uniform(0.05, 0.6, size=(count, 1))
    return (rng.uniform(size=(count, math.prod(IMAGE_SHAPE))) < p_N).astype(np.int32)


def round_trip(model, symbols, block_size, bins=None):
    bins = bins or LatentBins()
    coded = bbans.encode(host_model(model, block_size), symbols, bins, bottom=BOTTOM)
    decoded, left = bbans.decode(host_model(model, block_size), coded.words, len(symbols), coded.ramp, bins)
    assert left.tolist() == [BOTTOM]  # the stack ends where it began
    return coded, decoded


@pytest.mark.parametrize("arch, count, block_size", [("mlp", 150, 32), ("conv", 150, 32), ("hvae", 150, 32),
                                                     ("conv_hvae", 12, 4)])
def test_round_trip_is_exact_with_a_random_model(arch, count, block_size):
    _, model = random_model(model__arch=arch)
    symbols = random_symbols(count)
    coded, decoded = round_trip(model, symbols, block_size=block_size, bins=LatentBins(1 / 32, 8.0))
    np.testing.assert_array_equal(decoded, symbols)
    assert coded.ramp and all(size <= block_size for size in coded.ramp)
    assert bbans.block_sizes(count, block_size, coded.ramp)[1:len(coded.ramp) + 1] == list(coded.ramp)


@pytest.mark.parametrize("likelihood, arch", [("logistic_mixture", "mlp"), ("categorical", "mlp"),
                                              ("logistic_mixture", "hvae")])
def test_8_bit_images_round_trip_exactly(likelihood, arch):
    """Any uint8 levels, coded with each sub-pixel's 256 level probabilities."""
    _, model = random_model(model__arch=arch, model__likelihood=likelihood, data__binarize="none",
                            model__mixture_components=2)
    levels = np.random.default_rng(1).integers(0, 256, size=(24, math.prod(IMAGE_SHAPE))).astype(np.int32)
    bins = LatentBins(1 / 32, 8.0)
    coded = bbans.encode(host_model(model, 8), levels, bins)
    decoded, left = bbans.decode(host_model(model, 8), coded.words, len(levels), coded.ramp, bins)
    np.testing.assert_array_equal(decoded, levels)
    assert left.size == 0
    assert 32 * len(coded.words) > 0.9 * coded.elbo_bits_N.sum()  # no cheaper than the bound


def test_one_image_round_trips():
    _, model = random_model()
    symbols = random_symbols(1, seed=3)
    coded, decoded = round_trip(model, symbols, block_size=8)
    np.testing.assert_array_equal(decoded, symbols)
    assert coded.ramp == () and coded.words.size * 32 < coded.first_image_bits + 64


def test_latent_gaussians_pop_and_push_back_exactly():
    """q(z|x) narrow and wide, means at and beyond the range's edge: the pop stays in range and
    its push restores the stack word for word; the prior likewise."""
    bins = LatentBins(1 / 64, 4.0)
    rng = np.random.default_rng(0)
    mean, std = rng.normal(scale=2.0, size=(6, 30)), np.exp(rng.uniform(-5, 1.5, size=(6, 30)))
    mean[0, :3], std[0, :3] = (3.99, -4.5, 10.0), 0.001
    words = rng.integers(1, 2**32, 400, dtype=np.uint32)
    coder = constriction.stream.stack.AnsCoder(words.copy())
    code = GaussianCode(bins.max_index)
    gaussians = bins.steps(mean, std, offset=0.4)
    index = code.pop(coder, gaussians)
    assert index.shape == mean.shape and -512 <= index.min() and index.max() <= 511
    # 3.99 and -4.5 in bins of 1/64 (K = 256: the coder's indices run over [-512, 511]); 10 beyond them,
    # in the last bin, which holds the tail
    assert index[0, :3].tolist() == [255, -288, 511]
    code.push(coder, index, gaussians)
    np.testing.assert_array_equal(coder.get_compressed(), words)
    prior = PriorCode(bins)
    top = prior.pop(coder, 500)
    assert abs(top.std() * bins.width - 1.0) < 0.1 and np.abs(top).max() <= bins.max_index  # 4 sd: never
    prior.push(coder, top)
    np.testing.assert_array_equal(coder.get_compressed(), words)


def test_block_sizes_cover_the_images_once():
    assert bbans.block_sizes(1, 100, ()) == [1]
    assert bbans.block_sizes(250, 100, (1, 2, 4)) == [1, 1, 2, 4, 100, 100, 42]
    assert bbans.block_sizes(8, 100, (1, 2, 4)) == [1, 1, 2, 4]
    with pytest.raises(ValueError):
        bbans.block_sizes(5, 100, (1, 2, 4))


def on_rounding_boundaries(model, shift: float = 0.0):
    """The model with its encoder's means and its decoder's logits constant, each exactly halfway
    between two steps of its coding grid (q's mean in 1/256 of a bin of 1/64, a logit in 2^-16)
    plus `shift` steps: the values another machine's last bits would round the other way. Its
    last layers' parameters are float64, so that a shift far below float32's precision survives."""
    head, out = model.encoder.head.linear, model.decoder.head
    latent_dim = head.bias[...].shape[0] // 2
    means = (100.5 + np.arange(latent_dim) + shift) / (256 * 64)
    logits = (1000.5 + 3 * (np.arange(out.bias[...].shape[0]) % 7) + shift) / 2**16
    with jax.enable_x64(True):
        for layer, bias in ((head, np.concatenate([means, np.zeros(latent_dim)])), (out, logits)):
            layer.kernel.set_value(jnp.zeros(layer.kernel[...].shape, jnp.float64))
            layer.bias.set_value(jnp.asarray(bias, jnp.float64))
    return model


def test_a_decoder_whose_floats_differ_within_the_guard_band_decodes_exactly():
    """Another machine, in small: the decoder's model outputs are the encoder's moved by 2^-30 of
    a grid step (q's means and the logits; the guard band is 2^-26), and the encoder's sit
    exactly on rounding boundaries. The encoder codes every block on another variant's grids
    (offset by 1/15 of a step), where both sides round alike, and the decoder gets the images
    back."""
    _, model = random_model()
    _, moved = random_model()
    encoder, decoder = on_rounding_boundaries(model), on_rounding_boundaries(moved, shift=2.0**-30)
    symbols = random_symbols(30)
    bins = LatentBins()
    coded = bbans.encode(host_model(encoder, 8), symbols, bins, bottom=BOTTOM)
    decoded, left = bbans.decode(host_model(decoder, 8), coded.words, len(symbols), coded.ramp, bins)
    np.testing.assert_array_equal(decoded, symbols)
    assert left.tolist() == [BOTTOM]
    assert coded.other_variants == len(bbans.block_sizes(30, 8, coded.ramp)) - 1  # every block but the first


def test_the_encoder_and_the_decoder_code_p_x_given_z_with_integers_from_one_program(monkeypatch):
    """The integers p(x|z) is coded with are made from the model's floats in one compiled program
    (`HostModel.pixel_parameters`) per shape (the first image's one row, a block), which both sides
    call: the Bernoulli's table look-up of its rounded logits is traced once for each, so no
    second compilation of the float model, whose last bits could differ, makes integers."""
    _, model = random_model()
    traced = []
    original = fixed_point.sigmoid

    def spy(argument):
        traced.append(argument.shape)
        return original(argument)

    monkeypatch.setattr(fixed_point, "sigmoid", spy)
    host = host_model(model, 8)
    symbols = random_symbols(20)
    coded = bbans.encode(host, symbols, LatentBins(), bottom=BOTTOM)
    decoded, _ = bbans.decode(host, coded.words, len(symbols), coded.ramp, LatentBins())
    np.testing.assert_array_equal(decoded, symbols)
    assert sorted(traced) == [(1, 784), (8 * 784,)] or sorted(traced) == [(1, 784), (8, 784)], traced


@pytest.mark.parametrize("arch", ["mlp", "hvae"])
def test_the_latents_are_coded_without_a_float_gaussian(monkeypatch, arch):
    """No constriction QuantizedGaussian (whose CDF is a float erf of the platform's libm) codes a
    latent: q, the priors and the first image's bins come from integer tables."""
    def refuse(*args, **kwargs):
        raise AssertionError("a latent coded with constriction's float Gaussian")

    monkeypatch.setattr(constriction.stream.model, "QuantizedGaussian", refuse)
    _, model = random_model(model__arch=arch)
    symbols = random_symbols(20)
    _, decoded = round_trip(model, symbols, block_size=8)
    np.testing.assert_array_equal(decoded, symbols)


def test_other_probabilities_do_not_decode_silently():
    """A decoder whose model differs from the encoder's (here: another random model) gets other
    images and a stack that does not end on the bottom word encoding started from."""
    _, model = random_model(seed=0)
    _, other = random_model(seed=1)
    symbols = random_symbols(40)
    bins = LatentBins()
    coded = bbans.encode(host_model(model, 16), symbols, bins, bottom=BOTTOM)
    try:
        decoded, left = bbans.decode(host_model(other, 16), coded.words, 40, coded.ramp, bins)
    except DecodeMismatch:  # a symbol the other model cannot code
        return
    assert not np.array_equal(decoded, symbols) and left.tolist() != [BOTTOM]


def test_pixel_encodings():
    assert pixel_code.pixel_scale(np.array([[0, 1]], np.uint8), "bernoulli") == 1
    assert pixel_code.pixel_scale(np.array([[0, 255]], np.uint8), "bernoulli") == 255
    assert pixel_code.pixel_scale(np.zeros((2, 3), np.uint8), "bernoulli") == 1
    for bad, why in ((np.array([[0, 7]], np.uint8), "7"), (np.array([[0, 1, 255]], np.uint8), "both"),
                     (np.array([[0, 1]], np.int64), "uint8")):
        with pytest.raises(pixel_code.PixelError, match=why):
            pixel_code.pixel_scale(bad, "bernoulli")
    levels = np.array([[0, 7, 255]], np.uint8)  # 8-bit pixels: every value is its own symbol
    assert pixel_code.pixel_scale(levels, "categorical") == 1
    assert pixel_code.pixel_scale(levels, "logistic_mixture") == 1
    np.testing.assert_array_equal(pixel_code.to_symbols(levels, 1), [[0, 7, 255]])
    np.testing.assert_allclose(pixel_code.model_input(np.array([[0, 51, 255]]), "categorical"), [[0, 0.2, 1]])


def test_the_codec_refuses_what_it_does_not_code():
    for overrides, why in (({"model__prior": "vampprior", "model__num_pseudo_inputs": 4}, "VampPrior"),
                           ({"model__prior": "vampprior", "model__num_pseudo_inputs": 4,
                             "model__arch": "hvae"}, "VampPrior")):
        config, model = random_model(**overrides)
        with pytest.raises(CodingError, match=why):
            codec.check_codable(config, model)


def test_messages_cost_their_information_content():
    rng = np.random.default_rng(0)
    p, q = np.array([0.6, 0.3, 0.1]), np.array([0.5, 0.4, 0.1])
    x = rng.choice(3, size=100_000, p=p)
    for code in (p, q):
        bits = kl_coding.ans_file_bits(x, code)
        assert 0 < bits - kl_coding.information_bits(x, code) < 0.001 * bits + 64
    dogs = np.zeros(10_000, np.int64)
    dog_bits = kl_coding.ans_file_bits(dogs, [0.3, 0.7]) - 32 * len(kl_coding.START_WORDS)
    assert dog_bits / 10_000 == pytest.approx(-math.log2(0.3), abs=32 / 10_000 + 1e-4)


@pytest.mark.parametrize("header", [
    container.Header(model_tag=0xA1, software=1, count=1, array_ndim=3, pixel_scale=255, has_names=False),
    container.Header(model_tag=7, software=0, count=12, array_ndim=4, pixel_scale=1, has_names=True,
                     block_size=5, ramp=(1, 2, 4)),
    container.Header(model_tag=0, software=3, count=300, array_ndim=3, pixel_scale=1, has_names=False,
                     block_size=100, bin_width=1 / 32, half_range=8.0, ramp=(1, 2, 4, 8, 16, 32, 64))])
def test_header_round_trips(header):
    # 300 images need 300 · MIN_BITS_PER_IMAGE bits of stack; the top word's high zero byte is dropped
    words = np.array([5] * 300 + [0xFFFFFFFF, 0x00012345], np.uint32)
    data = container.pack(header, words)
    assert len(data) == len(container.header_bytes(header)) + container.CHECK_BYTES + 4 * 301 + 3
    got_header, got_words = container.unpack(data, "f")
    assert got_header == dataclasses.replace(header, coder_tag=container.coder_tag())
    np.testing.assert_array_equal(got_words, words)


def test_a_one_image_header_is_eight_bytes():
    """Format 3's version byte, the flags, the model's tag, the software, the coder's tag (2
    bytes) and the header's check (2 bytes: CRC-32 of the bytes before it and the file's length)."""
    header = container.Header(model_tag=0xA1, software=1, count=1, array_ndim=4, pixel_scale=255,
                              has_names=True)
    head = container.header_bytes(header)
    assert head == bytes([3, container.ARRAY4 | container.SCALE255 | container.NAMES, 0xA1, 1]) + (
        container.coder_tag().to_bytes(2, "little"))
    data = container.pack(header, np.array([0x81234567], np.uint32))
    assert len(data) == 8 + 4
    assert data[6:8] == (zlib.crc32(head + bytes([12])) & 0xFFFF).to_bytes(2, "little")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, fashion_mnist):
    """A 2-epoch tiny run evaluated on 2,000 test images, and its compressed test split."""
    path = tmp_path_factory.mktemp("coded_run")
    history = loop.train_and_evaluate(tiny_config(data__test_split="test[:2000]"), path, progress=False)
    data, figures = codec.compress_workdir(path, progress=False)
    return path, history[-1], data, figures


def test_file_length_is_within_half_a_percent_of_the_elbo(trained_run):
    path, last, data, figures = trained_run
    elbo_bits = figures["images"] * last["test/elbo"] / math.log(2.0)  # the run's own evaluation
    assert figures["images"] == 2000 and figures["epoch"] == 2
    assert 8 * len(data) / elbo_bits - 1 < 0.005
    assert 8 * len(data) / elbo_bits - 1 > -0.005  # one posterior sample cannot beat the ELBO by much
    images, decoded_figures = codec.decompress_workdir(path, data, "f", progress=False)
    assert images.shape == (2000, 28, 28, 1) and images.dtype == np.uint8
    expected, _ = dataset.load_test_set(files.read_config(path).data)
    np.testing.assert_array_equal(images, expected)
    assert decoded_figures["bits_per_dim"] == figures["bits_per_dim"]


def test_an_array_of_ones_and_zeros_comes_back_as_it_was(trained_run):
    path = trained_run[0]
    x = (np.random.default_rng(0).uniform(size=(7, 28, 28)) < 0.3).astype(np.uint8)
    data, _ = codec.compress_workdir(path, x, progress=False)
    images, _ = codec.decompress_workdir(path, data, "f", progress=False)
    assert images.dtype == np.uint8 and images.shape == x.shape
    np.testing.assert_array_equal(images, x)
    with pytest.raises(CodingError, match="shape"):
        codec.compress_workdir(path, x[:, :27], progress=False)
    with pytest.raises(pixel_code.PixelError, match="binarise"):
        codec.compress_workdir(path, x * 3, progress=False)


def test_per_image_code_lengths_add_up(trained_run):
    lengths = kl_coding.image_code_lengths(trained_run[0], max_examples=200)
    parts = lengths["pixels"] + lengths["latents"] - lengths["bits_back"]
    np.testing.assert_array_equal(lengths["code"], parts)
    assert lengths["bits_back"][0] == 0 and np.all(lengths["bits_back"][1:] > 0)
    rest = slice(1, None)
    assert lengths["code"][rest].mean() == pytest.approx(lengths["elbo"][rest].mean(), rel=0.01)
    assert lengths["rate"][rest].mean() == pytest.approx(lengths["kl"][rest].mean(), abs=2.0)


def test_a_file_from_another_model_is_refused(trained_run):
    path, _, data, _ = trained_run
    with pytest.raises(CodingError, match="another model .*pass --epoch 2"):
        codec.decompress_workdir(path, data, "f", epoch=1, progress=False)


def test_damaged_and_truncated_files_are_refused(trained_run):
    """Damage anywhere (the header, the words, the last word) or a cut: the header is refused, or
    the stack decodes to other images than its bottom word's checksum covers."""
    path, _, data, _ = trained_run
    for position, why in ((0, "not a file written by"), (3, "damaged"),
                          (len(data) // 2, "did not decode"), (len(data) - 1, "did not decode")):
        damaged = bytearray(data)
        damaged[position] ^= 0x10 if damaged[position] != 0x10 else 0x20  # a last byte of 0 is refused apart
        with pytest.raises(CodingError, match=why):
            codec.decompress_workdir(path, bytes(damaged), "f", progress=False)
    # A top word of zero, which no coder writes: refused with the header, before any model runs.
    with pytest.raises(container.FileError, match="its last byte is zero"):
        codec.decompress_workdir(path, data[:-4] + bytes(4), "f", progress=False)
    with pytest.raises(CodingError, match="damaged or truncated"):
        codec.decompress_workdir(path, data[:-4], "f", progress=False)
    with pytest.raises(container.FileError, match="not a file written by"):
        codec.decompress_workdir(path, b"\x93NUMPY" + data[6:], "f", progress=False)


def test_a_workdir_without_a_checkpoint_is_refused(tmp_path):
    with pytest.raises(WorkdirError):
        codec.compress_workdir(tmp_path, progress=False)


def run_script(name, *args):
    return subprocess.run([sys.executable, f"{REPO}/scripts/{name}", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=120)


@pytest.mark.slow  # two processes of their own; the scripts run in process in test_compress_files.py
def test_compress_and_decompress_scripts(trained_run, tmp_path):
    path = trained_run[0]
    coded, out = tmp_path / "test.bbans", tmp_path / "test.npy"
    result = run_script("compress.py", "--workdir", path, "--out", coded, "--max-examples", 300,
                        "--no-progress")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "bits/dim" in result.stderr and "images/s" in result.stderr
    result = run_script("decompress.py", "--workdir", path, coded, "--out", out, "--no-progress")
    assert result.returncode == 0, result.stderr[-2000:]
    expected, _ = dataset.load_test_set(files.read_config(path).data)
    np.testing.assert_array_equal(np.load(out), expected[:300])
    coded.write_bytes(coded.read_bytes()[:-8])  # truncated: one line, exit 2, nothing written
    result = run_in_process("decompress.py", "--workdir", path, coded, "--out", tmp_path / "no.npy",
                            "--no-progress")
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "truncated" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "no.npy").exists()


@pytest.mark.slow  # 8-bit round trips are quick-tested with random models
def test_an_8_bit_run_compresses_its_test_images_to_its_elbo(tmp_path, fashion_mnist):
    config = tiny_config(data__binarize="none", model__likelihood="logistic_mixture",
                         model__mixture_components=2, data__test_split="test[:300]", train__num_epochs=1)
    history = loop.train_and_evaluate(config, tmp_path, progress=False)
    data, figures = codec.compress_workdir(tmp_path, progress=False)
    elbo_bits = 300 * history[-1]["test/elbo"] / math.log(2.0)
    assert abs(8 * len(data) / elbo_bits - 1) < 0.01
    images, _ = codec.decompress_workdir(tmp_path, data, "f", progress=False)
    expected, _ = dataset.load_test_set(config.data)
    assert len(np.unique(expected)) > 200  # 8-bit, not binarised
    np.testing.assert_array_equal(images, expected)


def test_a_file_that_decodes_wrong_ends_in_one_line_naming_the_versions(trained_run, tmp_path):
    """Words that decode to other images (here: one bit flipped under a valid header, as another
    machine's probabilities would read them): one line, exit 2, both sides' library versions."""
    path, _, data, _ = trained_run
    header, words = container.unpack(data, "f")
    words = words.copy()
    words[len(words) // 2] ^= 1 << 7
    coded = tmp_path / "wrong.bbans"
    coded.write_bytes(container.pack(header, words))
    result = run_in_process("decompress.py", "--workdir", path, coded, "--out", tmp_path / "no.npy",
                            "--no-progress")
    assert result.returncode == 2 and result.stderr.startswith("error: "), result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "no.npy").exists()
    assert "did not decode" in result.stderr
    assert container.installed_versions() in result.stderr


# A decoder in a process of its own with one thread, and with XLA's code for SSE4.2 (narrower
# vectors, no fused multiply-add: other float64 exp and tanh results) where the encoder had AVX-512.
OTHER_DECODERS = {
    "one thread": (["taskset", "-c", "0"] if shutil.which("taskset") else [],
                   "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"),
    "SSE4.2": ([], "--xla_cpu_max_isa=SSE4_2"),
}


@pytest.fixture(scope="module")
def eight_bit_run(tmp_path_factory, fashion_mnist):
    path = tmp_path_factory.mktemp("coded_8_bit_run")
    config = tiny_config(data__binarize="none", model__likelihood="logistic_mixture",
                         model__mixture_components=3, data__test_split="test[:200]", train__num_epochs=1)
    loop.train_and_evaluate(config, path, progress=False)
    return path


def test_an_8_bit_file_decodes_in_a_process_with_one_thread_and_sse4_2(eight_bit_run, tmp_path):
    """Files that decode elsewhere, in the quick suite: an 8-bit file (the likelihood whose float
    arithmetic differs most between vector widths) decoded by decompress.py in a process of its own
    with one XLA thread and SSE4.2 at once. The slow test below takes each change alone, and a
    binarised file too."""
    expected, _ = dataset.load_test_set(files.read_config(eight_bit_run).data)
    data, _ = codec.compress_workdir(eight_bit_run, max_examples=40, progress=False)
    coded, out = tmp_path / "test.bbans", tmp_path / "test.npy"
    coded.write_bytes(data)
    flags = " ".join(xla_flags for _, xla_flags in OTHER_DECODERS.values())
    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip())
    command = [*OTHER_DECODERS["one thread"][0], sys.executable, f"{REPO}/scripts/decompress.py",
               "--workdir", eight_bit_run, coded, "--out", out, "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_array_equal(np.load(out), expected[:40])


@pytest.mark.slow  # 4 decoding processes; quick sibling: the test above
def test_files_decode_with_one_thread_and_narrower_vectors(trained_run, eight_bit_run, tmp_path):
    for run in (trained_run[0], eight_bit_run):
        expected, _ = dataset.load_test_set(files.read_config(run).data)
        expected = expected[:200]
        data, _ = codec.compress_workdir(run, max_examples=200, progress=False)
        coded = tmp_path / "test.bbans"
        coded.write_bytes(data)
        for name, (prefix, xla_flags) in OTHER_DECODERS.items():
            out = tmp_path / f"{run.name} {name}.npy"
            env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {xla_flags}".strip())
            command = [*prefix, sys.executable, f"{REPO}/scripts/decompress.py", "--workdir", run, coded,
                       "--out", out, "--no-progress"]
            result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
            assert result.returncode == 0, f"{name}: {result.stderr[-2000:]}"
            np.testing.assert_array_equal(np.load(out), expected, err_msg=f"{run.name}, {name}")


def test_a_set_of_images_comes_back_as_the_same_set_and_saves_its_order():
    """`unordered`: the choice of the next images popped off the stack before each block and pushed
    back by the decoder; the same multiset comes back (duplicates included), the stack ends where it
    began, and the file is about log2(N!/Π copies!) − log2(N) bits shorter than the ordered one
    (the first image is not chosen)."""
    _, model = random_model()
    symbols = random_symbols(150)
    symbols[40] = symbols[7]  # two pairs of copies
    symbols[90] = symbols[12]
    host = host_model(model, 32)
    ordered = bbans.encode(host, symbols, LatentBins(), bottom=BOTTOM)
    unordered = bbans.encode(host, symbols, LatentBins(), bottom=BOTTOM, unordered=True)
    decoded, left = bbans.decode(host, unordered.words, len(symbols), unordered.ramp, LatentBins(),
                                 unordered=True)
    assert left.tolist() == [BOTTOM]
    assert not np.array_equal(decoded, symbols)  # another order ...
    key = multiset.canonical_order
    np.testing.assert_array_equal(decoded[key(decoded)], symbols[key(symbols)])  # ... the same set
    # What the file pays beyond its images' one-sample −ELBO (the figures, at each image's row):
    # the set's file pays about the order's bits less. (The files themselves differ by more: each
    # image's −ELBO is at other latents, whose noise over 150 images of a random model is larger.)
    order_bits = (math.lgamma(151) - 2 * math.log(2)) / math.log(2) - math.log2(150)
    beyond = [32 * len(c.words) - c.elbo_bits_N.sum() for c in (ordered, unordered)]
    assert abs(beyond[0] - beyond[1] - order_bits) < 0.1 * order_bits, (beyond, order_bits)


def test_a_set_chooser_gives_back_what_it_took():
    symbols = np.repeat(np.arange(6, dtype=np.int32)[:, None], 3, axis=1)[[0, 1, 1, 2, 3, 3, 3, 4, 5]]
    coder = constriction.stream.stack.AnsCoder(np.array([BOTTOM], np.uint32))
    chooser = multiset.Chooser(symbols, range(len(symbols)))
    taken = chooser.take(coder, 5)
    assert len(set(taken.tolist())) == 5
    chooser.give_back(coder, taken, symbols)
    assert coder.get_compressed().tolist() == [BOTTOM]
    assert chooser.remaining.total == 9
    assert [key[0] for key in chooser.remaining.items] == [0, 1, 1, 2, 3, 3, 3, 4, 5]
