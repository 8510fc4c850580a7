"""A folder of one's own images as the data source (data.name=folder:PATH): decoding, sizes,
labels, splits, the cache, every bad folder's one line, and a run trained on one."""

import os
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from configs import default
from tests.conftest import tiny_config
from vae.config import ConfigError, validate_config
from vae.data import dataset, folder, source


def data_config(path, **fields):
    config = default.get_config().data
    config.name = f"folder:{path}"
    for key, value in fields.items():
        config[key] = value
    return config


def write_grey_pngs(root, count, size=(8, 8), seed=0, prefix=""):
    """`count` random grey PNGs in `root`; returns {relative path: pixels}."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    for i in range(count):
        pixels = rng.integers(0, 256, size, dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"{prefix}{i:03d}.png")
        written[f"{prefix}{i:03d}.png"] = pixels
    return written


def write_16_bit_png(path, pixels):
    """H x W x C uint16 pixels as a 16-bit PNG (C = 1, 2, 3, 4: grey, grey and alpha, RGB, RGBA),
    which Pillow cannot write."""
    height, width, channels = pixels.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)  # filter 0 on every row

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    return path


def all_images(path, **fields):
    opened = folder.open_folder(data_config(path, **fields))
    return opened, opened.images()


def counting_decodes(monkeypatch):
    calls = []
    real = folder.decode_images

    def decode(listing, image_size):
        calls.append(len(listing.files))
        return real(listing, image_size)

    monkeypatch.setattr(folder, "decode_images", decode)
    return calls


# --- what is read ---------------------------------------------------------------------------------


def test_grey_pngs_round_trip_exactly(tmp_path):
    written = write_grey_pngs(tmp_path, 12, size=(8, 6))
    (tmp_path / "notes.txt").write_text("not an image")
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(tmp_path / ".hidden.png")
    opened, images = all_images(tmp_path)
    assert opened.listing.files == tuple(sorted(written))
    assert images.shape == (12, 8, 6, 1) and images.dtype == np.uint8
    for image, rel in zip(images, opened.listing.files):
        np.testing.assert_array_equal(image[..., 0], written[rel])
    assert (opened.listing.labels == -1).all() and opened.class_names == []
    assert dataset.image_shape(data_config(tmp_path)) == (8, 6, 1)


def test_colour_jpegs_and_extensions_in_any_case(tmp_path):
    rng = np.random.default_rng(1)
    smooth = np.linspace(0, 255, 12 * 16 * 3).reshape(12, 16, 3).astype(np.uint8)
    for i, name in enumerate(["a.jpg", "b.JPEG", "c.Jpg"]):
        Image.fromarray(np.roll(smooth, 4 * i, axis=1)).save(tmp_path / name, quality=95)
    Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(tmp_path / "d.PNG")
    opened, images = all_images(tmp_path)
    assert images.shape == (4, 12, 16, 3) and opened.listing.files == ("a.jpg", "b.JPEG", "c.Jpg", "d.PNG")
    for image, rel in zip(images, opened.listing.files):
        with Image.open(tmp_path / rel) as decoded:
            np.testing.assert_array_equal(image, np.asarray(decoded))  # Pillow's own decoding
    assert np.abs(images[0].astype(int) - smooth).mean() < 3  # and a JPEG at quality 95 is close


def test_modes_become_one_or_three_channels(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(grey).save(tmp_path / "l.png")
    Image.fromarray(grey > 100).save(tmp_path / "bilevel.png")  # mode 1
    Image.fromarray(np.dstack([grey, np.full_like(grey, 255)]), "LA").save(tmp_path / "opaque_la.png")
    _, images = all_images(tmp_path)
    by_name = dict(zip(["bilevel", "l", "opaque_la"], images[..., 0]))
    np.testing.assert_array_equal(by_name["l"], grey)
    np.testing.assert_array_equal(by_name["opaque_la"], grey)  # an opaque alpha is dropped
    np.testing.assert_array_equal(by_name["bilevel"], np.where(grey > 100, 255, 0))

    colour = tmp_path / "colour"
    colour.mkdir()
    rgb = np.random.default_rng(2).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(colour / "rgb.png")
    Image.fromarray(np.dstack([rgb, np.full((8, 8), 255, np.uint8)])).save(colour / "rgba.png")
    Image.fromarray(rgb).quantize(16).save(colour / "palette.png")  # P
    opened, images = all_images(colour)
    assert images.shape == (3, 8, 8, 3)
    palette, rgb_read, rgba_read = images
    np.testing.assert_array_equal(rgb_read, rgb)
    np.testing.assert_array_equal(rgba_read, rgb)
    with Image.open(colour / "palette.png") as p:
        np.testing.assert_array_equal(palette, np.asarray(p.convert("RGB")))


def test_channels_and_background_convert_each_image(tmp_path):
    """data.channels=grey or rgb makes a folder that mixes grey and colour one kind; data.background
    flattens transparent pixels onto a colour (the alpha composite, pixel by pixel)."""
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, (6, 5), dtype=np.uint8)
    rgb = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (6, 5), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "a_grey.png")
    Image.fromarray(rgb).save(tmp_path / "b_rgb.png")
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "c_rgba.png")
    _, as_rgb = all_images(tmp_path, channels="rgb", background="#204080")
    assert as_rgb.shape == (3, 6, 5, 3)
    np.testing.assert_array_equal(as_rgb[0], np.repeat(grey[..., None], 3, axis=2))  # the level thrice
    np.testing.assert_array_equal(as_rgb[1], rgb)
    under = np.array([0x20, 0x40, 0x80])
    a = alpha[..., None] / 255.0
    np.testing.assert_allclose(as_rgb[2], rgb * a + under * (1 - a), atol=1)  # alpha over the background
    _, as_grey = all_images(tmp_path, channels="grey", background="white")
    assert as_grey.shape == (3, 6, 5, 1)
    np.testing.assert_array_equal(as_grey[0, ..., 0], grey)
    with Image.open(tmp_path / "b_rgb.png") as image:
        np.testing.assert_array_equal(as_grey[1, ..., 0], np.asarray(image.convert("L")))  # Pillow's luma
    assert dataset.image_shape(data_config(tmp_path, channels="rgb")) == (6, 5, 3)
    assert dataset.image_shape(data_config(tmp_path, channels="grey")) == (6, 5, 1)


@pytest.mark.slow  # trains; the conversion itself is quick-tested above
def test_a_folder_of_grey_and_colour_photos_trains_with_channels_grey(tmp_path):
    from vae.train import loop

    for i in range(24):
        pixels = np.zeros((8, 8, 3), np.uint8)
        pixels[:, i % 8] = (255, 255, 255)
        Image.fromarray(pixels if i % 2 else pixels[..., 0]).save(tmp_path / f"{i:02d}.png")
    config = tiny_config(train__num_epochs=1, train__batch_size=8, eval__batch_size=8,
                         eval__kl_split_examples=4)
    config.data = data_config(tmp_path, folder_test_fraction=0.3)
    with pytest.raises(source.DataError, match="mix grey and colour"):
        loop.train_and_evaluate(config, tmp_path / "refused", progress=False)
    config.data.channels = "grey"
    history = loop.train_and_evaluate(config, tmp_path / "run", progress=False)
    assert len(history) == 1 and np.isfinite(history[0]["test/elbo"])


def test_mixed_sizes_are_resized_to_image_size(tmp_path):
    small = np.random.default_rng(3).integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(small).save(tmp_path / "a_small.png")
    Image.fromarray(np.kron(small, np.ones((2, 2), np.uint8))).save(tmp_path / "b_double.png")
    Image.fromarray(np.full((4, 4), 77, np.uint8)).save(tmp_path / "c_tiny.png")  # enlarged
    Image.fromarray(np.full((20, 12), 200, np.uint8)).save(tmp_path / "d_tall.png")  # aspect not kept
    config = data_config(tmp_path, image_size=(8, 8))
    images = folder.open_folder(config).images()
    assert images.shape == (4, 8, 8, 1)
    np.testing.assert_array_equal(images[0, ..., 0], small)  # already the size: untouched
    np.testing.assert_array_equal(images[1, ..., 0], small)  # BOX: each pixel the mean of its 2x2 block
    np.testing.assert_array_equal(images[2], 77)
    np.testing.assert_array_equal(images[3], 200)
    assert dataset.image_shape(config) == (8, 8, 1)
    assert dataset.image_shape(data_config(tmp_path, image_size=(6, 4))) == (6, 4, 1)


def test_subfolders_are_labels(tmp_path):
    values = {}
    for name, count in (("zebra", 5), ("ant", 7), ("moth", 6)):
        (tmp_path / name / "deeper").mkdir(parents=True)
        for i in range(count):
            value = len(values)
            where = tmp_path / name / ("deeper" if i % 2 else "") / f"{i}.png"
            Image.fromarray(np.full((4, 4), value, np.uint8)).save(where)
            values[value] = name
    (tmp_path / "empty").mkdir()  # holds no images: not a class
    (tmp_path / ".trash").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / ".trash" / "x.png")
    config = data_config(tmp_path, folder_test_fraction=0.3)
    assert dataset.class_names(config) == ["ant", "moth", "zebra"]
    opened = folder.open_folder(config)
    images, labels = opened.load_split("train+test")
    assert len(images) == 18 and sorted(np.bincount(labels)) == [5, 6, 7]
    for image, label in zip(images, labels):
        assert opened.class_names[label] == values[int(image[0, 0, 0])]


# --- splits ---------------------------------------------------------------------------------------


def split_files(opened, split):
    return [opened.listing.files[i] for i in opened.split_indices(split)]


def test_splits_are_disjoint_cover_everything_and_are_stable(tmp_path):
    write_grey_pngs(tmp_path, 200, size=(2, 2))
    fractions = {"folder_validation_fraction": 0.2, "folder_test_fraction": 0.1}
    opened = folder.open_folder(data_config(tmp_path, **fractions))
    before = {s: split_files(opened, s) for s in folder.SPLITS}
    together = sum(before.values(), [])
    assert sorted(together) == sorted(opened.listing.files)  # every image, each in one split
    assert 10 <= len(before["test"]) <= 35 and 20 <= len(before["validation"]) <= 60
    # The order within a split is the hash's, not the paths': a slice is a sample.
    assert before["train"] != sorted(before["train"])
    assert split_files(opened, "train[:10]") == before["train"][:10]
    assert split_files(opened, "train[-5:]") == before["train"][-5:]
    n = len(before["train"])
    assert split_files(opened, "train[10%:20%]") == before["train"][round(n / 10):round(n / 5)]
    assert split_files(opened, "test+validation[:3]") == before["test"] + before["validation"][:3]

    write_grey_pngs(tmp_path, 40, size=(2, 2), seed=1, prefix="new")
    after = folder.open_folder(data_config(tmp_path, **fractions))
    for split, files in before.items():
        now = split_files(after, split)
        assert [f for f in now if not f.startswith("new")] == files  # nobody moved, order kept
    more_validation = folder.open_folder(data_config(tmp_path, folder_validation_fraction=0.3,
                                                     folder_test_fraction=0.1))
    assert set(split_files(more_validation, "validation")) > set(split_files(after, "validation"))
    assert split_files(more_validation, "test") == split_files(after, "test")


def test_load_dataset_reads_a_folder_like_a_tfds_set(tmp_path, monkeypatch):
    write_grey_pngs(tmp_path, 60)
    calls = counting_decodes(monkeypatch)
    config = data_config(tmp_path, validation_split="validation", folder_validation_fraction=0.2)
    data = dataset.load_dataset(config)
    assert calls == [60]  # one decode for all three splits
    sizes = [len(data.train_images), len(data.val_images), len(data.test_images)]
    assert sum(sizes) == 60 and min(sizes) > 0
    assert data.image_shape == (8, 8, 1) and data.dynamic
    assert set(np.unique(data.test_images)) <= {0, 255} and data.train_images.max() > 1
    test_images, test_labels = dataset.load_test_set(config)
    np.testing.assert_array_equal(test_images, data.test_images)  # binarised once, the same
    assert (test_labels == -1).all()
    with pytest.raises(source.DataError, match="overlaps data.train_split"):
        dataset.load_dataset(data_config(tmp_path, validation_split="train[:5]"))


# --- the cache ------------------------------------------------------------------------------------


def test_the_cache_is_used_and_invalidated(tmp_path, monkeypatch, capfd):
    write_grey_pngs(tmp_path / "images", 10)
    root = tmp_path / "images"
    calls = counting_decodes(monkeypatch)
    first = all_images(root)[1]
    cache = root / ".vae_decoded" / "images.npz"
    assert calls == [10] and cache.is_file()
    written = cache.stat().st_mtime_ns
    np.testing.assert_array_equal(all_images(root)[1], first)
    assert calls == [10] and cache.stat().st_mtime_ns == written  # read back, not decoded

    pixels = np.full((8, 8), 9, np.uint8)
    Image.fromarray(pixels).save(root / "003.png")  # a changed file
    os.utime(root / "003.png", ns=(1, 1))
    changed = all_images(root)[1]
    assert calls == [10, 10]
    np.testing.assert_array_equal(changed[3, ..., 0], pixels)
    write_grey_pngs(root, 1, prefix="extra")  # an added file
    assert all_images(root)[1].shape[0] == 11 and calls == [10, 10, 11]
    assert all_images(root, image_size=(4, 4))[1].shape == (11, 4, 4, 1)  # a cache of its own
    assert calls[-1] == 11 and (root / ".vae_decoded" / "images-4x4.npz").is_file()
    all_images(root)
    assert len(calls) == 4  # the full-size cache is still good

    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])  # truncated
    again = all_images(root)[1]
    assert len(calls) == 5 and "unreadable" in capfd.readouterr().err
    assert again.shape == (11, 8, 8, 1)
    assert not list(cache.parent.glob(".*tmp"))  # written atomically: no temporary file left


def test_a_read_only_folder_is_cached_in_the_user_cache(tmp_path, monkeypatch, capfd):
    root = tmp_path / "images"
    write_grey_pngs(root, 6)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    real_write = folder._write_cache

    def read_only(path, key, images):  # nothing can be written inside the folder (even as root)
        if root in path.parents:
            return False
        return real_write(path, key, images)

    monkeypatch.setattr(folder, "_write_cache", read_only)
    calls = counting_decodes(monkeypatch)
    all_images(root)
    all_images(root)
    assert calls == [6] and not (root / ".vae_decoded").exists()
    assert len(list((tmp_path / "cache" / "vae" / "folders").glob("*/images.npz"))) == 1
    monkeypatch.setenv("XDG_CACHE_HOME", str(root / "nowhere"))  # nor there: decoded, with a note
    assert all_images(root)[1].shape == (6, 8, 8, 1) and calls == [6, 6]
    assert "cannot cache the decoded images" in capfd.readouterr().err


def test_a_folder_that_cannot_be_written_falls_back_for_real(tmp_path, monkeypatch):
    root = tmp_path / "images"
    write_grey_pngs(root, 3)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root.chmod(0o555)
    try:
        if os.access(root, os.W_OK):
            pytest.skip("running as a user who can write any directory (root)")
        all_images(root)
        assert len(list((tmp_path / "cache" / "vae" / "folders").glob("*/images.npz"))) == 1
    finally:
        root.chmod(0o755)


def test_prepare_fills_the_cache_a_run_reads(tmp_path, monkeypatch):
    write_grey_pngs(tmp_path / "a", 3)
    write_grey_pngs(tmp_path / "b", 2)
    line = folder.prepare(f"folder:{tmp_path}", (4, 4))
    cache = tmp_path / ".vae_decoded" / "images-4x4.npz"
    assert line == f"5 images of {tmp_path} (4x4x1, 2 classes) cached in {cache}"
    calls = counting_decodes(monkeypatch)
    assert all_images(tmp_path, image_size=(4, 4))[1].shape == (5, 4, 4, 1) and calls == []


# --- bad folders and fields: one line each ----------------------------------------------------------


def one_line_error(config, match):
    with pytest.raises(source.DataError) as info:
        dataset.load_dataset(config)
    message = str(info.value)
    assert "\n" not in message and re.search(match, message), message


def test_a_missing_or_empty_folder(tmp_path):
    one_line_error(data_config(tmp_path / "absent"), r"the folder .*absent \(data.name=.*\) does not exist")
    (tmp_path / "file.png").write_bytes(b"")
    one_line_error(data_config(tmp_path / "file.png"), "is a file, not a folder of images")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("")
    one_line_error(data_config(tmp_path / "empty"), r"no images in the folder .*empty: no .png, .jpg or "
                                                    r".jpeg files in it or its sub-folders")
    one_line_error(data_config(""), r"data.name='folder:' names no folder: write data.name=folder:PATH")


def test_mixed_sizes_name_two_files_and_the_fix(tmp_path):
    write_grey_pngs(tmp_path, 8, size=(8, 8))
    Image.fromarray(np.zeros((10, 6), np.uint8)).save(tmp_path / "odd.png")
    one_line_error(data_config(tmp_path, folder_test_fraction=0.5),
                   r"not all one size: 000.png is 8x8 and odd.png is 10x6 \(height x width\); cut them "
                   r"into images of one size, tiles \(--config.data.image_size=6,6 "
                   r"--config.data.tile_stride=6,6\) or random crops \(--config.data.image_size=6,6 "
                   r"--config.data.crops_per_image=64\), or "
                   r"resize them all with --config.data.image_size=H,W alone")


def test_mixed_channels_name_two_files(tmp_path):
    write_grey_pngs(tmp_path, 8)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "rgb.png")
    one_line_error(data_config(tmp_path, folder_test_fraction=0.5),
                   r"mix grey and colour: 000.png is grey \(1 channel\) and rgb.png is colour "
                   r"\(3 channels\); convert them all to one kind with --config.data.channels=grey or "
                   r"--config.data.channels=rgb")


def test_unreadable_and_transparent_files_are_named(tmp_path):
    write_grey_pngs(tmp_path, 8)
    good = (tmp_path / "001.png").read_bytes()
    (tmp_path / "001.png").write_bytes(good[: len(good) // 2])  # truncated
    config = data_config(tmp_path, folder_test_fraction=0.5)
    one_line_error(config, r"001.png cannot be read as an image: OSError")
    (tmp_path / "001.png").write_bytes(b"not a png at all")
    one_line_error(config, r"001.png cannot be read as an image: UnidentifiedImageError")
    (tmp_path / "001.png").write_bytes(good)
    alpha = np.full((8, 8, 2), 255, np.uint8)
    alpha[0, 0, 1] = 0
    Image.fromarray(alpha, "LA").save(tmp_path / "see_through.png")
    one_line_error(config, r"see_through.png has transparent pixels: name a background colour to "
                           r"flatten it onto \(data.background=white, or compress.py --background white\)")
    (tmp_path / "see_through.png").unlink()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "tiff.png", format="TIFF")
    one_line_error(config, r"tiff.png is a TIFF file, not a PNG or JPEG: save it as PNG \(or JPEG\) under "
                           r"that name")


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_a_16_bit_png_is_refused(tmp_path, channels):
    """Grey, grey and alpha, RGB and RGBA with 16 bits a sample: Pillow reads all but grey as 8-bit
    images without a word (their top bytes), so the PNG's header says what the file holds."""
    write_grey_pngs(tmp_path, 8)
    levels = np.random.default_rng(channels).integers(0, 2 ** 16, (8, 8, channels), dtype=np.uint16)
    if channels in (2, 4):
        levels[..., -1] = 65535  # opaque: nothing else to refuse
    write_16_bit_png(tmp_path / "deep.png", levels)
    with Image.open(tmp_path / "deep.png") as image:  # 16 bits but for grey: its mode does not tell
        assert (np.asarray(image).dtype == np.uint16) == (channels == 1)
    one_line_error(data_config(tmp_path, folder_test_fraction=0.5, channels="grey"),
                   r"deep.png is a 16-bit PNG, and the models read and code 8-bit pixels: save it with 8 "
                   r"bits a channel first")


def test_an_exif_orientation_is_applied_as_pillow_does(tmp_path):
    """Each of the 8 orientations: the pixels ImageOps.exif_transpose gives, and image_shape turned
    with them."""
    pixels = np.random.default_rng(4).integers(0, 256, (6, 9), dtype=np.uint8)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = tmp_path / f"{orientation}" / "turned.png"
        path.parent.mkdir()
        Image.fromarray(pixels).save(path, exif=exif.tobytes())
        with Image.open(path) as image:
            expected = np.asarray(ImageOps.exif_transpose(image))
        np.testing.assert_array_equal(folder.decode_image(path, ())[..., 0], expected)
        shape = folder.FolderSource(folder.Folder("folder:x", path.parent, test_fraction=0.0)).image_shape()
        assert shape == (*expected.shape, 1) and shape[:2] == ((9, 6) if orientation >= 5 else (6, 9))


def test_our_own_errors_are_not_reported_as_bad_files(tmp_path, monkeypatch):
    """A file Pillow cannot decode is one line naming it; an error of the decoding code (a
    TypeError here) raises as it is, for decoding and for reading the first image's header."""
    write_grey_pngs(tmp_path, 8)
    (tmp_path / "003.png").write_bytes(b"not a png at all")
    opened = folder.open_folder(data_config(tmp_path, folder_test_fraction=0.5))
    with pytest.raises(source.DataError, match=r"003.png cannot be read as an image: UnidentifiedImageError"):
        opened.images()

    def broken(*args):
        raise TypeError("a bug of ours")

    (tmp_path / "003.png").unlink()
    monkeypatch.setattr(folder, "_grey_or_rgb", broken)
    with pytest.raises(TypeError, match="a bug of ours"):
        folder.open_folder(data_config(tmp_path, folder_test_fraction=0.5)).images()
    monkeypatch.setattr(folder, "_channels", broken)
    with pytest.raises(TypeError, match="a bug of ours"):
        folder.open_folder(data_config(tmp_path, folder_test_fraction=0.5)).image_shape()


def test_images_both_at_the_top_and_in_subfolders(tmp_path):
    write_grey_pngs(tmp_path, 2)
    write_grey_pngs(tmp_path / "cats", 2)
    one_line_error(data_config(tmp_path), r"has images both at its top level \(000.png\) and in sub-folders "
                                          r"\(cats/000.png\): put every image in a class sub-folder")


def test_empty_and_unknown_splits(tmp_path):
    write_grey_pngs(tmp_path, 5)
    one_line_error(data_config(tmp_path, folder_test_fraction=0.01),
                   r"split 'test' of folder:.* is empty \(its 5 images fall 5 / 0 / 0 into train / "
                   r"validation / test\); raise data.folder_test_fraction \(now 0.01\) or add images")
    one_line_error(data_config(tmp_path, folder_test_fraction=0.5, validation_split="validation"),
                   r"split 'validation' .* is empty .*raise data.folder_validation_fraction \(now 0.0\)")
    one_line_error(data_config(tmp_path, folder_test_fraction=0.5, train_split="train[:100]"),
                   r"split 'train\[:100\]' asks for more images than the train split of folder:.* holds")
    one_line_error(data_config(tmp_path, folder_test_fraction=0.5, test_split="eval"),
                   r"split 'eval' is not in folder:.* \(splits: train, validation, test\)")
    one_line_error(data_config(tmp_path, folder_test_fraction=0.5, test_split="test[1:2:3]"),
                   r"split 'test\[1:2:3\]' cannot be read: write train, validation or test, or a slice")


@pytest.mark.parametrize("fields, message", [
    ({"folder_test_fraction": 1.0}, r"data.folder_test_fraction must be a number in \[0, 1\), got 1.0"),
    ({"folder_validation_fraction": -0.1}, r"data.folder_validation_fraction must be a number in \[0, 1\)"),
    ({"folder_validation_fraction": 0.5, "folder_test_fraction": 0.5},
     r"data.folder_validation_fraction \+ data.folder_test_fraction must be < 1 \(the rest trains\), got "
     r"0.5 \+ 0.5"),
    ({"image_size": (28,)}, r"data.image_size must be \(\) \(keep the images' size\) or \(height, width\)"),
    ({"image_size": (28, 0)}, r"data.image_size must be \(\)"),
    ({"channels": "gray"}, r"data.channels must be one of keep, grey, rgb .*got 'gray'"),
    ({"background": "whiteish"}, r"data.background must be a colour \(white, black, #rrggbb.*got 'whiteish'"),
])
def test_bad_folder_fields(tmp_path, fields, message):
    write_grey_pngs(tmp_path, 2)
    one_line_error(data_config(tmp_path, **fields), message)
    config = tiny_config()
    config.data = data_config(tmp_path, **fields)
    with pytest.raises(ConfigError, match=message):  # refused before any compute, too
        validate_config(config, 1)


def test_image_size_is_for_folders_only_and_a_path_is_pointed_to_folder():
    config = tiny_config()
    config.data.image_size = (14, 14)
    with pytest.raises(ConfigError, match=r"data.image_size resizes the images of a folder"):
        validate_config(config, 1)
    config.data.image_size, config.data.channels = (), "grey"
    with pytest.raises(ConfigError, match=r"data.channels and data.background convert the "
                                                         r"images of a folder"):
        validate_config(config, 1)
    with pytest.raises(source.DataError, match=r"for a folder of your own images write "
                                                    r"data.name=folder:~/my_images"):
        source.tfds_builder("~/my_images", None)
    with pytest.raises(source.DataError, match="is a folder of images, not a TFDS data set"):
        source.check_prepared("folder:/somewhere", None)


# --- a run on a folder ------------------------------------------------------------------------------


def test_a_run_trains_on_a_folder_and_loads_back(tmp_path):
    """One epoch of a tiny MLP on 64 8x8 grey images (bars), on the suite's 4 fake devices."""
    from vae.train import loop, trained
    from vae.workdir import files

    rng = np.random.default_rng(0)
    images = tmp_path / "bars"
    for i in range(64):
        pixels = np.zeros((8, 8), np.uint8)
        pixels[:, rng.integers(0, 8)] = 255 if i % 2 else 0
        pixels[rng.integers(0, 8), :] = 200
        (images / f"{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(images / f"{i % 2}" / f"{i}.png")
    config = tiny_config(train__num_epochs=1, train__batch_size=16, eval__batch_size=16,
                         eval__kl_split_examples=8)
    config.data = data_config(images, folder_test_fraction=0.2)
    history = loop.train_and_evaluate(config, tmp_path / "run", progress=False)
    assert len(history) == 1 and np.isfinite(history[0]["test/elbo"])
    assert history[0]["step"] == len(folder.open_folder(config.data).split_indices("train")) // 16
    loaded_config, model, epoch = trained.load_trained(tmp_path / "run")
    assert epoch == 1 and model.image_shape == (8, 8, 1)
    assert loaded_config.data.name == f"folder:{images}"

    config.data.folder_test_fraction = 0.3  # other training images: not a resume
    config.train.num_epochs = 2
    with pytest.raises(files.WorkdirError, match="data.folder_test_fraction=0.2"):
        loop.train_and_evaluate(config, tmp_path / "run", progress=False)
