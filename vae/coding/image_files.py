"""The user's images in and out: what scripts/compress.py reads and scripts/decompress.py writes.

In: image files (.png, .jpg, .jpeg), a folder of them (every file in it and its sub-folders but
hidden ones, `folder.walk`), or a uint8 .npy array. Files are decoded as a folder source decodes
them (`folder.decode_image`: the EXIF orientation applied, channels and transparency converted
as asked, resized where asked), and each is named by its path relative to the folder (a file
given alone: its name), which the compressed file records. Everything is checked before any
coding: a file that is not an image, an image of another size or channel count than the
model's, an output that exists.

Out: each image as a PNG under the output folder at its recorded name; a JPEG's name ends in
.png instead (its decoded pixels, which PNG keeps exactly). PNG is lossless: a PNG that was
compressed comes back pixel for pixel (grey as 8-bit grey, colour as 8-bit RGB). Or the array,
as a .npy file.
"""

import dataclasses
import io
import os
from pathlib import Path

import numpy as np

from vae.coding.errors import CodingError
from vae.data import folder

JPEG_SUFFIXES = (".jpg", ".jpeg")


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


def _kind(shape) -> str:
    return f"{shape[0]}x{shape[1]} {'grey' if shape[2] == 1 else 'colour'}"


def read_images(inputs: Inputs, image_shape: tuple[int, int, int], *, channels: str = "keep",
                background: str = "", image_size: tuple[int, ...] = ()) -> np.ndarray:
    """N x H x W x C uint8 images of the model's shape from image files (or the .npy array as
    it is); InputError naming a file that cannot give one."""
    if inputs.array is not None:
        if (channels, background, tuple(image_size)) != ("keep", "", ()):
            raise InputError(f"--channels, --background and --image_size convert image files; {inputs.array} "
                             "is an array, compressed as it is")
        try:
            return np.load(inputs.array, allow_pickle=False)
        except ValueError:  # not an .npy file, or an object array
            raise InputError(f"{inputs.array} is not a .npy file of a numeric array") from None
    folder.check_channels(channels, "--channels")
    folder.check_background(background, "--background")
    check_output_names(inputs.names)
    images = np.empty((len(inputs.paths), *image_shape), np.uint8)
    for i, path in enumerate(inputs.paths):
        pixels = folder.decode_image(path, tuple(image_size), channels, background, exact=True)
        if pixels.shape != tuple(image_shape):
            raise InputError(_wrong_shape(path, pixels.shape, image_shape, channels))
        images[i] = pixels
    return images


def _wrong_shape(path: Path, shape, image_shape, channels: str) -> str:
    fixes = []
    if shape[:2] != tuple(image_shape[:2]):
        fixes.append(f"--image_size {image_shape[0]},{image_shape[1]} resizes every image as it is read "
                     "(what comes back is the resized image)")
    if shape[2] != image_shape[2]:
        fixes.append(f"--channels {'grey' if image_shape[2] == 1 else 'rgb'} converts every image")
    return (f"{path} is {_kind(shape)} ({shape[2]} channel{'s' if shape[2] > 1 else ''}"
            f"{'' if channels == 'keep' else ' as converted'}); the model codes {_kind(image_shape)} "
            f"images: {'; '.join(fixes)}")


def check_new_file(path: Path, overwrite: bool) -> None:
    """InputError where `path` exists (unless `overwrite`) or is a folder."""
    if path.is_dir():
        raise InputError(f"{path} is a folder: --out names the file to write")
    if path.exists() and not overwrite:
        raise InputError(f"{path} exists: pass --overwrite to replace it, or choose another --out")


def check_outputs(out: Path, names: list[str] | None, overwrite: bool) -> list[Path]:
    """The paths an opened file's images are written to: the .npy file `out` (an array), the
    one image `out` (a .png path, one image), or each name under the folder `out`; InputError
    for one that exists, unless `overwrite`."""
    if names is None:
        targets = [out]
    elif out.suffix.lower() == ".png" and len(names) == 1:
        targets = [out]
    else:
        if out.exists() and not out.is_dir():
            raise InputError(f"{out} is a file; the compressed file holds {len(names)} named image"
                             f"{'s' if len(names) > 1 else ''}: give a folder to write them into")
        targets = [out / output_name(name) for name in names]
    for target in targets:
        check_new_file(target, overwrite)
    return targets


def write_pngs(targets: list[Path], images: np.ndarray) -> None:
    """Each H x W x C uint8 image as a PNG at its path (folders made): 8-bit grey (C = 1) or RGB."""
    from PIL import Image

    for target, image in zip(targets, images):
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(target, format="PNG")


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()

