"""Training end to end on small slices: metrics, checkpoints, exact resume, sharding, failures."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from tests.conftest import REPO, copy_run, tiny_config, tiny_run_config, xla_flags
from vae.train import loop, run_dir, trained
from vae.workdir import files

METRIC_FIELDS = {
    "epoch", "step", "train/elbo", "train/rec", "train/kl", "test/elbo", "test/rec", "test/kl",
    "test/kl_per_dim", "test/active_units", "images_per_sec", "wall_time_sec",
}
TIMING_FIELDS = {"images_per_sec", "epoch_time_sec", "eval_time_sec", "wall_time_sec", "compile_time_sec"}


def params_of(path):
    _, model, _ = trained.load_trained(path)
    return jax.tree.leaves(nnx.state(model, nnx.Param))


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, fashion_mnist):
    path = tmp_path_factory.mktemp("uninterrupted")
    history = loop.train_and_evaluate(tiny_config(train__num_epochs=3), path, progress=False)
    return path, history


def test_run_writes_the_workdir_contract(uninterrupted):
    path, history = uninterrupted
    records = files.read_metrics(path)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records == json.loads(json.dumps(history))
    for record in records:
        assert METRIC_FIELDS <= set(record)
        assert len(record["test/kl_per_dim"]) == 4
        assert record["test/elbo"] == pytest.approx(record["test/rec"] + record["test/kl"], rel=1e-6)
        assert record["test/kl"] == pytest.approx(sum(record["test/kl_per_dim"]), rel=1e-3)
        assert 0 <= record["test/active_units"] <= 4
    assert records[0]["step"] == 1024 // 64
    assert records[-1]["test/elbo"] < records[0]["test/elbo"]  # it learns
    assert 100 < records[-1]["test/elbo"] < 600  # nats per Fashion-MNIST image: a sane range
    config = json.loads((path / "config.json").read_text())
    assert config["seed"] == 0 and config["run"]["num_devices"] == 4
    assert {"jax", "flax", "optax"} <= set(config["run"]["versions"])
    assert sorted(int(p.name) for p in (path / "checkpoints").iterdir() if p.name.isdigit()) == [1, 2, 3]


def test_resume_continues_exactly(tmp_path, uninterrupted):
    path, _ = uninterrupted
    loop.train_and_evaluate(tiny_config(train__num_epochs=2), tmp_path, progress=False)
    assert len(files.read_metrics(tmp_path)) == 2
    history = loop.train_and_evaluate(tiny_config(train__num_epochs=3), tmp_path, progress=False)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert without_timing(files.read_metrics(tmp_path)) == without_timing(files.read_metrics(path))
    for resumed, straight in zip(params_of(tmp_path), params_of(path)):
        np.testing.assert_array_equal(resumed, straight)


def test_finished_run_is_not_retrained(uninterrupted):
    path, history = uninterrupted
    again = loop.train_and_evaluate(tiny_config(train__num_epochs=3), path, progress=False)
    assert without_timing(again) == without_timing(history)


def test_a_different_seed_gives_different_numbers(tmp_path, uninterrupted):
    _, history = uninterrupted
    other = loop.train_and_evaluate(tiny_config(train__num_epochs=1, seed=1), tmp_path, progress=False)
    assert other[0]["train/elbo"] != history[0]["train/elbo"]


def test_four_devices_match_one(tmp_path, fashion_mnist):
    config = tiny_config(train__num_epochs=1)
    one = loop.train_and_evaluate(config, tmp_path / "one", devices=jax.devices()[:1], progress=False)
    four = loop.train_and_evaluate(config, tmp_path / "four", devices=jax.devices()[:4], progress=False)
    assert len(jax.devices()) == 4
    for key in ("train/elbo", "train/rec", "train/kl", "test/elbo"):
        assert four[0][key] == pytest.approx(one[0][key], rel=1e-4)
    for a, b in zip(params_of(tmp_path / "one"), params_of(tmp_path / "four")):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.slow  # a run of its own; test_faults.py quick-tests another train state's refusal
def test_resuming_with_another_model_is_refused(tmp_path, tiny_run):
    path = copy_run(tiny_run, tmp_path / "run")  # model.latent_dim=2
    with pytest.raises(files.WorkdirError, match="model.latent_dim"):
        loop.train_and_evaluate(tiny_config(model__latent_dim=8), path, progress=False)
    history = loop.train_and_evaluate(tiny_config(model__latent_dim=8, train__num_epochs=1), path,
                                       restart=True, progress=False)
    assert len(history) == 1 and len(history[0]["test/kl_per_dim"]) == 8


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_run):
    path = copy_run(tiny_run, tmp_path / "run")  # 2 epochs
    config = tiny_run_config(train__num_epochs=4, train__learning_rate=1e4)
    with pytest.raises(run_dir.NonFiniteLossError, match=r"epoch 3.*epoch 2\) is kept"):
        loop.train_and_evaluate(config, path, progress=False)
    _, _, epoch = trained.load_trained(path)
    assert epoch == 2
    assert [r["epoch"] for r in files.read_metrics(path)] == [1, 2]


def test_conv_model_trains(tmp_path, fashion_mnist):
    history = loop.train_and_evaluate(tiny_config(model__arch="conv", train__num_epochs=1), tmp_path,
                                       progress=False)
    assert np.isfinite(history[0]["test/elbo"])


@pytest.mark.slow  # quick: 4 devices match 1 (test_four_devices_match_one), exact resume
def test_a_run_trained_on_4_devices_loads_and_resumes_on_1(tmp_path, tiny_run):
    path = copy_run(tiny_run, tmp_path / "run")  # 2 epochs on 4 devices
    assert json.loads((path / "config.json").read_text())["run"]["num_devices"] == 4
    # The backend starts on this process's 1 device before tests.conftest asks for 4 (it would).
    script = ("import sys, jax; assert jax.device_count() == 1; "
              "from vae.train import loop, trained; "
              "from tests.conftest import tiny_run_config; "
              "_, model, epoch = trained.load_trained(sys.argv[1]); assert epoch == 2; "
              "h = loop.train_and_evaluate(tiny_run_config(train__num_epochs=3), sys.argv[1], "
              "progress=False); assert [r['epoch'] for r in h] == [1, 2, 3]; print('ok')")
    env = dict(os.environ, XLA_FLAGS=xla_flags(1), TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True,
                            cwd=REPO, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_scan_and_stepwise_epochs_agree(tmp_path, fashion_mnist):
    runs = {}
    for kind in ("scan", "steps"):
        runs[kind] = loop.train_and_evaluate(tiny_config(train__num_epochs=1, train__epoch_loop=kind),
                                             tmp_path / kind, progress=False)[0]
    for key in ("train/elbo", "train/kl", "test/elbo"):
        assert runs["steps"][key] == pytest.approx(runs["scan"][key], rel=1e-5)
    for a, b in zip(params_of(tmp_path / "scan"), params_of(tmp_path / "steps")):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # the host feed is the multi-process runs' (slow); the device feed is every run's
def test_batches_fed_from_the_host_match_batches_gathered_on_device(tmp_path, fashion_mnist):
    runs = {}
    for source, kind in (("device", "scan"), ("host", "scan"), ("host", "steps")):
        config = tiny_config(train__num_epochs=1, train__batch_source=source, train__epoch_loop=kind)
        path = tmp_path / f"{source}_{kind}"
        runs[source, kind] = loop.train_and_evaluate(config, path, progress=False)[0]
    reference = runs["device", "scan"]
    assert runs["host", "scan"]["train/elbo"] == reference["train/elbo"]  # the same batches, the same program
    for key in ("train/elbo", "train/kl", "test/elbo"):
        assert runs["host", "steps"][key] == pytest.approx(reference[key], rel=1e-5)
    for a, b in zip(params_of(tmp_path / "host_scan"), params_of(tmp_path / "device_scan")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_a_short_run_evaluates_what_it_learnt_with_a_parameter_average(tmp_path, fashion_mnist):
    """The average's decay warms up with the step count, so after 48 steps the averaged
    parameters (decay 0.998: a plain average would still be 91% the initial weights) score
    close to the latest ones, and the record says which were evaluated."""
    short = {"train__num_epochs": 3, "train__learning_rate": 3e-3}
    latest = loop.train_and_evaluate(tiny_config(**short), tmp_path / "latest", progress=False)[-1]
    ema = loop.train_and_evaluate(tiny_config(**short, train__ema_decay=0.998), tmp_path / "ema",
                                      progress=False)[-1]
    assert latest["eval_params"] == "latest" and ema["eval_params"] == "ema"
    assert ema["test/elbo"] == pytest.approx(latest["test/elbo"], rel=0.02)
    assert 0.7 < ema["train/ema_decay"] < 0.85  # (1 + t) / (10 + t) over the third epoch's steps
    assert "of the parameter average" in loop.epoch_line(ema, 3)
