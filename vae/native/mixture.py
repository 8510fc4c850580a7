"""The logistic mixture's log p(x|z) of many decoder outputs at once as one JAX operation: the 8-bit
IWAE evaluation's hot loop (`vae.model.likelihoods.LogisticMixture.log_prob_grouped`).

- What: on CPU, the compiled kernel of mixture.cc (one pass over each row where XLA's fusions take
  ten; mixture.cc says how); on any other platform, and on a CPU where the kernel is not built,
  the XLA function the caller passes as `fallback`. The numbers agree to float rounding either
  way, NaN included (tests/test_mixture_kernel.py); only the speed differs. Lossless coding never
  depends on it: the coder's probabilities are fixed point (`vae.coding.fixed_point`).
- When: the kernel is built and loaded (`vae.native.build`) when a program holding the operation
  is first lowered for the CPU; never for a program lowered for a GPU or TPU, nor by tracing or
  exporting one. Where it cannot be (no compiler, a failed or slow build, a cache that is not
  private, VAE_NATIVE=0), that program takes the XLA path, with a one-line warning for a fault.
- Where: under a mesh, each device computes the rows of its own images (`jax.shard_map` over the
  images' axis), so no device gathers the decoder output of the others.

The operation is a primitive of its own (`jax.extend.core.Primitive`) so that each platform gets
its own lowering rule: the CPU's is the only code that builds. It has no gradient (training
differentiates `LogisticMixture.log_prob`). Imports nothing of the package.
"""

import functools
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
from jax.interpreters import batching, mlir
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from vae.native import build

SOURCE = Path(__file__).with_name("mixture.cc")
TARGET = "vae_mixture_log_prob"  # the FFI handler mixture.cc defines
MAX_COMPONENTS = 10  # mixture.cc's kMaxComponents

log = logging.getLogger(__name__)


def log_prob(out_GxBxP: jax.Array, levels_BxD: jax.Array, components: int,
             fallback: Callable[[jax.Array, jax.Array], jax.Array]) -> jax.Array:
    """log p(x|z) (G x B) of G groups of B decoder outputs (each row D x 3K, pixel-major) against
    the int levels of their B images. `fallback(out_NxP, levels_BxD)` computes the same in XLA,
    row r of N = G·B against image r mod B; a hashable function (the same object for the same
    numbers), as it is part of the operation. Float32 outputs of at most `MAX_COMPONENTS`
    components take the kernel; others the fallback."""
    groups, images, p = out_GxBxP.shape
    if not (out_GxBxP.dtype == jnp.float32 and 1 <= components <= MAX_COMPONENTS):
        return fallback(out_GxBxP.reshape(groups * images, p), levels_BxD).reshape(groups, images)

    def rows(out, levels):
        local_groups, local_images, _ = out.shape
        log_p = _mixture_p.bind(out.reshape(local_groups * local_images, p), levels,
                                components=components, fallback=fallback)
        return log_p.reshape(local_groups, local_images)

    axes = _image_axes(out_GxBxP, images)
    if axes:
        mesh = jax.typeof(out_GxBxP).sharding.mesh
        rows = jax.shard_map(rows, mesh=mesh, in_specs=(P(None, axes), P(axes)), out_specs=P(None, axes),
                             check_vma=False)
    return rows(out_GxBxP, levels_BxD.astype(jnp.int32))


def _image_axes(out_GxBxP: jax.Array, images: int) -> tuple[str, ...]:
    """The mesh axes to split the images over: all of the mesh `out_GxBxP` lives on, where it has
    several devices, none is already manual (inside a shard_map) and they divide the images."""
    mesh = jax.typeof(out_GxBxP).sharding.mesh
    if mesh.empty or mesh.size == 1 or images % mesh.size or AxisType.Manual in mesh.axis_types:
        return ()
    return tuple(mesh.axis_names)


_lock = threading.Lock()
_registered = []  # the library whose handler XLA holds: one per process (XLA refuses another)


@functools.cache
def _kernel_registered() -> bool:
    try:
        library = build.load(SOURCE, "vae_mixture")
    except build.Unavailable as why:
        (log.info if why.expected else log.warning)(
            "mixture kernel not used (%s); the XLA path computes the mixture", why)
        return False
    if not _registered:
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.vae_mixture_log_prob), platform="cpu")
        _registered.append(library)
    return True


def kernel_available() -> bool:
    """Whether the kernel is built, loaded and registered with XLA's CPU backend: built on the
    first call in a process (what lowering a CPU program does), remembered after."""
    with _lock:
        return _kernel_registered()


# --- The primitive --------------------------------------------------------------------------------

_mixture_p = jax.extend.core.Primitive("vae_mixture_log_prob")


def _abstract_eval(out, levels, *, components, fallback):
    del fallback
    rows, images = out.shape[0], levels.shape[0]
    if out.ndim != 2 or levels.ndim != 2 or out.shape[1] != levels.shape[1] * 3 * components:
        raise ValueError(f"mixture log_prob: expects N x (D·3K) outputs and B x D levels, K = {components}; "
                         f"got {out.shape} and {levels.shape}")
    if images == 0 or rows % images:
        raise ValueError(f"mixture log_prob: {rows} rows are not groups of {images} images")
    return jax.core.ShapedArray((rows,), out.dtype)


def _lower_xla(ctx, out, levels, *, components, fallback):
    del components
    return mlir.lower_fun(fallback, multiple_results=False)(ctx, out, levels)


def _lower_cpu(ctx, out, levels, *, components, fallback):
    if not kernel_available():
        return _lower_xla(ctx, out, levels, components=components, fallback=fallback)
    return jax.ffi.ffi_lowering(TARGET)(ctx, out, levels, components=np.int64(components))


def _batch(args, dims, *, components, fallback):
    """A batch of calls as one: V x N rows against the same B images stay V·N rows against them
    (N is a multiple of B); where each member has its own images, each row gets its image's levels."""
    (out, levels), (out_dim, levels_dim) = args, dims
    size = out.shape[out_dim] if out_dim is not None else levels.shape[levels_dim]
    out = jnp.moveaxis(out, out_dim, 0) if out_dim is not None else jnp.broadcast_to(out, (size, *out.shape))
    rows, p = out.shape[1:]
    if levels_dim is not None:
        levels = jnp.moveaxis(levels, levels_dim, 0)
        images, d = levels.shape[1:]
        levels = jnp.broadcast_to(levels[:, None], (size, rows // images, images, d)).reshape(size * rows, d)
    log_p = _mixture_p.bind(out.reshape(size * rows, p), levels, components=components, fallback=fallback)
    return log_p.reshape(size, rows), 0


@functools.partial(jax.jit, static_argnums=(2, 3))
def _apply(out, levels, components, fallback):
    return _mixture_p.bind(out, levels, components=components, fallback=fallback)


_mixture_p.def_abstract_eval(_abstract_eval)
_mixture_p.def_impl(lambda out, levels, *, components, fallback: _apply(out, levels, components, fallback))
mlir.register_lowering(_mixture_p, _lower_xla)
mlir.register_lowering(_mixture_p, _lower_cpu, platform="cpu")
batching.primitive_batchers[_mixture_p] = _batch
