"""Numbers pinned before the structure refactor; a change here means the refactor changed results.

tests/data/workdir_v1 is a real workdir (config.json, metrics.jsonl, checkpoints) that the code
before the refactor trained: a tiny MLP VAE, 2 epochs. Workdirs trained before the refactor must
still load, evaluate and sample as they did: the figures in tests/data/workdir_v1.json (IWAE
evaluation, prior samples, reconstructions) were computed from it by that code, and
scripts/sample.py must still read it. Regenerate both (the workdir is retrained) ONLY when a
change of numbers is intended, and say why in the commit:

    PYTHONPATH=. python tests/test_old_workdir.py --write
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.conftest import run_in_process, tiny_config  # (as a script: the suite's 4 fake CPU devices)
from vae.analysis.iwae import evaluate_workdir
from vae.analysis.sampling import prior_samples, reconstructions
from vae.data.dataset import load_test_set
from vae.train.loop import train_and_evaluate
from vae.train.trained import load_trained

FIXTURE = Path(__file__).parent / "data" / "workdir_v1"
EXPECTED = Path(__file__).parent / "data" / "workdir_v1.json"
EVAL_KEYS = ("test/nll", "test/elbo", "test/rec", "test/kl", "test/active_units", "epoch")


def summary(name: str, images: np.ndarray) -> dict:
    return {f"{name}/sum": float(np.sum(images, dtype=np.float64)),
            f"{name}/mean": float(np.mean(images, dtype=np.float64)),
            f"{name}/first_pixels": images[0].ravel()[:5].tolist()}


def figures(path: Path) -> dict:
    """IWAE evaluation, 16 prior samples and the first 8 test images' reconstructions of a workdir."""
    evaluated = evaluate_workdir(path, num_samples=10, max_examples=32, progress=False)
    config, model, _ = load_trained(path)
    x = load_test_set(config.data)[0][:8].astype(np.float32) / 255.0  # as scripts/sample.py
    recon = reconstructions(model, x)  # pairs: image, reconstruction
    return ({key: evaluated[key] for key in EVAL_KEYS}
            | summary("prior_samples", prior_samples(model, jax.random.key(0), 16))
            | summary("reconstructions", recon)
            | {"reconstructions/first_reconstruction_pixels": recon[1].ravel()[:5].tolist()})


@pytest.fixture
def old_workdir(tmp_path, fashion_mnist):
    """A copy: loading or evaluating must not be able to change the committed workdir."""
    return Path(shutil.copytree(FIXTURE, tmp_path / "workdir_v1"))


def test_old_workdir_evaluates_and_samples_as_before(old_workdir, fashion_mnist):
    expected = json.loads(EXPECTED.read_text())
    got = figures(old_workdir)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-4), key


def test_sample_script_reads_old_workdir(old_workdir, tmp_path, fashion_mnist):
    result = run_in_process("sample.py", "--workdir", old_workdir, "--mode", "prior", "--num", 16,
                            "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "out" / "prior.png").is_file()


def write() -> None:
    """Retrains tests/data/workdir_v1 and rewrites its figures: only when a change of numbers is intended."""
    assert jax.device_count() == 4, "pinned numbers are for the suite's 4 fake CPU devices"
    config = tiny_config(model__hidden_dims=(16,), model__latent_dim=2, data__train_split="train[:512]",
                         data__test_split="test[:64]", train__num_epochs=2, train__keep_checkpoints=1,
                         train__batch_size=64, eval__batch_size=64)
    with tempfile.TemporaryDirectory() as tmp:
        train_and_evaluate(config, tmp, progress=False)
        shutil.rmtree(Path(tmp) / "tensorboard", ignore_errors=True)  # not needed to load a run
        (Path(tmp) / ".train.lock").unlink(missing_ok=True)
        for empty in [d for d in Path(tmp).rglob("*") if d.is_dir() and not any(d.iterdir())]:
            empty.rmdir()  # git keeps no empty folders (best/ of a run without validation split)
        shutil.rmtree(FIXTURE, ignore_errors=True)
        shutil.copytree(tmp, FIXTURE)
        pinned = figures(Path(tmp))  # the test's way: on a copy, not the committed workdir
    print(pinned)
    EXPECTED.write_text(json.dumps(pinned, indent=2) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(__doc__)
    write()
