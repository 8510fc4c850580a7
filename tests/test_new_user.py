"""What a new user sees: a resumed run says so, the KL plot's legend names only the splits it
draws, picture titles fit their picture, and reading a workdir logs no read-only notes."""

import logging
import shutil

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402

from tests.conftest import REPO, copy_run, tiny_run_config  # noqa: E402
from vae.analysis import plotting  # noqa: E402
from vae.train import (
    loop,  # noqa: E402
    trained,  # noqa: E402
)


def test_a_resumed_run_says_from_which_epoch(tmp_path, tiny_run, capsys):
    path = copy_run(tiny_run, tmp_path / "run")  # 2 epochs
    loop.train_and_evaluate(tiny_run_config(train__num_epochs=3), path, progress=True)
    assert f"resuming {path} from epoch 2 of 3" in capsys.readouterr().err
    loop.train_and_evaluate(tiny_run_config(train__num_epochs=3), path, progress=True)
    assert f"{path} is trained (all its epochs: epoch 3 of 3); nothing to do" in capsys.readouterr().err


def test_the_kl_legend_names_only_the_splits_drawn():
    records = [{"epoch": e, "train/kl": 3.0 + e, "train/rec": 9.0, "train/elbo": 12.0 + e,
                "test/kl": 3.5 + e, "test/rec": 9.5, "test/elbo": 13.0 + e} for e in (1, 2, 3)]
    title = plotting.plot_kl_curves({"run": records})._suptitle.get_text()
    assert "validation" not in title and "train solid" in title and "test dashed" in title
    with_val = [r | {"val/kl": 3.2, "val/rec": 9.2, "val/elbo": 12.4} for r in records]
    assert "validation dotted" in plotting.plot_kl_curves({"run": with_val})._suptitle.get_text()


def test_a_long_title_is_wrapped_to_its_picture():
    images = np.zeros((10, 28, 28, 1))
    title = "latent interpolations between test images, fashion_mnist, epoch 180"
    figure = plotting.image_grid_figure(images, 5, title)
    text = figure.axes[0].get_title()
    assert "\n" in text and text.replace("\n", " ") == title
    renderer = figure.canvas.get_renderer()
    box = figure.axes[0].title.get_window_extent(renderer)
    assert box.x0 >= 0 and box.x1 <= figure.bbox.width  # inside the picture, not cut at its edges


def test_reading_a_workdir_logs_no_read_only_notes(tmp_path, fashion_mnist, caplog):
    shutil.copytree(f"{REPO}/tests/data/workdir_v1", tmp_path / "run")
    with caplog.at_level(logging.INFO):
        trained.load_trained(tmp_path / "run")
    assert not [r for r in caplog.records if "read only" in r.getMessage() or "read_only" in r.getMessage()]


def test_make_notebook_opens_jupyterlab_on_the_notebooks():
    import subprocess
    import tomllib

    with open(f"{REPO}/pyproject.toml", "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    assert any(requirement.startswith("jupyterlab") for requirement in extras["notebook"])
    plan = subprocess.run(["make", "-n", "-W", "pyproject.toml", "notebook"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout
    assert "pip install --quiet -e '.[notebook]'" in plan and "jupyter-lab notebooks" in plan


def test_scripts_keep_compiled_programs_in_a_persistent_cache(tmp_path):
    import os

    import jax

    from vae import cli

    before = jax.config.jax_compilation_cache_dir
    try:
        assert cli.compilation_cache({"VAE_COMPILATION_CACHE": "0"}) is None
        expected = os.path.join(tmp_path, "vae", "jax")
        assert cli.compilation_cache({"XDG_CACHE_HOME": str(tmp_path)}) == expected
        assert jax.config.jax_compilation_cache_dir == expected
        assert cli.compilation_cache({"JAX_COMPILATION_CACHE_DIR": "/elsewhere"}) == "/elsewhere"
        home = os.path.join(tmp_path, ".cache", "vae", "jax")
        assert cli.compilation_cache({"HOME": str(tmp_path)}) == home
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_a_user_without_a_home_directory_runs_without_the_compilation_cache(monkeypatch, tmp_path):
    """No HOME and no password entry (an arbitrary container user id): no cache, rather than one in
    a folder named '~' under the current directory."""
    import pwd

    from vae import cli

    def no_entry(uid):
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    monkeypatch.chdir(tmp_path)
    assert cli.user_cache_root({}) is None
    assert cli.compilation_cache({}) is None
    assert not (tmp_path / "~").exists()
