"""Pinned numbers: a change here means a change of code changed results.

Each config keeps its real model (architecture, prior, likelihood, recipe) and is trained for 2
epochs on small slices of Fashion-MNIST; the last epoch's training and test figures and the IWAE
evaluation of the trained workdir are compared with tests/data/pinned.json (written on the suite's
4 fake CPU devices). Pin a config when it is added, and pin one again ONLY when a change of its
numbers is intended, saying why in the commit:

    PYTHONPATH=. python tests/test_pinned.py --write NAME [NAME ...]
"""

import importlib
import json
import sys
import tempfile
from pathlib import Path

import jax
import pytest

from tests import conftest  # noqa: F401  (as a script: the suite's 4 fake CPU devices)
from vae.analysis.iwae import evaluate_workdir
from vae.train.loop import train_and_evaluate

PINNED = Path(__file__).parent / "data" / "pinned.json"
# "vae" is the one-level model that was configs/default.py when its numbers were pinned (under that
# name); "default" and "ladder" were pinned when they were added.
CONFIGS = ("mlp_small", "vae", "default", "paper_hvae", "paper_vampprior", "conv", "ladder")
RECORD_KEYS = ("train/elbo", "train/rec", "train/kl", "test/elbo", "test/rec", "test/kl",
               "test/active_units", "val/elbo")
EVAL_KEYS = ("test/nll", "test/elbo")


def small_config(name: str):
    """configs/<name>.py with only its data and run length shrunk: seconds on a CPU."""
    config = importlib.import_module(f"configs.{name}").get_config()
    config.data.train_split = "train[:1000]"
    config.data.test_split = "test[:200]"
    if config.data.validation_split:
        config.data.validation_split = "train[59000:59400]"
    config.train.num_epochs = 2
    config.train.batch_size = 100
    config.eval.batch_size = 100
    config.train.early_stopping_patience = 0
    config.train.checkpoint_every_epochs = 1
    return config


def figures(name: str, workdir: Path) -> dict:
    """The last epoch's record (val/elbo where the config validates) and, as eval/..., the
    IWAE evaluation of the trained workdir."""
    last = train_and_evaluate(small_config(name), workdir, progress=False)[-1]
    result = {key: last[key] for key in RECORD_KEYS if key in last}
    evaluated = evaluate_workdir(workdir, num_samples=20, max_examples=50, progress=False)
    return result | {f"eval/{key}": evaluated[key] for key in EVAL_KEYS}


# The default in the quick suite, every config in the slow one (about 20 s each).
QUICK = ("default",)


@pytest.mark.parametrize("name", [name if name in QUICK else pytest.param(name, marks=pytest.mark.slow)
                                  for name in CONFIGS])
def test_pinned_numbers(name, tmp_path, fashion_mnist):
    expected = json.loads(PINNED.read_text())[name]
    got = figures(name, tmp_path)
    assert got.pop("test/active_units") == expected.pop("test/active_units")
    # Half of the hundredth of a nat that results reproduce to: other compile flags (the suite's,
    # tests/conftest.py, against a user's) round differently, and two epochs of training carry that
    # to a few thousandths of a nat in the KL term.
    assert got == pytest.approx(expected, rel=1e-5, abs=5e-3)


def write(names: list[str]) -> None:
    """Pins the named configs' numbers in tests/data/pinned.json (the others kept): only for a
    config added, or when a change of its numbers is intended."""
    assert jax.device_count() == 4, "pinned numbers are for the suite's 4 fake CPU devices"
    assert set(names) <= set(CONFIGS), f"pinnable: {CONFIGS}"
    pinned = json.loads(PINNED.read_text()) if PINNED.exists() else {}
    for name in names:
        with tempfile.TemporaryDirectory() as workdir:
            pinned[name] = figures(name, Path(workdir))
        print(name, pinned[name])
    PINNED.parent.mkdir(exist_ok=True)
    PINNED.write_text(json.dumps({name: pinned[name] for name in CONFIGS if name in pinned}, indent=2) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] != ["--write"] or not sys.argv[2:]:
        sys.exit(__doc__)
    write(sys.argv[2:])
