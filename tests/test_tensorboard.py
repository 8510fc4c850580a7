"""TensorBoard: a run writes scalars of its metrics (the KL term's group first, nothing that repeats
another curve or never changes), the per-dimension KL as histograms and labelled image grids into
the workdir itself, so TensorBoard names the run after it; read back with TensorBoard's own
reader, without TensorFlow. The board only writes: it imports no JAX."""

import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer

from tests.conftest import REPO, copy_run, tiny_config, tiny_run_config
from vae.data import dataset
from vae.train import loop, run_dir
from vae.workdir import checkpoints, files, tensorboard

KL_SPLIT = ("test/mutual_info", "test/marginal_kl", "test/mutual_info_std_error",
            "test/marginal_kl_std_error")


def events(path):
    accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    accumulator.Reload()
    return accumulator


def groups(tags):
    """TensorBoard's groups of the tags (the part before the first /), in the order it shows them."""
    return list(dict.fromkeys(t.split("/")[0] for t in sorted(tags)))


def png(event) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("L"))


def test_a_run_writes_tensorboard_events_of_its_metrics(tmp_path, fashion_mnist):
    config = tiny_config(train__num_epochs=6)
    path = tmp_path / "my_run"
    history = loop.train_and_evaluate(config, path, progress=False)
    board = events(path)
    tags = board.Tags()
    scalars = set(tags["scalars"])
    numeric = {k for r in history for k, v in r.items() if isinstance(v, int | float)}
    assert set(KL_SPLIT) <= numeric
    shown = {tensorboard.tag(k) for k in numeric if k not in ("train/loss", "train/beta")} - {None}
    assert shown == scalars
    # The dashboard opens on the KL term and its split, then the ELBO and its reconstruction term;
    # the timings come last.
    assert groups(scalars) == ["1_kl", "2_elbo", "4_test", "5_train", "7_time"]
    assert sorted(scalars)[:4] == [
        "1_kl/test", "1_kl/test/marginal_kl", "1_kl/test/mutual_info", "1_kl/train"]
    assert sorted(scalars)[4:8] == ["2_elbo/test", "2_elbo/test/rec", "2_elbo/train", "2_elbo/train/rec"]
    for tag, key in (("1_kl/test", "test/kl"), ("1_kl/train", "train/kl"), ("2_elbo/test", "test/elbo"),
                     ("1_kl/test/mutual_info", "test/mutual_info"),
                     ("4_test/bits_per_dim", "test/bits_per_dim")):
        logged = [(e.step, e.value) for e in board.Scalars(tag)]
        assert logged == [(r["epoch"], pytest.approx(r[key], rel=1e-6)) for r in history]
    # Nothing twice, nothing constant: at β = 1 with no warm-up or free bits the loss is the
    # negative ELBO and β is 1; the KL split's own KL term and its N are left out.
    assert all(r["train/loss"] == r["train/elbo"] and r["train/beta"] == 1.0 for r in history)
    assert not [t for t in scalars if re.search(r"loss|beta|split_kl|split_examples", t)]
    assert {r["test/split_examples"] for r in history} == {256}  # metrics.jsonl keeps every key
    histogram = board.Histograms("4_test/kl_per_dim")[-1].histogram_value
    assert histogram.num == 4
    assert histogram.sum == pytest.approx(sum(history[-1]["test/kl_per_dim"]), rel=1e-4)
    assert sorted(tags["images"]) == ["3_images/prior_samples", "3_images/test_inputs",
                                      "3_images/test_reconstructions"]
    for tag in tags["images"]:
        assert [e.step for e in board.Images(tag)] == [1, tensorboard.IMAGES_EVERY, 6]
    # The test images and their reconstructions in the same places of two grids of 2 rows of 8.
    inputs = dataset.load_test_set(config.data)[0][:16]
    assert np.array_equal(png(board.Images("3_images/test_inputs")[-1]),
                          tensorboard._grid(inputs.astype(np.float32) / 255.0, 8))
    assert png(board.Images("3_images/test_reconstructions")[-1]).shape == (2 * 29 + 1, 8 * 29 + 1)
    assert png(board.Images("3_images/prior_samples")[-1]).shape == (8 * 29 + 1, 8 * 29 + 1)
    assert json.loads((path / "metrics.jsonl").read_text().splitlines()[0])["epoch"] == 1
    # TensorBoard names a run by its folder under --logdir: the workdir's name.
    multiplexer = EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(tmp_path))
    assert list(multiplexer.Runs()) == ["my_run"]
    assert not (path / files.TENSORBOARD_DIR).exists()


def test_the_training_loss_and_beta_are_shown_where_they_differ_from_the_bound_and_change():
    def left_out(**train):
        t = tiny_config(**{f"train__{k}": v for k, v in train.items()}).train
        return run_dir.repeated_keys(t.kl_warmup_epochs, t.beta, t.free_bits)

    assert left_out() == {"train/loss", "train/beta"}
    assert left_out(objective="iwae", num_samples=5) == {"train/loss", "train/beta"}  # the loss is train/iwae
    assert left_out(beta=2.0) == left_out(free_bits=0.1) == {"train/beta"}
    assert left_out(kl_warmup_epochs=1.0) == frozenset()


def test_a_warm_up_run_shows_the_loss_and_beta_and_the_vampprior_has_no_per_dimension_kl(
        tmp_path, fashion_mnist):
    config = tiny_config(train__num_epochs=1, train__kl_warmup_epochs=2.0, model__prior="vampprior",
                         model__num_pseudo_inputs=16)
    history = loop.train_and_evaluate(config, tmp_path, progress=False)
    tags = events(tmp_path).Tags()
    assert history[0]["train/loss"] < history[0]["train/elbo"]  # β < 1
    assert {"2_elbo/train/loss", "5_train/beta", "2_elbo/test"} <= set(tags["scalars"])
    assert "test/kl_per_dim" not in history[0] and tags["histograms"] == []
    assert "3_images/prior_samples" in tags["images"]


def test_a_resumed_run_replaces_the_events_of_the_epochs_it_trains_again(tmp_path, tiny_run):
    path = copy_run(tiny_run, tmp_path / "run")  # 2 epochs
    # As after a kill between the metrics line of epoch 2 and its checkpoint: epoch 2 is trained again.
    assert checkpoints.latest_checkpoint(path) == 2
    assert [e.step for e in events(path).Scalars("2_elbo/test")] == [1, 2]
    shutil.rmtree(path / files.CHECKPOINT_DIR / "2")
    history = loop.train_and_evaluate(tiny_run_config(train__num_epochs=3), path, progress=False)
    logged = [(e.step, e.value) for e in events(path).Scalars("2_elbo/test")]
    assert logged == [(r["epoch"], pytest.approx(r["test/elbo"], rel=1e-6)) for r in history]


def test_a_run_of_the_earlier_layout_goes_on_writing_into_its_tensorboard_folder(tmp_path, tiny_run):
    path = copy_run(tiny_run, tmp_path / "run")
    (path / files.TENSORBOARD_DIR).mkdir()
    for event_file in path.glob(files.EVENTS_GLOB):  # where an earlier version wrote them
        event_file.rename(path / files.TENSORBOARD_DIR / event_file.name)
    loop.train_and_evaluate(tiny_run_config(train__num_epochs=3), path, progress=False)
    assert not list(path.glob(files.EVENTS_GLOB))
    assert [e.step for e in events(path / files.TENSORBOARD_DIR).Scalars("2_elbo/test")] == [1, 2, 3]
    # A restart clears the events of either layout and writes into the workdir.
    loop.train_and_evaluate(tiny_run_config(train__num_epochs=1), path, restart=True, progress=False)
    assert not (path / files.TENSORBOARD_DIR).exists()
    assert [e.step for e in events(path).Scalars("2_elbo/test")] == [1]


def test_the_board_imports_no_jax():
    code = ("import sys, vae.workdir.tensorboard; "
            "print(sorted(m for m in ('jax', 'flax') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_every_documented_metric_has_a_tag_in_a_numbered_group_or_is_left_out():
    table = (Path(REPO) / "docs" / "training.md").read_text().split("## metrics.jsonl")[1].split("\n## ")[0]
    keys = {k for row in re.findall(r"^\| (`.*?) \|", table, re.M) for k in re.findall(r"`([^`]+)`", row)}
    assert {"test/kl", "best/val/elbo", "sweep/members", "compile_time_sec"} <= keys
    tags = {k: tensorboard.tag(k) for k in keys - {"eval_params"}}
    left_out = {k for k, t in tags.items() if t is None}
    assert left_out == {"epoch", "step", "test/split_kl", "val/split_kl", "test/split_examples",
                        "val/split_examples"}
    assert all(re.fullmatch(r"[1-7]_[a-z]+/[a-z_/]+", t) for t in tags.values() if t), tags
    assert tags["best/val/elbo"] == "6_val/best_elbo" and tags["wall_time_sec"] == "7_time/wall_time_sec"
    assert len(set(tags.values()) - {None}) == len(keys) - 1 - len(left_out)  # no two keys share a tag


def test_a_failing_board_warns_once_and_training_goes_on(tmp_path, fashion_mnist, monkeypatch, capfd):
    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tensorboard.Board, "_metrics", full_disk)
    history = loop.train_and_evaluate(tiny_config(train__num_epochs=2), tmp_path, progress=False)
    assert [r["epoch"] for r in history] == [1, 2]
    err = capfd.readouterr().err
    assert err.count("TensorBoard events are no longer written") == 1
    assert np.isfinite(files.read_metrics(tmp_path)[-1]["test/elbo"])
