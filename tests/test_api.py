"""The Python API (vae.load, vae.train, vae.api.Model) on numpy arrays: against the model's own
functions, independent of how the images are batched, and one clear error for images a model
cannot take. docs/api.md's examples run in tests/test_docs.py."""

import subprocess
import sys

import jax
import numpy as np
import pytest

import vae
from tests.conftest import REPO, tiny_run_config
from vae import api
from vae.data import dataset


@pytest.fixture(scope="module")
def model(tiny_run):
    return vae.load(tiny_run)


@pytest.fixture(scope="module")
def images(model):
    return dataset.load_test_set(model.config.data)[0][:12]


def test_importing_vae_imports_no_jax():
    code = "import sys, vae; assert callable(vae.load) and 'jax' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)


def test_the_methods_give_the_models_own_numbers(model, images):
    x = images.reshape(12, -1).astype(np.float32) / 255.0
    mean, log_var = model.encode(images)
    want_mean, want_log_var = model.model.encode(x)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log_var, want_log_var, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.reconstruct(images).reshape(12, -1),
                               model.model.likelihood.mean(model.model.reconstruct(x)), rtol=1e-5, atol=1e-6)
    decoded = model.model.likelihood.mean(model.model.decode(want_mean))
    np.testing.assert_allclose(model.decode(mean).reshape(12, -1), decoded, rtol=1e-5, atol=1e-6)
    # the ELBO's mean over many draws is what the objective estimates; here: one image, one draw,
    # against elbo_terms with the same key
    key = jax.random.split(jax.random.key(4), 12)[3]
    terms = model.model.elbo_terms(x[3:4], key)
    np.testing.assert_allclose(model.elbo(images, seed=4)[3], -(terms["rec"] + terms["kl"])[0], rtol=1e-5)


def test_results_do_not_depend_on_the_batch(model, images, monkeypatch):
    whole = model.elbo(images), model.encode(images)[0], model.log_likelihood(images, k=8)
    monkeypatch.setattr(api, "BATCH", 5)  # 12 images: batches of 5, 5 and 2 (padded)
    fresh = vae.load(model.workdir)
    parts = fresh.elbo(images), fresh.encode(images)[0], fresh.log_likelihood(images, k=8)
    for a, b in zip(whole, parts):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_the_bound_tightens_with_k_and_k_1_is_an_elbo(model, images):
    k1, k64 = model.log_likelihood(images, k=1), model.log_likelihood(images, k=64)
    assert k64.mean() > k1.mean()
    assert abs(k1.mean() - model.elbo(images).mean()) < 0.1 * abs(k1.mean())  # both one-draw ELBOs


def test_samples_are_images_of_the_models_shape(model):
    means, draws = model.sample(5, seed=1), model.sample(5, seed=1, draw=True)
    assert means.shape == draws.shape == (5, 28, 28, 1)
    assert 0 <= means.min() and means.max() <= 1 and set(np.unique(draws)) <= {0.0, 1.0}
    np.testing.assert_array_equal(model.sample(5, seed=1), means)  # a seed gives the same images


@pytest.mark.parametrize("bad, message", [
    (np.zeros((3, 28, 28), np.float32), "dtype float32; this model takes uint8 N x 28 x 28 x 1"),
    (np.zeros((3, 32, 32), np.uint8), "images of shape (3, 32, 32)"),
    (np.zeros((28, 28), np.uint8), "images of shape (28, 28)"),
    (np.zeros((0, 28, 28), np.uint8), "N >= 1"),
    (np.full((2, 28, 28), 128, np.uint8), "this model's pixels are binarised: pass images of 0 and 255"),
])
def test_images_a_model_cannot_take_are_one_clear_error(model, bad, message):
    for method in (model.encode, model.elbo, model.log_likelihood, model.compress):
        with pytest.raises(api.InputError, match=None) as error:
            method(bad)
        assert message in str(error.value) and "\n" not in str(error.value)


def test_images_of_0_and_1_are_taken_as_0_and_255(model, images):
    np.testing.assert_array_equal(model.encode(images // 255)[0], model.encode(images)[0])


def test_train_takes_a_config_or_its_file_and_resumes(tmp_path):
    records = vae.train(tiny_run_config(train__num_epochs=1), tmp_path / "run", progress=False)
    assert [r["epoch"] for r in records] == [1]
    with pytest.raises(Exception, match="train.batch_size"):
        vae.train(tiny_run_config(train__batch_size=0), tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()
    trained = vae.load(tmp_path / "run")
    assert trained.epoch == 1


def test_the_bound_takes_jax_random_keys_and_the_projects_alike(model, images):
    """The IWAE program is compiled per key type: jax.random's own key after vae.threefry's (the
    same bits) gives the same bound instead of a TypeError."""
    from vae import threefry
    from vae.analysis import iwae

    fused = iwae.iwae_log_likelihoods(model.model, images, threefry.key(3), 4, progress=False)
    plain = iwae.iwae_log_likelihoods(model.model, images, jax.random.key(3), 4, progress=False)
    np.testing.assert_allclose(plain, fused, rtol=1e-6)


def test_files_made_one_after_another_compile_the_coding_functions_once(model, images, monkeypatch):
    """The model's host functions (jitted float64 programs) are made once per block size and kept:
    a second file, or decompressing one, does not build and compile them again."""
    from vae.coding import codec

    made = []
    original = codec.host_model
    monkeypatch.setattr(codec, "host_model", lambda m, size: made.append(size) or original(m, size))
    fresh = vae.load(model.workdir)
    first = fresh.compress(images[:3])
    np.testing.assert_array_equal(fresh.decompress(first), images[:3])
    assert fresh.compress(images[:3]) == first
    assert made == [3]
