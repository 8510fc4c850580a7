"""vae.atomic: whole files or none, and cached arrays read back only under their own key."""

import numpy as np
import pytest

from vae import atomic


def test_arrays_come_back_under_their_key_and_only_under_it(tmp_path):
    path = tmp_path / "made" / "here" / "cache.npz"  # the directories are made
    images = np.arange(24, dtype=np.uint8).reshape(2, 3, 4, 1)
    labels = np.array([3, -1], np.int32)
    atomic.save_arrays(path, {"format": 1, "files": ["a.png", "b.png"]}, images=images, labels=labels)
    cached = atomic.load_arrays(path, {"files": ["a.png", "b.png"], "format": 1})
    assert sorted(cached) == ["images", "labels"]
    np.testing.assert_array_equal(cached["images"], images)
    assert cached["images"].dtype == np.uint8 and cached["labels"].tolist() == [3, -1]
    assert atomic.load_arrays(path, {"format": 2, "files": ["a.png", "b.png"]}) is None
    assert atomic.load_arrays(tmp_path / "absent.npz", {}) is None
    assert [p.name for p in path.parent.iterdir()] == ["cache.npz"]  # no temporary file left


def test_a_damaged_cache_file_is_a_miss_with_a_note(tmp_path, capfd):
    path = tmp_path / "cache.npz"
    atomic.save_arrays(path, {"n": 1}, images=np.zeros((100, 8), np.uint8))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert atomic.load_arrays(path, {"n": 1}) is None
    assert f"the cache file {path} is unreadable" in capfd.readouterr().err


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "config.json"
    atomic.write_text(path, "old")

    def fails_halfway(f):
        f.write(b"new, half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic.write_with(path, fails_halfway)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["config.json"]
    atomic.write_bytes(path, "né".encode())
    assert path.read_text(encoding="utf-8") == "né"
