"""Building and loading a kernel's shared library: compiled from its C++ source by the C++ compiler
on first use and cached, or a one-line reason (`Unavailable`) why not, so the caller takes its XLA
path instead.

- The compiler is `$CXX` (split as a shell splits it, so `CXX="ccache g++"` works), else g++. It
  gets `BUILD_TIMEOUT_S` seconds.
- The library is built for this CPU (`-march=native`) and cached under `$VAE_NATIVE_CACHE`, else
  $XDG_CACHE_HOME/vae/native, else ~/.cache/vae/native; where no home directory is known and
  neither is set, nothing is built. Its directory is named by a hash of the source, the flags,
  the compiler command, the jaxlib version and the CPU, which is what `-march=native` means to
  this compiler on this machine (`cpu_identity`): a library built on one CPU is never loaded on
  another, x86 or arm64, even from a shared home directory.
- Only a library that nobody else could have written is loaded: the cache directory, the
  library's own directory and the library must belong to this user and be writable by no group
  or other user. Directories the cache creates are private (0700).
- VAE_NATIVE=0 turns every kernel off.

Imports nothing of the package.
"""

import ctypes
import hashlib
import os
import shlex
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import jax

FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC")
BUILD_TIMEOUT_S = 120.0  # a build takes seconds; a compiler that hangs must not hang the evaluation


class Unavailable(Exception):
    """Why a kernel is not loaded, in one line; `expected` where that is a choice or a machine
    without a compiler, not a fault to warn about."""

    def __init__(self, reason: str, expected: bool = False):
        super().__init__(reason)
        self.expected = expected


def compiler_command() -> list[str] | None:
    """`$CXX` as a shell splits it (a wrapper such as ccache, then the compiler), else g++, its
    program found on the PATH; None where it is not."""
    try:
        words = shlex.split(os.environ.get("CXX") or "g++")
    except ValueError:  # unbalanced quotes
        return None
    found = shutil.which(words[0]) if words else None
    return [found, *words[1:]] if found else None


def cpu_identity(command: list[str]) -> str:
    """What `-march=native` means to this compiler on this CPU: its driver's dry run (`-###`),
    which spells out the CPU and every instruction-set flag it resolved (x86, arm64 and the rest
    alike), with the compiler's version and configuration."""
    dry_run = [*command, *FLAGS, "-###", "-x", "c++", "-S", os.devnull, "-o", os.devnull]
    try:
        result = subprocess.run(dry_run, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"`{shlex.join(command)} -###` took over {BUILD_TIMEOUT_S:g} s") from None
    if result.returncode != 0:
        raise Unavailable(f"`{shlex.join(command)} -march=native -###` failed: {_last_line(result.stderr)}")
    return result.stderr


def cache_root() -> Path:
    """$VAE_NATIVE_CACHE, else beside the scripts' JAX compilation cache (`vae.cli`)."""
    if os.environ.get("VAE_NATIVE_CACHE"):
        return Path(os.environ["VAE_NATIVE_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "vae" / "native"
    try:
        home = Path.home()
    except (RuntimeError, KeyError):  # no HOME and no password-database entry (a container's UID)
        raise Unavailable("no home directory to cache it in: set VAE_NATIVE_CACHE to a private directory") \
            from None
    return home / ".cache" / "vae" / "native"


def check_private(path: Path) -> None:
    """Unavailable unless `path` belongs to this user and no group or other user may write it."""
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        mode = stat.S_IMODE(info.st_mode)
        raise Unavailable(f"{path} is not private (owner uid {info.st_uid}, mode {mode:o}; it must be yours "
                          f"and writable by you alone): not loading a library from it")


def private_directory(path: Path) -> Path:
    """`path`, created (and its missing parents) with mode 0700 where missing, and checked private."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(mode=0o700, exist_ok=True)
    check_private(path)
    return path


def load(source: Path, name: str) -> ctypes.CDLL:
    """The shared library `lib<name>.so` compiled from `source`: from the cache, else built now
    (into a temporary name, then renamed, so concurrent first uses never load a half-written
    file). Raises Unavailable."""
    if os.environ.get("VAE_NATIVE", "1") == "0":
        raise Unavailable("VAE_NATIVE=0", expected=True)
    command = compiler_command()
    if command is None:
        raise Unavailable(f"no C++ compiler: {os.environ.get('CXX') or 'g++'} is not on the PATH",
                          expected=True)
    parts = (source.read_bytes(), shlex.join(FLAGS).encode(), shlex.join(command).encode(),
             jax.lib.__version__.encode(), cpu_identity(command).encode())
    key = hashlib.sha256(b"\0".join(parts))
    try:
        root = private_directory(cache_root())
        directory = private_directory(root / key.hexdigest()[:20])
        library = directory / f"lib{name}.so"
        if not library.exists():
            _compile(command, source, library)
        check_private(library)
        return ctypes.CDLL(str(library))
    except OSError as error:
        raise Unavailable(str(error)) from None


def _compile(command: list[str], source: Path, library: Path) -> None:
    with tempfile.NamedTemporaryFile(dir=library.parent, suffix=".so", delete=False) as tmp:
        partial = Path(tmp.name)
    try:
        subprocess.run([*command, *FLAGS, f"-I{jax.ffi.include_dir()}", str(source), "-o", str(partial)],
                       check=True, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        partial.chmod(0o700)  # the linker may have made it group-writable (a umask of 002)
        os.replace(partial, library)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"the compiler ({shlex.join(command)}) took over {BUILD_TIMEOUT_S:g} s") from None
    except subprocess.CalledProcessError as error:
        raise Unavailable(f"compiling failed: {_last_line(error.stderr) or error}") from None
    finally:
        partial.unlink(missing_ok=True)


def _last_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else ""
