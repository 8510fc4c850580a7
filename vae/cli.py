"""Shared plumbing for the command-line scripts: user errors become one line and exit code 2."""

import contextlib
import os
import sys
import traceback
import warnings

import jax
from absl import flags, logging
from ml_collections import config_flags

from vae.coding.errors import CodingError
from vae.data import source as data_source
from vae.train import config_checks, distributed
from vae.train.loop import Interrupted
from vae.train.run import NonFiniteLossError
from vae.workdir import files as workdir


class UsageError(Exception):
    """A command-line request that cannot be done as asked."""


USER_ERRORS = (data_source.DataError, config_checks.ConfigError, workdir.WorkdirError, NonFiniteLossError,
               UsageError, distributed.JoinError, CodingError)


_FLAG_ERRORS = (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError)


def _one_line(error: Exception) -> str:
    text = str(error.args[0]) if len(error.args) == 1 else str(error)
    while error.__cause__ is not None:  # config_flags wraps the real cause (a missing file, ...)
        error = error.__cause__
        if str(error) not in text:
            text = f"{text}: {error}"
    if isinstance(error, KeyError | AttributeError):  # config_dict's "did you mean" for a typo
        text = "unknown config field " + text.replace("\\n", ". ").replace("\\", "").replace("'", "")
    return " ".join(text.split())


def _flag_error(error: Exception):
    message = _one_line(error).rstrip(".")
    stop = "" if message.endswith("?") else "."
    print(f"error: {message}{stop} Run with --helpfull to list the flags.", file=sys.stderr)
    sys.exit(2)


def define_config(default: str = "configs/default.py"):
    """The --config flag (an ml_collections config file with --config.a.b=value overrides).

    config_flags applies overrides while the flag is defined, so a mistyped key fails here.
    """
    try:
        return config_flags.DEFINE_config_file("config", default, "Config file.", lock_config=True)
    except _FLAG_ERRORS as e:
        _flag_error(e)


def quiet_logs() -> None:
    """Nothing from absl's logger but fatal errors: Orbax's read-only notes and TFDS's OpenCV
    advice are noise, and a failure Orbax logs (with its background threads' tracebacks) reaches
    the script as an exception that `user_errors` reports in one line."""
    logging.set_verbosity(logging.FATAL)
    sys.unraisablehook = _drop_closed_loop_callbacks
    # The writes a failed checkpoint save abandoned, reported again at exit.
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)


def _drop_closed_loop_callbacks(unraisable, default=sys.unraisablehook) -> None:
    """After a failed checkpoint write Orbax closes its event loop while tensorstore still
    completes the other writes; each completion then reports "Event loop is closed" as an
    unraisable error (one traceback each). The failure itself reaches the script as one line."""
    if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
        return
    default(unraisable)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing where a bad flag or config override is one line, not a traceback."""
    try:
        remaining = flags.FLAGS(argv)
        if "config" in flags.FLAGS:
            flags.FLAGS.config.keys()  # a config file that failed to load raises here, not later
        return remaining
    except _FLAG_ERRORS as e:
        _flag_error(e)


@contextlib.contextmanager
def user_errors():
    """Turns problems the user can fix into `error: ...` on stderr and exit status 2."""
    try:
        yield
    except Interrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted: stopped at once; the last checkpoint is kept, run again to resume",
              file=sys.stderr)
        sys.exit(130)
    except USER_ERRORS as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # a file that cannot be read or written: which one, and why
        where = f": {e.filename}" if e.filename else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        sys.exit(2)


@contextlib.contextmanager
def distributed_run(settings: distributed.Settings):
    """Joins JAX's distributed runtime for the body when flags or a cluster ask for it (before
    anything touches a device), turns user errors into one line, and leaves the runtime after.

    An unexpected error in a multi-process run (typically a collective that failed because another
    process died) is printed and ends this process at once: leaving the runtime would wait for
    processes that may be gone, and the survivors stop as soon as this one is gone.
    """
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
