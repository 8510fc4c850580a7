"""Files written at once, and arrays cached in one file with the key of what they were made from.

A write goes to a temporary file beside the target (named by the process, so two processes
filling the same cache do not meet), is flushed to the disk, then renamed over the target: a
failed write (a full disk, a killed process) leaves the old file, or none, and no temporary file.
A cache file is an npz of named arrays plus `key`, a JSON record of what they were made from; a
file whose key differs is a miss, and a damaged one is a miss with a note, so it is made again.

The bottom layer: imports nothing of the package, so every layer can use it.
"""

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np


def write_with(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Replaces `path` by what `write(file)` writes, at once; raises what the write raised."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    """Replaces `path` by `data` at once: a failed write (a full disk) leaves the old file."""
    write_with(path, lambda f: f.write(data))


def write_text(path: str | Path, text: str) -> None:
    """Replaces `path` by `text` (UTF-8) at once: a failed write leaves the old file."""
    write_bytes(path, text.encode())


def save_arrays(path: str | Path, key: dict, **arrays: np.ndarray) -> None:
    """Caches `arrays` in the npz file `path` (its directory made) with `key`, at once; raises
    OSError where it cannot be written (a read-only or full disk)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = np.array(json.dumps(key, sort_keys=True))
    write_with(path, lambda f: np.savez(f, key=record, **arrays))


def load_arrays(path: str | Path, key: dict) -> dict[str, np.ndarray] | None:
    """The arrays cached in `path` by `save_arrays` under the same `key`, or None: no file,
    another key, or a damaged file (then a note on stderr)."""
    try:
        with np.load(path, allow_pickle=False) as cached:
            if json.loads(str(cached["key"])) != key:
                return None
            return {name: cached[name] for name in cached.files if name != "key"}
    except FileNotFoundError:
        return None
    except Exception as e:  # noqa: BLE001 - a damaged cache file is a miss: it is made again
        print(f"note: the cache file {path} is unreadable ({type(e).__name__}); making it again",
              file=sys.stderr)
        return None
