"""The user's images in and out: what scripts/compress.py reads and scripts/decompress.py writes.

In: image files (.png, .jpg, .jpeg), a folder of them (every file in it and its sub-folders but
hidden ones, `folder.walk`), or a uint8 .npy array. Files are decoded as a folder source decodes
them (`folder.decode_image`: the EXIF orientation applied; a 16-bit PNG refused), each at its own
size, grey or colour as it is (`read_photos`; the codec cuts them into the model's tiles), and
each is named by its path relative to the folder (a file given alone: its name), which the
compressed file records. A conversion (channels, transparent pixels flattened onto a background,
a resize) is made only where asked, and then the image coded is a copy, which `copy_note` says.
Everything is checked before any coding: a file that is not an image, a colour image for a grey
model, transparent pixels without a background, an output that exists; an array's header (a
.npy file of N x H x W or N x H x W x C uint8 values, N >= 1) before the model is loaded.
Nothing of a file is unpickled.

Out: each image as a PNG under the output folder at its recorded name; a JPEG's name ends in
.png instead (its decoded pixels, which PNG keeps exactly). PNG is lossless: a PNG that was
compressed comes back pixel for pixel (grey as 8-bit grey, colour as 8-bit RGB). Or the array,
as a .npy file. Each file is written whole or not at all (a temporary file, then renamed).
"""

import dataclasses
import io
import os
import tokenize
from pathlib import Path

import numpy as np

from vae import atomic
from vae.coding.errors import CodingError
from vae.config import schema
from vae.data import folder

JPEG_SUFFIXES = (".jpg", ".jpeg")
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # what np.load opens as an .npz archive
# What np.load raises for a damaged .npy file (its header is parsed as a Python literal).
NPY_ERRORS = (ValueError, EOFError, OverflowError, SyntaxError, tokenize.TokenError)


class InputError(CodingError):
    """Inputs that cannot be compressed as given, or outputs that cannot be written."""


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What to compress, found but not decoded: image files (paths and the names the compressed
    file records) or one .npy array."""

    paths: tuple[Path, ...]
    names: tuple[str, ...]  # relative paths, '/'-separated; () for an array
    array: Path | None = None


def find(paths: list[str]) -> Inputs:
    """The images that `paths` name: one folder, image files, or one .npy file; InputError for
    anything else (a missing path, an empty folder, a file in it that is not an image, ...)."""
    found = [Path(p) for p in paths]
    for path in found:
        if not path.exists():
            raise InputError(f"{path} does not exist")
    if len(found) == 1 and found[0].suffix.lower() == ".npy" and found[0].is_file():
        open_array(found[0])  # its header checked before the model loads
        return Inputs((), (), found[0])
    if len(found) == 1 and found[0].is_dir():
        return _folder(found[0])
    if any(path.is_dir() for path in found):
        raise InputError("give one folder, or image files, not both (or several folders): "
                         f"{next(p for p in found if p.is_dir())} is a folder")
    for path in found:
        if not folder.is_image_name(path.name):
            raise InputError(f"{path} is not a PNG or JPEG file (.png, .jpg, .jpeg); compress.py also takes "
                             "a folder of them or one uint8 .npy array")
    names = [path.name for path in found]
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice:
        raise InputError(f"two files are named {twice}: a compressed file records file names, not folders; "
                         "put the files in one folder and compress the folder")
    return Inputs(tuple(found), tuple(names))


def _folder(root: Path) -> Inputs:
    listed = folder.walk(root)
    others = [rel for rel, _ in listed if not folder.is_image_name(rel)]
    if others:
        more = f" (and {len(others) - 1} more)" if len(others) > 1 else ""
        raise InputError(f"{root / others[0]}{more} is not a PNG or JPEG file: compress.py codes the .png, "
                         ".jpg and .jpeg files of a folder; move the others out of it")
    if not listed:
        raise InputError(f"no images in the folder {root}: no .png, .jpg or .jpeg files in it or its "
                         "sub-folders")
    return Inputs(tuple(root / rel for rel, _ in listed), tuple(rel for rel, _ in listed))


def output_name(name: str) -> str:
    """The name an image is written back under: a JPEG's with .png in place of its suffix."""
    stem, suffix = os.path.splitext(name)
    return stem + ".png" if suffix.lower() in JPEG_SUFFIXES else name


def jpeg_note(names) -> str | None:
    """A line saying which JPEGs come back as PNGs, or None where none does."""
    jpegs = [name for name in names if output_name(name) != name]
    if not jpegs:
        return None
    if len(jpegs) == 1:
        return (f"{jpegs[0]} was a JPEG: written back as PNG (its decoded pixels, exactly), as "
                f"{output_name(jpegs[0])}")
    return (f"{len(jpegs)} files were JPEGs ({jpegs[0]}, ...): written back as PNGs (their decoded pixels, "
            "exactly), their names ending in .png")


def check_output_names(names) -> None:
    """InputError where two images would be written back under one name (a.jpg and a.png)."""
    seen = {}
    for name in names:
        out = output_name(name)
        if out in seen:
            raise InputError(f"{seen[out]} and {name} would both be decompressed as {out} (a JPEG comes "
                             "back as a PNG): rename one")
        seen[out] = name


def read_array(inputs: Inputs, *, channels: str = "keep", background: str = "",
               image_size: tuple[int, ...] = ()) -> np.ndarray:
    """The .npy array of `inputs`, as it is (its shape checked by `codec.compress`)."""
    if (channels, background, tuple(image_size)) != ("keep", "", ()):
        raise InputError(f"--channels, --background and --image_size convert image files; {inputs.array} "
                         "is an array, compressed as it is")
    return np.array(open_array(inputs.array))


@dataclasses.dataclass(frozen=True)
class Photos:
    """Image files read at their own sizes, each h x w x c uint8 (c: 1 or the model's channels),
    and which of them are not the file's own pixels (converted or resized as asked)."""

    images: list
    converted: tuple[str, ...]  # names whose channels or transparency were converted
    resized: tuple[int, int] | None  # --image_size: every image is a resized copy
    opaque_alpha: tuple[str, ...] = ()  # names with an alpha channel, all opaque, not kept

    @property
    def original(self) -> bool:
        return not self.converted and self.resized is None and not self.opaque_alpha


def _transparent(error: Exception) -> bool:
    return "has transparent pixels" in str(error)


def read_photos(inputs: Inputs, image_shape: tuple[int, int, int], *, channels: str = "keep",
                background: str = "", image_size: tuple[int, ...] = ()) -> Photos:
    """Every image file of `inputs` at its own size, grey or colour as it is (a grey image on a
    colour model stays grey: the file records it). A colour image on a grey model is refused
    (coding it as grey loses its colour) unless `channels` is "grey": then, as with any other
    conversion (`channels`, a `background` that flattens transparent pixels, `image_size`), what
    is coded is a converted copy, which `Photos` names."""
    schema.check_channels(channels, "--channels")
    schema.check_background(background, "--background")
    check_output_names(inputs.names)
    colour = image_shape[2] > 1
    if channels == "rgb" and not colour:
        raise InputError("--channels rgb: this model codes grey images (1 channel); --channels grey converts "
                         "colour images to grey")
    images, converted, opaque_alpha = [], [], []
    for path, name in zip(inputs.paths, inputs.names):
        try:
            pixels = folder.decode_image(path, (), "keep", "")
            flattened = False
            if _has_alpha(path):  # every pixel opaque, or decode_image had refused it
                opaque_alpha.append(name)
        except folder.DataError as e:  # transparent pixels: flattened onto --background, if given
            if not (background and _transparent(e)):
                raise
            pixels, flattened = folder.decode_image(path, (), "keep", background), True
        own = pixels.shape[2]
        if own > 1 and not colour and channels != "grey":
            raise InputError(f"{path} is colour, and this model codes grey images: coding it as grey would "
                             "lose its colour; --channels grey compresses grey copies (decompress.py then "
                             "gives the grey copies back, not the originals)")
        wanted = {"keep": own, "grey": 1, "rgb": 3}[channels]
        if wanted != own or image_size:
            pixels = folder.decode_image(path, tuple(image_size), channels, background)
        if wanted != own or flattened:
            converted.append(name)
        images.append(pixels)
    return Photos(images, tuple(converted), tuple(image_size) if image_size else None, tuple(opaque_alpha))


def _has_alpha(path: Path) -> bool:
    """Whether the file has an alpha channel or a transparent colour (from its header)."""
    from PIL import Image

    with Image.open(path) as image:
        return image.has_transparency_data


def copy_note(photos: Photos, channels: str, background: str) -> str | None:
    """A line saying which images are coded as converted or resized copies, or None."""
    if photos.original:
        return None
    what = []
    if photos.resized:
        what.append(f"every image resized to {photos.resized[0]}x{photos.resized[1]} (--image_size)")
    if photos.converted:
        first = photos.converted[0]
        more = f" and {len(photos.converted) - 1} more" if len(photos.converted) > 1 else ""
        how = ([f"--channels {channels}"] * (channels != "keep")
               + [f"--background {background}"] * bool(background))
        what.append(f"{first}{more} converted ({', '.join(how)})")
    if photos.opaque_alpha:
        first = photos.opaque_alpha[0]
        more = f" and {len(photos.opaque_alpha) - 1} more" if len(photos.opaque_alpha) > 1 else ""
        what.append(f"{first}{more} without its alpha channel (every pixel opaque: the colours are "
                    "kept, the alpha is not coded)")
    return (f"not the originals: {'; '.join(what)}; decompress.py gives back these copies, pixel for pixel, "
            "not the files")


def open_array(path: Path) -> np.ndarray:
    """The array of the .npy file `path`, memory-mapped (its header read, its data not yet):
    N x H x W or N x H x W x C uint8 with N >= 1; InputError for any other file (empty, an .npz
    archive, damaged or truncated, object or other dtypes, another number of axes, no images).
    Never unpickles: a file of Python objects is refused."""
    with open(path, "rb") as f:
        head = f.read(len(NPY_MAGIC))
    if not head:
        raise InputError(f"{path} is empty: compress.py takes a uint8 array saved with np.save")
    if head.startswith(ZIP_MAGICS):
        raise InputError(f"{path} is a zip file (an .npz archive of arrays?), not a .npy array: save the one "
                         "array to compress with np.save")
    if head != NPY_MAGIC:
        raise InputError(f"{path} is not a .npy file (it does not start as np.save writes one)")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except NPY_ERRORS as e:
        first_line = (str(e).strip().splitlines() or [""])[0]
        raise InputError(f"{path} cannot be read as a .npy array: it is damaged or truncated, or holds "
                         f"Python objects ({type(e).__name__}: {first_line})") from None
    if array.dtype != np.uint8:
        raise InputError(f"{path} holds {array.dtype} values; compress.py codes uint8 arrays (0..255; a "
                         "Bernoulli model's all 0/1 or all 0/255): convert it with .astype(np.uint8) first")
    if array.ndim not in (3, 4):
        one = " (one image: save x[None], an array of one)" if array.ndim == 2 else ""
        raise InputError(f"{path} holds an array of shape {array.shape}; compress.py codes N x H x W or "
                         f"N x H x W x C arrays of images{one}")
    if array.shape[0] == 0:
        raise InputError(f"{path} holds no images (shape {array.shape})")
    return array


def check_new_file(path: Path, overwrite: bool) -> None:
    """InputError where `path` exists (unless `overwrite`) or is a folder."""
    if path.is_dir():
        raise InputError(f"{path} is a folder: --out names the file to write")
    if path.exists() and not overwrite:
        raise InputError(f"{path} exists: pass --overwrite to replace it, or choose another --out")


def check_outputs(out: Path, names: list[str] | None, overwrite: bool, sized: bool = False) -> list[Path]:
    """The paths an opened file's images are written to (`sized`: a file of images of their own
    sizes): the .npy file `out` (an array), the
    one image `out` (a .png path, one image), or each name under the folder `out`; InputError
    for one that exists, unless `overwrite`, and for an `out` whose suffix says another kind of
    file than it would get (.npy bytes in x.png, PNG files in a folder x.npy)."""
    suffix = out.suffix.lower()
    if names is None and sized:
        raise InputError(f"{out}: the compressed file holds images of their own sizes without file names "
                         "(from the Python API), which no .npy array holds: decompress it with "
                         "vae.load(WORKDIR).decompress")
    if names is None:
        if suffix != ".npy":
            raise InputError(f"{out}: the compressed file holds an array, which decompress.py writes as the "
                             ".npy file it was: give --out a path ending in .npy")
        targets = [out]
    elif suffix == ".png" and len(names) == 1:
        targets = [out]
    elif suffix in (".npy", ".png", *JPEG_SUFFIXES) and not out.is_dir():
        many = f"{len(names)} images" if len(names) > 1 else "an image"
        raise InputError(f"{out}: the compressed file holds {many} from image files, which decompress.py "
                         "writes as PNG files: give --out a folder to write them into"
                         f"{' (or a .png path)' if len(names) == 1 else ''}")
    else:
        if out.exists() and not out.is_dir():
            raise InputError(f"{out} is a file; the compressed file holds {len(names)} named image"
                             f"{'s' if len(names) > 1 else ''}: give a folder to write them into")
        targets = [out / output_name(name) for name in names]
    for target in targets:
        check_new_file(target, overwrite)
    return targets


def write_pngs(targets: list[Path], images: np.ndarray) -> None:
    """Each H x W x C uint8 image as a PNG at its path (folders made): 8-bit grey (C = 1) or RGB.
    Each is encoded in memory and then written whole or not at all: a failed write (a full disk)
    leaves the file that was there."""
    from PIL import Image

    for target, image in zip(targets, images):
        target.parent.mkdir(parents=True, exist_ok=True)
        encoded = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(encoded, format="PNG")
        atomic.write_bytes(target, encoded.getvalue())


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()

