"""Model selection: the validation split, early stopping, the best checkpoint beside the latest,
and exact resume through all of it (with a parameter EMA), including kills between the saves."""

import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from tests.conftest import tiny_config
from vae.config import ConfigError, validate_config
from vae.data import dataset, source
from vae.train import distributed, evaluate, loop, run_dir, trained
from vae.workdir import checkpoints, files

PATIENCE = 5


def selection_config(**overrides):
    """A tiny run that overfits 64 images fast, so the validation ELBO turns within ~10 epochs."""
    config = tiny_config(**({"train__num_epochs": 40} | overrides))
    config.data.train_split = "train[:64]"
    config.data.validation_split = "train[64:320]"
    config.model.hidden_dims, config.model.latent_dim = (256,), 8
    config.train.learning_rate = 3e-2
    config.train.early_stopping_patience = PATIENCE
    config.train.ema_decay = 0.5
    return config


def params_of(path, checkpoint="best"):
    _, model, epoch = trained.load_trained(path, checkpoint=checkpoint)
    return epoch, jax.tree.leaves(nnx.state(model, nnx.Param))


def without_timing(records):
    timing = {"images_per_sec", "epoch_time_sec", "eval_time_sec", "wall_time_sec", "compile_time_sec"}
    return [{k: v for k, v in r.items() if k not in timing} for r in records]


def test_best_epoch_and_early_stopping_rule():
    history = [{"epoch": e, "val/elbo": v} for e, v in enumerate([9.0, 7.0, 8.0, 7.0, 8.5, 9.0], 1)]
    assert run_dir.best_epoch(history) == (2, 7.0)  # ties keep the earlier epoch
    assert run_dir.early_stop_due(history, 4, 0.0)  # 6 - 2 >= 4
    assert not run_dir.early_stop_due(history[:5], 4, 0.0)
    assert not run_dir.early_stop_due(history, 4, 3.0)  # patience counts from the warm-up's end: 6 - 3 < 4
    assert not run_dir.early_stop_due(history, 0, 0.0)  # off
    assert run_dir.best_epoch([{"epoch": 1, "test/elbo": 3.0}]) == (0, float("inf"))


def test_a_diverged_run_is_reported_once_its_loss_doubles_after_the_warm_up():
    losses = [400.0, 300.0, 240.0, 230.0, 229.0, 231.0, 266.0, 21776.0]  # epochs 1..8, as the 800-epoch run
    history = [{"epoch": e, "train/loss": v} for e, v in enumerate(losses, 1)]
    assert [run_dir.divergence(history[:n], 2.0, 0) is not None for n in range(1, 9)] == [False] * 7 + [True]
    warning = run_dir.divergence(history, 2.0, 0)
    assert warning.startswith("the training loss of epoch 8, 21776, is 95.1x its lowest "
                              "(229 at epoch 5)")
    assert "train.early_stopping_patience stops such a run" in warning and "grad_clip_norm" in warning
    assert "once the best validation epoch is 50 epochs old" in run_dir.divergence(history, 2.0, 50)
    # During the KL warm-up the loss rises with β: no warning, whatever the ratio.
    rising = [{"epoch": e, "train/loss": v} for e, v in enumerate([100.0, 150.0, 250.0], 1)]
    assert run_dir.divergence(rising, 3.0, 0) is None
    assert run_dir.divergence(rising, 0.0, 0) is not None


def test_a_training_run_prints_the_divergence_warning_once(tmp_path, capsys):
    config = tiny_config(train__num_epochs=100, train__kl_warmup_epochs=0.0,
                         train__checkpoint_every_epochs=1000)
    run = run_dir.RunDir(tmp_path, config, steps=1, image_shape=(28, 28, 1))
    for epoch, loss in enumerate([230.0, 229.0, 600.0, 700.0], 1):
        run.end_epoch({"epoch": epoch, "train/loss": loss}, state=None, stop_requested=False,
                      session_start=0.0)
    run.close()
    printed = capsys.readouterr().err.splitlines()
    t = config.train
    expected = run_dir.divergence(run.history[:3], t.kl_warmup_epochs, t.early_stopping_patience)
    assert printed == [f"warning: {tmp_path}: {expected}"]
    assert "epoch 3, 600, is 2.62x its lowest (229 at epoch 2)" in printed[0]


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, fashion_mnist):
    path = tmp_path_factory.mktemp("stopped")
    return path, loop.train_and_evaluate(selection_config(), path, progress=False)


def test_early_stopping_ends_patience_epochs_after_the_best(stopped):
    path, history = stopped
    best, value = run_dir.best_epoch(history)
    assert history[-1]["epoch"] == best + PATIENCE < 40
    assert value == min(r["val/elbo"] for r in history)
    for record in history:
        assert {"val/elbo", "val/rec", "val/kl", "val/active_units", "test/elbo", "best/epoch"} <= set(record)
        assert record["best/val/elbo"] == min(r["val/elbo"] for r in history[: record["epoch"]])
    assert files.read_metrics(path) == history
    # Again: nothing more to train.
    again = loop.train_and_evaluate(selection_config(), path, progress=False)
    assert without_timing(again) == without_timing(history)


def test_the_best_checkpoint_is_kept_beside_the_latest_and_loaded_by_default(stopped):
    path, history = stopped
    best, _ = run_dir.best_epoch(history)
    assert sorted(int(p.name) for p in (path / files.BEST_DIR).iterdir() if p.name.isdigit()) == [best]
    assert params_of(path)[0] == best
    assert params_of(path, "latest")[0] == history[-1]["epoch"]
    assert trained.checkpoint_used(path, None, "best") == "best"


def test_the_best_checkpoint_holds_the_evaluated_parameters(stopped):
    """Re-evaluating the loaded best model on the validation split gives the logged val/elbo:
    the checkpoint holds what was evaluated (the EMA), not the raw parameters."""
    path, history = stopped
    config, model, epoch = trained.load_trained(path)
    images, _ = dataset.load_eval_split(config.data, "validation")
    mesh = distributed.make_mesh(jax.devices()[:1])
    graphdef, params = nnx.split(model)
    terms = evaluate.make_evaluate(graphdef, config, mesh)(
        params, distributed.images_on_device(images, mesh, config.eval.batch_size),
        evaluate.eval_key(config.seed, "val"))
    summary = evaluate.summarize_eval(jax.device_get(terms), len(images), 784, 0.01, "val")
    assert summary["val/elbo"] == pytest.approx(history[epoch - 1]["val/elbo"], rel=1e-5)


@pytest.fixture(scope="module")
def five_epochs(tmp_path_factory, fashion_mnist):
    """The run of `stopped` stopped after epoch 5, for the resume tests to copy."""
    path = tmp_path_factory.mktemp("five_epochs")
    first = loop.train_and_evaluate(selection_config(train__num_epochs=5), path, progress=False)
    assert run_dir.best_epoch(first)[0] == 5  # still improving: epoch 5 is in both managers
    return path


@pytest.mark.parametrize("damage", [
    # one damage quick; the others each a resumed run of their own
    pytest.param("none", marks=pytest.mark.slow), "best_not_saved",
    pytest.param("latest_not_saved", marks=pytest.mark.slow)])
def test_resume_through_selection_is_exact(tmp_path, stopped, five_epochs, damage):
    """A run stopped after epoch 5 (and, worse, killed between its two saves) resumes to the same
    metrics, latest and best checkpoints as the uninterrupted run."""
    path, history = stopped
    workdir = shutil.copytree(five_epochs, tmp_path / "run")
    if damage == "best_not_saved":  # killed after the latest save, before the best one
        shutil.rmtree(workdir / files.BEST_DIR / "5")
    if damage == "latest_not_saved":  # killed after the best save, before the latest one
        shutil.rmtree(workdir / files.CHECKPOINT_DIR / "5")
    resumed = loop.train_and_evaluate(selection_config(), workdir, progress=False)
    assert without_timing(resumed) == without_timing(history)
    for which in ("best", "latest"):
        (epoch_a, params_a), (epoch_b, params_b) = params_of(workdir, which), params_of(path, which)
        assert epoch_a == epoch_b
        for a, b in zip(params_a, params_b):
            np.testing.assert_array_equal(a, b)


def test_a_run_without_validation_has_no_best_checkpoint_and_loads_the_latest(tiny_run):
    history = files.read_metrics(tiny_run)  # 2 epochs, no validation split
    assert "val/elbo" not in history[-1] and "best/epoch" not in history[-1]
    assert not checkpoints.has_checkpoints(tiny_run, files.BEST_DIR)
    assert trained.checkpoint_used(tiny_run, None, "best") == "latest"
    assert params_of(tiny_run)[0] == 2


def test_overlapping_validation_and_training_splits_are_refused(tmp_path, fashion_mnist):
    config = selection_config()
    config.data.validation_split = "train[32:96]"
    with pytest.raises(source.DataError, match="overlaps data.train_split.*32 shared examples"):
        loop.train_and_evaluate(config, tmp_path, progress=False)


def test_early_stopping_without_a_validation_split_is_refused():
    config = selection_config()
    config.data.validation_split = ""
    with pytest.raises(ConfigError, match="needs a validation split"):
        validate_config(config, 1)
