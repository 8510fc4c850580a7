"""The scripts' one flag parser: argparse, with an ml_collections config file and its overrides
(`--config FILE --config.FIELD=VALUE`) where a script trains. Every value is checked while the
flags are parsed, before any work: a bad one is one line on stderr with exit status 2 (no usage
block, no traceback).

Why argparse rather than absl's flags with `ml_collections.config_flags`: a parser is an object,
so every script builds its own (`build_parser()`) and a test or the docs' check can parse any
script's command line in one process without running it (absl's flags are global: two scripts'
flags cannot live in one process), and the errors are the scripts' own one-line style. The config
part is `vae.config`: the same typed overrides as a sweep's `--sweep FIELD=V1,V2`.

Light on purpose (no JAX import): `scripts/benchmark.py` parses its flags before JAX starts.
"""

import argparse
import dataclasses
import math
import sys

from vae.config import FieldError, field_comments, leaves, load_config, override

SEED_MAX = 2**32 - 1  # numpy's and JAX's seeds are unsigned 32-bit
CONFIG_PREFIX = "--config."


def with_dashed_alias(option: str) -> list[str]:
    """An option in the scripts' one flag style (underscores, as the config fields spell them:
    `--iw_samples`), then its dashed spelling (`--iw-samples`), also accepted."""
    if option.startswith("--") and "_" in option[2:]:
        return [option, "--" + option[2:].replace("_", "-")]
    return [option]


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (`error: argument --num: must be an integer >= 1, got 0`), the
    scripts' one flag style (underscores, the dashed spelling an alias), checks of several flags
    together (`add_check`), and the config file of `add_config`."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        kwargs.setdefault("allow_abbrev", False)  # a flag is spelled out: --out is not --output
        super().__init__(*args, **kwargs)
        self._checks = []
        self._config_default = None  # the --config default, where the script takes a config
        self._help_config = None  # the config file --help describes

    def add_argument(self, *names, **kwargs):
        names = [spelling for name in names for spelling in with_dashed_alias(name)]
        return super().add_argument(*names, **kwargs)

    def add_check(self, check) -> None:
        """`check(args)` runs after parsing and returns an error message (or None): for rules that
        span several flags."""
        self._checks.append(check)

    def add_config(self, default: str = "configs/default.py") -> None:
        """`--config FILE` (an ml_collections config file, `default` if not given) and any number of
        `--config.FIELD=VALUE` (or `--config.FIELD VALUE`) overrides, each typed like the field;
        `args.config` is then the resulting ConfigDict, locked (a typo cannot add a field), and
        `args.config_file` its path. --help lists every field with its value and comment."""
        self._config_default = default
        super().add_argument("--config", dest="config_file", default=default, metavar="FILE",
                             help=f"the config file (default: {default}); override any field with "
                                  "--config.FIELD=VALUE")

    def error(self, message: str):
        print(f"error: {' '.join(message.split())}; run with --help for usage", file=sys.stderr)
        sys.exit(2)

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        overrides = []
        if self._config_default is not None:
            args, overrides = split_overrides(args, self)
            self._help_config = config_file_named(args, self._config_default)
        namespace, rest = super().parse_known_args(args, namespace)
        self._refuse_dashes_as_values(namespace)
        if self._config_default is not None:
            namespace.config = self._load_config(namespace.config_file, overrides)
        for check in self._checks:
            message = check(namespace)
            if message:
                self.error(message)
        return namespace, rest

    def _refuse_dashes_as_values(self, namespace) -> None:
        """argparse drops a value of `--` (`--batch_size=--`, its end-of-options marker) and stores
        an empty list without calling the flag's type or checking its choices (`--only=--` of a
        flag that takes one or more): refused here as the type would refuse it."""
        for action in self._actions:
            if (action.option_strings and action.nargs in (None, "+")
                    and getattr(namespace, action.dest, None) == []):
                self.error(f"argument {action.option_strings[0]}: expected a value, got '--'")

    def _load_config(self, path: str, overrides: list[str]):
        try:
            config = load_config(path)
        except FieldError as e:
            self.error(f"argument --config: {e}")
        for assignment in overrides:
            try:
                override(config, assignment)
            except FieldError as e:
                self.error(f"argument --config.{assignment.partition('=')[0]}: {e}")
        config.lock()
        return config

    def format_help(self) -> str:
        text = super().format_help()
        if self._config_default is None:
            return text
        try:
            fields = config_help(self._help_config)
        except FieldError as e:
            return f"{text}\n(no config fields to list: {e})\n"
        return (f"{text}\nConfig fields of {self._help_config}; override any with "
                f"--config.FIELD=VALUE:\n{fields}\n")


def split_overrides(args: list[str], parser) -> tuple[list[str], list[str]]:
    """(the other arguments, the overrides as 'FIELD=VALUE') of a command line: `--config.a.b=v`
    and `--config.a.b v`."""
    rest, overrides = [], []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg.startswith(CONFIG_PREFIX):
            field, sep, value = arg[len(CONFIG_PREFIX):].partition("=")
            if not sep:
                if index + 1 == len(args):
                    parser.error(f"argument {arg}: expected a value")
                value = args[index + 1]
                index += 1
            overrides.append(f"{field}={value}")
        else:
            rest.append(arg)
        index += 1
    return rest, overrides


def config_file_named(args: list[str], default: str) -> str:
    """The config file a command line names (the last --config), else the default."""
    path = default
    for index, arg in enumerate(args):
        if arg == "--config" and index + 1 < len(args):
            path = args[index + 1]
        elif arg.startswith("--config="):
            path = arg.partition("=")[2]
    return path


def config_help(path: str) -> str:
    """Every field of the config file at `path` with its value and comment, as overrides."""
    config, comments = load_config(path), field_comments(path)
    lines = [(f"--config.{name}={value!r}", comments.get(name, "")) for name, value in
             leaves(config)]
    width = max(len(flag) for flag, _ in lines)
    return "\n".join(f"  {flag:<{width}}  {comment}".rstrip() for flag, comment in lines)


def _bounds(minimum, maximum) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum:,}, {maximum:,}]"
    if minimum is not None:
        return f" >= {minimum:,}"
    return f" <= {maximum:,}" if maximum is not None else ""


def integer(minimum: int | None = None, maximum: int | None = None):
    """An argparse `type` for an integer within [minimum, maximum]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or (minimum is not None and value < minimum) or (
                maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be an integer{_bounds(minimum, maximum)}, got {text!r}")
        return value

    return parse


def real(minimum: float | None = None, maximum: float | None = None):
    """An argparse `type` for a finite number within [minimum, maximum] (nan and inf refused)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or (minimum is not None and value < minimum) or (
                maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(
                f"must be a finite number{_bounds(minimum, maximum)}, got {text!r}")
        return value

    return parse


def integer_list(minimum: int = 1):
    """An argparse `type` for comma-separated integers >= minimum, e.g. '128,512'."""
    def parse(text: str) -> list[int]:
        one = integer(minimum)
        try:
            values = [one(part) for part in text.split(",")]
        except argparse.ArgumentTypeError:
            values = []
        if not values:
            raise argparse.ArgumentTypeError(
                f"must be comma-separated integers >= {minimum:,}, got {text!r}")
        return values

    return parse


def add_settings_arguments(parser, settings_class, title: str) -> None:
    """One flag per field of a dataclass of settings (`--name` and `--name-with-dashes`), in a group
    of its own: each field's `metadata` gives its `help` and, for an integer, its `minimum`; the
    field's default is the flag's. Read them back with `settings_from(args, settings_class)`."""
    group = parser.add_argument_group(title)
    for field in dataclasses.fields(settings_class):
        names = [f"--{field.name}"] + ([f"--{field.name.replace('_', '-')}"] if "_" in field.name else [])
        kind = integer(field.metadata["minimum"]) if "minimum" in field.metadata else str
        group.add_argument(*names, type=kind, default=field.default, help=field.metadata.get("help"))


def settings_from(args, settings_class):
    """The dataclass of `add_settings_arguments` from parsed flags."""
    names = [field.name for field in dataclasses.fields(settings_class)]
    return settings_class(**{name: getattr(args, name) for name in names})


def add_checkpoint_arguments(parser) -> None:
    """--checkpoint best|latest and --epoch N: which checkpoint of a workdir a reading script loads."""
    parser.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                        help="best: lowest validation -ELBO (the latest where the run has no validation "
                             "split); latest: the newest checkpoint")
    parser.add_argument("--epoch", type=integer(1), default=None,
                        help="one of the latest checkpoints, by epoch")


def add_progress_argument(parser) -> None:
    """--noprogress (or --no-progress): no progress bar; `args.no_progress`."""
    parser.add_argument("--noprogress", "--no-progress", dest="no_progress", action="store_true",
                        help="no progress bar (and, for training, no line per epoch)")
