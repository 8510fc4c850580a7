"""The images' file names, coded on the ANS stack: a file restores the names it was given.

Names are relative paths ('shirts/0001.png', '/'-separated, as bytes: `os.fsencode`), in the
order of the images. Each is coded after the one before it (front coding): the length of the
prefix it shares with that name (uniform over 0 .. that name's length; nothing for the first),
then the rest of its bytes under a fixed model of file names (lower-case letters and digits
likely, other bytes less so), ended by an end symbol or by one of the common extensions, one
symbol each. A name of five letters and '.png' costs about 4 bytes; numbered names in a folder
1-2 bytes each.
"""

import os

import constriction
import numpy as np

from vae.coding.errors import CodingError

MAX_NAME_BYTES = 4096
END = 256
ENDINGS = (b".png", b".jpg", b".jpeg", b".PNG", b".JPG", b".JPEG")  # symbols 257, 258, ...
_ENDING_WEIGHTS = (30.0, 10.0, 3.0, 2.0, 2.0, 1.0)


def weights() -> np.ndarray:
    """The fixed model of a name's symbols: bytes, END, the ENDINGS (part of the file format)."""
    weights = np.full(END + 1 + len(ENDINGS), 0.5)
    weights[:32] = weights[127] = 0.01  # control bytes
    for chars, weight in ((b"abcdefghijklmnopqrstuvwxyz0123456789", 10.0), (b"_-. /", 5.0),
                          (b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", 2.0)):
        weights[list(chars)] = weight
    weights[END] = 10.0
    weights[END + 1:] = _ENDING_WEIGHTS
    return weights / weights.sum()


_MODEL = constriction.stream.model.Categorical(weights(), perfect=False)


class NamesError(CodingError):
    """A name a file cannot record, or a decoded name that cannot be one (a damaged file)."""


def check_name(name: str) -> bytes:
    """The name's bytes; NamesError for an absolute path, '..', an empty part or a NUL byte."""
    raw = os.fsencode(name)
    parts = raw.split(b"/")
    if (not raw or len(raw) > MAX_NAME_BYTES or b"\0" in raw or raw.startswith(b"/")
            or any(part in (b"", b".", b"..") for part in parts)):
        raise NamesError(f"{name!r} cannot be a name in a compressed file: it must be a relative path "
                         f"without '..' or empty parts, at most {MAX_NAME_BYTES} bytes")
    return raw


def joined(file_names: list[str] | None) -> bytes:
    """The names' bytes, NUL-separated (what the file's checksum covers); b"" for none."""
    return b"\0".join(check_name(name) for name in file_names) if file_names is not None else b""


def _symbols(rest: bytes) -> list[int]:
    """The symbols of a name's bytes after the shared prefix: bytes, then an ending or END."""
    for i, ending in enumerate(ENDINGS):  # no ending is the end of another
        if rest.endswith(ending):
            return [*rest[:-len(ending)], END + 1 + i]
    return [*rest, END]


def _shared_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def _prefix_model(previous: bytes):
    """The length of the prefix a name shares with the one before it: uniform over 0 .. its length."""
    return constriction.stream.model.Uniform(len(previous) + 1)


def push(coder, file_names: list[str]) -> None:
    """Pushes the names so that `pop` gives them back in order (the last name first on the stack)."""
    raws = [check_name(name) for name in file_names]
    for i in reversed(range(len(raws))):
        previous = raws[i - 1] if i else b""
        shared = _shared_prefix(previous, raws[i])
        if shared == len(raws[i]):  # a name is never a prefix of the one after it: keep one byte back
            shared -= 1
        coder.encode_reverse(np.array(_symbols(raws[i][shared:]), np.int32), _MODEL)
        if previous:
            coder.encode_reverse(np.array([shared], np.int32), _prefix_model(previous))


def pop(coder, count: int) -> list[str]:
    """`count` names off the stack; NamesError where they cannot be names (a damaged file)."""
    file_names, previous = [], b""
    for _ in range(count):
        shared = int(coder.decode(_prefix_model(previous), 1)[0]) if previous else 0
        rest = bytearray()
        while len(rest) <= MAX_NAME_BYTES:
            symbol = int(coder.decode(_MODEL, 1)[0])
            if symbol < END:
                rest.append(symbol)
                continue
            if symbol > END:
                rest += ENDINGS[symbol - END - 1]
            break
        raw = previous[:shared] + bytes(rest)
        try:
            check_name(os.fsdecode(raw))
        except NamesError:
            raise NamesError("its names do not decode to file names") from None
        file_names.append(os.fsdecode(raw))
        previous = raw
    return file_names
