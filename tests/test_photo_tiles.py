"""Photos of any size cut into images of one size (data.tile_stride, data.crops_per_image): the
tiles' grid, random crops per epoch, the evaluated splits' tiles, mixed sizes through the cache,
the fields' one-line errors, a run trained on random crops, and make photos (apt faked). Synthetic
seeded images only."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from configs import default
from tests.conftest import tiny_config
from vae.config import ConfigError, validate_config
from vae.data import dataset, folder, tiles
from vae.data.source import DataError

SIZES = [(40, 56), (33, 33), (64, 48), (50, 70), (36, 90), (45, 40), (80, 35), (38, 64), (60, 60), (41, 77)]


def write_photos(root, sizes=SIZES, seed=0):
    """Random colour PNGs of the given (height, width) sizes; returns {file name: pixels}."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    for i, (h, w) in enumerate(sizes):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"photo{i:02d}.png")
        written[f"photo{i:02d}.png"] = pixels
    return written


def data_config(path, **fields):
    config = default.get_config().data
    config.name = f"folder:{path}"
    config.image_size = (16, 16)
    for key, value in fields.items():
        config[key] = value
    return config


# --- the grid and the crops ------------------------------------------------------------------------


@pytest.mark.parametrize("length, size, stride, starts", [
    (10, 4, 3, [0, 3, 6]),  # fits exactly
    (11, 4, 3, [0, 3, 6]),  # one pixel left over: the bottom (right) edge keeps it
    (12, 4, 3, [1, 4, 7]),  # two: one on each side
    (8, 8, 5, [0]),
    (9, 4, 4, [0, 4]),  # 9 = 2 tiles + 1
    (15, 4, 4, [1, 5, 9]),  # 15 = 3 tiles + 3: 1 before, 2 after
])
def test_grid_starts_are_centred(length, size, stride, starts):
    assert tiles.grid_starts(length, size, stride).tolist() == starts


def test_tiles_are_the_slices_of_the_photo_at_the_stride():
    rng = np.random.default_rng(1)
    photos = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(13, 17), (9, 5)]]
    images, owners = tiles.tiles(photos, (4, 5), (3, 2))
    first = tiles.grid_positions((13, 17), (4, 5), (3, 2))
    assert first[:, 0].tolist() == [0] * 7 + [3] * 7 + [6] * 7 + [9] * 7  # rows of 7, row by row
    assert first[:7, 1].tolist() == [0, 2, 4, 6, 8, 10, 12]
    assert len(images) == 28 + 2 * 1 and owners.tolist() == [0] * 28 + [1] * 2  # 9x5: tops 1, 4 (centred)
    positions = np.concatenate([first, tiles.grid_positions((9, 5), (4, 5), (3, 2))])
    for image, owner, (top, left) in zip(images, owners, positions):
        np.testing.assert_array_equal(image, photos[owner][top:top + 4, left:left + 5])


def test_eval_tiles_do_not_overlap_and_a_small_photo_gives_its_centre_crop():
    photo = np.arange(40 * 50, dtype=np.uint32).reshape(40, 50, 1).astype(np.uint8)
    images, owners = tiles.eval_tiles([photo], (32, 32))
    assert images.shape == (1, 32, 32, 1)
    np.testing.assert_array_equal(images[0], photo[4:36, 9:41])  # the centre crop
    positions = tiles.grid_positions((70, 100), (16, 16), (16, 16))
    assert positions[:, 0].tolist() == [3] * 6 + [19] * 6 + [35] * 6 + [51] * 6  # 70 = 4 x 16 + 6
    assert positions[:6, 1].tolist() == [2, 18, 34, 50, 66, 82]  # 100 = 6 x 16 + 4


def test_crops_are_deterministic_per_seed_and_epoch_inside_the_photo_and_new_every_epoch():
    rng = np.random.default_rng(2)
    photos = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(20, 30), (25, 18)]]
    one = tiles.crop_positions([(20, 30), (25, 18)], (8, 6), 50, seed=3, epoch=1)
    assert all((p >= 0).all() for p in one)
    assert one[0][:, 0].max() <= 12 and one[0][:, 1].max() <= 24 and one[1][:, 0].max() <= 17
    assert one[1][:, 1].max() <= 12
    assert {int(t) for t in one[0][:, 0]} == set(range(13))  # every top reached in 50 draws over 13
    again = tiles.crop_positions([(20, 30), (25, 18)], (8, 6), 50, seed=3, epoch=1)
    assert all(np.array_equal(a, b) for a, b in zip(one, again))
    other_epoch = tiles.crop_positions([(20, 30), (25, 18)], (8, 6), 50, seed=3, epoch=2)
    other_seed = tiles.crop_positions([(20, 30), (25, 18)], (8, 6), 50, seed=4, epoch=1)
    assert not np.array_equal(one[0], other_epoch[0]) and not np.array_equal(one[0], other_seed[0])
    images, owners = tiles.random_crops(photos, (8, 6), 50, seed=3, epoch=1)
    assert images.shape == (100, 8, 6, 3) and owners.tolist() == [0] * 50 + [1] * 50
    for image, owner, (top, left) in zip(images, owners, np.concatenate(one)):
        np.testing.assert_array_equal(image, photos[owner][top:top + 8, left:left + 6])


# --- a folder of photos of different sizes ------------------------------------------------------------


def test_tiles_of_a_folder_of_mixed_sizes(tmp_path):
    written = write_photos(tmp_path)
    config = data_config(tmp_path, tile_stride=(8, 12), folder_test_fraction=0.3,
                         folder_validation_fraction=0.2, validation_split="validation", binarize="none")
    opened = folder.open_folder(config)
    names = {split: [opened.listing.files[i] for i in opened.split_indices(split)] for split in folder.SPLITS}
    assert all(names.values()) and not set(names["train"]) & set(names["test"] + names["validation"])
    data = dataset.load_dataset(config)
    assert data.image_shape == (16, 16, 3) and data.epoch_images is None
    train = [written[n] for n in names["train"]]
    expected, _ = tiles.tiles(train, (16, 16), (8, 12))
    assert len(expected) == sum(len(tiles.grid_positions(p.shape, (16, 16), (8, 12))) for p in train)
    np.testing.assert_array_equal(data.train_images, expected)
    for split, images in (("test", data.test_images), ("validation", data.val_images)):
        held_out = [written[n] for n in names[split]]
        np.testing.assert_array_equal(images, tiles.eval_tiles(held_out, (16, 16))[0])
    assert (data.train_labels == -1).all() and len(data.test_labels) == len(data.test_images)


def test_crops_of_a_folder_change_every_epoch_and_evaluation_is_tiles(tmp_path):
    written = write_photos(tmp_path)
    config = data_config(tmp_path, crops_per_image=5, crop_seed=7, folder_test_fraction=0.3,
                         binarize="static")
    opened = folder.open_folder(config)
    train = [written[opened.listing.files[i]] for i in opened.split_indices("train")]
    test = [written[opened.listing.files[i]] for i in opened.split_indices("test")]
    data = dataset.load_dataset(config)
    assert data.train_images.shape == (5 * len(train), 16, 16, 3)
    assert set(np.unique(data.train_images)) == {0, 255}  # binarised once a draw, as data.binarize says
    np.testing.assert_array_equal(data.epoch_images(1), data.train_images)
    np.testing.assert_array_equal(data.epoch_images(3), dataset.load_dataset(config).epoch_images(3))
    assert not np.array_equal(data.epoch_images(2), data.epoch_images(1))
    raw = dataset.load_dataset(data_config(tmp_path, crops_per_image=5, crop_seed=7, folder_test_fraction=0.3,
                                           binarize="none"))
    np.testing.assert_array_equal(raw.epoch_images(2), tiles.random_crops(train, (16, 16), 5, 7, 2)[0])
    np.testing.assert_array_equal(raw.test_images, tiles.eval_tiles(test, (16, 16))[0])


def test_the_cache_round_trips_mixed_sizes(tmp_path, monkeypatch):
    written = write_photos(tmp_path)
    calls = []
    real = folder.decode_images
    monkeypatch.setattr(folder, "decode_images", lambda listing, f: calls.append(1) or real(listing, f))
    line = folder.prepare(f"folder:{tmp_path}")  # ahead of a run, at the photos' own size
    cache = tmp_path / ".vae_decoded" / "images.npz"
    assert line == f"10 images of {tmp_path} (10 sizes, to cut into tiles or crops) cached in {cache}"
    assert calls == [1] and cache.is_file()
    first = folder.open_folder(data_config(tmp_path, tile_stride=(16, 16))).photos()
    with np.load(cache) as stored:
        assert stored["shapes"].tolist() == [[h, w, 3] for h, w in SIZES]
    second = folder.open_folder(data_config(tmp_path, crops_per_image=2)).photos()  # the same cache
    assert calls == [1]
    for name, a, b in zip(sorted(written), first, second):
        np.testing.assert_array_equal(a, written[name])
        np.testing.assert_array_equal(b, written[name])
    folder.open_folder(data_config(tmp_path, image_size=(16, 16), folder_test_fraction=0.1)).images()
    assert calls == [1, 1] and (tmp_path / ".vae_decoded" / "images-16x16.npz").is_file()  # resized: its own


# --- one line each ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fields, message", [
    ({"tile_stride": (8,)}, r"data.tile_stride must be \(\) \(no tiles\) or \(rows, columns\) .*got \(8,\)"),
    ({"tile_stride": (8, 0)}, r"data.tile_stride must be \(\)"),
    ({"crops_per_image": -1}, r"data.crops_per_image must be an integer >= 0 \(0: no random crops\), got -1"),
    ({"tile_stride": (8, 8), "crops_per_image": 4},
     r"data.tile_stride=\(8, 8\) and data.crops_per_image=4 exclude each other: train on tiles or on random "
     r"crops"),
    ({"tile_stride": (8, 8), "image_size": ()},
     r"data.tile_stride cuts images of data.image_size out of each photo: set its size too"),
])
def test_bad_cutting_fields(tmp_path, fields, message):
    write_photos(tmp_path, SIZES[:2])
    with pytest.raises(DataError, match=message) as info:
        dataset.load_dataset(data_config(tmp_path, **fields))
    assert "\n" not in str(info.value)
    config = tiny_config()
    config.data = data_config(tmp_path, **fields)
    with pytest.raises(ConfigError, match=message):  # before any compute
        validate_config(config, 1)


def test_a_tile_larger_than_a_photo_and_tiles_of_a_tfds_set(tmp_path):
    write_photos(tmp_path, SIZES[:3])
    with pytest.raises(DataError, match=r"photo01.png is 33x33 \(height x width\), smaller than the 34x20 "
                                        r"images data.image_size cuts from it: lower data.image_size"):
        dataset.load_dataset(data_config(tmp_path, image_size=(34, 20), crops_per_image=3,
                                         folder_test_fraction=0.5))
    config = tiny_config()
    for image_size in ((), (14, 14)):
        config.data.image_size, config.data.tile_stride, config.data.crops_per_image = image_size, (), 4
        tfds = r"data.tile_stride and data.crops_per_image cut the images of a folder .*leave them \(\) and 0"
        with pytest.raises(ConfigError, match=tfds + " for fashion_mnist"):
            validate_config(config, 1)


# --- a run --------------------------------------------------------------------------------------------


def test_a_run_trains_on_new_random_crops_every_epoch(tmp_path, monkeypatch):
    """Two epochs of a tiny MLP on 4 crops of each of 20 colour images of different sizes, the batches
    from the device and from the host (the same numbers); the crops are those of each epoch."""
    from vae.train import loop

    sizes = [(20 + 3 * i, 60 - 2 * i) for i in range(20)]
    write_photos(tmp_path / "photos", sizes, seed=5)
    drawn = []
    real = tiles.random_crops

    def crops(photos, tile_hw, count, seed, epoch):
        drawn.append(epoch)
        return real(photos, tile_hw, count, seed, epoch)

    monkeypatch.setattr(tiles, "random_crops", crops)
    histories = {}
    for source in ("device", "host"):
        config = tiny_config(train__num_epochs=2, train__batch_size=16, eval__batch_size=16,
                             eval__kl_split_examples=8, train__batch_source=source)
        config.data = data_config(tmp_path / "photos", image_size=(8, 8), crops_per_image=4,
                                  folder_test_fraction=0.2)
        drawn.clear()
        histories[source] = loop.train_and_evaluate(config, tmp_path / source, progress=False)
        assert drawn == [1, 1, 2]  # the data set's epoch 1, then each epoch's, once
    num_train = len(folder.open_folder(config.data).split_indices("train"))
    assert [r["step"] for r in histories["device"]] == [(4 * num_train // 16) * e for e in (1, 2)]
    for a, b in zip(histories["device"], histories["host"]):
        assert np.isfinite(a["test/elbo"]) and a["train/elbo"] == pytest.approx(b["train/elbo"], rel=1e-5)


# --- make photos ----------------------------------------------------------------------------------------


def fake_apt(gather, sizes):
    """subprocess.run for scripts/gather_photos.py with `apt-get download` writing an empty .deb and
    `dpkg-deb -x` unpacking seeded JPEGs of `sizes` (width, height, in turn) and a copyright file."""
    import subprocess

    made = iter(sizes * 10)

    def run(cmd, cwd=None, **_):
        if cmd[0] == "apt-get":
            (cwd / f"{cmd[-1]}.deb").write_bytes(b"")
            return subprocess.CompletedProcess(cmd, 0, "", "")
        package, root = Path(cmd[2]).stem, Path(cmd[3])
        (root / "usr/share/doc" / package).mkdir(parents=True)
        (root / "usr/share/doc" / package / "copyright").write_text(f"{package}: CC0-1.0\n")
        for i, rel in enumerate(gather.PHOTOS[package]):
            (root / gather.BACKGROUNDS / rel).parent.mkdir(parents=True, exist_ok=True)
            w, h = next(made)
            pixels = np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / gather.BACKGROUNDS / rel)
        return subprocess.CompletedProcess(cmd, 0)

    return run


def test_make_photos_gathers_every_photo_shrunk_and_their_licences(tmp_path, monkeypatch):
    from tests.conftest import script_module

    gather = script_module("gather_photos.py")
    monkeypatch.setattr(gather, "BACKGROUNDS", Path("not/installed/backgrounds"))
    monkeypatch.setattr(gather.subprocess, "run", fake_apt(gather, [(120, 80), (64, 90), (40, 30)]))
    assert gather.main(["--out", str(tmp_path / "photos"), "--max_side", "60"]) == 0
    written = sorted((tmp_path / "photos").glob("*.png"))
    assert len(written) == 25 == sum(len(v) for v in gather.PHOTOS.values())
    sizes = {Image.open(p).size for p in written}
    assert sizes == {(60, 40), (43, 60), (40, 30)}  # longer side 60 at most, the shape kept, small ones kept
    assert sorted(p.name for p in (tmp_path / "photos" / "licences").iterdir()) == sorted(
        f"{package}.copyright" for package in gather.PHOTOS)


def test_make_photos_without_the_packages_is_one_line(tmp_path, monkeypatch, capsys):
    import subprocess

    from tests.conftest import script_module

    gather = script_module("gather_photos.py")
    monkeypatch.setattr(gather, "BACKGROUNDS", Path("not/installed/backgrounds"))
    monkeypatch.setattr(gather.subprocess, "run", lambda cmd, **_: subprocess.CompletedProcess(
        cmd, 100, "", "W: something\nE: Unable to locate package mate-backgrounds\n"))
    assert gather.main(["--out", str(tmp_path / "photos")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("error: cannot fetch the Debian package mate-backgrounds (apt-get download: E: Unable to "
                   "locate package mate-backgrounds); it needs the network once and a package list (`sudo "
                   "apt-get update`), or install it (`sudo apt-get install mate-backgrounds`)")
    assert not (tmp_path / "photos").exists()
