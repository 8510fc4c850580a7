"""The compressed file: a small header, then the ANS stack's 32-bit words. Little-endian:

    magic           8 bytes  b"VAEBBANS"
    version         u16      FORMAT_VERSION
    crc32           u32      of every byte after this field
    length          u64      of the whole file, in bytes
    model_hash      16 bytes the model that coded it (`codec.model_hash`: config.model and parameters)
    epoch           u32      of that model's checkpoint
    height, width, channels  u16 each: the model's image shape
    array_ndim      u8       3 (N x H x W) or 4 (N x H x W x C): the shape that was compressed
    pixel_scale     u8       the uint8 value of symbol 1 (1 or 255; `pixels.pixel_scale`)
    count           u32      images
    block_size      u16      images per block (per model call)
    bin_width       f64      latent bins (`latents.LatentBins`)
    half_range      f64
    ramp_length     u16      then that many u16: the ramp's block sizes (`bbans.block_sizes`)
    images_crc32    u32      of the uint8 array that was compressed (checked after decoding)
    num_words       u32      then that many u32 words: the stack

About 80 bytes plus 2 per ramp block, all counted in the file's bits/dim.
"""

import dataclasses
import struct
import zlib

import numpy as np

from vae.coding.errors import CodingError

MAGIC = b"VAEBBANS"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sHIQ")  # magic, version, crc32, length
_CRC_END = 14  # the checksum covers the bytes from here on
_FIXED = struct.Struct("<16sIHHHBBIHdd")
_U16, _U32 = struct.Struct("<H"), struct.Struct("<I")


class FileError(CodingError):
    """A file that is not a compressed file of this format, or is damaged or truncated."""


@dataclasses.dataclass(frozen=True)
class Header:
    model_hash: bytes
    epoch: int
    image_shape: tuple[int, int, int]
    array_ndim: int
    pixel_scale: int
    count: int
    block_size: int
    bin_width: float
    half_range: float
    ramp: tuple[int, ...]
    images_crc32: int

    def array_shape(self) -> tuple[int, ...]:
        h, w, c = self.image_shape
        return (self.count, h, w) if self.array_ndim == 3 else (self.count, h, w, c)


def images_crc32(images: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(images).tobytes())


def pack(header: Header, words: np.ndarray) -> bytes:
    """The file's bytes."""
    body = _FIXED.pack(header.model_hash, header.epoch, *header.image_shape, header.array_ndim,
                       header.pixel_scale, header.count, header.block_size, header.bin_width,
                       header.half_range)
    body += _U16.pack(len(header.ramp)) + b"".join(_U16.pack(size) for size in header.ramp)
    body += _U32.pack(header.images_crc32) + _U32.pack(len(words))
    body += np.ascontiguousarray(words, "<u4").tobytes()
    length = _PREFIX.size + len(body)
    after_crc = struct.pack("<Q", length) + body
    return struct.pack("<8sHI", MAGIC, FORMAT_VERSION, zlib.crc32(after_crc)) + after_crc


def unpack(data: bytes, name: str) -> tuple[Header, np.ndarray]:
    """(header, words) of a file's bytes; FileError, naming the file, for anything else."""
    if len(data) < len(MAGIC) or data[:len(MAGIC)] != MAGIC:
        raise FileError(f"{name} is not a file written by scripts/compress.py (no {MAGIC.decode()} header)")
    if len(data) < _PREFIX.size:
        raise FileError(f"{name} is truncated: {len(data)} bytes, shorter than its header")
    _, version, crc, length = _PREFIX.unpack_from(data)
    if version != FORMAT_VERSION:
        raise FileError(f"{name} has format version {version}; this code reads version {FORMAT_VERSION}")
    if len(data) < length:
        raise FileError(f"{name} is truncated: {len(data):,} of the {length:,} bytes its header declares")
    if len(data) > length or zlib.crc32(data[_CRC_END:]) != crc:
        raise FileError(f"{name} is damaged: its checksum does not match its contents")
    try:
        return _parse(data, name)
    except (struct.error, ValueError) as e:
        raise FileError(f"{name} is damaged: {e}") from None


def _parse(data: bytes, name: str) -> tuple[Header, np.ndarray]:
    offset = _PREFIX.size
    (model_hash, epoch, height, width, channels, ndim, scale, count, block_size, bin_width,
     half_range) = _FIXED.unpack_from(data, offset)
    offset += _FIXED.size
    (ramp_length,) = _U16.unpack_from(data, offset)
    ramp = struct.unpack_from(f"<{ramp_length}H", data, offset + 2)
    offset += 2 + 2 * ramp_length
    images_crc, num_words = struct.unpack_from("<II", data, offset)
    offset += 8
    if offset + 4 * num_words != len(data) or ndim not in (3, 4) or scale not in (1, 255) or block_size < 1:
        raise ValueError("inconsistent header")
    words = np.frombuffer(data, "<u4", count=num_words, offset=offset).astype(np.uint32)
    header = Header(model_hash=model_hash, epoch=epoch, image_shape=(height, width, channels),
                    array_ndim=ndim, pixel_scale=scale, count=count, block_size=block_size,
                    bin_width=bin_width, half_range=half_range, ramp=tuple(ramp), images_crc32=images_crc)
    return header, words
