"""Compress and decompress images with a trained workdir's model: what scripts/compress.py and
scripts/decompress.py call.

Every check that can fail comes before any coding: the file's header and checksum, the model
(the same config and parameters as the file's, a prior and likelihood the codec supports), the
images' dtype, shape and pixel values. A file records the model that made it as a hash of its
`config.model` and its parameters (`model_hash`), so a file is decoded only by that model.
"""

import hashlib
import math
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from vae.coding import bbans, container, pixels, versions
from vae.coding.errors import CodingError
from vae.coding.host import host_model
from vae.coding.latents import LatentBins
from vae.data import dataset
from vae.train import trained

DEFAULT_BLOCK_SIZE = 100
MAX_BLOCK_SIZE = 10_000


def model_hash(config, model) -> bytes:
    """16 bytes of SHA-256 over the run's `config.model` (JSON, sorted keys) and every parameter
    array the model holds (its path, dtype, shape and bytes): the model a file needs."""
    digest = hashlib.sha256(config.model.to_json(sort_keys=True).encode())
    for path, leaf in jax.tree_util.tree_flatten_with_path(nnx.state(model))[0]:
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.digest()[:16]


def check_codable(config, model) -> str:
    """The likelihood's coding family, or CodingError naming what the codec does not code."""
    if config.model.prior != "standard_normal":
        raise CodingError(
            f"model.prior={config.model.prior}: the codec codes each latent dimension under its own "
            "quantised Gaussian, and the VampPrior's mixture does not factorise over dimensions; use a "
            "standard_normal run")
    family = getattr(model.likelihood, "coding_family", None)
    if family is None:
        raise CodingError(f"the likelihood {config.model.likelihood!r} has no lossless code (coding_family)")
    pixels.check_family(family)
    return family


def check_images(images: np.ndarray, image_shape: tuple[int, int, int], what: str) -> None:
    """An N x H x W (single channel) or N x H x W x C array of the model's image shape."""
    h, w, c = image_shape
    shapes = [(h, w, c)] + ([(h, w)] if c == 1 else [])
    if images.ndim not in (3, 4) or tuple(images.shape[1:]) not in shapes or images.shape[0] < 1:
        wanted = " or ".join("N x " + " x ".join(map(str, s)) for s in shapes)
        raise CodingError(f"{what} has shape {tuple(images.shape)}; this model codes {wanted} arrays "
                          "(N >= 1)")


def warm_up(host) -> None:
    """Compiles the model's functions and the pixel code's at the host's block size."""
    host.warm_up()
    pixels.PixelCode(host.family, host.num_pixels, host.block_size).warm_up(host)


def compress_workdir(workdir: str | Path, images: np.ndarray | None = None, *,
                     max_examples: int | None = None, block_size: int = DEFAULT_BLOCK_SIZE,
                     bins: LatentBins | None = None,
                     epoch: int | None = None, checkpoint: str = "best", what: str = "the images",
                     progress: bool = True) -> tuple[bytes, dict]:
    """(the file's bytes, figures) of `images` (uint8; default: the run's test split as it is
    evaluated, binarised once), coded by the workdir's model (the best checkpoint by default)."""
    bins = bins or LatentBins()
    if not 1 <= block_size <= MAX_BLOCK_SIZE:
        raise CodingError(f"the block size must be in [1, {MAX_BLOCK_SIZE:,}], got {block_size}")
    config, model, restored_epoch = trained.load_trained(workdir, epoch, checkpoint)
    family = check_codable(config, model)
    if images is None:
        images, _ = dataset.load_test_set(config.data)
        what = f"the test split {config.data.test_split!r}"
    check_images(images, model.image_shape, what)
    if max_examples is not None:
        images = images[:max_examples]
    scale = pixels.pixel_scale(images, family)
    host = host_model(model, block_size)
    start = time.perf_counter()
    warm_up(host)  # compiled before the clock starts
    compiled = time.perf_counter()
    coded = bbans.encode(host, pixels.to_symbols(images, scale), bins, progress=progress)
    coding_time = time.perf_counter() - compiled
    header = container.Header(
        model_hash=model_hash(config, model), epoch=restored_epoch, image_shape=tuple(model.image_shape),
        array_ndim=images.ndim, pixel_scale=scale, count=images.shape[0], block_size=block_size,
        bin_width=bins.width, half_range=bins.half_range, ramp=coded.ramp,
        images_crc32=container.images_crc32(images))
    data = container.pack(header, coded.words)
    dims = images.shape[0] * host.num_pixels
    elbo_bits = float(np.sum(coded.elbo_bits_N))
    figures = {
        "images": images.shape[0], "bytes": len(data), "header_bytes": len(data) - 4 * coded.words.size,
        "bits_per_dim": 8 * len(data) / dims,
        "elbo_bits_per_dim": elbo_bits / dims,
        "overhead_vs_elbo": 8 * len(data) / elbo_bits - 1.0,
        # what the pixels cost under the coder's integer counts beyond −log2 p(x|z) under the model,
        # relative to the -ELBO: the price of decoding identically on every machine (`fixed_point`)
        "fixed_point_cost": float(np.sum(coded.pixel_bits_N) - np.sum(coded.elbo_bits_N - coded.kl_bits_N))
        / elbo_bits,
        "first_image_bits": coded.first_image_bits,
        "first_image_elbo_bits": float(coded.elbo_bits_N[0]),
        "ramp": list(coded.ramp), "block_size": block_size, "bin_width": bins.width,
        "half_range": bins.half_range, "epoch": restored_epoch,
        "compile_time_sec": compiled - start, "coding_time_sec": coding_time,
        "images_per_sec": images.shape[0] / coding_time,
    }
    return data, figures


def decompress_workdir(workdir: str | Path, data: bytes, name: str, *, epoch: int | None = None,
                       checkpoint: str = "best", progress: bool = True) -> tuple[np.ndarray, dict]:
    """(the uint8 array that was compressed, figures) of a file's bytes, with the workdir's model,
    which must be the one that compressed it."""
    header, words = container.unpack(data, name)
    bins = LatentBins(header.bin_width, header.half_range)
    config, model, restored_epoch = trained.load_trained(workdir, epoch, checkpoint)
    check_codable(config, model)
    found = model_hash(config, model)
    if found != header.model_hash:
        hint = (f"; if it comes from this run, pass --epoch {header.epoch}" if header.epoch != restored_epoch
                else "")
        raise CodingError(
            f"{name} was compressed by another model (epoch {header.epoch}, model "
            f"{header.model_hash.hex()[:12]}); {workdir} gives epoch {restored_epoch}, model "
            f"{found.hex()[:12]}{hint}")
    host = host_model(model, header.block_size)
    warm_up(host)
    start = time.perf_counter()
    writer = None  # the writer's library versions: the header does not record them (yet)
    try:
        symbols = bbans.decode(host, words, header.count, header.ramp, bins, progress=progress)
    except bbans.DecodeMismatch as e:
        raise versions.decode_failure(name, str(e), writer) from None
    coding_time = time.perf_counter() - start
    images = pixels.from_symbols(symbols, header.pixel_scale, header.array_shape())
    if container.images_crc32(images) != header.images_crc32:
        raise versions.decode_failure(name, "the decoded images' checksum differs from the file's", writer)
    dims = header.count * math.prod(header.image_shape)
    return images, {"images": header.count, "bytes": len(data), "bits_per_dim": 8 * len(data) / dims,
                    "epoch": restored_epoch, "coding_time_sec": coding_time,
                    "images_per_sec": header.count / coding_time}


def image_code_lengths(workdir: str | Path, *, max_examples: int | None = None,
                       bins: LatentBins | None = None, epoch: int | None = None,
                       checkpoint: str = "best") -> dict[str, np.ndarray]:
    """Each test image's code on one stack with one image per block (per-image figures; a file
    codes blocks of many), in bits per image:

        code       the stack's growth while the image is coded: pixels + latents − bits_back
        bits_back  what the pop of z under q(z|x) took off the stack (0 for the first image,
                   coded without bits back)
        pixels     what pushing x under p(x|z) added; latents: what pushing z under p(z) added
        rate       latents − bits_back: what the code pays for z after the bits back, a
                   one-sample estimate of the KL term
        elbo, kl   the -ELBO at the coded latents (−log2 p(x|z) + the closed-form KL) and the KL
    """
    bins = bins or LatentBins()
    config, model, _ = trained.load_trained(workdir, epoch, checkpoint)
    family = check_codable(config, model)
    images, _ = dataset.load_test_set(config.data)
    images = images[:max_examples] if max_examples else images
    scale = pixels.pixel_scale(images, family)
    symbols = pixels.to_symbols(images, scale)
    coded = bbans.encode(host_model(model, 1), symbols, bins)
    popped, between, end = coded.steps_bits_Bx3.T
    start = np.concatenate([[0], end[:-1]])
    bits_back = np.where(np.arange(len(end)) == 0, 0, start - popped)
    latents = end - between
    return {"code": end - start, "bits_back": bits_back, "pixels": between - popped, "latents": latents,
            "rate": latents - bits_back, "elbo": coded.elbo_bits_N, "kl": coded.kl_bits_N}
