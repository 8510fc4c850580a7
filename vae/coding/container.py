"""The compressed file: a header of three bytes (more where it holds several images), then the
ANS stack. A file of one image pays for its header three bytes.

    byte 0    0xB0 | flags: the high four bits 0xB mark this format, the low four are
                MANY      (1) several images: the fields below follow
                ARRAY4    (2) the array was N x H x W x C (else N x H x W)
                SCALE255  (4) the pixel value 255 stands for symbol 1 (else 1; `pixels.pixel_scale`)
                NAMES     (8) the images came from files; their names are on the stack (`names.py`)
    byte 1    the model's tag: the first byte of its hash (`codec.model_hash`)
    byte 2    the writer's software: its index in SOFTWARE (0: a stack not listed there)
    MANY only, unsigned LEB128 varints:
              count, block_size, then a byte 0 for the default latent bins or 1 and two
              little-endian f64 (bin width, half range), then the ramp's length and sizes
    the rest  the ANS stack's 32-bit words, little-endian, the top word's high zero bytes dropped

The image shape is the model's; an 8-bit or binarised image is the model's likelihood's.

The checksum: the stack's bottom word (the coder starts from it, so it costs about 12 bits
more than the coder's own start would) is a CRC-32 of the model's whole hash, the header, the
names and the images' bytes, top bit set (`checksum`). After decoding, the decoder must be left
with exactly that word: it catches a file from another model whose tag happens to match, a
damaged file, and a decoder whose model outputs differ from the encoder's, all at once.
"""

import dataclasses
import struct
import zlib
from importlib import metadata

import numpy as np

from vae.coding.errors import CodingError
from vae.coding.latents import DEFAULT_BIN_WIDTH, DEFAULT_HALF_RANGE

SIGNATURE = 0xB0  # the high nibble of byte 0: this format
MANY, ARRAY4, SCALE255, NAMES = 1, 2, 4, 8
OLD_MAGIC = b"VAEBBANS"  # format 1 (until issue 32): a 96-byte header
# The software stacks a file can name in its byte 2, 1-based: the versions that decide the
# numbers the coder sees (jax and jaxlib compile the model, constriction quantises and codes).
# A stack that is not listed is written as 0; add a row when the versions change.
SOFTWARE_PACKAGES = ("jax", "jaxlib", "constriction")
SOFTWARE = (("0.10.2", "0.10.2", "0.5.0"),)
_F64 = struct.Struct("<dd")
# Every file's stack holds at least this many bits per image (`padded_bottom`), so a header that
# claims more images than its stack can hold is refused before any decoding or allocation.
MIN_BITS_PER_IMAGE = 32
PAD_WORD = 0xFFFFFFFF  # the words above the checksum that make up a stack too short for its count
# The valid bits of the checksum word alone (its top bit set): a file's coder never pops below it
# (`codec.compress` pads where a pop would), so a decoder whose stack holds fewer has run out of words.
CHECKSUM_BITS = 31


class FileError(CodingError):
    """A file that is not a compressed file of this format, or is damaged or truncated."""


@dataclasses.dataclass(frozen=True)
class Header:
    model_tag: int  # the first byte of the model's hash
    software: int  # index + 1 into SOFTWARE; 0 where not listed
    count: int
    array_ndim: int  # 3 (N x H x W) or 4 (N x H x W x C)
    pixel_scale: int  # 1 or 255
    has_names: bool
    block_size: int = 1
    bin_width: float = DEFAULT_BIN_WIDTH
    half_range: float = DEFAULT_HALF_RANGE
    ramp: tuple[int, ...] = ()

    def array_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, ...]:
        h, w, c = image_shape
        return (self.count, h, w) if self.array_ndim == 3 else (self.count, h, w, c)


def _described(versions: tuple[str, ...]) -> str:
    return ", ".join(f"{package} {version}" for package, version in zip(SOFTWARE_PACKAGES, versions))


def software_versions(code: int) -> str | None:
    """'jax 0.10.2, jaxlib 0.10.2, constriction 0.5.0' for a software byte; None for 0."""
    return _described(SOFTWARE[code - 1]) if 1 <= code <= len(SOFTWARE) else None


def installed_software() -> tuple[str, ...]:
    return tuple(metadata.version(package) for package in SOFTWARE_PACKAGES)


def installed_versions() -> str:
    """This process's software, as `software_versions` writes it."""
    return _described(installed_software())


def software_code() -> int:
    """This process's software byte: its stack's index + 1 in SOFTWARE, 0 where not listed."""
    installed = installed_software()
    return SOFTWARE.index(installed) + 1 if installed in SOFTWARE else 0


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if offset >= len(data) or shift > 63:
            raise ValueError("a number runs past the header")
        byte = data[offset]
        value |= (byte & 0x7F) << shift
        offset, shift = offset + 1, shift + 7
        if not byte & 0x80:
            return value, offset


def header_bytes(header: Header) -> bytes:
    """The header's bytes (everything before the stack)."""
    flags = ((MANY if header.count > 1 else 0) | (ARRAY4 if header.array_ndim == 4 else 0)
             | (SCALE255 if header.pixel_scale == 255 else 0) | (NAMES if header.has_names else 0))
    out = bytes([SIGNATURE | flags, header.model_tag, header.software])
    if header.count > 1:
        out += _varint(header.count) + _varint(header.block_size)
        default_bins = (header.bin_width, header.half_range) == (DEFAULT_BIN_WIDTH, DEFAULT_HALF_RANGE)
        out += b"\0" if default_bins else b"\1" + _F64.pack(header.bin_width, header.half_range)
        out += _varint(len(header.ramp)) + b"".join(_varint(size) for size in header.ramp)
    return out


def checksum(model_hash: bytes, header: Header, names: bytes, images: np.ndarray) -> int:
    """The stack's bottom word: CRC-32 of the model's hash, the header (but its ramp, which
    encoding decides), the names and the images' bytes, with its top bit set (31 bits of check,
    and a state from which the coder is efficient)."""
    crc = zlib.crc32(model_hash)
    crc = zlib.crc32(header_bytes(dataclasses.replace(header, ramp=())), crc)
    crc = zlib.crc32(names, crc)
    crc = zlib.crc32(np.ascontiguousarray(images).tobytes(), crc)
    return crc | 0x80000000


def bottom_words(checksum_word: int, pad_words: int = 0) -> np.ndarray:
    """The words the coder starts from: the checksum, then `pad_words` PAD_WORDs above it."""
    return np.array([checksum_word] + [PAD_WORD] * pad_words, np.uint32)


def is_bottom(words: np.ndarray, checksum_word: int) -> bool:
    """Whether what decoding left on the stack is what encoding started from: `bottom_words`."""
    words = np.asarray(words).tolist()
    return bool(words) and words[0] == checksum_word and all(w == PAD_WORD for w in words[1:])


def pad_words_needed(count: int, stack_bytes: int) -> int:
    """How many PAD_WORDs a stack of `stack_bytes` must gain to hold MIN_BITS_PER_IMAGE bits for
    each of `count` images (0 for any real image: they cost far more)."""
    missing = MIN_BITS_PER_IMAGE * count - 8 * stack_bytes
    return 0 if missing <= 0 else -(-missing // 32) + 1


def stack_bytes(words: np.ndarray) -> int:
    """The length of the words as a file holds them (`pack`)."""
    return len(np.ascontiguousarray(words, "<u4").tobytes().rstrip(b"\0"))


def pack(header: Header, words: np.ndarray) -> bytes:
    """The file's bytes: the header, then the words with the top word's high zero bytes dropped."""
    stack = np.ascontiguousarray(words, "<u4").tobytes()
    return header_bytes(header) + stack[:len(stack.rstrip(b"\0"))]


def unpack(data: bytes, name: str) -> tuple[Header, np.ndarray]:
    """(header, words) of a file's bytes; FileError, naming the file, for what is not one."""
    if data.startswith(OLD_MAGIC):
        raise FileError(f"{name} is in the format of an earlier compress.py (format 1, before issue 32); "
                        "decompress it with that version's scripts/decompress.py")
    if len(data) < 3 or data[0] & 0xF0 != SIGNATURE:
        raise FileError(f"{name} is not a file written by scripts/compress.py (its first byte is not "
                        f"0x{SIGNATURE >> 4:X}_)")
    flags, offset = data[0] & 0x0F, 3
    fields = {"model_tag": data[1], "software": data[2], "count": 1, "has_names": bool(flags & NAMES),
              "array_ndim": 4 if flags & ARRAY4 else 3, "pixel_scale": 255 if flags & SCALE255 else 1}
    try:
        if flags & MANY:
            fields["count"], offset = _read_varint(data, offset)
            fields["block_size"], offset = _read_varint(data, offset)
            if offset >= len(data) or data[offset] not in (0, 1):
                raise ValueError("bad latent bins")
            if data[offset] == 1:
                fields["bin_width"], fields["half_range"] = _F64.unpack_from(data, offset + 1)
                offset += _F64.size
            ramp_length, offset = _read_varint(data, offset + 1)
            ramp = []
            for _ in range(min(ramp_length, len(data))):
                size, offset = _read_varint(data, offset)
                ramp.append(size)
            fields["ramp"] = tuple(ramp)
            if fields["count"] < 2 or fields["block_size"] < 1 or ramp_length != len(ramp):
                raise ValueError("inconsistent header")
    except (ValueError, struct.error) as e:
        raise FileError(f"{name} is damaged or truncated: {e}") from None
    stack = data[offset:]
    if not stack:
        raise FileError(f"{name} is damaged or truncated: it ends after its header")
    if stack[-1] == 0:  # the top word is never zero, and its high zero bytes are not written
        raise FileError(f"{name} is damaged: its last byte is zero, which no file of compress.py ends with")
    # A stack holds MIN_BITS_PER_IMAGE bits an image (`pad_words_needed`): a larger count is a
    # damaged header, not a long decode.
    if fields["count"] * MIN_BITS_PER_IMAGE > 8 * len(stack):
        raise FileError(f"{name} is damaged or truncated: its header claims {fields['count']:,} images, "
                        f"more than its {len(stack):,} bytes of stack can hold ({MIN_BITS_PER_IMAGE} bits "
                        "an image at least)")
    stack += b"\0" * (-len(stack) % 4)
    return Header(**fields), np.frombuffer(stack, "<u4").astype(np.uint32)
