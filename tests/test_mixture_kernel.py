"""The compiled CPU kernel of the logistic mixture's log p(x|z) (vae/native/mixture.py, mixture.cc)
against the textbook float64 computation and the XLA path it stands in for; how it is partitioned
over devices; when and how it is built (vae/native/build.py), and that every way it cannot be
leaves the XLA path with one line said."""

import logging
import os
import pwd
import re
import stat
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from test_likelihoods import _discretized_logistic_NumPy, _mixture_params_NumPy

from vae.model import likelihoods
from vae.native import build, mixture

needs_kernel = pytest.mark.skipif(not mixture.kernel_available(), reason="no C++ compiler: the XLA path runs")


def _textbook(out, levels, k):
    log_w, mu, log_s = _mixture_params_NumPy(out, k)
    return scipy.special.logsumexp(log_w + _discretized_logistic_NumPy(levels[..., None], mu, log_s),
                                   axis=-1).sum(-1)


def _case(rng, rows, pixels, k):
    """Decoder outputs as training meets them (components near their levels) with the hard cases
    in the first row: both edge bins, log-scales under the floor and huge, and far tails whose
    probability is under 1e-30 (the exact form's pixels)."""
    out = rng.normal(scale=0.5, size=(rows, pixels, 3 * k))
    out[:, :, 2 * k:] -= 2.0
    levels = rng.integers(0, 256, size=(rows, pixels))
    hard = min(pixels, 6)
    out[0, :hard, 2 * k:] = np.array([-30.0, 10.0, -7.0, -6.0, -6.0, 4.0])[:hard, None]
    out[0, :hard, k:2 * k] = np.array([0.2, 0.0, 0.9, -1.0, 1.0, -3.0])[:hard, None]
    levels[0, :hard] = [0, 255, 3, 200, 0, 255][:hard]
    return out.reshape(rows, -1), levels


def _kernel_and_xla(out_NxP, levels_BxD, k):
    """(the operation's log p(x|z) per row, the XLA path's), both jitted."""
    xla = likelihoods._tiled_mixture_log_prob_of(k)
    kernel = jax.jit(lambda o, lv: mixture.log_prob(o[None], lv, k, xla)[0])
    return kernel(out_NxP, levels_BxD), jax.jit(xla)(out_NxP, levels_BxD)


def test_the_kernel_is_in_use_wherever_a_compiler_is():
    """So the suite tests the kernel, not only its fallback, on every machine that can build it."""
    assert mixture.kernel_available() == (build.compiler_command() is not None)


@needs_kernel
@pytest.mark.parametrize("k, pixels", [(1, 1), (2, 15), (3, 16), (5, 17), (5, 784), (10, 40)])
def test_the_kernel_is_the_textbook_mixture(k, pixels):
    """Every row's log p(x|z) within float32 rounding of the float64 formula, partial vectors of
    pixels (D not a multiple of 16) and the far-tail pixels included; and the XLA path's number."""
    out, levels = _case(np.random.default_rng(k * 100 + pixels), 7, pixels, k)
    expected = _textbook(out, levels, k)
    assert np.isfinite(expected).all() and expected[0] < -100  # the far tails are in
    kernel, xla = _kernel_and_xla(jnp.asarray(out, jnp.float32), jnp.asarray(levels, jnp.int32), k)
    np.testing.assert_allclose(kernel, expected, rtol=2e-6, atol=1e-4)
    np.testing.assert_allclose(kernel, xla, rtol=2e-6, atol=1e-4)


@needs_kernel
def test_nan_in_any_output_gives_nan_as_the_xla_path_does():
    """A diverged decoder's NaN logit, mean or log-scale makes its row's log p(x|z) NaN, as on the
    XLA path (a NaN must not become a finite NLL on CPU only); the other rows keep their numbers."""
    k, pixels = 3, 20
    out, levels = _case(np.random.default_rng(11), 8, pixels, k)
    out = out.reshape(8, pixels, 3 * k)
    out[1, 4, 0] = np.nan           # a logit
    out[2, 19, k + 2] = np.nan      # a mean, in the last partial vector of pixels
    out[3, 0, 2 * k + 1] = np.nan   # a log-scale (the floor at -7 must not hide it)
    out[4, 7, :k] = np.nan          # every logit of a pixel
    out[5, 0, 2 * k] = np.nan       # a log-scale in the row of far tails' neighbour
    levels[5, 0] = 0                # an edge bin
    kernel, xla = map(np.asarray, _kernel_and_xla(jnp.asarray(out.reshape(8, -1), jnp.float32),
                                                  jnp.asarray(levels, jnp.int32), k))
    assert np.isnan(xla[1:6]).all() and np.isfinite(xla[[0, 6, 7]]).all()
    np.testing.assert_array_equal(np.isnan(kernel), np.isnan(xla))
    np.testing.assert_allclose(kernel[[0, 6, 7]], xla[[0, 6, 7]], rtol=2e-6, atol=1e-4)


@needs_kernel
def test_rows_read_their_image_modulo_the_images():
    """The IWAE's C draws x B images against x_BxD[None] (each image read once), the plain B x P
    against B x D, and a broadcast the kernel does not take (one image per draw) all agree with
    the direct `log_prob`, and the thread-shared rows give the same numbers every call."""
    k, rng = 5, np.random.default_rng(3)
    out, levels = _case(rng, 4 * 6, 30, k)
    out_CxBxP = jnp.asarray(out.reshape(4, 6, -1), jnp.float32)
    x_BxD = jnp.asarray(levels[:6] / 255.0, jnp.float32)
    lik = likelihoods.LogisticMixture(k)
    grouped = jax.jit(lambda o, x: lik.log_prob_grouped(o, x[None]))
    got = grouped(out_CxBxP, x_BxD)
    assert got.shape == (4, 6)
    np.testing.assert_allclose(got, lik.log_prob(out_CxBxP, x_BxD[None]), rtol=2e-6, atol=1e-4)
    np.testing.assert_array_equal(got, grouped(out_CxBxP, x_BxD))
    np.testing.assert_allclose(lik.log_prob_grouped(out_CxBxP[0], x_BxD), got[0], rtol=1e-6)
    x_Cx1xD = jnp.asarray(levels[:4, None] / 255.0, jnp.float32)
    np.testing.assert_allclose(lik.log_prob_grouped(out_CxBxP, x_Cx1xD), lik.log_prob(out_CxBxP, x_Cx1xD),
                               rtol=2e-6, atol=1e-4)
    vmapped = jax.vmap(lik.log_prob_grouped, (0, None))(out_CxBxP, x_BxD)
    np.testing.assert_allclose(vmapped, got, rtol=1e-6)
    x_CxBxD = jnp.asarray(levels.reshape(4, 6, -1) / 255.0, jnp.float32)  # each member its own images
    np.testing.assert_allclose(jax.vmap(lik.log_prob_grouped)(out_CxBxP, x_CxBxD),
                               lik.log_prob(out_CxBxP, x_CxBxD), rtol=2e-6, atol=1e-4)


@needs_kernel
def test_under_a_mesh_each_device_computes_only_its_own_rows():
    """The IWAE's draws of a batch sharded over the 4 devices (tests/conftest.py): each device's
    kernel call takes its own C x B/4 rows and B/4 images, nothing of the decoder output is
    gathered, and the numbers are the unsharded call's."""
    assert jax.device_count() == 4
    k, draws, images, pixels = 5, 3, 8, 20
    out, levels = _case(np.random.default_rng(4), draws * images, pixels, k)
    out_CxBxP = jnp.asarray(out.reshape(draws, images, -1), jnp.float32)
    x_BxD = jnp.asarray(levels[:images] / 255.0, jnp.float32)
    lik = likelihoods.LogisticMixture(k)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded_out = jax.device_put(out_CxBxP, NamedSharding(mesh, P(None, "data")))
    sharded_x = jax.device_put(x_BxD, NamedSharding(mesh, P("data")))
    grouped = jax.jit(lambda o, x: lik.log_prob_grouped(o, x[None]))
    hlo = grouped.lower(sharded_out, sharded_x).compile().as_text()
    calls = re.findall(r"custom-call\((.*?)\), custom_call_target=\"vae_mixture_log_prob\"", hlo)
    assert len(calls) == 1
    assert re.search(rf"f32\[{draws * images // 4},{pixels * 3 * k}\]", hlo)  # each device's rows
    assert "all-gather" not in hlo and "all-to-all" not in hlo
    got = grouped(sharded_out, sharded_x)
    unsharded = jax.jit(lambda o, x: lik.log_prob_grouped(o, x[None]))(out_CxBxP, x_BxD)
    np.testing.assert_array_equal(got, unsharded)
    assert got.sharding.spec == P(None, "data")


def test_without_the_kernel_the_xla_path_gives_the_same_numbers(monkeypatch, fresh_kernel_state):
    """VAE_NATIVE=0 (or no compiler) leaves the XLA path, quietly: the same log p(x|z) to float
    rounding, and no custom call in the program."""
    k = 3
    out, levels = _case(np.random.default_rng(5), 5, 20, k)
    out32, x = jnp.asarray(out, jnp.float32), jnp.asarray(levels / 255.0, jnp.float32)
    monkeypatch.setenv("VAE_NATIVE", "0")
    assert not mixture.kernel_available()
    grouped = jax.jit(likelihoods.LogisticMixture(k).log_prob_grouped)
    assert "vae_mixture_log_prob" not in grouped.lower(out32, x).as_text()
    np.testing.assert_allclose(grouped(out32, x), _textbook(out, levels, k), rtol=2e-6, atol=1e-4)


# --- When and how it is built -----------------------------------------------------------------------

@pytest.fixture
def fresh_kernel_state():
    """The process's kernel state forgotten before the test and after it (so the next test builds
    or loads it again with its own settings)."""
    mixture._kernel_registered.cache_clear()
    yield
    mixture._kernel_registered.cache_clear()


def _script(path, text):
    path.write_text("#!/bin/sh\n" + text)
    path.chmod(0o755)
    return path


@pytest.fixture
def copying_compiler(tmp_path, monkeypatch):
    """A stand-in C++ compiler, set as CXX with a cache of its own: its dry run (-###) reports the
    CPU $FAKE_CPU, and a build copies this machine's library into place (logging "built" to the
    returned file) instead of compiling it again."""
    prebuilt = build.load(mixture.SOURCE, "vae_mixture")._name
    builds = tmp_path / "builds"
    compiler = _script(tmp_path / "copying-cxx",
                       'case "$*" in *-###*) echo "cpu $FAKE_CPU" >&2; exit 0;; esac\n'
                       f'for a; do out=$a; done\necho built >> {builds}\ncp {prebuilt} "$out"\n')
    monkeypatch.setenv("CXX", str(compiler))
    monkeypatch.setenv("FAKE_CPU", "a")
    monkeypatch.setenv("VAE_NATIVE_CACHE", str(tmp_path / "cache"))
    return compiler, builds


def _xla_fallback_warned(caplog, k=2):
    """Evaluates a small mixture through the likelihood; asserts it gave the XLA path's numbers
    and returns the warnings logged."""
    out, levels = _case(np.random.default_rng(9), 3, 10, k)
    with caplog.at_level(logging.INFO, logger=mixture.__name__):
        grouped = jax.jit(likelihoods.LogisticMixture(k).log_prob_grouped)
        got = grouped(jnp.asarray(out, jnp.float32), jnp.asarray(levels / 255.0, jnp.float32))
    np.testing.assert_allclose(got, _textbook(out, levels, k), rtol=2e-6, atol=1e-4)
    assert not mixture.kernel_available()
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_nothing_is_built_by_tracing_or_lowering_for_an_accelerator(monkeypatch, fresh_kernel_state):
    """The build happens when a program is lowered for the CPU, never when one is traced or
    lowered for CUDA or TPU (whose modules hold the XLA path only)."""
    loads = []

    def load(*args):
        loads.append(args)
        raise build.Unavailable("not in this test", expected=True)

    monkeypatch.setattr(build, "load", load)
    k = 5
    out, levels = _case(np.random.default_rng(6), 4, 16, k)
    traced = jax.jit(likelihoods.LogisticMixture(k).log_prob_grouped).trace(
        jnp.asarray(out, jnp.float32), jnp.asarray(levels / 255.0, jnp.float32))
    for platform in ("cuda", "tpu"):
        assert "vae_mixture_log_prob" not in traced.lower(lowering_platforms=(platform,)).as_text()
    assert loads == []
    assert "vae_mixture_log_prob" not in traced.lower(lowering_platforms=("cpu",)).as_text()  # not built
    assert len(loads) == 1


@needs_kernel
def test_a_wrapped_compiler_in_cxx_builds_it(tmp_path, monkeypatch, copying_compiler, fresh_kernel_state):
    """CXX="wrapper compiler" (as `ccache g++` is used) runs the wrapper with the compiler as its
    first argument, and the kernel is built; the cache's directories are created private (0700)."""
    compiler, builds = copying_compiler
    calls = tmp_path / "calls"
    wrapper = _script(tmp_path / "fake-ccache", f'echo "$1" >> {calls}\nexec "$@"\n')
    monkeypatch.setenv("CXX", f"{wrapper} {compiler}")
    monkeypatch.setenv("VAE_NATIVE_CACHE", str(tmp_path / "new" / "cache"))
    assert mixture.kernel_available()
    assert set(calls.read_text().split()) == {str(compiler)} and builds.read_text().split() == ["built"]
    library, = (tmp_path / "new" / "cache").glob("*/libvae_mixture.so")
    for path in (tmp_path / "new", tmp_path / "new" / "cache", library.parent):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert not stat.S_IMODE(library.stat().st_mode) & 0o022


def test_the_compiler_gets_a_timeout(tmp_path, monkeypatch, fresh_kernel_state, caplog):
    """A compiler that hangs is given up after BUILD_TIMEOUT_S: a one-line warning, the XLA path."""
    hanging = _script(tmp_path / "hanging-cxx", 'case "$*" in *-###*) echo cpu >&2; exit 0;; esac\n'
                                                'sleep 30\n')
    monkeypatch.setenv("CXX", str(hanging))
    monkeypatch.setenv("VAE_NATIVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(build, "BUILD_TIMEOUT_S", 1.0)
    start = time.perf_counter()
    warnings = _xla_fallback_warned(caplog)
    assert time.perf_counter() - start < 20
    assert len(warnings) == 1 and "took over 1 s" in warnings[0] and "\n" not in warnings[0]


@needs_kernel
def test_a_library_built_for_another_cpu_is_never_loaded(tmp_path, monkeypatch, copying_compiler):
    """The cache is keyed by what -march=native resolves to (the compiler's dry run), so two CPUs
    sharing a home directory each build their own library: a compiler that reports another CPU
    builds again, into another directory; the first CPU loads what it built."""
    _, builds = copying_compiler
    for cpu in ("a", "b", "a"):
        monkeypatch.setenv("FAKE_CPU", cpu)
        build.load(mixture.SOURCE, "vae_mixture")
    assert builds.read_text().split() == ["built", "built"]
    assert len(list((tmp_path / "cache").glob("*/libvae_mixture.so"))) == 2


@needs_kernel
def test_the_cpu_identity_is_the_resolved_instruction_set():
    """What identifies the CPU is the compiler's own resolution of -march=native (gcc's cc1
    flags, clang's target CPU), not a /proc/cpuinfo line that arm64 and POWER lack."""
    identity = build.cpu_identity(build.compiler_command())
    assert re.search(r'-march=(?!native)\S|-mcpu=(?!native)\S|-target-cpu', identity), identity[-500:]


@needs_kernel
@pytest.mark.parametrize("unsafe", ["library writable by the group", "directory writable by others",
                                    "cache owned by someone else"])
def test_a_cache_someone_else_could_write_is_refused(tmp_path, monkeypatch, copying_compiler,
                                                    fresh_kernel_state, caplog, unsafe):
    """A library is loaded only where nobody else could have planted it: the cache, the library's
    directory and the library must be this user's and writable by no one else; otherwise a
    one-line warning and the XLA path."""
    build.load(mixture.SOURCE, "vae_mixture")  # a good cache
    library, = (tmp_path / "cache").glob("*/libvae_mixture.so")
    if unsafe == "library writable by the group":
        library.chmod(0o770)
    elif unsafe == "directory writable by others":
        library.parent.chmod(0o703)
    else:
        monkeypatch.setattr(os, "getuid", lambda: os.stat(tmp_path).st_uid + 1)
    warnings = _xla_fallback_warned(caplog)
    assert len(warnings) == 1 and "is not private" in warnings[0] and "\n" not in warnings[0]


@needs_kernel
def test_without_a_home_directory_the_xla_path_runs(monkeypatch, fresh_kernel_state, caplog):
    """No HOME, no XDG_CACHE_HOME and no password-database entry (a container's arbitrary UID):
    no cache to build into, so a one-line warning saying what to set, and the XLA path."""
    for name in ("HOME", "XDG_CACHE_HOME", "VAE_NATIVE_CACHE"):
        monkeypatch.delenv(name, raising=False)

    def no_entry(uid):
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    warnings = _xla_fallback_warned(caplog)
    assert len(warnings) == 1 and "VAE_NATIVE_CACHE" in warnings[0] and "\n" not in warnings[0]
