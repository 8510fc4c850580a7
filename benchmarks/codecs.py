"""Standard lossless codecs on binarised images, for comparison with the VAE's bits-back files.

Each codec compresses the same N x H x W binary images two ways: the whole set at once (PNG,
WebP and JPEG XL get one mosaic of `MOSAIC_COLUMNS` images per row; gzip, bz2 and xz get the
packed bits of all images, 8 pixels a byte) and one image at a time (a complete file per image:
its own header included). Every encoding is decoded again and checked to be lossless. JPEG XL
needs `imagecodecs` (PyPI); without it that row is left out.

    PNG 1-bit       Pillow, mode "1", optimize=True
    WebP lossless   Pillow, lossless=True, quality=100, method=6 (its slowest, smallest)
    JPEG XL         imagecodecs, lossless, effort 9 (1 bit per sample)
    gzip / bz2 / xz level 9 (xz: preset 9 | extreme, its dictionary cut to the input's size, which
                    changes nothing but the time), of np.packbits
"""

import bz2
import gzip
import io
import lzma
import math
import time

import numpy as np
from PIL import Image

MOSAIC_COLUMNS = 100

try:
    import imagecodecs
except ImportError:  # JPEG XL is measured only where imagecodecs is installed
    imagecodecs = None


def mosaic(images: np.ndarray, columns: int = MOSAIC_COLUMNS) -> np.ndarray:
    """The images (N x H x W, or N x H x W x C) tiled row by row into one (rows · H) x (columns · W)
    image (x C), zero-padded."""
    n, h, w, channels = *images.shape[:3], images.shape[3:]
    rows = math.ceil(n / columns)
    padded = np.zeros((rows * columns, *images.shape[1:]), images.dtype)
    padded[:n] = images
    tiles = padded.reshape(rows, columns, h, w, *channels).swapaxes(1, 2)
    return tiles.reshape(rows * h, columns * w, *channels)


def _pillow(image_bool: np.ndarray, **save) -> bytes:
    buffer = io.BytesIO()
    pixels = image_bool if save["format"] == "PNG" else image_bool.astype(np.uint8) * np.uint8(255)
    Image.fromarray(pixels).save(buffer, **save)
    return buffer.getvalue()


def _pillow_decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L")) > 127


def png(image_bool):
    return _pillow(image_bool, format="PNG", optimize=True)


def webp(image_bool):
    return _pillow(image_bool, format="WEBP", lossless=True, quality=100, method=6)


def jpegxl(image_bool):
    return imagecodecs.jpegxl_encode(image_bool.astype(np.uint8), lossless=True, effort=9, bitspersample=1)


def _jpegxl_decode(data):
    return imagecodecs.jpegxl_decode(data) > 0


def _packed(images_bool) -> bytes:
    return np.packbits(images_bool.reshape(-1)).tobytes()


def _unpacked(data, shape):
    return np.unpackbits(np.frombuffer(data, np.uint8), count=math.prod(shape)).reshape(shape).astype(bool)


def xz_compress(data: bytes) -> bytes:
    dictionary = max(4096, 1 << max(0, len(data) - 1).bit_length())
    filters = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": dictionary}]
    return lzma.compress(data, format=lzma.FORMAT_XZ, filters=filters)


GENERAL = {
    "gzip": (lambda b: gzip.compress(b, compresslevel=9, mtime=0), gzip.decompress),
    "bz2": (lambda b: bz2.compress(b, 9), bz2.decompress),
    "xz": (xz_compress, lzma.decompress),
}


def image_codecs() -> dict:
    """name -> (encode one 2-D bool image, decode it back)."""
    codecs = {"PNG 1-bit": (png, _pillow_decode), "WebP lossless": (webp, _pillow_decode)}
    if imagecodecs is not None and imagecodecs.JPEGXL.available:
        codecs["JPEG XL lossless"] = (jpegxl, _jpegxl_decode)
    return codecs


def _row(name, whole_bytes, per_image_bytes, num_images, pixels_per_image, seconds) -> dict:
    dims = num_images * pixels_per_image
    return {"codec": name, "whole_bytes": whole_bytes, "whole_bits_per_dim": 8 * whole_bytes / dims,
            "per_image_bytes": per_image_bytes / num_images,
            "per_image_bits_per_dim": 8 * per_image_bytes / dims, "time_sec": seconds}


def measure_codecs(images_NxHxW: np.ndarray, progress=None) -> list[dict]:
    """One row per codec: bytes and bits/dim for the whole set and per image, checked lossless."""
    images = images_NxHxW.astype(bool)
    n, h, w = images.shape
    rows = []
    for name, (encode, decode) in image_codecs().items():
        start = time.perf_counter()
        tiled = mosaic(images)
        whole = encode(tiled)
        if not np.array_equal(decode(whole), tiled):
            raise AssertionError(f"{name} did not decode the mosaic losslessly")
        per_image = 0
        for image in images:
            data = encode(image)
            per_image += len(data)
        if not np.array_equal(decode(encode(images[-1])), images[-1]):
            raise AssertionError(f"{name} did not decode an image losslessly")
        rows.append(_row(name, len(whole), per_image, n, h * w, time.perf_counter() - start))
        if progress:
            progress(rows[-1])
    for name, (encode, decode) in GENERAL.items():
        start = time.perf_counter()
        whole = encode(_packed(images))
        if not np.array_equal(_unpacked(decode(whole), images.shape), images):
            raise AssertionError(f"{name} did not decode losslessly")
        per_image = sum(len(encode(_packed(image))) for image in images)
        seconds = time.perf_counter() - start
        rows.append(_row(f"{name} (packed bits)", len(whole), per_image, n, h * w, seconds))
        if progress:
            progress(rows[-1])
    return rows


def bits_back_per_image(workdir, images_u8: np.ndarray, bins=None, progress=None) -> dict:
    """The VAE's bits-back code with one file per image (`vae.coding`): each image alone, a whole
    file as compress.py writes it for an array of one image, so each pays the header and the
    first image's two-part code."""
    from vae.coding import codec

    loaded = codec.load(workdir)  # its host functions compiled once, for every file
    start, sizes = time.perf_counter(), []
    for i in range(len(images_u8)):
        data, _ = codec.compress(loaded, images_u8[i:i + 1], bins=bins, progress=False)
        sizes.append(len(data))
    dims = len(images_u8) * math.prod(loaded.image_shape)
    return {"per_image_bytes": float(np.mean(sizes)), "per_image_bits_per_dim": 8 * sum(sizes) / dims,
            "time_sec": time.perf_counter() - start}
