"""Shared plumbing for the command-line scripts: user errors become one line and exit code 2."""

import atexit
import contextlib
import importlib.util
import os
import re
import sys
import threading
import traceback
import warnings
from pathlib import Path

from absl import flags, logging
from ml_collections import config_flags


class UsageError(Exception):
    """A command-line request that cannot be done as asked."""


# The errors a user can fix, by module: each is caught where its module was imported (an error
# of a module the script never imported cannot have been raised), so this module imports neither
# JAX nor the library, and a script that needs neither (plot_kl.py) starts without them.
_USER_ERRORS = {"vae.data.source": "DataError", "vae.train.config_checks": "ConfigError",
                "vae.workdir.files": "WorkdirError", "vae.train.run": "NonFiniteLossError",
                "vae.train.distributed": "JoinError", "vae.coding.errors": "CodingError"}


def _imported(names: dict[str, str]) -> tuple[type, ...]:
    return tuple(getattr(sys.modules[m], name) for m, name in names.items() if m in sys.modules)


def user_error_types() -> tuple[type, ...]:
    """The exception types `user_errors` reports in one line."""
    return (UsageError, *_imported(_USER_ERRORS))


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
    global _CONFIG_DEFAULT
    _CONFIG_DEFAULT = default
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


def compilation_cache(environ=os.environ) -> str | None:
    """JAX's persistent compilation cache for the scripts, in $XDG_CACHE_HOME/vae/jax (or
    ~/.cache/vae/jax): a second run of the same program loads its compiled code instead of
    compiling again. JAX_COMPILATION_CACHE_DIR, where set, wins; VAE_COMPILATION_CACHE=0 turns it
    off. The cache only saves time: JAX keys it on the program, flags and versions. Imports no JAX
    (a script that never uses it starts without it): JAX reads the settings when it starts."""
    if environ.get("VAE_COMPILATION_CACHE") == "0":
        return None
    directory = environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(
        environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vae", "jax")
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


def exit_now(status) -> None:
    """Ends the process with `status` (a `sys.exit` argument) once a script's work is done,
    without the interpreter's teardown: freeing every module and JAX's runtime took about 0.4 s
    here, which the user waits for for nothing. What a normal exit does first still happens:
    other non-daemon threads are joined, the atexit handlers run (logging's, Orbax's, JAX's
    distributed shutdown), stdout and stderr are flushed. Every file the scripts write is closed
    before they return."""
    if status is None:
        code = 0
    elif isinstance(status, int):
        code = status
    else:  # sys.exit("message"): the message on stderr, status 1
        print(status, file=sys.stderr)
        code = 1
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def run_script(main, *args) -> None:
    """`main(*args)` as a script's entry point: its return value or `sys.exit` status becomes the
    process's, through `exit_now`. An exception escapes as usual (traceback, status 1)."""
    try:
        status = main(*args)
    except SystemExit as e:
        status = e.code
    exit_now(status)


def _drop_closed_loop_callbacks(unraisable, default=sys.unraisablehook) -> None:
    """After a failed checkpoint write Orbax closes its event loop while tensorstore still
    completes the other writes; each completion then reports "Event loop is closed" as an
    unraisable error (one traceback each). The failure itself reaches the script as one line."""
    if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
        return
    default(unraisable)


HELP_FLAGS = ("--help", "-h", "--helpshort", "-?")
_CONFIG_DEFAULT = None  # the --config default of a script that has one (`define_config`)
_FIELD_LINE = re.compile(r"^\s*config\.([\w.]+)\s*=\s*(.*?)(?:\s*#\s*(.*))?$")
_COMMENT_LINE = re.compile(r"^\s*#(.*)$")


def config_comments(path: str | Path, seen: set | None = None) -> dict[str, str]:
    """Each field's comment in a config file and the config files it imports (`from configs
    import default`): the comment lines just above `config.a.b = value`, the text after its `#`,
    and the indented comment lines (`#   ...`) that continue it."""
    path, seen = Path(path), seen if seen is not None else set()
    if path in seen or not path.is_file():
        return {}
    seen.add(path)
    source = path.read_text().splitlines()
    comments: dict[str, str] = {}
    for base in re.findall(r"^from configs import (\w+)", "\n".join(source), flags=re.M):
        comments |= config_comments(path.parent / f"{base}.py", seen)
    field, above = None, []
    for line in source:
        if match := _FIELD_LINE.match(line):
            field = match.group(1)
            text = " ".join([*above, match.group(3) or ""]).strip()
            if text:
                comments[field] = text
            above = []
        elif match := _COMMENT_LINE.match(line):
            if field in comments and match.group(1).startswith("  "):  # `#   continued`
                comments[field] += " " + match.group(1).strip()
            else:
                above.append(match.group(1).strip())
                field = None
        else:
            field, above = None, []
    return comments


def config_help(path: str) -> str:
    """Every field of the config file at `path` with its value and comment, as overrides."""
    spec = importlib.util.spec_from_file_location("help_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config, comments = module.get_config(), config_comments(path)

    def rows(node, prefix=""):
        for key, value in node.items():
            name = f"{prefix}{key}"
            if hasattr(value, "items"):
                yield from rows(value, name + ".")
            else:
                yield f"--config.{name}={value!r}", comments.get(name, "")

    lines = list(rows(config))
    width = max(len(flag) for flag, _ in lines)
    return "\n".join(f"  {flag:<{width}}  {comment}".rstrip() for flag, comment in lines)


def _print_help(argv: list[str]) -> None:
    """--help: the script's own flags, then every config field with its default and comment."""
    config_path = _CONFIG_DEFAULT
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            config_path = argv[i + 1]
        elif arg.startswith("--config="):
            config_path = arg.split("=", 1)[1]
    main = sys.modules["__main__"]
    print((main.__doc__ or "").strip() + "\n")
    print(flags.FLAGS.main_module_help())
    if config_path is not None:
        print(f"\n  --config: the config file (default: {_CONFIG_DEFAULT})\n")
        print(f"Config fields of {config_path}; override any with --config.FIELD=VALUE:")
        print(config_help(config_path))


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing where a bad flag or config override is one line, not a traceback; --help
    lists the script's flags and every config field, and exits 0."""
    if any(arg in HELP_FLAGS for arg in argv[1:]):
        try:
            _print_help(argv[1:])
        except (OSError, AttributeError, SyntaxError, ImportError) as e:
            _flag_error(e)
        sys.exit(0)
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
