"""Images at their own sizes (vae/coding/tiles.py): cut into the model's tiles, edge tiles filled
by edge replication and grey repeated into a colour model's channels, only the images' own
sub-pixels coded. Round trips pixel for pixel for every size against the tile, grey on a colour
model, a grey model; the padding costs nothing on the stack; the shapes on the stack; JPEG and
transparency through the scripts. Untrained tiny models where the model's quality does not
matter (coding is exact whatever the parameters)."""

from pathlib import Path

import constriction
import jax
import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_in_process, tiny_config
from vae import api
from vae.coding import bbans, codec, container, image_files, pixel_code, tiles
from vae.coding.host_model import host_model
from vae.coding.latent_code import LatentBins
from vae.model.build import build_model


def untrained(channels: int, size: int = 8) -> codec.Loaded:
    """A random tiny 8-bit VAE (2-component logistic mixture) for size x size x channels tiles."""
    config = tiny_config(data__binarize="none", model__likelihood="logistic_mixture",
                         model__mixture_components=2)
    model = build_model(config.model, (size, size, channels), jax.random.key(channels))
    model_hash = codec.model_hash(config, model)
    return codec.Loaded(Path("nowhere"), config, model, 0, "logistic_mixture", model_hash)


@pytest.fixture(scope="module")
def colour_model():
    return untrained(3)


@pytest.fixture(scope="module")
def grey_model():
    return untrained(1)


def smooth(shape, seed):
    """uint8 images a tiny model codes in a few bits a sub-pixel: a ramp with a little noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:shape[0], 0:shape[1]]
    ramp = 100 + 3 * y + 2 * x + rng.integers(0, 4, shape[:2])
    image = np.clip(ramp, 0, 255).astype(np.uint8)
    return image if len(shape) == 2 else np.stack([image, image // 2, 255 - image], axis=-1)


def round_trip(loaded, images, **kwargs):
    names = [f"{i}.png" for i in range(len(images))]
    data, figures = codec.compress(loaded, images, file_names=names, progress=False, **kwargs)
    opened = codec.open_loaded(loaded, data, "f")
    assert opened.file_names == names
    decoded, _ = codec.decode(opened, progress=False)
    for image, back in zip(images, decoded):
        expected = image[..., None] if image.ndim == 2 else image
        assert back.shape == expected.shape and back.dtype == np.uint8
        np.testing.assert_array_equal(back, expected)
    return data, figures, opened


def test_every_size_against_the_tile_round_trips_with_grey_on_a_colour_model(colour_model):
    """Smaller than, equal to and larger than the 8 x 8 tile, multiples and not, one pixel, grey
    (2-D and h x w x 1) among colour: one file, one chain of tiles, back pixel for pixel."""
    images = [smooth((5, 3, 3), 0), smooth((8, 8, 3), 1), smooth((13, 20, 3), 2), smooth((16, 16, 3), 3),
              smooth((11, 9), 4), smooth((1, 1, 3), 5), smooth((9, 17), 6)[..., None]]
    data, figures, opened = round_trip(colour_model, images, block_size=4)
    assert data[0] == container.FORMAT == 4
    assert opened.shapes == ((5, 3, 3), (8, 8, 3), (13, 20, 3), (16, 16, 3), (11, 9, 1), (1, 1, 3),
                             (9, 17, 1))
    assert figures["tiles"] == 1 + 1 + 2 * 3 + 4 + 2 * 2 + 1 + 2 * 3
    assert figures["sub_pixels"] == sum(image.size for image in images)


def test_a_grey_model_codes_grey_images_of_any_size(grey_model):
    images = [smooth((3, 30), 0), smooth((8, 8), 1), smooth((17, 5), 2)[..., None]]
    data, figures, opened = round_trip(grey_model, images, block_size=2)
    assert opened.shapes == ((3, 30, 1), (8, 8, 1), (17, 5, 1))
    with pytest.raises(tiles.ShapeError, match="this model codes uint8 images h x w"):
        codec.compress(grey_model, [smooth((8, 8, 3), 0)], progress=False)


def test_images_all_of_the_model_shape_are_format_3_as_an_array_would_be(colour_model):
    """A list of images of the model's shape is the file of their array, byte for byte."""
    images = [smooth((8, 8, 3), seed) for seed in range(3)]
    listed, _ = codec.compress(colour_model, images, file_names=["a.png", "b.png", "c.png"], progress=False)
    array, _ = codec.compress(colour_model, np.stack(images), file_names=["a.png", "b.png", "c.png"],
                              progress=False)
    assert listed == array and listed[0] == 3


def test_the_padding_is_not_pushed(colour_model):
    """Twelve 5 x 3 colour images, each one 8 x 8 tile of which 45 of 192 sub-pixels are its own:
    what the pixels' pushes add to the stack is the own sub-pixels' bits under the coder's counts
    (to a bit a block), and well under what pushing every sub-pixel of the same tiles adds."""
    images = [smooth((5, 3, 3), seed) for seed in range(12)]
    tiling = tiles.Tiling(tuple(image.shape for image in images), colour_model.image_shape)
    tile_images = tiles.cut(images, tiling)
    np.testing.assert_array_equal(tile_images[0, 4, 2], images[0][4, 2])  # the corner repeated
    np.testing.assert_array_equal(tile_images[0, 7, 7], images[0][4, 2])
    symbols = pixel_code.to_symbols(tile_images, 1)
    host = host_model(colour_model.model, 4)
    pushed = {}
    for name, sources in (("own", tiling.sources), ("all", bbans.no_sources)):
        coded = bbans.encode(host, symbols, LatentBins(), sources=sources)
        popped, between, _ = coded.steps_bits_Bx3[1:].T  # the blocks after the first image
        pushed[name] = float(np.sum(between - popped))
        own_bits = float(np.sum(coded.pixel_bits_N[1:]))
        assert abs(pushed[name] - own_bits) < 1 + len(popped), (name, pushed[name], own_bits)
    assert pushed["own"] < 0.4 * pushed["all"], pushed


def test_the_shapes_on_the_stack_round_trip_and_cost_little():
    shapes = [(1000, 700, 3), (1000, 700, 3), (1, 1, 1), (65536, 3, 3), (7, 7, 1), (7, 7, 1)]
    coder = constriction.stream.stack.AnsCoder()
    tiles.push(coder, shapes, 3)
    assert tiles.pop(constriction.stream.stack.AnsCoder(coder.get_compressed()), len(shapes), 3) == shapes
    coder = constriction.stream.stack.AnsCoder()
    tiles.push(coder, [(32, 32, 3)] * 1000, 3)
    assert coder.num_valid_bits() < 0.05 * 1000 + 32  # about 0.02 bits an image of the size before it
    with pytest.raises(tiles.ShapeError, match="at most 65,536 pixels"):
        tiles.check_image(np.zeros((65537, 1), np.uint8), (8, 8, 3), "x")


def test_the_python_api_takes_a_list_of_sizes(colour_model):
    model = api.Model.__new__(api.Model)
    model._codec = colour_model
    images = [smooth((9, 4, 3), 0), smooth((3, 3), 1)]
    back = model.decompress(model.compress(images))
    np.testing.assert_array_equal(back[0], images[0])
    np.testing.assert_array_equal(back[1][..., 0], images[1])


def test_a_file_of_sized_images_without_names_is_not_written_as_an_array(tmp_path):
    with pytest.raises(image_files.InputError, match="holds images of their own sizes without file names"):
        image_files.check_outputs(tmp_path / "x.npy", None, False, sized=True)


# --- through the scripts, with tiny_run's Bernoulli model (28 x 28 grey, binarised) -------------------


def ok(result):
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def pixels_of(path):
    with Image.open(path) as image:
        return np.asarray(image)


def test_a_jpeg_and_transparency_through_the_scripts(tiny_run, tmp_path):
    """A black 30 x 45 JPEG (JPEG keeps black exactly, which a Bernoulli model can code) comes back
    as a PNG of its decoded pixels at its size; an image with transparent pixels is refused in
    one line that names --background, and with it is coded as a flattened copy, which the output
    says; one whose alpha is all opaque is coded without it, which the output says too."""
    source, coded, restored = tmp_path / "in", tmp_path / "in.bbans", tmp_path / "out"
    source.mkdir()
    Image.fromarray(np.zeros((30, 45), np.uint8)).save(source / "dark.jpg", quality=90)
    ramp = np.where(np.arange(40 * 29).reshape(40, 29) % 5 < 2, 255, 0).astype(np.uint8)
    Image.fromarray(ramp).save(source / "ramp.png")
    ok(run_in_process("compress.py", "--workdir", tiny_run, "--out", coded, "--images", source,
                      "--noprogress"))
    result = ok(run_in_process("decompress.py", "--workdir", tiny_run, coded, "--out", restored,
                               "--noprogress"))
    assert "dark.jpg was a JPEG: written back as PNG" in result.stderr
    np.testing.assert_array_equal(pixels_of(restored / "dark.png"), pixels_of(source / "dark.jpg"))
    np.testing.assert_array_equal(pixels_of(restored / "ramp.png"), ramp)
    alpha = np.dstack([ramp, np.where(ramp > 0, 255, 0).astype(np.uint8)])
    Image.fromarray(alpha, "LA").save(source / "ramp.png")
    result = run_in_process("compress.py", "--workdir", tiny_run, "--out", tmp_path / "x.bbans", "--images",
                            source / "ramp.png", "--noprogress")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "ramp.png has transparent pixels" in result.stderr and "--background white" in result.stderr
    result = ok(run_in_process("compress.py", "--workdir", tiny_run, "--out", tmp_path / "x.bbans",
                               "--images", source / "ramp.png", "--background", "black", "--noprogress"))
    assert '"original": false' in result.stdout
    assert "not the originals: ramp.png converted (--background black)" in result.stderr
    Image.fromarray(np.dstack([ramp, np.full_like(ramp, 255)]), "LA").save(source / "ramp.png")  # opaque
    result = ok(run_in_process("compress.py", "--workdir", tiny_run, "--out", tmp_path / "y.bbans",
                               "--images", source / "ramp.png", "--noprogress"))
    assert '"original": false' in result.stdout
    assert "ramp.png without its alpha channel (every pixel opaque: the colours are kept" in result.stderr
    ok(run_in_process("decompress.py", "--workdir", tiny_run, tmp_path / "y.bbans", "--out",
                      tmp_path / "y.png", "--noprogress"))
    np.testing.assert_array_equal(pixels_of(tmp_path / "y.png"), ramp)


def test_the_photos_benchmark_codes_and_checks_every_photo(tiny_run, tmp_path):
    """benchmarks/benchmark_photos.py on two binarised images with tiny_run's model: one row a
    photo with every codec, ours' round trip checked inside, the table written."""
    import json

    from benchmarks import benchmark_photos

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name, shape in (("a.png", (30, 45)), ("b.png", (28, 28))):
        Image.fromarray(np.where(rng.random(shape) < 0.3, 255, 0).astype(np.uint8)).save(photos / name)
    out = tmp_path / "table"
    assert benchmark_photos.main(["--workdir", str(tiny_run), "--images", str(photos), "--out", str(out),
                                  "--jpegxl_efforts", "7"]) == 0
    result = json.loads((tmp_path / "table.json").read_text())
    assert [row["name"] for row in result["photos"]] == ["a.png", "b.png"]
    assert set(result["photos"][0]["codecs"]) == {"PNG", "WebP lossless", "JPEG XL e7"}
    assert result["photos"][0]["ours"]["tiles"] == 4 and result["photos"][1]["ours"]["tiles"] == 1
    assert "| **all 2** |" in (tmp_path / "table.md").read_text()


def test_sizes_that_claim_more_tiles_than_the_stack_holds_are_refused(colour_model):
    """A damaged shape (a 60,000 x 60,000 image in place of a 13 x 20 one): refused in one line
    when the file is opened, before any tile is allocated."""
    image = smooth((13, 20, 3), 0)
    data, _ = codec.compress(colour_model, [image], file_names=["a.png"], progress=False)
    header, words = container.unpack(data, "f")
    coder = constriction.stream.stack.AnsCoder(words)
    from vae.coding import file_name_code

    file_name_code.pop(coder, 1)
    tiles.pop(coder, 1, 3)
    tiles.push(coder, [(60_000, 60_000, 3)], 3)
    file_name_code.push(coder, ["a.png"])
    damaged = container.pack(header, coder.get_compressed())
    with pytest.raises(container.FileError, match="sizes claim 56,250,000 tiles, more than its stack"):
        codec.open_loaded(colour_model, damaged, "f")
