"""The compressed file, format 4 (or 3): a header of eight bytes (more where it holds several
images), then the ANS stack.

    byte 0    the format's version: 4 where the file records its images' sizes and channels
              (SHAPES), else 3, the layout of format 3 byte for byte (so a file of images of the
              model's shape is what format 3 wrote, and format 3 files decode as they did).
              Format 2 began with a byte 0xB0-0xBF, format 1 with "VAEBBANS"; both are refused
              in one line that says so (`unpack`).
    byte 1    flags, the high two bits zero:
                MANY      (1) several images, or SHAPES: the fields below follow
                ARRAY4    (2) the array was N x H x W x C (else N x H x W)
                SCALE255  (4) the pixel value 255 stands for symbol 1 (else 1; `pixel_code.pixel_scale`)
                NAMES     (8) the images came from files; their names are on the stack (`file_name_code.py`)
                SHAPES   (16) format 4 only, and always there: the images have sizes and channels
                          of their own, coded on the stack below the names (`tiles.py`); each is
                          coded as the model's tiles, and the count and the ramp count images,
                          the blocks tiles
                UNORDERED (32) with MANY, not NAMES nor SHAPES: a set of images, coded in an order
                          the encoder drew from the stack (bits back on the order: `multiset.py`);
                          the checksum covers them in their canonical order, the order decoding
                          returns them in
    byte 2    the model's tag: the first byte of its hash (`codec.model_hash`)
    byte 3    the writer's software: its index in SOFTWARE (0: a stack not listed there)
    bytes 4-5 the coder's tag: the first two bytes of `coder_hash`, a SHA-256 of every constant
              and table the coder's numbers depend on; a file of a coder with others is refused
    MANY only, unsigned LEB128 varints:
              count, block_size, then a byte 0 for the default latent bins or 1 and two
              little-endian f64 (bin width, half range), then the ramp's length and sizes
              (with SHAPES: count counts the images, block_size and the ramp the tiles)
    2 bytes   the header's check: the low 16 bits (little-endian) of a CRC-32 of the bytes above
              and of the file's length (a varint): a damaged header, or a file cut short or
              grown, is refused before any model is loaded
    the rest  the ANS stack's 32-bit words, little-endian, the top word's high zero bytes dropped

Without SHAPES the image shape is the model's; an 8-bit or binarised image is the model's
likelihood's. Format 4 is format 3 with SHAPES: the coder's numbers are format 3's, and so is
its coder tag (`coder_constants`).

The checksum: the stack's bottom word (the coder starts from it, so it costs about 12 bits
more than the coder's own start would) is a CRC-32 of the model's whole hash, the header, the
names (and the shapes) and the images' bytes, top bit set (`checksum`). After decoding, the
decoder must be left with exactly that word (and any PAD_WORDs above it): it catches a file from
another model whose tag happens to match, a damaged file, and a decoder whose model outputs
differ from the encoder's beyond the guard band (`fixed_point.GUARD_STEPS`), all at once.

The stack holds MIN_BITS_PER_IMAGE bits an image at least (with SHAPES, as many a tile below the
shapes), and no pop of its encoder read into the checksum word (`codec.compress` puts PAD_WORDs
above it where images cost less), so a header that claims more images than its stack holds is
refused when read, and decoding stops where a stack runs out (`bbans.decode`).
"""

import dataclasses
import hashlib
import json
import struct
import zlib
from importlib import metadata

import numpy as np

from vae.coding import bbans, file_name_code, first_image, fixed_point, latent_code
from vae.coding.errors import CodingError
from vae.coding.latent_code import DEFAULT_BIN_WIDTH, DEFAULT_HALF_RANGE

FORMAT = 4  # byte 0 of a file with SHAPES; FORMAT_3 without
FORMAT_3 = 3
FORMAT_2 = 0xB0  # the high nibble of format 2's byte 0
MANY, ARRAY4, SCALE255, NAMES, SHAPES, UNORDERED = 1, 2, 4, 8, 16, 32
OLD_MAGIC = b"VAEBBANS"  # format 1 (until issue 32): a 96-byte header
# The software stacks a file can name in its byte 3, 1-based: the versions that decide the
# numbers the coder sees (jax and jaxlib compile the model, constriction quantises and codes).
# A stack that is not listed is written as 0; add a row when the versions change.
SOFTWARE_PACKAGES = ("jax", "jaxlib", "constriction")
SOFTWARE = (("0.10.2", "0.10.2", "0.5.0"),)
_F64 = struct.Struct("<dd")
_CHECK = struct.Struct("<H")
CHECK_BYTES = _CHECK.size  # the header's check, after its other bytes
# Every file's stack holds at least this many bits per image (`pad_words_needed`), so a header
# that claims more images than its stack can hold is refused before any decoding or allocation.
MIN_BITS_PER_IMAGE = 32
PAD_WORD = 0xFFFFFFFF  # the words above the checksum that make up a stack too short for its count
# The valid bits of the checksum word alone (its top bit set): a file's coder never pops below it
# (`codec.compress` pads where a pop would), so a decoder whose stack holds fewer has run out of words.
CHECKSUM_BITS = 31
# A commit whose compress.py and decompress.py read and write format 2 (the one format 3 grew from)
LAST_FORMAT_2_COMMIT = "1408a62"


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
    coder_tag: int | None = None  # the writer's coder's (`coder_tag`); None: this process's
    has_shapes: bool = False  # format 4: the images' sizes and channels are on the stack
    unordered: bool = False  # a set: the images' order is not coded (several images, no names or shapes)

    def array_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, ...]:
        h, w, c = image_shape
        return (self.count, h, w) if self.array_ndim == 3 else (self.count, h, w, c)


def coder_constants() -> dict:
    """Every constant the coder's numbers depend on, by module: what `coder_hash` covers (with the
    tables of `_coder_tables`). A change to one of them turns a file into other images, so a
    file records their hash. The keys are hashed too, so they stay as the format set them:
    "latents" holds `latent_code`'s constants, "names" `file_name_code`'s."""
    def of(module, *constants):
        return {name: getattr(module, name) for name in constants}

    return {
        # format 4 codes as format 3 does: its files carry format 3's coder tag
        "container": {"FORMAT": FORMAT_3, "MIN_BITS_PER_IMAGE": MIN_BITS_PER_IMAGE, "PAD_WORD": PAD_WORD,
                      "CHECKSUM_BITS": CHECKSUM_BITS},
        "fixed_point": of(fixed_point, "LEVELS", "MIN_LOG_SCALE", "MAX_LOG_SCALE", "PROB_BITS", "WEIGHT_BITS",
                          "MEAN_STEPS", "LOG_SCALE_STEPS", "MEAN_MARGIN", "TABLE_STEPS", "FRACTION_BITS",
                          "TABLE_RANGE", "INV_SCALE_BITS", "LOGIT_BITS", "CATEGORICAL_LOGIT_BITS",
                          "MIXTURE_FLOOR", "CATEGORICAL_FLOOR", "ROUND_BITS", "PHI_BITS", "PHI_STEPS",
                          "PHI_RANGE"),
        "latents": of(latent_code, "DEFAULT_BIN_WIDTH", "DEFAULT_HALF_RANGE", "MAX_INDEX", "GRID_STEPS",
                      "LATENT_FLOOR", "ROUND_BITS", "MAX_BINS"),
        "first_image": of(first_image, "BIN_WIDTH", "MIN_WIDTH", "MAX_WIDTH", "THRESHOLD", "HALF_RANGE",
                          "RATIO_STEPS", "K"),
        "bbans": {"VARIANTS": bbans.VARIANTS, "VARIANT_PROBABILITIES": bbans.VARIANT_PROBABILITIES.tolist()},
        "names": {"MAX_NAME_BYTES": file_name_code.MAX_NAME_BYTES, "END": file_name_code.END,
                  "ENDINGS": [ending.decode() for ending in file_name_code.ENDINGS]},
    }


def _coder_tables() -> list[np.ndarray]:
    return [fixed_point.SIGMOID_TABLE, fixed_point.EXP_TABLE, fixed_point.INVERSE_SCALE_TABLE,
            fixed_point.PHI_TABLE, file_name_code.weights()]


def coder_hash() -> bytes:
    """SHA-256 of the coder's constants (JSON, sorted keys) and of its tables' bytes."""
    digest = hashlib.sha256(json.dumps(coder_constants(), sort_keys=True).encode())
    for table in _coder_tables():
        array = np.ascontiguousarray(table)
        digest.update(f"{array.dtype.str}|{array.shape}|".encode() + array.tobytes())
    return digest.digest()


def coder_tag() -> int:
    """This coder's tag, as a file's bytes 4-5 record it: the first two bytes of `coder_hash`."""
    return int.from_bytes(coder_hash()[:2], "little")


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
    """The header's bytes before its check (`pack` adds it)."""
    flags = ((MANY if header.count > 1 else 0) | (ARRAY4 if header.array_ndim == 4 else 0)
             | (SCALE255 if header.pixel_scale == 255 else 0) | (NAMES if header.has_names else 0)
             | (SHAPES if header.has_shapes else 0) | (MANY if header.has_shapes else 0)
             | (UNORDERED if header.unordered else 0))
    tag = coder_tag() if header.coder_tag is None else header.coder_tag
    version = FORMAT if header.has_shapes else FORMAT_3
    out = bytes([version, flags, header.model_tag, header.software]) + tag.to_bytes(2, "little")
    if header.count > 1 or header.has_shapes:
        out += _varint(header.count) + _varint(header.block_size)
        default_bins = (header.bin_width, header.half_range) == (DEFAULT_BIN_WIDTH, DEFAULT_HALF_RANGE)
        out += b"\0" if default_bins else b"\1" + _F64.pack(header.bin_width, header.half_range)
        out += _varint(len(header.ramp)) + b"".join(_varint(size) for size in header.ramp)
    return out


def _check(head: bytes, file_length: int) -> bytes:
    """The header's check: CRC-32 of its bytes and of the file's length, low 16 bits."""
    return _CHECK.pack(zlib.crc32(head + _varint(file_length)) & 0xFFFF)


def checksum(model_hash: bytes, header: Header, names: bytes, images: np.ndarray | bytes) -> int:
    """The stack's bottom word: CRC-32 of the model's hash, the header (but its ramp, which
    encoding decides), the names and the images' bytes, with its top bit set (31 bits of check,
    and a state from which the coder is efficient)."""
    crc = zlib.crc32(model_hash)
    crc = zlib.crc32(header_bytes(dataclasses.replace(header, ramp=())), crc)
    crc = zlib.crc32(names, crc)
    crc = zlib.crc32(images if isinstance(images, bytes) else np.ascontiguousarray(images).tobytes(), crc)
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
    """The file's bytes: the header and its check, then the words with the top word's high zero
    bytes dropped."""
    stack = np.ascontiguousarray(words, "<u4").tobytes()
    stack = stack[:len(stack.rstrip(b"\0"))]
    head = header_bytes(header)
    return head + _check(head, len(head) + _CHECK.size + len(stack)) + stack


def _refuse_other_formats(data: bytes, name: str) -> None:
    """FileError for bytes that are not format 3 or 4: an earlier format (saying which), a later
    one, or no file of compress.py."""
    if data.startswith(OLD_MAGIC):
        raise FileError(f"{name} is in the format of an earlier compress.py (format 1, before issue 32); "
                        "decompress it with that version's scripts/decompress.py")
    if data and data[0] & 0xF0 == FORMAT_2:
        raise FileError(f"{name} is in format 2 (its first byte is 0x{data[0]:02X}), which an earlier "
                        f"compress.py wrote with another coder; this one reads formats {FORMAT_3} and "
                        f"{FORMAT}: decompress it with scripts/decompress.py of commit "
                        f"{LAST_FORMAT_2_COMMIT} (git checkout {LAST_FORMAT_2_COMMIT})")
    if data and FORMAT < data[0] < 16:
        raise FileError(f"{name} is in format {data[0]}, written by a later compress.py; this one reads "
                        f"formats {FORMAT_3} and {FORMAT}")
    if len(data) < 8 or data[0] not in (FORMAT_3, FORMAT):
        raise FileError(f"{name} is not a file written by scripts/compress.py (its first byte is not "
                        f"{FORMAT_3}, {FORMAT}, 0xB_ or the start of VAEBBANS)")


def unpack(data: bytes, name: str) -> tuple[Header, np.ndarray]:
    """(header, words) of a file's bytes; FileError, naming the file, for what is not one, is
    damaged or truncated, or was written by a coder with other constants (`coder_tag`)."""
    _refuse_other_formats(data, name)
    flags, offset = data[1], 6
    fields = {"model_tag": data[2], "software": data[3], "coder_tag": int.from_bytes(data[4:6], "little"),
              "count": 1, "has_names": bool(flags & NAMES), "array_ndim": 4 if flags & ARRAY4 else 3,
              "pixel_scale": 255 if flags & SCALE255 else 1, "has_shapes": bool(flags & SHAPES),
              "unordered": bool(flags & UNORDERED)}
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
            if ramp_length != len(ramp):
                raise ValueError("its ramp runs past the file")
        if data[offset:offset + _CHECK.size] != _check(data[:offset], len(data)):
            raise ValueError("its header's check fails")
        if flags & 0xC0:
            raise ValueError(f"its flags 0x{flags:02X} hold bits no compress.py sets")
        if flags & UNORDERED and (not flags & MANY or flags & (NAMES | SHAPES) or fields["count"] < 2):
            raise ValueError("its header is inconsistent")
        if fields["has_shapes"] != (data[0] == FORMAT):
            raise ValueError(f"format {data[0]} with{'' if fields['has_shapes'] else 'out'} its images' "
                             "sizes")
        if fields["has_shapes"] and not flags & MANY:
            raise ValueError("its header is inconsistent")
        if fields["count"] < 1 or (flags & MANY and (fields["count"] < 2 - fields["has_shapes"]
                                                     or fields["block_size"] < 1)):
            raise ValueError("its header is inconsistent")
    except (ValueError, struct.error) as e:
        raise FileError(f"{name} is damaged or truncated: {e}") from None
    here = coder_tag()
    if fields["coder_tag"] != here:
        raise FileError(
            f"{name} was written by a coder with other constants (coder tag {fields['coder_tag']:04x}, this "
            f"one's {here:04x}): its rounding grids, tables or first-image code (vae/coding: ROUND_BITS, "
            "GRID_STEPS, the first image's constants, the latent and pixel tables) differ from this "
            "compress.py's, so this one would decode other images; decompress it with the version that "
            "wrote it")
    stack = data[offset + _CHECK.size:]
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
