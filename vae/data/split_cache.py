"""Decoded images cached beside the TFDS data, so a command does not decode every PNG again.

Decoding every PNG of a data set through `tfds.data_source` takes seconds; reading the decoded
uint8 arrays back takes a small part of that (docs/speed.md). The cache holds one file per shard of
a prepared data set, keyed by data set, config, version and shard (its split and position):

    DATA_DIR/vae_decoded/<name>[/<config>]/<version>/<shard file name>.npz

Any split expression ('train[:50000]', 'train[50000:]', 'test') is then put together from its
shards' slices, exactly as TFDS reads it (its file instructions). Each file also records the
size and modification time of the shard it was decoded from and the cache's format: a rebuilt
data set, a new version or a new format is decoded again. Files are written atomically
(`vae.atomic`); an unreadable or truncated one is decoded again and replaced; a read-only data
directory only means no cache.
"""

import sys
from pathlib import Path

import numpy as np

from vae import atomic

CACHE_DIR = "vae_decoded"
FORMAT = 1
_NOTED = set()  # directories that could not hold the cache


def cache_file(builder, shard: str) -> Path:
    """Where the decoded shard `shard` (a file name of the prepared data set) is cached."""
    full_name = builder.info.full_name  # name[/config]/version
    root = Path(builder.data_dir).parents[len(full_name.split("/")) - 1]
    return root / CACHE_DIR / full_name / f"{Path(shard).name}.npz"


def _fingerprint(builder, shard: str) -> dict:
    stat = (Path(builder.data_dir) / Path(shard).name).stat()
    return {"format": FORMAT, "data_set": builder.info.full_name, "shard": Path(shard).name,
            "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _read(path: Path, key: dict) -> tuple[np.ndarray, np.ndarray] | None:
    cached = atomic.load_arrays(path, key)
    return None if cached is None else (cached["images"], cached["labels"])


def _write(path: Path, key: dict, images: np.ndarray, labels: np.ndarray) -> None:
    try:
        atomic.save_arrays(path, key, images=images, labels=labels)
    except OSError as e:  # a read-only or full data directory: no cache, same data
        if path.parent not in _NOTED:  # once per directory and process
            _NOTED.add(path.parent)
            print(f"note: cannot cache decoded images in {path.parent} ({e.strerror or e}); "
                  "they are decoded on every run", file=sys.stderr)


def _shard_range(builder, shard: str) -> tuple[str, int, int]:
    """(base split, first, end) of the examples a shard file holds."""
    for split_name, info in builder.info.splits.items():
        names = [Path(f).name for f in info.filenames]
        if Path(shard).name in names:
            index = names.index(Path(shard).name)
            first = sum(info.shard_lengths[:index])
            return split_name, first, first + info.shard_lengths[index]
    raise KeyError(f"{shard} is not a shard of {builder.info.full_name}")


def load_shard(builder, shard: str, decode) -> tuple[np.ndarray, np.ndarray]:
    """All images and labels of one shard: from the cache, or `decode(split)` and cached."""
    path = cache_file(builder, shard)
    key = _fingerprint(builder, shard)
    cached = _read(path, key)
    if cached is not None:
        return cached
    split_name, first, end = _shard_range(builder, shard)
    images, labels = decode(f"{split_name}[{first}:{end}]")
    _write(path, key, images, labels)
    return images, labels


def load_split(builder, split: str, decode) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels of a split expression, in TFDS's order, assembled from cached shards."""
    parts = []
    for instruction in builder.info.splits[split].file_instructions:
        images, labels = load_shard(builder, instruction.filename, decode)
        end = instruction.skip + instruction.take
        parts.append((images[instruction.skip:end], labels[instruction.skip:end]))
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
