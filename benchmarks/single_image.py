"""One image, one file: the bits-back file of each test image alone against JPEG XL lossless of
the same image (`scripts/benchmark_single_image.py`).

Each image is compressed as scripts/compress.py compresses an array of one image (the header,
the checksum, the first image's two-part code: `vae.coding`), and every tenth file is decoded
again and checked. JPEG XL (imagecodecs, lossless) codes the same pixels at each effort asked
for: a binarised image both as 1 bit per sample (`bitspersample=1`, its best) and as an 8-bit
grey image of 0/255 (the default container), an 8-bit image as it is. Every JPEG XL file is
decoded and checked too.
"""

import time

import numpy as np

try:
    import imagecodecs
except ImportError:  # the JPEG XL rows need imagecodecs (the dev and bench extras)
    imagecodecs = None


def bits_back_files(workdir, images_u8: np.ndarray) -> dict:
    """The size of each image's own file (bytes), and the model's figures of them."""
    from vae.coding import codec

    loaded = codec.load(workdir)  # its host functions compiled once, for every file
    sizes, first_bits = [], []
    start = time.perf_counter()
    for i, image in enumerate(images_u8):
        data, figures = codec.compress(loaded, image[None], progress=False)
        sizes.append(len(data))
        first_bits.append(figures["first_image_bits"])
        if i % 10 == 0:
            decoded, _ = codec.decode(codec.open_loaded(loaded, data, f"image {i}"), progress=False)
            if not np.array_equal(decoded[0], image):
                raise AssertionError(f"image {i} did not decode to itself")
    return {"bytes": sizes, "seconds": time.perf_counter() - start, "epoch": loaded.epoch,
            "family": loaded.family, "stack_bits": first_bits}


def jpegxl_files(images_u8: np.ndarray, binarised: bool, efforts=(9, 10)) -> dict[str, list[int]]:
    """name -> each image's JPEG XL lossless file size (bytes), checked lossless."""
    if imagecodecs is None or not imagecodecs.JPEGXL.available:
        return {}
    found = {}
    for effort in efforts:
        variants = ({f"JPEG XL, 1 bit per sample, effort {effort}": dict(bitspersample=1),
                     f"JPEG XL, 8-bit grey 0/255, effort {effort}": {}} if binarised
                    else {f"JPEG XL, effort {effort}": {}})
        for name, options in variants.items():
            sizes = []
            for image in images_u8:
                pixels = (image > 0).astype(np.uint8) if options else image
                data = imagecodecs.jpegxl_encode(pixels, lossless=True, effort=effort, **options)
                if not np.array_equal(imagecodecs.jpegxl_decode(data).reshape(pixels.shape), pixels):
                    raise AssertionError(f"{name} did not decode losslessly")
                sizes.append(len(data))
            found[name] = sizes
    return found


def versions() -> dict:
    if imagecodecs is None:
        return {}
    return {"imagecodecs": imagecodecs.__version__, "libjxl": imagecodecs.jpegxl_version()}
