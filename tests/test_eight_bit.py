"""8-bit images end to end: data.binarize=none with the logistic-mixture and categorical
likelihoods trains, reports bits/dim, evaluates the IWAE bound, samples pictures and tabulates."""

import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, run_in_process, tiny_config
from vae.analysis import iwae, results, sampling
from vae.data import dataset
from vae.model import build
from vae.train import loop, trained
from vae.workdir import files

D = 28 * 28


def eight_bit_config(**overrides):
    return tiny_config(data__binarize="none", model__likelihood="logistic_mixture",
                       model__mixture_components=3, **overrides)


@pytest.fixture(scope="module")
def eight_bit_run(tmp_path_factory, fashion_mnist):
    path = tmp_path_factory.mktemp("eight_bit")
    history = loop.train_and_evaluate(eight_bit_config(train__num_epochs=3), path, progress=False)
    return path, history


def test_the_test_set_is_kept_8_bit(fashion_mnist):
    images, _ = dataset.load_test_set(eight_bit_config().data)
    assert images.dtype == np.uint8 and len(np.unique(images)) > 200  # not binarised


def test_an_8_bit_run_learns_and_reports_bits_per_dim(eight_bit_run):
    _, history = eight_bit_run
    elbos = [r["train/elbo"] for r in history]
    assert elbos[-1] < elbos[0] - 100  # nats per image
    for record in history:
        for split in ("train", "test"):
            bits = record[f"{split}/elbo"] / (D * math.log(2))
            assert record[f"{split}/bits_per_dim"] == pytest.approx(bits)
        assert 1.0 < record["test/bits_per_dim"] < 8.0  # below the 8 bits of storing the levels


def test_the_iwae_bound_of_an_8_bit_run(eight_bit_run):
    path, history = eight_bit_run
    result = iwae.evaluate_workdir(path, num_samples=20, max_examples=64, progress=False)
    assert result["test/nll"] < result["test/elbo"]  # the bound is tighter than the ELBO on the same images
    assert result["test/nll"] > result["test/elbo"] - 50
    assert result["test/nll_bits_per_dim"] == pytest.approx(result["test/nll"] / (D * math.log(2)))
    files.save_evaluation(path, result)
    row = results.run_row(path)
    assert row["published"] is None  # the published rows are of binarised images
    cells = results.format_row(row)
    assert "bits/dim" in cells[6] and "bits/dim" in cells[7] and "logistic mixture K=3" in cells[2]


@pytest.mark.slow  # quick: 8-bit means and draws (test_likelihoods.py), sample.py on a binarised run
def test_8_bit_pictures_are_levels_and_sample_py_draws_them(eight_bit_run, tmp_path):
    path, _ = eight_bit_run
    _, model, _ = trained.load_trained(path)
    means = sampling.prior_samples(model, jax.random.key(0), 8)
    draws = sampling.prior_samples(model, jax.random.key(0), 8, draw_key=jax.random.key(1))
    assert means.shape == draws.shape == (8, 28, 28, 1)
    assert 0 <= means.min() and means.max() <= 1
    np.testing.assert_allclose(draws * 255, np.round(draws * 255), atol=1e-4)
    assert len(np.unique(means)) > 100  # grey levels, not a binary picture
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    for pixels, name in (("mean", "prior.png"), ("draw", "prior_draw.png")):
        args = ["--workdir", str(path), "--num", "16", "--pixels", pixels, "--out", str(tmp_path)]
        if pixels == "mean":  # sample.py's own process once; the draw in this process
            result = subprocess.run([sys.executable, "scripts/sample.py", *args], capture_output=True,
                                    text=True, cwd=REPO, env=env, timeout=300)
        else:
            result = run_in_process("sample.py", *args)
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.strip().endswith(name)
        with Image.open(tmp_path / name) as image:
            assert np.asarray(image.convert("L"), float).std() > 5


@pytest.mark.slow  # the reference likelihood; its maths is tested in test_likelihoods
def test_a_categorical_decoder_lowers_the_loss(tmp_path, fashion_mnist):
    config = tiny_config(data__binarize="none", model__likelihood="categorical", train__num_epochs=2,
                         data__train_split="train[:512]", data__test_split="test[:128]")
    history = loop.train_and_evaluate(config, tmp_path, progress=False)
    assert history[-1]["train/elbo"] < history[0]["train/elbo"]
    assert history[0]["test/elbo"] < D * math.log(256)  # already better than uniform over the levels


@pytest.mark.parametrize("arch", ["conv", "hvae"])
def test_every_architecture_takes_an_8_bit_likelihood(arch):
    config = eight_bit_config(model__arch=arch)
    pixel_means = np.linspace(0.05, 0.95, D)
    model = build.build_model(config.model, (28, 28, 1), jax.random.key(0), pixel_means)
    x = jnp.asarray(np.random.default_rng(0).integers(0, 256, size=(4, D)) / 255.0, jnp.float32)
    terms = model.elbo_terms(x, jax.random.key(1))
    assert terms["rec"].shape == (4,) and bool(jnp.all(jnp.isfinite(terms["rec"])))
    assert bool(jnp.all(terms["rec"] > 0))  # -log of a probability of discrete levels
    if arch == "conv":  # its output bias is one per channel: the mean intensity
        np.testing.assert_allclose(model.likelihood.mean(model.output_bias[...][None])[0],
                                   np.full(4, pixel_means.mean()), atol=0.02)



@pytest.mark.slow  # a colour folder end to end; 8-bit runs and folders are quick-tested apart
def test_a_folder_of_colour_images_trains_samples_and_evaluates_in_bits_per_dim(tmp_path):
    """A user's own colour pictures: 80 8x8 RGB PNGs of coloured blobs, trained with the
    logistic mixture, drawn as colour pictures, evaluated per sub-pixel (8·8·3 of them)."""
    from configs import default

    rng = np.random.default_rng(0)
    root = tmp_path / "pictures"
    root.mkdir()
    yy, xx = np.mgrid[:8, :8]
    for i in range(80):
        colour = rng.integers(0, 256, size=3)
        blob = np.exp(-((yy - rng.uniform(2, 6)) ** 2 + (xx - rng.uniform(2, 6)) ** 2) / 4.0)[..., None]
        picture = np.clip(blob * colour + rng.normal(0, 8, size=(8, 8, 3)) + 20, 0, 255).astype(np.uint8)
        Image.fromarray(picture, "RGB").save(root / f"{i:03d}.png")
    config = eight_bit_config(train__num_epochs=2, train__batch_size=16, eval__batch_size=16,
                              eval__kl_split_examples=8)
    config.data = default.get_config().data
    config.data.name, config.data.binarize, config.data.folder_test_fraction = f"folder:{root}", "none", 0.2
    history = loop.train_and_evaluate(config, tmp_path / "run", progress=False)
    dims = 8 * 8 * 3
    assert history[-1]["test/bits_per_dim"] == pytest.approx(history[-1]["test/elbo"] / (dims * math.log(2)))
    assert history[-1]["train/elbo"] < history[0]["train/elbo"]
    _, model, _ = trained.load_trained(tmp_path / "run")
    assert model.image_shape == (8, 8, 3)
    draws = sampling.prior_samples(model, jax.random.key(0), 4, draw_key=jax.random.key(1))
    assert draws.shape == (4, 8, 8, 3)
    result = iwae.evaluate_workdir(tmp_path / "run", num_samples=8, progress=False)
    assert result["test/nll_bits_per_dim"] == pytest.approx(result["test/nll"] / (dims * math.log(2)))
    done = run_in_process("sample.py", "--workdir", tmp_path / "run", "--num", 9, "--mode", "reconstruct",
                          "--out", tmp_path)  # sample.py's own process: above
    assert done.returncode == 0, done.stderr[-2000:]
    with Image.open(tmp_path / "reconstruct.png") as picture:
        rgb = np.asarray(picture.convert("RGB"), float)
    assert np.abs(rgb[..., 0] - rgb[..., 2]).max() > 30  # a colour picture, not grey


@pytest.mark.slow  # the 8-bit run's train/evaluate/sample path is quick-tested above
def test_a_sweep_trains_8_bit_members(tmp_path, fashion_mnist):
    from vae.sweep import driver

    histories = driver.train_sweep(eight_bit_config(train__num_epochs=1), [("train.beta", [0.5, 2.0])],
                                   tmp_path, progress=False)
    assert set(histories) == {"beta=0.5", "beta=2"}
    for history in histories.values():
        assert history[-1]["test/bits_per_dim"] == pytest.approx(history[-1]["test/elbo"] / (D * math.log(2)))
    assert histories["beta=0.5"][-1]["test/kl"] > histories["beta=2"][-1]["test/kl"]


@pytest.mark.slow  # the 8-bit run's train/evaluate/sample path is quick-tested above
def test_the_analysis_notebook_runs_on_an_8_bit_run(eight_bit_run):
    from tests.test_notebooks import execute, images, outputs

    path, _ = eight_bit_run
    notebook = execute("analyze_run.ipynb", {"VAE_WORKDIR": str(path), "VAE_IW_SAMPLES": "10",
                                             "VAE_IW_EXAMPLES": "64", "XLA_FLAGS": "",
                                             "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert "IWAE NLL (k=10)" in outputs(notebook) and images(notebook) >= 5
