"""Command-line flags of the argparse scripts: every value is checked before any work, and a bad
one is one line on stderr with exit status 2 (no usage block, no traceback).

Light on purpose (no JAX import): `scripts/benchmark.py` parses its flags before JAX starts.
"""

import argparse
import math
import sys

SEED_MAX = 2**32 - 1  # numpy's and JAX's seeds are unsigned 32-bit


def with_dashed_alias(option: str) -> list[str]:
    """An option in the scripts' one flag style (absl's, as train.py and the config fields spell
    them: `--iw_samples`), then its dashed spelling (`--iw-samples`), still accepted."""
    if option.startswith("--") and "_" in option[2:]:
        return [option, "--" + option[2:].replace("_", "-")]
    return [option]


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (`error: argument --num: must be an integer >= 1, got 0`) and
    the scripts' one flag style: underscores (`--iw_samples`), the dashed spelling an alias."""

    def add_argument(self, *names, **kwargs):
        names = [spelling for name in names for spelling in with_dashed_alias(name)]
        return super().add_argument(*names, **kwargs)

    def error(self, message: str):
        print(f"error: {' '.join(message.split())}; run with --help for usage", file=sys.stderr)
        sys.exit(2)


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


def add_checkpoint_arguments(parser) -> None:
    """--checkpoint best|latest and --epoch N: which checkpoint of a workdir a reading script loads."""
    parser.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                        help="best: lowest validation -ELBO (the latest where the run has no validation "
                             "split); latest: the newest checkpoint")
    parser.add_argument("--epoch", type=integer(1), default=None,
                        help="one of the latest checkpoints, by epoch")


def add_progress_argument(parser) -> None:
    """--noprogress (as train.py's): no progress bar; `args.no_progress`."""
    parser.add_argument("--noprogress", "--no-progress", dest="no_progress", action="store_true",
                        help="no progress bar")
