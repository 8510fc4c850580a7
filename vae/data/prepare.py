"""Offline preparation of a TFDS data set in the array_record format that loading reads.

Fashion-MNIST is prepared offline from Debian's `dataset-fashion-mnist` files. Debian's packaging
cleared the gzip headers' file name and time stamp; writing them back gives the upstream bytes
exactly, so TFDS's registered sha256 checksums pass and the data is provably the upstream data.
The MNIST family builds without TensorFlow (`mnist_builder`). Imports nothing of the package
outside `vae.data`.
"""

import gzip
import importlib.util
import shutil
import socket
import struct
import urllib.parse
from pathlib import Path

from vae.data.source import DataError, check_format, prepare_command, resolve_data_dir, tfds_builder

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
# Time stamps of the upstream Fashion-MNIST .gz files (train-*, t10k-*), as TFDS checksums them.
_UPSTREAM_GZIP_MTIME = {"train": 1504176606, "t10k": 1504176627}
_GZIP_FLAG_FNAME = 0x08
PROBE_TIMEOUT_SEC = 3.0  # how long a download host may take to answer before "no network"


def restore_upstream_gzip(src: Path, dst: Path) -> None:
    """Copies a Debian Fashion-MNIST .gz file to dst with its upstream gzip header written back."""
    raw = src.read_bytes()
    if raw[:3] != b"\x1f\x8b\x08":
        raise DataError(f"{src} is not a gzip file")
    if raw[3] & _GZIP_FLAG_FNAME:  # already carries its file name: keep as is
        dst.write_bytes(raw)
        return
    if raw[3] != 0:
        raise DataError(f"{src} has gzip flags {raw[3]:#x}; expected Debian's bare header")
    kind = "train" if src.name.startswith("train") else "t10k"
    original_name = src.name.removesuffix(".gz").encode("latin-1") + b"\0"
    header = raw[:3] + bytes([_GZIP_FLAG_FNAME]) + struct.pack("<I", _UPSTREAM_GZIP_MTIME[kind])
    dst.write_bytes(header + raw[8:10] + original_name + raw[10:])
    if gzip.decompress(dst.read_bytes()) != gzip.decompress(raw):
        raise DataError(f"rewriting the gzip header of {src} changed its contents")


def stage_debian_fashion_mnist(manual_dir: Path, source_dir: Path = DEBIAN_FASHION_MNIST_DIR) -> Path:
    """Writes the four upstream-identical Fashion-MNIST files into manual_dir for TFDS."""
    files = sorted(source_dir.glob("*-ubyte.gz")) if source_dir.is_dir() else []
    if len(files) != 4:
        raise DataError(
            f"Debian's Fashion-MNIST files are not in {source_dir}. Install them with "
            "`apt-get install dataset-fashion-mnist` (as root), or run on a machine with a network.")
    manual_dir.mkdir(parents=True, exist_ok=True)
    for src in files:
        restore_upstream_gzip(src, manual_dir / src.name)
    return manual_dir


def prepare(name: str, data_dir: str | None = None, manual_dir: str | None = None) -> str:
    """Builds `name` in TFDS's array_record format (once); returns the built data set's directory.

    Fashion-MNIST is built offline from Debian's files when they are installed; any other data set
    (or Fashion-MNIST without them) is downloaded as TFDS normally does, which needs a network.
    The MNIST family (mnist, fashion_mnist, kmnist) is built without TensorFlow
    (`mnist_builder`); TFDS builds every other data set with TensorFlow, which the
    `tfds-build` extra installs.
    """
    import tensorflow_datasets as tfds

    from vae.data import mnist_builder

    data_dir = resolve_data_dir(data_dir)
    builder = tfds_builder(name, data_dir, file_format="array_record")
    if builder.is_prepared():
        check_format(builder, name, data_dir)
        return builder.data_dir
    if name in mnist_builder.NAMES:
        builder = mnist_builder.builder_class(name)(data_dir=data_dir, file_format="array_record")
    elif importlib.util.find_spec("tensorflow") is None:
        raise DataError(f"TFDS builds {name!r} with TensorFlow, which is not installed: run "
                        f"`pip install -e '.[tfds-build]'` once, then `{prepare_command(name, data_dir)}`")
    download_config = None
    if manual_dir is None and name == "fashion_mnist" and DEBIAN_FASHION_MNIST_DIR.is_dir():
        root = Path(data_dir or tfds.core.constants.DATA_DIR).expanduser()
        manual_dir = str(stage_debian_fashion_mnist(root / "manual" / name))
    if manual_dir is not None:
        download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    else:
        check_network(name, download_hosts(builder))
    try:
        builder.download_and_prepare(download_config=download_config)
    except Exception as e:  # noqa: BLE001 - a wrong checksum, no network, a full disk: one line
        remove_partial_build(builder, Path(data_dir or tfds.core.constants.DATA_DIR).expanduser())
        first_line = (str(e).strip().splitlines() or [""])[0]
        raise DataError(f"building {name} failed: {type(e).__name__}: {first_line}") from e
    return builder.data_dir


def download_hosts(builder) -> set[str]:
    """The hosts a TFDS builder downloads from (from its registered URLs), where it says."""
    urls = list(builder.url_infos or {}) + [getattr(builder, "URL", None) or ""]
    return {urllib.parse.urlsplit(url).hostname for url in urls if url.startswith("http")} - {None}


def check_network(name: str, hosts: set[str], timeout: float = PROBE_TIMEOUT_SEC) -> None:
    """Raises DataError at once when none of `hosts` answers: TFDS would otherwise retry for
    minutes and leave partial files behind."""
    for host in sorted(hosts):
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            return
        except OSError:
            continue
    if hosts:
        raise DataError(
            f"no network: {', '.join(sorted(hosts))} cannot be reached, so {name} cannot be downloaded."
            f" Download its files elsewhere and pass them with `--manual_dir DIR` (TFDS matches them by"
            f" name and checks their sha256), or use Fashion-MNIST, which is prepared offline (`make data`)")


def remove_partial_build(builder, data_root: Path) -> None:
    """Removes what a failed build left: TFDS's `incomplete.*` directories of this data set and
    the partial downloads (`*.tmp.*`) in the data dir's downloads/."""
    dataset_dir = Path(builder.data_dir).parent
    for partial in dataset_dir.glob("incomplete.*"):
        shutil.rmtree(partial, ignore_errors=True)
    downloads = data_root / "downloads"
    for partial in downloads.glob("*.tmp.*") if downloads.is_dir() else []:
        shutil.rmtree(partial, ignore_errors=True) if partial.is_dir() else partial.unlink(missing_ok=True)
