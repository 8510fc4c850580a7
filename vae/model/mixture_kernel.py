"""A compiled CPU kernel for the logistic mixture's log p(x|z) of many decoder outputs at once: the
8-bit IWAE evaluation's hot loop (`LogisticMixture.log_prob_grouped`), one pass over each row where
XLA's fusions take ten (mixture_kernel.cc says how). docs/evaluation.md has what it saves.

`log_prob(out_NxP, levels_BxD, components, fallback)` calls it on CPU and the XLA path elsewhere
(GPU, TPU); `compiled()` says whether it is in use. The library is compiled from mixture_kernel.cc
by the C++ compiler (`$CXX`, else g++) on first use (3 s) and cached under `$VAE_NATIVE_CACHE`
(default $XDG_CACHE_HOME/vae/native or ~/.cache/vae/native), keyed by the source, the flags, the
compiler, the jaxlib version and the CPU (it is built for this CPU's vector instructions). Without
a compiler, where compiling fails, or with VAE_NATIVE=0, the XLA path runs everywhere: the numbers
agree to float rounding either way (tests/test_mixture_kernel.py), only the speed differs. Lossless
coding never depends on it: the coder's probabilities are fixed point (`vae.coding.fixed_point`).

Imports nothing of the package.
"""

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

SOURCE = Path(__file__).with_name("mixture_kernel.cc")
TARGET = "vae_mixture_log_prob"
MAX_COMPONENTS = 10  # mixture_kernel.cc's kMaxComponents
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC")

log = logging.getLogger(__name__)


def _cpu_identity() -> str:
    """What -march=native compiles for: the CPU's model and feature flags (Linux), else the arch."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags"))}))
    except OSError:
        return platform.machine()


def _cache_dir() -> Path:
    """$VAE_NATIVE_CACHE, else beside the scripts' JAX compilation cache (`vae.cli`)."""
    if os.environ.get("VAE_NATIVE_CACHE"):
        return Path(os.environ["VAE_NATIVE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vae" / "native"


def _build(compiler_path: str) -> Path:
    """The shared library, compiled unless this source, compiler and CPU already have one; written
    to a temporary name and renamed, so concurrent first uses never load a half-written file."""
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), " ".join(FLAGS).encode(), compiler_path.encode(),
                                     jax.lib.__version__.encode(), _cpu_identity().encode()]))
    library = _cache_dir() / key.hexdigest()[:20] / "libvae_mixture.so"
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=library.parent, suffix=".so", delete=False) as tmp:
        partial = Path(tmp.name)
    try:
        subprocess.run([compiler_path, *FLAGS, f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", str(partial)],
                       check=True, capture_output=True, text=True)
        os.replace(partial, library)
    finally:
        partial.unlink(missing_ok=True)
    return library


def compiler() -> str | None:
    """The C++ compiler that builds the kernel: `$CXX`, else g++, where it is on the PATH."""
    return shutil.which(os.environ.get("CXX", "g++"))


@functools.cache
def compiled() -> bool:
    """Whether the kernel is built, loaded and registered with XLA for the CPU (once per process)."""
    if os.environ.get("VAE_NATIVE", "1") == "0":
        return False
    found = compiler()
    if found is None:
        log.info("mixture kernel: no C++ compiler found; the XLA path computes the mixture")
        return False
    try:
        library = ctypes.cdll.LoadLibrary(str(_build(found)))
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        log.warning("mixture kernel not built (%s); the XLA path computes the mixture",
                    detail.strip().splitlines()[-1] if detail.strip() else error)
        return False
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.vae_mixture_log_prob), platform="cpu")
    return True


def log_prob(out_NxP: jax.Array, levels_BxD: jax.Array, components: int,
             fallback: Callable[[jax.Array, jax.Array], jax.Array]) -> jax.Array:
    """log p(x|z) per row of `out_NxP` (float32, each row D x 3K pixel-major), row r against the
    int32 levels of image r mod B; `fallback(out_NxP, levels_BxD)` computes the same on other
    platforms, or where the kernel is not available."""
    if not (compiled() and out_NxP.dtype == jnp.float32 and 1 <= components <= MAX_COMPONENTS):
        return fallback(out_NxP, levels_BxD)

    def kernel(out, levels):
        call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(out.shape[:1], jnp.float32),
                                vmap_method="sequential")
        return call(out, levels.astype(jnp.int32), components=np.int64(components))

    return jax.lax.platform_dependent(out_NxP, levels_BxD, cpu=kernel, default=fallback)
