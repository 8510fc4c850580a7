"""Test set-up: 4 fake CPU devices (set before jax starts) and shared small runs."""

import contextlib
import fcntl
import importlib.util
import io
import os
import pathlib
import shutil
import subprocess
import sys
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The suite's time is mostly XLA compiling small programs that then run for milliseconds, so it
# compiles for compile speed: without LLVM's optimisation passes (-O0: half the compile seconds of
# the same tests here) and with XLA's older loop emitters for fusions (with the MLIR fusion emitters
# some of the suite's files took a third longer from an empty cache). Some compute is slower, and
# float rounding differs: the pinned numbers, written with -O0 alone, hold within 0.005 nats
# (tests/test_pinned.py). The scripts the tests start inherit the flags; `xla_flags` gives them to
# those that set their own device count.
COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


def xla_flags(num_devices: int) -> str:
    """XLA_FLAGS for a process of the suite on `num_devices` fake CPU devices."""
    return f"{COMPILE_FLAGS} --xla_force_host_platform_device_count={num_devices}"


os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {xla_flags(4)}".strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One persistent JAX compilation cache for the whole suite, its xdist workers, the scripts it
# launches and the scripts a user runs: many tests compile the same small programs in fresh
# processes. It is the scripts' own, $XDG_CACHE_HOME/vae/jax or ~/.cache/vae/jax (`vae.cli`
# chooses it; JAX_COMPILATION_CACHE_DIR wins, VAE_COMPILATION_CACHE=0 turns it off), so it outlives
# the clone: a fresh clone's `make test` loads what an earlier one compiled. Sharing it is safe, as
# JAX keys each entry on the program, the compile options, XLA_FLAGS and the jax and jaxlib
# versions; it only saves time. `rm -rf ~/.cache/vae/jax` empties it.
from vae import cli  # noqa: E402  (imports no JAX: the settings reach JAX when it starts)

cli.compilation_cache()
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402
from absl import logging as absl_logging  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# --- The property tests' profiles ----------------------------------------------------------------
# `suite` (make test): derandomized, with no example database, so every clean clone explores the
# same examples and gives the same verdict; `explore` (VAE_HYPOTHESIS_PROFILE=explore, what `make
# test-slow` runs them under): the same determinism with EXPLORE_FACTOR times the examples. A
# property test asks for its examples through `property_examples(n)`.
EXPLORE_FACTOR = 10
settings.register_profile(
    "suite", derandomize=True, database=None, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("explore", parent=settings.get_profile("suite"))
HYPOTHESIS_PROFILE = os.environ.get("VAE_HYPOTHESIS_PROFILE", "suite")
settings.load_profile(HYPOTHESIS_PROFILE)


def property_examples(n: int) -> int:
    """The examples a property test draws: n under `suite`, EXPLORE_FACTOR * n under `explore`."""
    return n * EXPLORE_FACTOR if HYPOTHESIS_PROFILE == "explore" else n

from configs import mlp_small  # noqa: E402
from vae.data import source  # noqa: E402


def real_data_available() -> bool:
    try:
        source.check_prepared("fashion_mnist", None)
        return True
    except source.DataError:
        return False


@pytest.fixture(scope="session")
def fashion_mnist():
    """Skips (or, under `make test`, fails) when the real Fashion-MNIST is not prepared."""
    if not real_data_available():
        message = "Fashion-MNIST is not prepared: run `make data`"
        if os.environ.get("VAE_REQUIRE_REAL_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return "fashion_mnist"


# --- Which files start first ------------------------------------------------------------------
# `make test` gives each xdist worker whole files (--dist loadfile), in the order collected
# (--no-loadscope-reorder). The heaviest files start first, so that the last ones to finish are
# short and both workers end together: these are the quick suite's heaviest files, heaviest first,
# by their seconds on an empty compilation cache here (VAE_COMPILE_REPORT below measures them).
# A file not listed starts after them; a stale list costs only balance.
HEAVIEST_FILES = ("test_faults.py", "test_ladder.py", "test_train.py", "test_coding.py", "test_models.py",
                  "test_sweep.py", "test_iwae.py", "test_scripts.py", "test_likelihoods.py",
                  "test_pinned.py", "test_tensorboard.py", "test_selection.py", "test_compress_files.py",
                  "test_objectives.py", "test_fixed_point.py", "test_kl_split.py", "test_eight_bit.py",
                  "test_data.py", "test_mixture_kernel.py", "test_threefry.py", "test_docs.py",
                  "test_notebooks.py", "test_lowering.py", "test_kl.py", "test_priors.py", "test_api.py",
                  "test_skipping.py", "test_benchmark.py", "test_coding_accounting.py",
                  "test_validation.py", "test_file_format.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(HEAVIEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file keeps its order


def tiny_config(**overrides):
    """configs/mlp_small.py on small slices of Fashion-MNIST: seconds per epoch on a CPU."""
    config = mlp_small.get_config()
    config.data.train_split = "train[:1024]"
    config.data.test_split = "test[:256]"
    config.model.hidden_dims = (64,)
    config.model.latent_dim = 4
    config.model.conv_channels = (8, 16)
    config.train.batch_size = 64
    config.train.num_epochs = 2
    config.eval.batch_size = 128
    for dotted, value in overrides.items():
        node = config
        *parents, leaf = dotted.split("__")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


def train_tiny_8bit(run, train_split: str):
    """Trains tiny_config as an 8-bit model (2 logistics a pixel) for one epoch on `train_split`, its
    test split the first 8 test images, into the workdir `run`; returns `run`."""
    from vae.train import loop

    config = tiny_config(data__binarize="none", model__likelihood="logistic_mixture",
                         model__mixture_components=2, data__train_split=train_split,
                         data__test_split="test[:8]", train__num_epochs=1, eval__batch_size=8,
                         eval__kl_split_examples=0)
    loop.train_and_evaluate(config, run, progress=False)
    return run


def config_flags(cfg) -> list[str]:
    """`--config.a.b=value` for every field where `cfg` differs from configs/mlp_small.py: with
    `--config configs/mlp_small.py`, the command line that trains `cfg` with scripts/train.py."""
    def leaves(node, prefix=""):
        for key, value in node.items():
            if hasattr(value, "items"):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value
    defaults = dict(leaves(mlp_small.get_config()))
    return [f"--config.{key}={value}" for key, value in leaves(cfg) if defaults[key] != value]


def shared_temp_dir(tmp_path_factory) -> pathlib.Path:
    """A directory every xdist worker of this session sees (the workers' base temp dirs' parent),
    or this process's base temp dir without xdist."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, fashion_mnist):
    """A 2-epoch tiny run with a 2-D latent space (so every sample mode applies), trained by
    scripts/train.py as a user trains one. Trained once per session, by the first xdist worker to
    ask (the others wait on a lock): the tests only read it; a test that changes one works on
    `copy_run(tiny_run, ...)`."""
    shared = shared_temp_dir(tmp_path_factory)
    path = shared / "tiny_run"
    with open(shared / "tiny_run.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        if not (shared / "tiny_run.done").exists():
            shutil.rmtree(path, ignore_errors=True)  # what a failed try by another worker left
            command = [sys.executable, os.path.join(REPO, "scripts", "train.py"), "--config",
                       os.path.join(REPO, "configs", "mlp_small.py"), "--workdir", str(path), "--noprogress",
                       *config_flags(tiny_config(model__latent_dim=2))]
            result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300,
                                    env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
            assert result.returncode == 0, result.stderr[-2000:]
            assert "done: epoch 2" in result.stderr
            (shared / "tiny_run.done").touch()
    return path


def tiny_run_config(**overrides):
    """The config of `tiny_run`, to resume a copy of it (more epochs) or to compare with it."""
    return tiny_config(model__latent_dim=2, **overrides)


def copy_run(path, to):
    """A copy of a trained workdir to change (resume, damage) without touching the shared one."""
    return shutil.copytree(path, to)


_SCRIPTS = {}


def script_module(name: str):
    """scripts/<name> as a module (scripts/ is not a package), imported once."""
    if name not in _SCRIPTS:
        spec = importlib.util.spec_from_file_location(f"script_{name.removesuffix('.py')}",
                                                      os.path.join(REPO, "scripts", name))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _SCRIPTS[name] = module
    return _SCRIPTS[name]


def run_in_process(name: str, *args) -> subprocess.CompletedProcess:
    """`python scripts/<name> ARGS` without the process: the script's main(argv) here, its exit
    status and what it printed, as `subprocess.run` gives them. For tests where a process of its
    own proves nothing more; it saves the second or two of imports each start costs. What the
    script's start changes in this process (log verbosity, the unraisable hook, warning filters)
    is put back."""
    module = script_module(name)
    out, err = io.StringIO(), io.StringIO()
    hook, verbosity = sys.unraisablehook, absl_logging.get_verbosity()
    with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = module.main([str(a) for a in args]) or 0
        except SystemExit as e:  # argparse's errors and `cli.user_errors`' exit status 2
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
        finally:
            sys.unraisablehook = hook
            absl_logging.set_verbosity(verbosity)
    return subprocess.CompletedProcess([name, *map(str, args)], code, out.getvalue(), err.getvalue())


# --- Where the suite's time goes: compile seconds per test (opt-in) -----------------------------
# VAE_COMPILE_REPORT=DIR writes DIR/compile-<worker>.json: for every test that ran on that worker,
# [seconds XLA spent compiling (or loading from the persistent cache) in this process, programs
# compiled, the test's own seconds (setup, call and teardown)]. Run with an empty cache
# (JAX_COMPILATION_CACHE_DIR=an empty directory) to see what a fresh machine's `make test`
# compiles; the per-worker totals show how `--dist loadfile` balanced the files.
_COMPILE_REPORT = os.environ.get("VAE_COMPILE_REPORT")
_report: dict = {}
_current_test = ["(collection)"]


if _COMPILE_REPORT:
    import time

    import jax.monitoring

    def _on_duration(event: str, duration: float, **kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            seconds, count, wall = _report.get(_current_test[0], (0.0, 0, 0.0))
            _report[_current_test[0]] = (seconds + duration, count + 1, wall)

    jax.monitoring.register_event_duration_secs_listener(_on_duration)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        _current_test[0] = item.nodeid
        start = time.perf_counter()
        yield
        seconds, count, _ = _report.get(item.nodeid, (0.0, 0, 0.0))
        _report[item.nodeid] = (seconds, count, time.perf_counter() - start)

    def pytest_sessionfinish(session):
        import json

        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        os.makedirs(_COMPILE_REPORT, exist_ok=True)
        with open(os.path.join(_COMPILE_REPORT, f"compile-{worker}.json"), "w") as f:
            json.dump(_report, f, indent=1)
