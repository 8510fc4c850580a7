"""Shared plumbing for the command-line scripts: user errors become one line and exit code 2, the
compilation cache, and the end of a script without the interpreter's teardown. The flags
themselves are `vae.cli_flags`.
"""

import atexit
import contextlib
import os
import sys
import traceback
import warnings

from absl import logging


class UsageError(Exception):
    """A command-line request that cannot be done as asked."""


# The errors a user can fix, by module: each is caught where its module was imported (an error
# of a module the script never imported cannot have been raised), so this module imports neither
# JAX nor the library, and a script that needs neither (plot_kl.py) starts without them.
_USER_ERRORS = {"vae.data.source": "DataError", "vae.config.schema": "ConfigError",
                "vae.workdir.files": "WorkdirError", "vae.train.run_dir": "NonFiniteLossError",
                "vae.train.distributed": "JoinError", "vae.coding.errors": "CodingError"}


def _imported(names: dict[str, str]) -> tuple[type, ...]:
    return tuple(getattr(sys.modules[m], name) for m, name in names.items() if m in sys.modules)


def user_error_types() -> tuple[type, ...]:
    """The exception types `user_errors` reports in one line."""
    return (UsageError, *_imported(_USER_ERRORS))


def _one_line(error: Exception) -> str:
    """An error's message on one line, with the causes it wraps that it does not already say."""
    text = str(error.args[0]) if len(error.args) == 1 else str(error)
    while error.__cause__ is not None:
        error = error.__cause__
        if str(error) not in text:
            text = f"{text}: {error}"
    return " ".join(text.split())


def quiet_logs() -> None:
    """Nothing from absl's logger but fatal errors: Orbax's read-only notes and TFDS's OpenCV
    advice are noise, and a failure Orbax logs (with its background threads' tracebacks) reaches
    the script as an exception that `user_errors` reports in one line."""
    logging.set_verbosity(logging.FATAL)
    sys.unraisablehook = _drop_closed_loop_callbacks
    # The writes a failed checkpoint save abandoned, reported again at exit.
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)


def user_cache_root(environ=os.environ) -> str | None:
    """$XDG_CACHE_HOME, else ~/.cache from $HOME or the password database; None for a user with
    no home directory at all (no HOME and no password entry)."""
    if environ.get("XDG_CACHE_HOME"):
        return environ["XDG_CACHE_HOME"]
    home = environ.get("HOME")
    if not home:
        try:
            import pwd

            home = pwd.getpwuid(os.getuid()).pw_dir
        except (ImportError, KeyError):  # no password database (Windows), or no entry for this user
            return None
    return os.path.join(home, ".cache")


def compilation_cache(environ=os.environ) -> str | None:
    """JAX's persistent compilation cache for the scripts, in $XDG_CACHE_HOME/vae/jax (or
    ~/.cache/vae/jax): a second run of the same program loads its compiled code instead of
    compiling again. JAX_COMPILATION_CACHE_DIR, where set, wins; VAE_COMPILATION_CACHE=0 turns it
    off. The cache only saves time: JAX keys it on the program, flags and versions. Imports no JAX
    (a script that never uses it starts without it): JAX reads the settings when it starts."""
    if environ.get("VAE_COMPILATION_CACHE") == "0":
        return None
    directory = environ.get("JAX_COMPILATION_CACHE_DIR")
    if not directory:
        root = user_cache_root(environ)
        if root is None:  # no home directory (an arbitrary container user): compile every time
            return None
        directory = os.path.join(root, "vae", "jax")
    if "jax" in sys.modules:
        jax = sys.modules["jax"]
        jax.config.update("jax_compilation_cache_dir", directory)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # small programs too
    else:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = directory
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    return directory


def start() -> None:
    """What every script does first: quiet logs and the compilation cache."""
    quiet_logs()
    compilation_cache()


def run_script(main, *args) -> None:
    """`main(*args)` as a script's entry point: its return value or `sys.exit` status becomes the
    process's, and the process ends without the interpreter's teardown (freeing every module and
    JAX's runtime, which the user would wait for for nothing: docs/speed.md#start-up).

    What a normal exit does first still happens: the other non-daemon threads are joined and the
    exit handlers registered while the script ran (`atexit`: Orbax's, JAX's distributed shutdown,
    the script's own) run; then stdout and stderr are flushed and the process ends. This works by
    registering the end itself as the first exit handler of the script, so it runs last. An
    exception escapes as usual (traceback, status 1)."""
    ending = {"code": 1}  # an escaping exception ends with status 1, after its traceback
    atexit.register(_end, ending)
    try:
        status = main(*args)
    except SystemExit as e:
        status = e.code
    if status is None:
        ending["code"] = 0
    elif isinstance(status, int):
        ending["code"] = status
    else:  # sys.exit("message"): the message on stderr, status 1
        print(status, file=sys.stderr)
    sys.exit(ending["code"])


def _end(ending: dict) -> None:
    """The last exit handler of a script (`run_script`): flush the output and end the process."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(ending["code"])


def _drop_closed_loop_callbacks(unraisable, default=sys.unraisablehook) -> None:
    """After a failed checkpoint write Orbax closes its event loop while tensorstore still
    completes the other writes; each completion then reports "Event loop is closed" as an
    unraisable error (one traceback each). The failure itself reaches the script as one line."""
    if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
        return
    default(unraisable)


@contextlib.contextmanager
def user_errors():
    """Turns problems the user can fix into `error: ...` on stderr and exit status 2."""
    try:
        yield
    except _imported({"vae.train.loop": "Interrupted"}) as e:
        print(f"interrupted: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted: stopped at once; the last checkpoint is kept, run again to resume",
              file=sys.stderr)
        sys.exit(130)
    except user_error_types() as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # a file that cannot be read or written: which one, and why
        where = f": {e.filename}" if e.filename else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        sys.exit(2)


@contextlib.contextmanager
def distributed_run(settings):
    """Joins JAX's distributed runtime for the body when flags or a cluster ask for it (before
    anything touches a device), turns user errors into one line, and leaves the runtime after.

    An unexpected error in a multi-process run (typically a collective that failed because another
    process died) is printed and ends this process at once: leaving the runtime would wait for
    processes that may be gone, and the survivors stop as soon as this one is gone.
    """
    import jax

    from vae.train import distributed

    with user_errors():
        joined = distributed.join(settings)
    if joined and distributed.is_writer():
        print(f"jax.distributed: joined by {joined}: {jax.process_count()} processes, "
              f"{jax.device_count()} {jax.default_backend()} devices", file=sys.stderr, flush=True)
    try:
        with user_errors():
            yield
    except Exception:
        if not jax.distributed.is_initialized():
            raise
        traceback.print_exc()
        print(f"error: process {jax.process_index()} of {jax.process_count()} failed (above); the "
              "last checkpoint is kept: run the same command again to resume", file=sys.stderr, flush=True)
        os._exit(1)
    finally:
        distributed.leave()
