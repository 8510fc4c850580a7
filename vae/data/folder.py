"""A folder of the user's own images as a data source: `data.name=folder:PATH`.

What is read: every .png, .jpg and .jpeg file (any case) in the folder and its sub-folders, in
the order of their paths; names starting with '.' (hidden files, `.vae_decoded/`) are skipped,
links to files are followed, links to folders not. Pillow decodes them into uint8 N x H x W x C
arrays, as the TFDS source gives them. A file must hold what its name says, a PNG or a JPEG
(another format under such a name is refused), of 8 bits a channel at most: a 16-bit PNG is
refused (Pillow would read a colour one as its top 8 bits without a word, and the models read and
code 8-bit pixels).

- **Channels.** Grey images (modes 1 and L) give one channel,
  colour ones (RGB, palette, CMYK, YCbCr) three. With `data.channels=keep` all images must give
  the same count; `grey` converts colour images to grey (Pillow's ITU-R 601-2 luma), `rgb` grey
  ones to colour (the level in all three channels), so a folder mixing the two trains. An alpha
  channel (RGBA, LA, a palette's transparency) is dropped where every pixel is opaque; a
  transparent pixel is composited onto `data.background` (a colour: white, black, #rrggbb, any
  name Pillow's ImageColor knows) and refused where it is '' (what lies under a transparent pixel
  is arbitrary). The EXIF orientation is applied (the image as a viewer shows it).
- **Size.** All images one size, or every one resized to `data.image_size` (H, W), the aspect
  ratio not kept. Shrinking uses Pillow's BOX filter: each pixel the exact mean of the area it
  covers, so no ringing, and mean intensities (which a Bernoulli likelihood reads as
  probabilities) are kept; enlarging in either direction uses LANCZOS, Pillow's sharpest.
- **Cut, not resized.** With `data.tile_stride` (SH, SW) or `data.crops_per_image` (N), images
  of any size (each at least `data.image_size`) are cut into images of `data.image_size`, never
  resized (`vae.data.tiles`): the training split gives every tile on a grid of that stride, or
  N random crops per image drawn afresh every epoch (from `data.crop_seed` and the epoch); the
  evaluated splits (validation, test, whatever split an evaluation names) give the
  non-overlapping tiles covering the centre of each of their images. The splits are cut by
  image, as below, so no held-out image lends a tile to training.
- **Labels.** With every image in a sub-folder, an image's label is the index of its top-level
  sub-folder's name among the sorted names of those that hold images (torchvision's ImageFolder
  convention), and `class_names` gives the names; with none in a sub-folder, every label is -1.
- **Splits.** Each image falls in "test", "validation" or "train" by a hash of its path relative
  to the folder: about `data.folder_test_fraction` and `data.folder_validation_fraction` of them
  in the first two, the rest in train. Adding or removing an image moves no other between
  splits. Within a split the images are in the order of that hash, so a slice is a stable
  sample. The split expressions are TFDS's: 'train', 'train[:512]', 'train[100:]',
  'test[10%:20%]', parts joined by '+'.
- **Cache.** Decoded once into `PATH/.vae_decoded/images[-HxW].npz` (or, where the folder cannot
  be written, `$XDG_CACHE_HOME/vae/folders/<hash of PATH>/`): all pixels as one flat array and
  each image's shape, so images of different sizes fit. Keyed by every file's path, size and
  modification time, the size decoded at (`data.image_size`, or none where images are cut),
  `data.channels`, `data.background` and the cache's format, and written atomically. A
  changed folder is decoded again; deleting `.vae_decoded/` is always safe.

A folder that cannot give a sound data set stops with one `DataError` line naming the files, and
every check that needs no pixels runs before anything is decoded. A file Pillow cannot decode is
such a line; an error of this code is not (it raises as it is). The folder fields are read and
checked by `vae.config.schema`. scripts/compress.py reads its image files with the same listing
(`walk`) and decoding (`decode_image`). Imports nothing of the package outside `vae.data` but
`vae.atomic` and `vae.config.schema`.
"""

import concurrent.futures
import dataclasses
import hashlib
import os
import re
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vae import atomic
from vae.config import schema
from vae.data import tiles
from vae.data.source import FOLDER_PREFIX, DataError

EXTENSIONS = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "validation", "test")
CACHE_DIR = ".vae_decoded"
FORMAT = 4  # the cache's version, raised when decoding changes: an older cache is decoded again
GREY_MODES = ("1", "L", "LA")
COLOUR_MODES = ("RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr")
FORMATS = ("PNG", "JPEG", "MPO")  # Pillow's names; MPO: a camera's JPEG with more pictures after the first
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EXIF_ORIENTATION = 0x0112
_NOTED = set()  # folders whose cache could be written nowhere


def is_folder(name) -> bool:
    """Whether `data.name` names a folder of images ('folder:PATH') rather than a TFDS data set."""
    return isinstance(name, str) and name.startswith(FOLDER_PREFIX)


@dataclasses.dataclass(frozen=True)
class Folder:
    """A folder as a data config names it: where it is, the size its images get and how it is cut."""

    name: str  # data.name, 'folder:PATH', for messages
    path: Path
    image_size: tuple[int, ...] = ()  # () keeps the images' size, else (H, W)
    validation_fraction: float = schema.DEFAULT_VALIDATION_FRACTION
    test_fraction: float = schema.DEFAULT_TEST_FRACTION
    channels: str = "keep"  # keep | grey | rgb
    background: str = ""  # the colour transparent pixels are composited onto; '' refuses them
    tile_stride: tuple[int, ...] = ()  # (SH, SW): cut tiles of image_size at this stride; () none
    crops_per_image: int = 0  # random crops of image_size per photo per epoch; 0 none
    crop_seed: int = 0  # with the epoch, what the crops are drawn from

    @property
    def cuts(self) -> bool:
        """Whether the photos are cut into images of `image_size` (tiles or crops), never resized."""
        return bool(self.tile_stride) or self.crops_per_image > 0

    @property
    def decode_size(self) -> tuple[int, ...]:
        """The size images are decoded at: `image_size`, or each photo's own where they are cut."""
        return () if self.cuts else self.image_size


def from_config(data_config) -> Folder:
    """The folder `data_config.name` names, with the config's folder fields (checked by
    `vae.config.schema`; a bad one is a `DataError` line here, as `validate_config` words it)."""
    fields = _checked(schema.folder_fields, data_config)
    return Folder(data_config.name, folder_path(data_config.name), **fields._asdict())


def _checked(read, *args):
    """`read(*args)`, its `ConfigError` (a bad field) raised as a `DataError` line."""
    try:
        return read(*args)
    except schema.ConfigError as e:
        raise DataError(str(e)) from None


def folder_path(name: str) -> Path:
    """The folder 'folder:PATH' names (~ expanded; a relative PATH is taken from the working
    directory)."""
    raw = name[len(FOLDER_PREFIX):] if is_folder(name) else ""
    if not raw.strip():
        raise DataError(f"data.name={name!r} names no folder: write data.name=folder:PATH")
    return Path(os.path.expanduser(raw))


# --- the files ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Listing:
    """The images of a folder as found on disk, nothing decoded; sorted by relative path."""

    root: Path
    files: tuple[str, ...]  # paths relative to root, '/'-separated
    stats: tuple[tuple[int, int], ...]  # (size in bytes, modification time in ns) of each
    labels: np.ndarray  # N int32: the index of the file's class sub-folder, or -1
    class_names: tuple[str, ...]


def is_image_name(name: str) -> bool:
    """Whether a file name has an image extension a folder source reads (.png, .jpg, .jpeg)."""
    return os.path.splitext(name)[1].lower() in EXTENSIONS


def walk(root: Path) -> list[tuple[str, tuple[int, int]]]:
    """Every file in `root` and its sub-folders but hidden ones (names starting with '.'), as
    (path relative to root, '/'-separated; (size in bytes, modification time in ns)), sorted by
    path; links to files are followed, links to folders not. DataError for what cannot be read."""
    def unreadable(error: OSError):
        raise DataError(f"the folder {root} cannot be read: {error.strerror or error}: {error.filename}")

    found = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for filename in filenames:
            if filename.startswith("."):
                continue
            full = os.path.join(dirpath, filename)
            try:
                stat = os.stat(full)
            except OSError as e:  # a broken link, a file removed while listing
                raise DataError(f"{full} cannot be read: {e.strerror or e}") from None
            found.append((Path(os.path.relpath(full, root)).as_posix(), (stat.st_size, stat.st_mtime_ns)))
    return sorted(found)


def scan(folder: Folder) -> Listing:
    """The folder's image files, their labels and class names; DataError for a folder that does
    not exist, cannot be read, holds no images or mixes top-level and sub-folder images."""
    root = folder.path
    if not root.exists():
        raise DataError(f"the folder {root} (data.name={folder.name!r}) does not exist")
    if not root.is_dir():
        raise DataError(f"data.name={folder.name!r} is a file, not a folder of images")

    found = [(rel, stat) for rel, stat in walk(root) if is_image_name(rel)]
    if not found:
        raise DataError(f"no images in the folder {root}: no .png, .jpg or .jpeg files in it or its "
                        "sub-folders")
    files = tuple(rel for rel, _ in found)
    top = [rel for rel in files if "/" not in rel]
    nested = [rel for rel in files if "/" in rel]
    if top and nested:
        raise DataError(
            f"the folder {root} has images both at its top level ({top[0]}) and in sub-folders "
            f"({nested[0]}): put every image in a class sub-folder (its label) or none in any")
    class_names = tuple(sorted({rel.split("/", 1)[0] for rel in nested}))
    index = {c: i for i, c in enumerate(class_names)}
    labels = np.array([index[rel.split("/", 1)[0]] if nested else -1 for rel in files], dtype=np.int32)
    return Listing(root, files, tuple(s for _, s in found), labels, class_names)


# --- the splits ------------------------------------------------------------------------------------


def split_positions(files) -> np.ndarray:
    """Each file's place in [0, 1), from a hash of its relative path alone: the split it falls in
    and its order there do not depend on the other files."""
    return np.array([int.from_bytes(hashlib.sha256(os.fsencode(rel)).digest()[:8], "big") >> 11
                     for rel in files], dtype=np.float64) / 2.0 ** 53


def assign_splits(files, validation_fraction: float, test_fraction: float) -> dict[str, np.ndarray]:
    """The indices (into `files`) of each split's images, in the order of their hash: test below
    `test_fraction`, then validation, the rest train."""
    positions = split_positions(files)
    order = np.argsort(positions, kind="stable")
    ranked = positions[order]
    test = ranked < test_fraction
    validation = ~test & (ranked < test_fraction + validation_fraction)
    return {"test": order[test], "validation": order[validation], "train": order[~test & ~validation]}


_SPLIT_PART = re.compile(r"(?P<split>\w+)(\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?")


def _boundary(text: str | None, count: int) -> int | None:
    if text is None:
        return None
    if text.endswith("%"):  # TFDS's rounding to the closest example
        return int(round(int(text[:-1]) * count / 100.0))
    return int(text)


class FolderSource:
    """A folder's images as found on disk, cut into splits; decoded (or read from the cache) on the
    first read of a split. Every check that needs no pixels runs before decoding."""

    def __init__(self, folder: Folder):
        self.folder = folder
        self.listing = scan(folder)
        self.splits = assign_splits(self.listing.files, folder.validation_fraction, folder.test_fraction)
        self._photos = None
        self._images = None
        self.cache_file = None  # where the images were read from or cached, once read; None: nowhere

    @property
    def class_names(self) -> list[str]:
        return list(self.listing.class_names)

    def _counts(self) -> str:
        sizes = " / ".join(str(len(self.splits[s])) for s in SPLITS)
        return f"its {len(self.listing.files)} images fall {sizes} into {' / '.join(SPLITS)}"

    def split_indices(self, split: str) -> np.ndarray:
        """The indices of a split expression's images ('train', 'train[:512]', 'test[10%:]+validation');
        DataError for a split that is not there or comes out empty."""
        parts = []
        for text in str(split).split("+"):
            match = _SPLIT_PART.fullmatch(text.strip())
            if match is None:
                raise DataError(f"split {split!r} cannot be read: write train, validation or test, "
                                "or a slice of one, e.g. train[:512], train[100:], test[:10%]")
            name = match["split"]
            if name not in SPLITS:
                raise DataError(f"split {name!r} is not in {self.folder.name} (splits: {', '.join(SPLITS)})")
            indices = self.splits[name]
            count = len(indices)
            start, stop = _boundary(match["start"], count), _boundary(match["stop"], count)
            if any(b is not None and abs(b) > count for b in (start, stop)):
                raise DataError(f"split {split!r} asks for more images than the {name} split of "
                                f"{self.folder.name} holds ({count}; {self._counts()})")
            parts.append(indices[start:stop])
        indices = np.concatenate(parts)
        if indices.size == 0:
            raise DataError(f"split {split!r} of {self.folder.name} is empty ({self._counts()}); "
                            f"{self._empty_hint(split)}")
        return indices

    def _empty_hint(self, split: str) -> str:
        if "validation" in split:
            return (f"raise data.folder_validation_fraction (now {self.folder.validation_fraction}) "
                    "or add images")
        if "test" in split:
            return f"raise data.folder_test_fraction (now {self.folder.test_fraction}) or add images"
        return "lower data.folder_validation_fraction and data.folder_test_fraction, or add images"

    def check_split(self, split: str) -> None:
        """Raises DataError if `split` is not a split of the folder or comes out empty."""
        self.split_indices(split)

    def check_disjoint(self, split_a: str, split_b: str) -> None:
        """Raises DataError if two splits share an image (validation cut from training)."""
        shared = np.intersect1d(self.split_indices(split_a), self.split_indices(split_b)).size
        if shared:
            raise DataError(
                f"data.validation_split={split_b!r} overlaps data.train_split={split_a!r} ({shared} "
                f"shared images); use validation_split='validation' with "
                f"data.folder_validation_fraction > 0, or carve a split apart, e.g. "
                f"train_split='train[:1000]' and validation_split='train[1000:]'")

    def photos(self) -> list[np.ndarray]:
        """All the folder's images as decoded (H x W x C uint8 each, in path order), of any size
        where they are cut (each checked to hold one cut), else of one: read once per source."""
        if self._photos is None:
            photos, self.cache_file = load_images(self.folder, self.listing)
            size = self.folder.image_size
            for rel, photo in zip(self.listing.files, photos):
                if self.folder.cuts and (photo.shape[0] < size[0] or photo.shape[1] < size[1]):
                    raise DataError(
                        f"{self.listing.root / rel} is {photo.shape[0]}x{photo.shape[1]} (height x width), "
                        f"smaller than the {size[0]}x{size[1]} images data.image_size cuts from it: "
                        "lower data.image_size or remove the image")
            self._photos = photos
        return self._photos

    def images(self) -> np.ndarray:
        """All the folder's images, N x H x W x C uint8 in path order, where they are one size
        (not cut); DataError naming two files of different sizes."""
        if self._images is None:
            photos = self.photos()
            odd = next((i for i, p in enumerate(photos) if p.shape != photos[0].shape), None)
            if odd is not None:
                paths = [self.listing.root / rel for rel in self.listing.files]
                _refuse_mixed(self.listing.root, paths[0], photos[0].shape, paths[odd], photos[odd].shape)
            self._images = np.stack(photos)
        return self._images

    def load_split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The images (N x H x W x C uint8) and labels (N int32) of a split expression as an
        evaluation reads them: its photos, or where they are cut, each photo's evaluation tiles
        (`tiles.eval_tiles`: non-overlapping, covering its centre)."""
        indices = self.split_indices(split)
        labels = self.listing.labels[indices]
        if not self.folder.cuts:
            return self.images()[indices], labels
        photos = self.photos()
        images, owners = tiles.eval_tiles([photos[i] for i in indices], self.folder.image_size)
        return images, labels[owners]

    def load_train(self, split: str) -> tuple[np.ndarray, np.ndarray, Callable[[int], np.ndarray] | None]:
        """The training images and labels of a split expression, and where they change every
        epoch (random crops), epoch (1, 2, ...) -> that epoch's images (the images given are
        epoch 1's; the labels stay). Tiles at data.tile_stride, random crops, or `load_split`'s."""
        indices = self.split_indices(split)
        labels = self.listing.labels[indices]
        folder = self.folder
        if not folder.cuts:
            return *self.load_split(split), None
        photos = [self.photos()[i] for i in indices]
        if folder.tile_stride:
            images, owners = tiles.tiles(photos, folder.image_size, folder.tile_stride)
            return images, labels[owners], None

        def epoch_images(epoch: int) -> np.ndarray:
            return tiles.random_crops(photos, folder.image_size, folder.crops_per_image, folder.crop_seed,
                                      epoch)[0]

        images, owners = tiles.random_crops(photos, folder.image_size, folder.crops_per_image,
                                            folder.crop_seed, 1)
        return images, labels[owners], epoch_images

    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the images a run sees, from the first image's header, nothing decoded
        (but a PNG's, which Pillow reads whole to look for EXIF data)."""
        from PIL import Image

        path = self.listing.root / self.listing.files[0]
        try:
            with Image.open(path) as image:
                (width, height), mode = image.size, image.mode
                orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        except file_errors() as e:
            raise _unreadable(path, e) from None
        if orientation in (5, 6, 7, 8):  # turned by 90 degrees
            width, height = height, width
        channels = {"grey": 1, "rgb": 3}.get(self.folder.channels) or _channels(mode, path)
        if self.folder.image_size:
            height, width = self.folder.image_size
        return height, width, channels


def prepare(name: str, image_size: tuple[int, ...] = ()) -> str:
    """Decodes and caches a folder's images ahead of a run (`scripts/prepare_data.py`); returns
    what was done, in a line."""
    _checked(schema.check_image_size, image_size)
    source = FolderSource(Folder(name, folder_path(name), tuple(image_size)))
    photos = source.photos()
    where = f"cached in {source.cache_file}" if source.cache_file else "not cached (no writable place)"
    shapes = sorted({"x".join(map(str, p.shape)) for p in photos})
    shape = shapes[0] if len(shapes) == 1 else f"{len(shapes)} sizes, to cut into tiles or crops"
    classes = f", {len(source.class_names)} classes" if source.class_names else ""
    return f"{len(photos)} images of {source.folder.path} ({shape}{classes}) {where}"


def open_folder(data_config) -> FolderSource:
    """The folder `data_config.name` ('folder:PATH') names, listed and cut into splits; the
    folder's and fields' checks, what `source.check_prepared` is to a TFDS data set."""
    return FolderSource(from_config(data_config))


# --- decoding ----------------------------------------------------------------------------------


def file_errors() -> tuple[type[Exception], ...]:
    """What Pillow raises for a file it cannot decode (damaged, truncated, not an image, a
    decompression bomb): such a file is one line naming it. Anything else raises as it is."""
    from PIL import Image

    return OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError


def _channels(mode: str, path) -> int:
    if mode in GREY_MODES:
        return 1
    if mode in COLOUR_MODES:
        return 3
    raise DataError(f"{path} is a {mode} image, which a folder source does not read: save it as "
                    "8-bit grey or colour (L or RGB)")


def _unreadable(path, error: Exception) -> DataError:
    first_line = (str(error).strip().splitlines() or [""])[0]
    return DataError(f"{path} cannot be read as an image: {type(error).__name__}: {first_line}")


def _png_bit_depth(path) -> int | None:
    """A PNG file's bits per sample, from its header (IHDR); None for a file that is not a PNG.
    Pillow reads a 16-bit colour PNG as 8-bit RGB, so its mode does not tell."""
    with open(path, "rb") as f:
        head = f.read(25)
    if len(head) < 25 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    return head[24]


def _check_format(image, path) -> None:
    """DataError for a file that is not a PNG or JPEG (whatever its name), or a 16-bit PNG."""
    if image.format not in FORMATS:
        raise DataError(f"{path} is a {image.format} file, not a PNG or JPEG: save it as PNG (or JPEG) "
                        "under that name")
    if image.format == "PNG" and (_png_bit_depth(path) or 8) > 8:
        raise DataError(f"{path} is a 16-bit PNG, and the models read and code 8-bit pixels: save it with 8 "
                        "bits a channel first (e.g. ImageMagick's `magick IN -depth 8 OUT`)")


def _upright_turns() -> dict:
    """Each EXIF orientation's turn to the image as a viewer shows it: ImageOps.exif_transpose's
    table. That function also rewrites the EXIF block, which raises TypeError or AttributeError on
    damaged metadata; only the pixels are wanted here."""
    from PIL import Image

    t = Image.Transpose
    return {2: t.FLIP_LEFT_RIGHT, 3: t.ROTATE_180, 4: t.FLIP_TOP_BOTTOM, 5: t.TRANSPOSE, 6: t.ROTATE_270,
            7: t.TRANSVERSE, 8: t.ROTATE_90}


def read_upright(path: Path):
    """One PNG or JPEG file decoded into a Pillow image (its pixels in memory), its EXIF orientation
    applied; DataError for a file Pillow cannot decode, another format, or a 16-bit PNG."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            _check_format(image, path)
            turn = _upright_turns().get(image.getexif().get(_EXIF_ORIENTATION, 1))
            image.load()
            return image.transpose(turn) if turn is not None else image
    except file_errors() as e:
        raise _unreadable(path, e) from None


def _grey_or_rgb(image, path, channels: str, background: str):
    """`image` as an 8-bit L or RGB Pillow image (see the module's docstring)."""
    from PIL import Image, ImageColor

    grey = {"keep": _channels(image.mode, path) == 1, "grey": True, "rgb": False}[channels]
    if image.has_transparency_data:
        image = image.convert("RGBA")
        if image.getchannel("A").getextrema()[0] < 255:
            if not background:
                raise DataError(f"{path} has transparent pixels: name a background colour to flatten it "
                                "onto (data.background=white, or compress.py --background white)")
            under = Image.new("RGBA", image.size, ImageColor.getrgb(background)[:3] + (255,))
            image = Image.alpha_composite(under, image)
    return image.convert("L" if grey else "RGB")


def decode_image(path: Path, image_size: tuple[int, ...], channels: str = "keep", background: str = ""
                 ) -> np.ndarray:
    """One image file, H x W x C uint8: converted to `channels` (keep | grey | rgb), transparent
    pixels composited onto `background`, resized to `image_size` where it is given."""
    from PIL import Image

    image = _grey_or_rgb(read_upright(path), path, channels, background)
    if image_size and image.size != (image_size[1], image_size[0]):
        shrinking = image.width >= image_size[1] and image.height >= image_size[0]
        resample = Image.Resampling.BOX if shrinking else Image.Resampling.LANCZOS
        image = image.resize((image_size[1], image_size[0]), resample)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[..., None] if pixels.ndim == 2 else pixels


def decode_images(listing: Listing, folder: Folder) -> list[np.ndarray]:
    """Every image of `listing`, H x W x C uint8 each, as `folder` converts and sizes them (each
    at its own size where they are cut); DataError naming two files whose channel counts differ.
    Decoded on a few threads (Pillow's decoders release the GIL)."""
    paths = [listing.root / rel for rel in listing.files]
    images = []
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    try:
        decoded = pool.map(lambda p: decode_image(p, folder.decode_size, folder.channels, folder.background),
                           paths)
        for i, pixels in enumerate(decoded):
            if images and pixels.shape[2] != images[0].shape[2]:
                _refuse_mixed(listing.root, paths[0], images[0].shape, paths[i], pixels.shape)
            images.append(pixels)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return images


def _refuse_mixed(root: Path, first: Path, first_shape, other: Path, other_shape) -> None:
    a, b = first.relative_to(root), other.relative_to(root)
    if first_shape[2] != other_shape[2]:
        kind = {1: "grey (1 channel)", 3: "colour (3 channels)"}
        raise DataError(f"the images in {root} mix grey and colour: {a} is {kind[first_shape[2]]} and "
                        f"{b} is {kind[other_shape[2]]}; convert them all to one kind with "
                        f"--config.data.channels=grey or --config.data.channels=rgb")
    t = min(32, *first_shape[:2], *other_shape[:2])  # a tile size both hold
    raise DataError(
        f"the images in {root} are not all one size: {a} is {first_shape[0]}x{first_shape[1]} and "
        f"{b} is {other_shape[0]}x{other_shape[1]} (height x width); cut them into images of one size, "
        f"tiles (--config.data.image_size={t},{t} --config.data.tile_stride={t},{t}) or random crops "
        f"(--config.data.image_size={t},{t} --config.data.crops_per_image=64), or resize them all with "
        f"--config.data.image_size=H,W alone")


# --- the cache ------------------------------------------------------------------------------------


def cache_key(folder: Folder, listing: Listing) -> dict:
    """What a cached file must match: every file's path, size and modification time, the size
    (or none: each its own) and channels the images were given, the background and the cache's
    format."""
    files = hashlib.sha256()
    for rel, (size, mtime_ns) in zip(listing.files, listing.stats):
        files.update(os.fsencode(rel) + f"\0{size}\0{mtime_ns}\n".encode())
    return {"format": FORMAT, "image_size": list(folder.decode_size), "channels": folder.channels,
            "background": folder.background, "images": len(listing.files), "files_sha256": files.hexdigest()}


def cache_files(folder: Folder) -> list[Path]:
    """Where a folder's decoded images are cached: inside it, else in the user's cache directory."""
    size = folder.decode_size
    name = "images" + (f"-{size[0]}x{size[1]}" if size else "")
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"))
    where = hashlib.sha256(os.fsencode(folder.path.resolve())).hexdigest()[:16]
    return [folder.path / CACHE_DIR / f"{name}.npz", user_cache / "vae" / "folders" / where / f"{name}.npz"]


def _read_cache(path: Path, key: dict) -> list[np.ndarray] | None:
    """The images a cache file holds (one flat array of all their pixels and their shapes)."""
    cached = atomic.load_arrays(path, key)
    if cached is None:
        return None
    pixels, shapes = cached["pixels"], cached["shapes"]
    ends = np.cumsum(np.prod(shapes, axis=1))
    if len(ends) == 0 or ends[-1] != pixels.size:
        print(f"note: the cached decoded images {path} do not fill their shapes; decoding them again",
              file=sys.stderr)
        return None
    return [flat.reshape(shape) for flat, shape in zip(np.split(pixels, ends[:-1]), shapes)]


def _write_cache(path: Path, key: dict, images: list[np.ndarray]) -> bool:
    try:
        atomic.save_arrays(path, key, pixels=np.concatenate([image.ravel() for image in images]),
                           shapes=np.array([image.shape for image in images], dtype=np.int64))
        return True
    except OSError:
        return False


def load_images(folder: Folder, listing: Listing) -> tuple[list[np.ndarray], Path | None]:
    """All images of `listing`, H x W x C uint8 each, from the cache or decoded and cached (in the
    folder, else in the user's cache directory; a note once where neither can hold them), and the
    cache file (None where there is none)."""
    key = cache_key(folder, listing)
    paths = cache_files(folder)
    for path in paths:
        cached = _read_cache(path, key)
        if cached is not None:
            return cached, path
    images = decode_images(listing, folder)
    written = next((path for path in paths if _write_cache(path, key, images)), None)
    if written is None and folder.path not in _NOTED:
        _NOTED.add(folder.path)  # once per folder and process
        print(f"note: cannot cache the decoded images of {folder.path} (in it or in "
              f"{paths[-1].parent}); they are decoded on every run", file=sys.stderr)
    return images, written
