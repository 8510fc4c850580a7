"""TensorBoard: a run writes scalars of every metric, the per-dimension KL as a histogram and
image grids into WORKDIR/tensorboard, readable by TensorBoard's own reader, without TensorFlow."""

import json
import shutil

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import copy_run, tiny_config, tiny_run_config
from vae.train import loop
from vae.workdir import checkpoints, files, tensorboard


def events(path):
    accumulator = EventAccumulator(str(path / files.TENSORBOARD_DIR),
                                   size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    accumulator.Reload()
    return accumulator


def test_a_run_writes_tensorboard_events_of_its_metrics(tmp_path, fashion_mnist):
    config = tiny_config(train__num_epochs=6)
    config.data.train_split, config.data.validation_split = "train[:1024]", "train[1024:1280]"
    history = loop.train_and_evaluate(config, tmp_path, progress=False)
    board = events(tmp_path)
    tags = board.Tags()
    numeric = {k for r in history for k, v in r.items()
               if isinstance(v, int | float) and k not in ("epoch", "step")}
    assert {tensorboard.tag(k) for k in numeric} == set(tags["scalars"])
    assert {"val/elbo", "test/elbo", "val/best_val_elbo", "time/epoch_time_sec", "time/images_per_sec",
            "train/grad_norm"} <= set(tags["scalars"])
    # The dashboard's first cards (tags in sorted order) are the test split's, not the timings.
    assert sorted(tags["scalars"])[0].startswith("test/")
    for key in ("test/elbo", "train/kl", "val/elbo"):
        logged = [(e.step, e.value) for e in board.Scalars(key)]
        assert logged == [(r["epoch"], pytest.approx(r[key], rel=1e-6)) for r in history]
    histogram = board.Histograms("test/kl_per_dim")[-1].histogram_value
    assert histogram.num == 4
    assert histogram.sum == pytest.approx(sum(history[-1]["test/kl_per_dim"]), rel=1e-4)
    for tag in ("samples/prior", "samples/reconstructions"):
        images = board.Images(tag)
        assert [e.step for e in images] == [1, tensorboard.IMAGES_EVERY, 6]
        assert images[-1].width > 100 and images[-1].height > 50
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["epoch"] == 1


def test_a_resumed_run_replaces_the_events_of_the_epochs_it_trains_again(tmp_path, tiny_run):
    path = copy_run(tiny_run, tmp_path / "run")  # 2 epochs
    # As after a kill between the metrics line of epoch 2 and its checkpoint: epoch 2 is trained again.
    assert checkpoints.latest_checkpoint(path) == 2
    assert [e.step for e in events(path).Scalars("test/elbo")] == [1, 2]
    shutil.rmtree(path / files.CHECKPOINT_DIR / "2")
    history = loop.train_and_evaluate(tiny_run_config(train__num_epochs=3), path, progress=False)
    logged = [(e.step, e.value) for e in events(path).Scalars("test/elbo")]
    assert logged == [(r["epoch"], pytest.approx(r["test/elbo"], rel=1e-6)) for r in history]


def test_the_vampprior_has_no_per_dimension_kl_histogram(tmp_path, fashion_mnist):
    config = tiny_config(train__num_epochs=1, model__prior="vampprior", model__num_pseudo_inputs=16)
    history = loop.train_and_evaluate(config, tmp_path, progress=False)
    tags = events(tmp_path).Tags()
    assert "test/kl_per_dim" not in history[0] and tags["histograms"] == []
    assert "test/elbo" in tags["scalars"] and "samples/prior" in tags["images"]


def test_a_failing_board_warns_once_and_training_goes_on(tmp_path, fashion_mnist, monkeypatch, capfd):
    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tensorboard.Board, "_metrics", full_disk)
    history = loop.train_and_evaluate(tiny_config(train__num_epochs=2), tmp_path, progress=False)
    assert [r["epoch"] for r in history] == [1, 2]
    err = capfd.readouterr().err
    assert err.count("TensorBoard events are no longer written") == 1
    assert np.isfinite(files.read_metrics(tmp_path)[-1]["test/elbo"])
