"""Compress and decompress images with a trained workdir's model: what scripts/compress.py and
scripts/decompress.py call.

Every check that can fail comes before any coding: the model (a prior and likelihood the codec
supports), the images' dtype, shape and pixel values; the file's header and its model's tag
(the first byte of `model_hash`, over the model's config and parameters) before decoding. The
file's checksum (`container.checksum`: the model's whole hash, the header, the names and the
images) is checked once the images are decoded, before anything is written.

    load       a workdir's model
    compress   images (and their file names) -> the file's bytes
    open_file  a file's header and names, its images not decoded (what a script checks first)
    decode     an opened file's images
"""

import dataclasses
import hashlib
import math
import time
from pathlib import Path

import constriction
import jax
import ml_collections
import numpy as np
from flax import nnx

from vae.coding import bbans, container, file_name_code, multiset, pixel_code, tiles
from vae.coding.errors import CodingError, DecodeMismatch
from vae.coding.host_model import HostModel, host_model
from vae.coding.latent_code import LatentBins
from vae.data import dataset
from vae.train import trained
from vae.workdir import files

DEFAULT_BLOCK_SIZE = 100
MAX_BLOCK_SIZE = 10_000
# Images of their own sizes: blocks of about this many sub-pixels (42 tiles of 32 x 32 x 3), where
# the 8-bit pixel code's arrays stay in the CPU's caches (blocks of 16-50 colour tiles coded about
# a third faster than blocks of 100 on the 2-core machine here, docs/compression.md)
TILE_BLOCK_SUB_PIXELS = 1 << 17


def tile_block_size(image_shape: tuple[int, int, int]) -> int:
    """The default block size, in tiles, of images of their own sizes."""
    return max(1, min(MAX_BLOCK_SIZE, TILE_BLOCK_SUB_PIXELS // math.prod(image_shape)))


# Fields config.model gained after format 3's files were first written, with the value a run
# without them has: left out of `model_hash` at that value, so the files of such runs keep their
# model's hash and decode as before.
LATER_MODEL_FIELDS = {"decoder_stages": 1}


def model_hash(config, model) -> bytes:
    """16 bytes of SHA-256 over the run's `config.model` (JSON, sorted keys; a field of
    LATER_MODEL_FIELDS left out at its old value) and every parameter array the model holds (its
    path, dtype, shape and bytes): the model a file needs."""
    fields = {name: value for name, value in config.model.to_dict().items()
              if LATER_MODEL_FIELDS.get(name, object()) != value}
    digest = hashlib.sha256(ml_collections.ConfigDict(fields).to_json(sort_keys=True).encode())
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
    pixel_code.check_family(family)
    return family


def check_images(images: np.ndarray, image_shape: tuple[int, int, int], what: str) -> None:
    """An N x H x W (single channel) or N x H x W x C array of the model's image shape."""
    h, w, c = image_shape
    shapes = [(h, w, c)] + ([(h, w)] if c == 1 else [])
    if images.ndim not in (3, 4) or tuple(images.shape[1:]) not in shapes or images.shape[0] < 1:
        wanted = " or ".join("N x " + " x ".join(map(str, s)) for s in shapes)
        raise CodingError(f"{what} has shape {tuple(images.shape)}; this model codes {wanted} arrays "
                          "(N >= 1)")


def warm_up(host: HostModel, tiled: bool = False) -> None:
    """Compiles the model's functions and the pixel code's at the host's block size (`tiled`:
    also what images coded as tiles need)."""
    host.warm_up()
    pixel_code.PixelCode(host.family, host.num_pixels, host.block_size).warm_up(host, tiled)
    if host.sub_pixel_stages is not None:
        bbans.warm_up_stages(host)


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A workdir's model as the codec uses it."""

    workdir: Path
    config: object
    model: object
    epoch: int
    family: str  # the likelihood's coding family (`pixel_code.FAMILIES`)
    hash: bytes  # `model_hash`
    # the model's host functions by block size, compiled once for every file made or read with it
    hosts: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.model.image_shape)

    def host(self, block_size: int) -> HostModel:
        """The model's host functions for blocks of `block_size` rows (made on first use)."""
        if block_size not in self.hosts:
            self.hosts[block_size] = host_model(self.model, block_size)
        return self.hosts[block_size]


def load(workdir: str | Path, epoch: int | None = None, checkpoint: str = "best") -> Loaded:
    """The workdir's model (the best checkpoint by default); CodingError for one the codec cannot use."""
    return as_loaded(workdir, *trained.load_trained(workdir, epoch, checkpoint))


def as_loaded(workdir: str | Path, config, model, epoch: int) -> Loaded:
    """A model read back from its workdir, as the codec uses it; CodingError for one it cannot use."""
    family = check_codable(config, model)
    return Loaded(Path(workdir), config, model, epoch, family, model_hash(config, model))


def _ratio(a: float, b: float) -> float:
    """a / b, NaN where b is not positive (images a model is certain of have a -ELBO of 0 bits)."""
    return a / b if b > 0 else float("nan")


def _as_tiles(loaded: Loaded, images: list, what: str, file_names) -> tuple[tiles.Tiling, list]:
    """(the tiling, each image h x w x c) of images of their own sizes (h x w or h x w x c)."""
    if not images:
        raise CodingError(f"{what}: no images")
    shaped = [tiles.check_image(image, loaded.image_shape,
                                file_names[i] if file_names else f"image {i} of {what}")
              for i, image in enumerate(images)]
    tiling = tiles.Tiling(tuple(tuple(image.shape) for image in shaped), loaded.image_shape)
    return tiling, shaped


def compress(loaded: Loaded, images: np.ndarray | list, *, file_names: list[str] | None = None,
             block_size: int | None = None, bins: LatentBins | None = None,
             what: str = "the images", progress: bool = True, host: HostModel | None = None,
             unordered: bool = False) -> tuple[bytes, dict]:
    """(the file's bytes, figures) of uint8 `images` and, where they came from files, their names
    (relative paths, one per image). `images`: an array N x H x W or N x H x W x C of the model's
    shape (format 3), or a list of images of their own sizes, h x w (grey) or h x w x c with c 1
    or the model's channels, each coded as the model's tiles (format 4, `tiles.py`; where all
    have the model's shape, as the array N x H x W x C of them: format 3). `block_size`: images
    (tiles) per model call; None: DEFAULT_BLOCK_SIZE images, or `tile_block_size` tiles. `host`:
    the model's host functions for min(block_size, rows) rows, where many files are made with one.
    `unordered`: the images are a set whose order does not matter (an array of several, no names):
    their order is not coded, which saves about log2(N!) bits, and decoding returns them sorted by
    their bytes (`multiset`)."""
    bins = bins or LatentBins()
    if block_size is not None and not 1 <= block_size <= MAX_BLOCK_SIZE:
        raise CodingError(f"the block size must be in [1, {MAX_BLOCK_SIZE:,}], got {block_size}")
    tiled = not isinstance(images, np.ndarray)
    if tiled:
        tiling, shaped = _as_tiles(loaded, list(images), what, file_names)
        if all(shape == loaded.image_shape for shape in tiling.shapes):  # format 3 holds them
            images, tiled = np.stack(shaped), False
    if unordered and (tiled or file_names is not None):
        raise CodingError("--unordered codes a set of images of the model's shape as an array (the test "
                          "split or a .npy); images from files keep their names and order: leave --unordered "
                          "out")
    if block_size is None:
        block_size = tile_block_size(loaded.image_shape) if tiled else DEFAULT_BLOCK_SIZE
    if tiled:
        count, rows, dims = len(shaped), tiling.num_tiles, tiling.num_sub_pixels
        tile_images = tiles.cut(shaped, tiling)
        image_bytes = b"".join(image.tobytes() for image in shaped)
        sources = tiling.sources
    else:
        check_images(images, loaded.image_shape, what)
        unordered = unordered and images.shape[0] > 1  # one image is its own order
        if unordered:  # the set in its canonical order: the checksum's, and decoding's
            images = images[multiset.canonical_order(images.reshape(images.shape[0], -1))]
        count = rows = images.shape[0]
        dims, tile_images, image_bytes = count * math.prod(loaded.image_shape), images, images
        sources = bbans.no_sources
    if file_names is not None and len(file_names) != count:
        raise ValueError(f"{len(file_names)} names for {count} images")
    scale = pixel_code.pixel_scale(tile_images, loaded.family)
    block_size = min(block_size, rows)  # a short file runs the model on no more rows than it has
    name_bytes = file_name_code.joined(file_names) + (b"\0" + tiles.record(tiling.shapes) if tiled else b"")
    header = container.Header(
        model_tag=loaded.hash[0], software=container.software_code(), coder_tag=container.coder_tag(),
        count=count, array_ndim=4 if tiled else images.ndim,
        pixel_scale=scale, has_names=file_names is not None, block_size=block_size, bin_width=bins.width,
        half_range=bins.half_range, has_shapes=tiled, unordered=unordered)
    if host is None or host.block_size != block_size:
        host = loaded.host(block_size)
    start = time.perf_counter()
    warm_up(host, tiled)  # compiled before the clock starts
    compiled = time.perf_counter()
    checksum = container.checksum(loaded.hash, header, name_bytes, image_bytes)
    symbols = pixel_code.to_symbols(tile_images, scale)
    if unordered:  # the set's first image is coded first (no choice of it is popped), the rest as drawn
        first = multiset.first_image(symbols)
        symbols = np.concatenate([symbols[first:first + 1], np.delete(symbols, first, axis=0)])
    pad_words = 0
    while True:  # once, but for images that cost fewer bits than the stack's guarantees ask
        coded = bbans.encode(host, symbols, bins, progress=progress,
                             bottom=container.bottom_words(checksum, pad_words), sources=sources,
                             eager=tiled, unordered=unordered)
        coder = constriction.stream.stack.AnsCoder(coded.words)
        images_bits = coder.num_valid_bits()
        if tiled:
            tiles.push(coder, tiling.shapes, loaded.image_shape[2])
        shapes_bits = coder.num_valid_bits()
        if file_names is not None:
            file_name_code.push(coder, file_names)
        words = coder.get_compressed()
        missing = container.pad_words_needed(count, container.stack_bytes(words))
        if tiled:  # and as many bits a tile below the shapes: they cannot claim more than it holds
            missing = max(missing, container.pad_words_needed(rows, container.stack_bytes(coded.words)))
        if coded.least_bits < container.CHECKSUM_BITS:  # a pop read into the checksum: more below it
            # (at least doubling: a pop that reads past the stack's bits takes what it finds, so
            # each try may fall short again, and each try codes every image once more)
            missing = max(missing, 1 + (container.CHECKSUM_BITS - coded.least_bits) // 32, pad_words)
        if not missing:
            break
        pad_words += missing
    header = dataclasses.replace(header, ramp=coded.ramp)
    coding_time = time.perf_counter() - compiled
    data = container.pack(header, words)
    elbo_bits = float(np.sum(coded.elbo_bits_N))
    # The -ELBO of the model as coded, one sample as the file draws it: each sub-pixel's bits under
    # the coder's counts and each block's latents' bits on the stack (pushed under the prior less
    # popped under q; the first image's KL): both codes give every symbol at least about 2^-24, so
    # a sub-pixel or a latent far in the model's tails costs at most about 24 bits in the file.
    # A set's pops of its order are among the pops under q: added back, they are not the images'.
    popped, between, end = coded.steps_bits_Bx3.T
    order_bits = multiset.order_bits(symbols) if unordered else 0.0
    latent_bits = np.sum((end - between)[1:]) - np.sum(end[:-1] - popped[1:]) + order_bits
    coded_elbo_bits = float(np.sum(coded.pixel_bits_N) + coded.kl_bits_N[0] + latent_bits)
    header_bytes = len(container.header_bytes(header)) + container.CHECK_BYTES
    figures = {
        "images": count, "bytes": len(data), "header_bytes": header_bytes,
        "names_bytes": (coder.num_valid_bits() - shapes_bits) / 8,
        "bits_per_dim": 8 * len(data) / dims,
        "elbo_bits_per_dim": elbo_bits / dims,
        "overhead_vs_elbo": _ratio(8 * len(data), elbo_bits) - 1.0,
        "coded_elbo_bits_per_dim": coded_elbo_bits / dims,
        "overhead_vs_coded_elbo": _ratio(8 * len(data), coded_elbo_bits) - 1.0,
        # what the pixels cost under the coder's integer counts beyond −log2 p(x|z) under the model,
        # relative to the -ELBO: the price of decoding identically on every machine (`fixed_point`),
        # less what the counts' floor saves on sub-pixels the model gives under 2^-24
        "fixed_point_cost": _ratio(
            float(np.sum(coded.pixel_bits_N) - np.sum(coded.elbo_bits_N - coded.kl_bits_N)), elbo_bits),
        "first_image_bits": coded.first_image_bits,
        "first_image_elbo_bits": float(coded.elbo_bits_N[0]),
        "ramp": list(coded.ramp), "block_size": block_size, "bin_width": bins.width,
        "half_range": bins.half_range, "epoch": loaded.epoch, "unordered": unordered,
        # what a set does not pay for: its order's bits, log2(N!/Π copies!) (the first image not chosen)
        "order_bits": order_bits,
        "compile_time_sec": compiled - start, "coding_time_sec": coding_time,
        "images_per_sec": count / coding_time,
    }
    if tiled:
        pixel_count = sum(h * w for h, w, _ in tiling.shapes)
        figures.update({"tiles": rows, "pixels": pixel_count, "sub_pixels": dims,
                        "shapes_bytes": (shapes_bits - images_bits) / 8,
                        "megapixels_per_sec": pixel_count / 1e6 / coding_time})
    return data, figures


@dataclasses.dataclass(frozen=True)
class Opened:
    """A compressed file whose header and names are read, its images not yet decoded."""

    loaded: Loaded
    name: str  # the file's, for messages
    size: int  # its bytes
    header: container.Header
    file_names: list[str] | None
    words: np.ndarray  # the stack below the names (and the shapes)
    shapes: tuple | None = None  # format 4: each image's (h, w, c); None: the model's shape

    @property
    def array_shape(self) -> tuple[int, ...]:
        return self.header.array_shape(self.loaded.image_shape)


def _other_model(loaded: Loaded, tag: int, name: str) -> CodingError:
    """The error for a file whose model tag is not the workdir's model's, naming the checkpoint of
    this run whose model has that tag, where one has (one of the latest, or the best one)."""
    directory = loaded.workdir / files.CHECKPOINT_DIR
    epochs = sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit()), reverse=True)
    hint = ""
    for epoch, checkpoint, flag in [*((e, "latest", f"--epoch {e}") for e in epochs),
                                    (None, "best", "--checkpoint best, without --epoch")]:
        try:
            config, model, found_epoch = trained.load_trained(loaded.workdir, epoch, checkpoint)
        except Exception:  # noqa: BLE001 - a checkpoint that does not load gives no hint
            continue
        if found_epoch != loaded.epoch and model_hash(config, model)[0] == tag:
            hint = f"; its tag is that of epoch {found_epoch} of this run: pass {flag}"
            break
    return CodingError(f"{name} was compressed by another model (model tag {tag:02x}); {loaded.workdir} "
                       f"gives epoch {loaded.epoch}, model tag {loaded.hash[0]:02x}{hint}")


def open_file(workdir: str | Path, data: bytes, name: str, *, epoch: int | None = None,
              checkpoint: str = "best") -> Opened:
    """Reads a file's header, then the workdir's model, then the file's names; FileError for what
    is not a file of this format, CodingError for one from another model."""
    container.unpack(data, name)  # the header checked before the model is loaded
    return open_loaded(load(workdir, epoch, checkpoint), data, name)


def open_loaded(loaded: Loaded, data: bytes, name: str) -> Opened:
    """`open_file` with a model already loaded (the Python API's)."""
    header, words = container.unpack(data, name)
    if header.model_tag != loaded.hash[0]:
        raise _other_model(loaded, header.model_tag, name)
    file_names = None
    if header.has_names:
        try:
            coder = constriction.stream.stack.AnsCoder(words)
            file_names = file_name_code.pop(coder, header.count)
        except file_name_code.NamesError as e:
            raise container.FileError(f"{name} is damaged: {e}") from None
        except ValueError as e:  # constriction refuses the words (e.g. a top word of zero)
            raise container.FileError(f"{name} is damaged: the coder refused its words ({e})") from None
        words = coder.get_compressed()
    shapes = None
    if header.has_shapes:
        try:
            coder = constriction.stream.stack.AnsCoder(words)
            shapes = tuple(tiles.pop(coder, header.count, loaded.image_shape[2]))
        except (tiles.ShapeError, ValueError) as e:
            raise container.FileError(f"{name} is damaged: {e}") from None
        words = coder.get_compressed()
        count = tiles.Tiling(shapes, loaded.image_shape).num_tiles
        if count * container.MIN_BITS_PER_IMAGE > 32 * len(words):
            raise container.FileError(
                f"{name} is damaged or truncated: its images' sizes claim {count:,} tiles, more than its "
                f"stack can hold ({container.MIN_BITS_PER_IMAGE} bits a tile at least)")
    return Opened(loaded, name, len(data), header, file_names, words, shapes)


def _mismatch(opened: Opened, problem: str) -> CodingError:
    """The one line of a file that did not decode (`problem`: what went wrong), naming the writer's
    software (the header's byte) and this machine's."""
    written, here = opened.header.software, container.software_code()
    installed = container.installed_versions()
    if written != here:
        writer = container.software_versions(written) or "software not listed in vae/coding/container.py"
        why = f"it was written with {writer}; this machine has {installed}"
    else:
        why = f"it was written with the same software as this machine's ({installed})"
    return CodingError(
        f"{opened.name} did not decode to what was compressed ({problem}): it is damaged or "
        f"truncated, or comes from another model, or this machine computes the model's outputs "
        f"differently: {why}")


def decode(opened: Opened, *, progress: bool = True, host: HostModel | None = None
           ) -> tuple[np.ndarray | list, dict]:
    """(the uint8 array that was compressed, or the list of images of their own sizes (h x w x c
    each), figures) of an opened file. `host`: the model's host functions, used where their block
    size is the file's (many files decoded with one)."""
    header, loaded = opened.header, opened.loaded
    bins = LatentBins(header.bin_width, header.half_range)
    tiling = opened.shapes and tiles.Tiling(opened.shapes, loaded.image_shape)
    rows = tiling.num_tiles if tiling else header.count
    block_size = min(header.block_size, rows)
    if not 1 <= block_size <= MAX_BLOCK_SIZE:
        raise container.FileError(f"{opened.name} is damaged: its block size is {block_size}")
    try:
        bbans.block_sizes(rows, block_size, header.ramp)
    except ValueError as e:
        raise container.FileError(f"{opened.name} is damaged: {e}") from None
    if host is None or host.block_size != block_size:
        host = loaded.host(block_size)
    warm_up(host)
    start = time.perf_counter()
    try:
        symbols, left = bbans.decode(host, opened.words, rows, header.ramp, bins, progress=progress,
                                     least_bits=container.CHECKSUM_BITS,
                                     sources=tiling.sources if tiling else bbans.no_sources,
                                     unordered=header.unordered)
    except DecodeMismatch as e:  # a symbol the model cannot code: met only in other words than encoding's
        raise _mismatch(opened, str(e)) from None
    coding_time = time.perf_counter() - start
    if header.unordered:  # a set comes back in its canonical order
        symbols = symbols[multiset.canonical_order(symbols)]
    name_bytes = file_name_code.joined(opened.file_names)
    if tiling:
        images = tiles.join(pixel_code.from_symbols(symbols, header.pixel_scale, (rows, *loaded.image_shape)),
                            tiling)
        image_bytes = b"".join(image.tobytes() for image in images)
        name_bytes += b"\0" + tiles.record(tiling.shapes)
        dims = tiling.num_sub_pixels
    else:
        images = image_bytes = pixel_code.from_symbols(symbols, header.pixel_scale, opened.array_shape)
        dims = header.count * math.prod(loaded.image_shape)
    if not container.is_bottom(left, container.checksum(loaded.hash, header, name_bytes, image_bytes)):
        raise _mismatch(opened, "its checksum differs")
    figures = {"images": header.count, "bytes": opened.size, "bits_per_dim": 8 * opened.size / dims,
               "epoch": loaded.epoch, "coding_time_sec": coding_time,
               "images_per_sec": header.count / coding_time, "unordered": header.unordered}
    if tiling:
        pixel_count = sum(h * w for h, w, _ in tiling.shapes)
        figures.update({"tiles": rows, "pixels": pixel_count, "sub_pixels": dims,
                        "megapixels_per_sec": pixel_count / 1e6 / coding_time})
    return images, figures


def test_split(loaded: Loaded) -> tuple[np.ndarray, str]:
    """(the run's test split as every evaluation sees it (binarised once), what to call it)."""
    images, _ = dataset.load_test_set(loaded.config.data)
    return images, f"the test split {loaded.config.data.test_split!r}"


def compress_workdir(workdir: str | Path, images: np.ndarray | None = None, *,
                     max_examples: int | None = None, block_size: int = DEFAULT_BLOCK_SIZE,
                     bins: LatentBins | None = None, epoch: int | None = None, checkpoint: str = "best",
                     what: str = "the images", progress: bool = True) -> tuple[bytes, dict]:
    """`compress` with the workdir's model, of `images` (default: the run's test split as it is
    evaluated, binarised once)."""
    loaded = load(workdir, epoch, checkpoint)
    if images is None:
        images, what = test_split(loaded)
    check_images(images, loaded.image_shape, what)
    if max_examples is not None:
        images = images[:max_examples]
    return compress(loaded, images, block_size=block_size, bins=bins, what=what, progress=progress)


def decompress_workdir(workdir: str | Path, data: bytes, name: str, *, epoch: int | None = None,
                       checkpoint: str = "best", progress: bool = True) -> tuple[np.ndarray, dict]:
    """`decode` with the workdir's model, which must be the one that compressed the file."""
    return decode(open_file(workdir, data, name, epoch=epoch, checkpoint=checkpoint), progress=progress)
