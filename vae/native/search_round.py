"""One round of the lossless coder's search over the levels of many sub-pixels under a logistic
mixture, as one JAX operation (`vae.coding.fixed_point.next_round`): the coder's hot loop.

- What: on CPU, the compiled kernel of search_round.cc (the rows in blocks, the inner loop over sub-pixels
  in vector lanes, shared among XLA's intra-op threads); on any other platform, and on a CPU where
  the kernel is not built, the XLA function the caller passes as `fallback`. Both make the same
  integers and the same float64 probabilities from them exactly (tests/test_search_round_kernel.py): a
  file's bytes never depend on whether the kernel was built, on either side.
- When: built and loaded (`vae.native.build`) when a program holding the operation is first
  lowered for the CPU; where it cannot be (no compiler, a failed build, VAE_NATIVE=0), that
  program takes the XLA path, with a one-line warning for a fault.

Its own primitive, as `mixture.py`'s, so that only the CPU's lowering rule builds. No gradient and
no batching rule: the coder calls it on host arrays. Imports nothing of the package but
`vae.native.build`.
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
from jax.interpreters import mlir

from vae.native import build

SOURCE = Path(__file__).with_name("search_round.cc")
TARGET = "vae_mixture_round"  # the FFI handler search_round.cc defines
MAX_COMPONENTS, MAX_PARTS = 16, 16  # search_round.cc's kMaxComponents, kMaxParts

log = logging.getLogger(__name__)


_lock = threading.Lock()
_registered = []  # the library whose handler XLA holds: one per process (XLA refuses another)


@functools.cache
def _kernel_registered() -> bool:
    try:
        library = build.load(SOURCE, "vae_search_round")
    except build.Unavailable as why:
        (log.info if why.expected else log.warning)(
            "search round kernel not used (%s); the XLA path computes the coder's rounds", why)
        return False
    if not _registered:
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.vae_mixture_round), platform="cpu")
        _registered.append(library)
    return True


def kernel_available() -> bool:
    """Whether the kernel is built, loaded and registered with XLA's CPU backend (built on the first
    call in a process, remembered after)."""
    with _lock:
        return _kernel_registered()


def mixture_round(weights_NxK, means_NxK, inverse_scales_NxK, low_N, edges_NxE, part_N, *, last_step: int,
                  step: int, parts: int, table: np.ndarray, offset: int, limit: int, mean_steps: int,
                  shift: int, fraction_bits: int, floor: int, fallback: Callable):
    """One round of the coder's search over a sub-pixel's levels (`fixed_point.next_round`): after
    the part (N) the last round decoded of its edges' counts (N x E) above `low_N`, the interval's
    new low level, the counts at the `parts` parts' edges (N x (parts + 1)) and each part's
    probability (N x parts, float64: each part's counts over the interval's, exactly rounded), as
    (probabilities, low, edges). `fallback(weights, means, inverse_scales, low, edges, part,
    last_step=, step=, parts=)` computes the same in XLA."""
    k = weights_NxK.shape[-1]
    if not (weights_NxK.ndim == 2 and 1 <= k <= MAX_COMPONENTS and 2 <= parts <= MAX_PARTS):
        return fallback(weights_NxK, means_NxK, inverse_scales_NxK, low_N, edges_NxE, part_N,
                        last_step=last_step, step=step, parts=parts)
    int64 = [jnp.asarray(a, jnp.int64) for a in (weights_NxK, means_NxK, inverse_scales_NxK, table, low_N,
                                                  edges_NxE)]
    return tuple(_round_p.bind(*int64, jnp.asarray(part_N, jnp.int32), offset=offset, limit=limit,
                               mean_steps=mean_steps, shift=shift, fraction_bits=fraction_bits, floor=floor,
                               last_step=last_step, step=step, parts=parts, fallback=fallback))


_round_p = jax.extend.core.Primitive("vae_mixture_round")
_round_p.multiple_results = True
_ROUND_ATTRS = ("last_step", "step", "parts")


def _round_abstract_eval(weights, means, inverse_scales, table, low, edges, part, *, parts, **_):
    n = weights.shape[0]
    if not (weights.shape == means.shape == inverse_scales.shape and low.shape == part.shape == (n,)
            and edges.ndim == 2 and edges.shape[0] == n):
        raise ValueError(f"mixture round: expects N x K parameters and N lows, parts and rows of edges; got "
                         f"{weights.shape}, {low.shape}, {part.shape} and {edges.shape}")
    return (jax.core.ShapedArray((n, parts), jnp.float64), jax.core.ShapedArray((n,), jnp.int64),
            jax.core.ShapedArray((n, parts + 1), jnp.int64))


def _round_lower_xla(ctx, weights, means, inverse_scales, table, low, edges, part, *, fallback, **attrs):
    rounds = {name: attrs[name] for name in _ROUND_ATTRS}

    def run(w, m, i, t, lo, e, p):
        del t
        return fallback(w, m, i, lo, e, p, **rounds)
    return mlir.lower_fun(run, multiple_results=True)(ctx, weights, means, inverse_scales, table, low, edges,
                                                       part)


def _round_lower_cpu(ctx, *args, fallback, **attrs):
    if not kernel_available():
        return _round_lower_xla(ctx, *args, fallback=fallback, **attrs)
    return jax.ffi.ffi_lowering(TARGET)(ctx, *args, **{name: np.int64(v) for name, v in attrs.items()})


@functools.partial(jax.jit, static_argnames=("offset", "limit", "mean_steps", "shift", "fraction_bits",
                                             "floor", *_ROUND_ATTRS, "fallback"))
def _round_apply(*args, **params):
    return _round_p.bind(*args, **params)


_round_p.def_abstract_eval(_round_abstract_eval)
_round_p.def_impl(_round_apply)
mlir.register_lowering(_round_p, _round_lower_xla)
mlir.register_lowering(_round_p, _round_lower_cpu, platform="cpu")
