"""Image files through scripts/compress.py and scripts/decompress.py: PNG folders (sub-folders,
grey and colour with conversion) back pixel for pixel under their names, a JPEG back as a PNG of
its pixels, the size of one image's file, and every bad input as one line, exit status 2 and
nothing written."""

import dataclasses
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_in_process, tiny_config
from vae.coding import codec, container, file_name_code, first_image
from vae.coding.host_model import host_model
from vae.data import dataset
from vae.train import loop
from vae.workdir import files


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory, fashion_mnist):
    """A 2-epoch tiny Bernoulli run on 1,024 Fashion-MNIST images (28 x 28 grey, binarised)."""
    path = tmp_path_factory.mktemp("binary_run")
    loop.train_and_evaluate(tiny_config(), path, progress=False)
    return path


@pytest.fixture(scope="module")
def test_images(binary_run):
    images, _ = dataset.load_test_set(files.read_config(binary_run).data)
    return images[..., 0]  # 0/255, 28 x 28


def smooth_colour_images(count, seed=0):
    """8 x 8 colour images a JPEG keeps close: ramps of random slopes and offsets."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:8, 0:8]
    slopes, offsets = rng.uniform(-12, 12, (count, 3, 2)), rng.uniform(40, 200, (count, 3))
    ramps = offsets[:, :, None, None] + slopes[:, :, 0, None, None] * y + slopes[:, :, 1, None, None] * x
    return np.clip(ramps, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    """A 1-epoch tiny 8-bit run (2-component logistic mixture) on a folder that mixes grey and
    colour 8 x 8 images, trained with data.channels=rgb."""
    root = tmp_path_factory.mktemp("colour_images")
    for i, image in enumerate(smooth_colour_images(48)):
        Image.fromarray(image if i % 3 else image[..., 0]).save(root / f"{i:02d}.png")
    config = tiny_config(data__binarize="none", model__likelihood="logistic_mixture",
                         model__mixture_components=2, train__num_epochs=1, train__batch_size=8,
                         eval__batch_size=8, eval__kl_split_examples=4)
    config.data.name, config.data.channels = f"folder:{root}", "rgb"
    config.data.folder_test_fraction, config.data.train_split, config.data.test_split = 0.25, "train", "test"
    path = tmp_path_factory.mktemp("colour_run")
    loop.train_and_evaluate(config, path, progress=False)
    return path


def ok(result):
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def one_line_error(result, match, *unwritten):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert match in lines[0], lines[0]
    for path in unwritten:
        assert not os.path.exists(path), path


def compress(workdir, out, *args):
    return run_in_process("compress.py", "--workdir", workdir, "--out", out, "--noprogress", *args)


def decompress(workdir, file, out, *args):
    return run_in_process("decompress.py", "--workdir", workdir, file, "--out", out, "--noprogress", *args)


def pixels_of(path, mode=None):
    with Image.open(path) as image:
        return np.asarray(image.convert(mode) if mode else image)


def test_a_png_folder_round_trips_with_sub_folders_and_grey_from_colour(binary_run, test_images, tmp_path):
    """Grey PNGs at the top and in sub-folders, and a colour PNG coded by the grey model with
    --channels grey: each comes back under its relative path, pixel for pixel (the colour one
    as the grey it was coded as)."""
    source = tmp_path / "photos"
    (source / "shirts" / "long").mkdir(parents=True)
    paths = ["a.png", "b.png", "shirts/0001.png", "shirts/0002.png", "shirts/long/x y.png"]
    for path, image in zip(paths, test_images):
        Image.fromarray(image).save(source / path)
    Image.fromarray(np.repeat(test_images[5][..., None], 3, axis=2)).save(source / "shirts" / "colour.png")
    coded, restored = tmp_path / "photos.bbans", tmp_path / "restored"
    one_line_error(compress(binary_run, coded, "--images", source), "--channels grey compresses grey copies",
                   coded)
    figures = ok(compress(binary_run, coded, "--images", source, "--channels", "grey"))
    ok(decompress(binary_run, coded, restored))
    written = sorted(str(p.relative_to(restored)) for p in restored.rglob("*.png"))
    assert written == sorted([*paths, "shirts/colour.png"])
    for path, image in zip(paths, test_images):
        np.testing.assert_array_equal(pixels_of(restored / path), pixels_of(source / path))
        np.testing.assert_array_equal(pixels_of(restored / path), image)
    np.testing.assert_array_equal(pixels_of(restored / "shirts" / "colour.png"), test_images[5])
    assert '"images": 6' in figures.stdout and '"original": false' in figures.stdout
    assert "not the originals: shirts/colour.png converted (--channels grey)" in figures.stderr


def test_a_jpeg_comes_back_as_a_png_of_its_pixels(binary_run, test_images, tmp_path):
    """A JPEG (here one a Bernoulli model can code: black, which JPEG keeps exactly) comes back as
    a PNG of its decoded pixels under its name with .png, and the output says so."""
    source = tmp_path / "in"
    source.mkdir()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(source / "dark.jpg", quality=90)
    Image.fromarray(test_images[0]).save(source / "shirt.png")
    coded, restored = tmp_path / "in.bbans", tmp_path / "restored"
    ok(compress(binary_run, coded, "--images", source))
    result = ok(decompress(binary_run, coded, restored))
    assert "dark.jpg was a JPEG: written back as PNG (its decoded pixels, exactly), as dark.png" in (
        result.stderr)
    assert sorted(p.name for p in restored.iterdir()) == ["dark.png", "shirt.png"]
    np.testing.assert_array_equal(pixels_of(restored / "dark.png"), pixels_of(source / "dark.jpg"))
    Image.fromarray(test_images[1]).save(source / "dark.png")  # would come back under dark.jpg's name
    one_line_error(compress(binary_run, tmp_path / "x.bbans", "--images", source),
                   "dark.jpg and dark.png would both be decompressed as dark.png")


@pytest.mark.slow  # trains an 8-bit model; grey to colour and JPEGs are quick-tested with the others
def test_an_8_bit_colour_folder_and_a_jpeg(colour_run, tmp_path):
    """A colour PNG back exactly, a grey PNG back as the RGB it was coded as (--channels rgb), a
    JPEG back as a PNG of its decoded pixels, which the output says."""
    source = tmp_path / "mixed"
    source.mkdir()
    colour, grey, photo = smooth_colour_images(3, seed=5)
    Image.fromarray(colour).save(source / "colour.png")
    Image.fromarray(grey[..., 0]).save(source / "grey.png")
    Image.fromarray(photo).save(source / "photo.jpg", quality=90)
    coded, restored = tmp_path / "mixed.bbans", tmp_path / "restored"
    ok(compress(colour_run, coded, "--images", source, "--channels", "rgb"))
    result = ok(decompress(colour_run, coded, restored))
    assert "photo.jpg was a JPEG: written back as PNG" in result.stderr
    assert sorted(p.name for p in restored.iterdir()) == ["colour.png", "grey.png", "photo.png"]
    np.testing.assert_array_equal(pixels_of(restored / "colour.png"), colour)
    np.testing.assert_array_equal(pixels_of(restored / "grey.png"), pixels_of(source / "grey.png", "RGB"))
    np.testing.assert_array_equal(pixels_of(restored / "photo.png"), pixels_of(source / "photo.jpg"))
    assert not np.array_equal(pixels_of(source / "photo.jpg"), photo)  # the JPEG's pixels, not the original's


@pytest.mark.slow  # trains an 8-bit model; sizes and grey on colour: quick-tested in test_photos_coding.py
def test_photos_of_their_own_sizes_and_grey_on_a_colour_model_through_the_scripts(colour_run, tmp_path):
    """A 13 x 13 colour PNG and a 5 x 8 grey one on the 8 x 8 colour model, without conversions:
    each back at its size and mode, pixel for pixel, the file in format 4."""
    source, coded, restored = tmp_path / "photos", tmp_path / "photos.bbans", tmp_path / "restored"
    source.mkdir()
    colour = np.concatenate([smooth_colour_images(2, seed=7)[i] for i in range(2)], axis=1)[:, :13]
    colour = np.concatenate([colour, colour[:5]], axis=0)  # 13 x 13
    grey = smooth_colour_images(1, seed=8)[0][:5, :, 0]
    Image.fromarray(colour).save(source / "colour.png")
    Image.fromarray(grey).save(source / "grey.png")
    result = ok(compress(colour_run, coded, "--images", source))
    assert '"original": true' in result.stdout and coded.read_bytes()[0] == container.FORMAT
    ok(decompress(colour_run, coded, restored))
    np.testing.assert_array_equal(pixels_of(restored / "colour.png"), colour)
    with Image.open(restored / "grey.png") as image:
        assert image.mode == "L"
    np.testing.assert_array_equal(pixels_of(restored / "grey.png"), grey)


def test_one_image_costs_eight_header_bytes_and_about_its_elbo(binary_run, test_images, tmp_path):
    """One binarised image alone: the file is the 8-byte header, then a stack about as long as its
    two-part code plus the 32-bit checksum (the first image pays no bits-back start-up)."""
    loaded = codec.load(binary_run)
    host = host_model(loaded.model, 1)
    sizes, elbo_bits = [], []
    for image in test_images[:10]:
        data, figures = codec.compress(loaded, image[None], progress=False, host=host)
        assert figures["header_bytes"] == 8 and figures["ramp"] == []
        sizes.append(len(data))
        elbo_bits.append(figures["first_image_elbo_bits"])
        decoded, _ = codec.decode(codec.open_file(binary_run, data, "f"), progress=False)
        np.testing.assert_array_equal(decoded[0], image)
    excess_bits = 8 * np.mean(sizes) - np.mean(elbo_bits)
    # The header (64 bits: format 3's version byte, coder tag and header check are 40 more than
    # format 2's 24), the checksum (32), the two-part code's excess over the -ELBO and the last
    # word's rounding.
    assert 64 + 32 < excess_bits < 64 + 32 + 40, excess_bits
    png = tmp_path / "shirt.png"
    Image.fromarray(test_images[0]).save(png)
    ok(compress(binary_run, tmp_path / "shirt.bbans", "--images", png))
    named = (tmp_path / "shirt.bbans").stat().st_size
    assert sizes[0] < named <= sizes[0] + 6  # its name, 'shirt.png', costs a few bytes
    ok(decompress(binary_run, tmp_path / "shirt.bbans", tmp_path / "back.png"))
    np.testing.assert_array_equal(pixels_of(tmp_path / "back.png"), test_images[0])


def test_names_round_trip_on_the_stack():
    import constriction

    file_names = ["a.png", "a.png.png", "b/c.JPG", "b/c2.jpeg", "b/d", "ü/é é.png", "z" * 300]
    coder = constriction.stream.stack.AnsCoder()
    file_name_code.push(coder, file_names)
    bits = coder.num_valid_bits()
    popped = file_name_code.pop(constriction.stream.stack.AnsCoder(coder.get_compressed()), len(file_names))
    assert popped == file_names
    coder = constriction.stream.stack.AnsCoder()
    numbered = [f"shirts/{i:04d}.png" for i in range(200)]
    file_name_code.push(coder, numbered)
    assert coder.num_valid_bits() / 200 < 16 and bits > 0  # front coding: under 2 bytes a numbered name
    for bad in ("/abs.png", "../up.png", "a//b.png", "a/./b.png", ""):
        with pytest.raises(file_name_code.NamesError, match="relative path"):
            file_name_code.check_name(bad)


def test_the_first_image_code_codes_only_used_dimensions():
    """A model whose encoder ignores x for some dimensions (q = p there) leaves them out."""
    from vae.coding.host_model import HostModel

    used = np.array([True, False, True, False])
    std = np.where(used, 0.1, 1.0)[None]
    host = HostModel(
        num_layers=1, latent_dim=4, num_pixels=3, block_size=1, family="bernoulli",
        posterior=lambda layer, x, upper: (np.zeros((len(x), 4)), std.repeat(len(x), 0)),
        conditional_prior=None, pixel_parameters=None, pixel_search=None, pixel_probabilities=None,
        pixel_mean=lambda zs: np.full((len(zs[0]), 3), 0.5))
    plan = first_image.plan(host)
    np.testing.assert_array_equal(plan.masks[0], used)
    # the ratio 0.1 rounded to 1/RATIO_STEPS (102/1024), times BIN_WIDTH
    np.testing.assert_allclose(plan.widths[0][used], first_image.BIN_WIDTH * 102 / first_image.RATIO_STEPS)


# --- bad input: one line, exit status 2, nothing written ------------------------------------------


def test_images_of_another_size_are_coded_at_their_size_a_colour_one_on_a_grey_model_refused(
        binary_run, test_images, tmp_path):
    """A 32 x 30 image on the 28 x 28 model comes back at its size; --image_size codes a resized
    copy, and the output says so; a colour image on a grey model is refused (it would lose its
    colour), and --channels rgb is refused for a grey model."""
    big = np.where(np.arange(32 * 30).reshape(32, 30) % 7 < 3, 255, 0).astype(np.uint8)
    Image.fromarray(big).save(tmp_path / "big.png")
    out, restored = tmp_path / "x.bbans", tmp_path / "restored"
    result = ok(compress(binary_run, out, "--images", tmp_path / "big.png"))
    assert '"original": true' in result.stdout and "4 tiles" in result.stderr
    ok(decompress(binary_run, out, restored))
    np.testing.assert_array_equal(pixels_of(restored / "big.png"), big)
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(tmp_path / "rgb.png")
    one_line_error(compress(binary_run, tmp_path / "y.bbans", "--images", tmp_path / "rgb.png"),
                   "rgb.png is colour, and this model codes grey images: coding it as grey would lose its "
                   "colour; --channels grey compresses grey copies", tmp_path / "y.bbans")
    one_line_error(compress(binary_run, tmp_path / "y.bbans", "--images", tmp_path / "big.png", "--channels",
                            "rgb"), "--channels rgb: this model codes grey images", tmp_path / "y.bbans")
    Image.fromarray(np.full((32, 30), 255, np.uint8)).save(tmp_path / "white.png")  # binary when resized
    result = ok(compress(binary_run, tmp_path / "y.bbans", "--images", tmp_path / "white.png", "--image_size",
                         "28,28"))
    assert '"original": false' in result.stdout
    assert "not the originals: every image resized to 28x28 (--image_size)" in result.stderr


def test_a_folder_with_another_file_an_empty_folder_and_a_truncated_png(binary_run, test_images, tmp_path):
    folder, out = tmp_path / "photos", tmp_path / "x.bbans"
    (folder / "sub").mkdir(parents=True)
    one_line_error(compress(binary_run, out, "--images", folder), "no images in the folder", out)
    Image.fromarray(test_images[0]).save(folder / "sub" / "a.png")
    (folder / "sub" / "notes.txt").write_text("not an image")
    one_line_error(compress(binary_run, out, "--images", folder),
                   f"{folder}/sub/notes.txt is not a PNG or JPEG file: compress.py codes the .png", out)
    (folder / "sub" / "notes.txt").unlink()
    good = (folder / "sub" / "a.png").read_bytes()
    (folder / "sub" / "a.png").write_bytes(good[:len(good) // 2])
    one_line_error(compress(binary_run, out, "--images", folder), "a.png cannot be read as an image", out)
    (folder / "sub" / "a.png").write_bytes(good)
    alpha = np.dstack([test_images[0], np.full((28, 28), 128, np.uint8)])
    Image.fromarray(alpha, "LA").save(folder / "sub" / "b.png")
    one_line_error(compress(binary_run, out, "--images", folder), "b.png has transparent pixels: name a "
                   "background colour", out)
    (folder / "sub" / "b.png").unlink()
    one_line_error(compress(binary_run, out, "--images", tmp_path / "absent.png"),
                   "absent.png does not exist")


def test_a_file_from_another_model_or_damaged(binary_run, test_images, tmp_path):
    coded, out = tmp_path / "x.bbans", tmp_path / "out.npy"
    ok(compress(binary_run, coded, "--images", write_npy(tmp_path / "x.npy", test_images[:30])))
    other = decompress(binary_run, coded, out, "--epoch", 1)  # epoch 1's parameters
    one_line_error(other, "was compressed by another model (model tag", out)
    assert "its tag is that of epoch 2 of this run: pass --epoch 2" in other.stderr
    data = coded.read_bytes()
    # Damaged words decode to other images (the checksum differs), or the coder fails on the way.
    mismatch = "did not decode to what was compressed ("
    for position, message in ((0, "is not a file written by scripts/compress.py"), (len(data) // 2, mismatch),
                              (len(data) - 1, mismatch)):
        damaged = bytearray(data)
        damaged[position] ^= 0x10 if damaged[position] != 0x10 else 0x20  # a last byte of 0 is refused apart
        (tmp_path / "damaged.bbans").write_bytes(bytes(damaged))
        one_line_error(decompress(binary_run, tmp_path / "damaged.bbans", out), message, out)
    header, words = container.unpack(data, "x.bbans")  # the writer's software not listed, a word damaged
    words = words.copy()
    words[len(words) // 2] ^= 1 << 9
    (tmp_path / "damaged.bbans").write_bytes(container.pack(dataclasses.replace(header, software=0), words))
    result = decompress(binary_run, tmp_path / "damaged.bbans", out)
    one_line_error(result, "it was written with software not listed in vae/coding/container.py; this "
                   f"machine has {container.installed_versions()}", out)
    assert container.software_versions(1) == "jax 0.10.2, jaxlib 0.10.2, constriction 0.5.0"
    (tmp_path / "short.bbans").write_bytes(data[:2])
    one_line_error(decompress(binary_run, tmp_path / "short.bbans", out), "is not a file written by", out)
    (tmp_path / "old.bbans").write_bytes(b"VAEBBANS" + data)
    one_line_error(decompress(binary_run, tmp_path / "old.bbans", out), "format of an earlier compress.py",
                   out)


def write_npy(path, array):
    np.save(path, array)
    return path


def test_outputs_that_exist_are_refused_unless_overwrite(binary_run, test_images, tmp_path):
    png = tmp_path / "a.png"
    Image.fromarray(test_images[0]).save(png)
    coded = tmp_path / "a.bbans"
    coded.write_bytes(b"keep me")
    one_line_error(compress(binary_run, coded, "--images", png), "a.bbans exists: pass --overwrite")
    assert coded.read_bytes() == b"keep me"
    ok(compress(binary_run, coded, "--images", png, "--overwrite"))
    restored = tmp_path / "restored"
    restored.mkdir()
    (restored / "a.png").write_bytes(b"keep me too")
    one_line_error(decompress(binary_run, coded, restored), "a.png exists: pass --overwrite")
    assert (restored / "a.png").read_bytes() == b"keep me too"
    ok(decompress(binary_run, coded, restored, "--overwrite"))
    np.testing.assert_array_equal(pixels_of(restored / "a.png"), test_images[0])


def test_the_whole_set_header_records_count_block_size_and_ramp(binary_run, test_images):
    data, figures = codec.compress(codec.load(binary_run), test_images[:250], progress=False)
    header, _ = container.unpack(data, "f")
    assert header.count == 250 and header.block_size == 100 and header.ramp == tuple(figures["ramp"])
    # format 3's 6 bytes, count (2 bytes), block size, the default bins, the ramp's length and
    # sizes, the header's check (2)
    assert figures["header_bytes"] == 6 + 2 + 1 + 1 + 1 + len(header.ramp) + 2
    assert math.isclose(figures["bits_per_dim"], 8 * len(data) / (250 * 784))


def test_a_set_through_the_scripts_comes_back_sorted_and_saves_its_order(binary_run, test_images, tmp_path):
    """compress.py --unordered: the header says it is a set, the file is shorter than the ordered
    one by about the order's bits, and decompress.py returns the images sorted by their bytes and
    says so; images from files keep their order and names, so --unordered refuses them."""
    array = tmp_path / "some.npy"
    images = test_images[:200]
    np.save(array, images)
    ordered = json.loads(ok(compress(binary_run, tmp_path / "ordered.bbans", "--images", array)).stdout)
    result = ok(compress(binary_run, tmp_path / "set.bbans", "--images", array, "--unordered"))
    assert "a set: its order's" in result.stderr
    data = (tmp_path / "set.bbans").read_bytes()
    header, _ = container.unpack(data, "set.bbans")
    assert header.unordered and header.count == 200
    # each file against its images' -ELBO as it coded them (other latents in each: noise of their
    # own): the set's is about the order's bits below it, the sequence's about at it
    below = [(f["coded_elbo_bits_per_dim"] - f["bits_per_dim"]) * 200 * 28 * 28
             for f in (ordered, json.loads(result.stdout))]
    distinct = len(np.unique(images.reshape(200, -1), axis=0))
    order_bits = math.lgamma(200) / math.log(2)  # the first image is not chosen
    assert distinct == 200 and abs(below[1] - below[0] - order_bits) < 0.1 * order_bits, (below, order_bits)
    result = ok(decompress(binary_run, tmp_path / "set.bbans", tmp_path / "back.npy"))
    assert "sorted by their bytes" in result.stderr
    back = np.load(tmp_path / "back.npy")
    keys = [image.tobytes() for image in images.astype(np.int32)]
    np.testing.assert_array_equal(back, images[sorted(range(200), key=keys.__getitem__)])
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(images[i]).save(folder / f"{i}.png")
    result = compress(binary_run, tmp_path / "named.bbans", "--images", folder, "--unordered")
    assert result.returncode == 2 and "leave --unordered out" in result.stderr
    with pytest.raises(codec.CodingError, match="leave --unordered out"):
        codec.compress(codec.load(binary_run), [images[0], images[1][:20]], unordered=True, progress=False)
