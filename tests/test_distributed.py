"""One run over several processes (jax.distributed) through scripts/launch_local.py: the same numbers
as one process, one writer, checkpoints that move between process counts, a killed process that
stops the others and a relaunch that ends exactly where an uninterrupted run ends."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

from tests.conftest import REPO, config_flags, tiny_config
from vae.analysis import iwae
from vae.train import loop, trained
from vae.workdir import files

# Slow (2-3 minutes of launches): the launcher, the joining flags and the rows each process feeds
# are quick tests in test_joining.py, and 4 devices in one process in test_train.py.
pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.xdist_group("distributed")]

NUM_EPOCHS = 6
HEARTBEAT = 3  # seconds; a killed process's peers must stop within about this
TIMING = {"images_per_sec", "epoch_time_sec", "eval_time_sec", "wall_time_sec", "compile_time_sec"}


def config(**overrides):
    """The tiny config with a validation split, so the `best/` checkpoints are exercised too."""
    return tiny_config(**{"data__validation_split": "train[1024:1280]", "train__num_epochs": NUM_EPOCHS}
                       | overrides)


def launch_command(path, cfg, *extra) -> list[str]:
    return [sys.executable, os.path.join(REPO, "scripts", "launch_local.py"), "--num_processes", "2",
            "--local_devices", "2", *extra, "--", "--config", os.path.join(REPO, "configs", "mlp_small.py"),
            "--workdir", str(path), "--noprogress",
            f"--heartbeat_timeout_seconds={HEARTBEAT}", *config_flags(cfg)]


@pytest.fixture(scope="module")
def launch_env():
    """The launched processes' environment. They share the suite's persistent JAX compilation
    cache (tests/conftest.py): every launch compiles the same programs, and only the first launch
    of the first run on a machine has to (a third of a launch's CPU here)."""
    assert os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.environ.get("VAE_COMPILATION_CACHE") == "0"
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def launch(path, cfg, env, *extra) -> subprocess.CompletedProcess:
    return subprocess.run(launch_command(path, cfg, *extra), capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=300)


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def params_of(path):
    _, model, _ = trained.load_trained(path, checkpoint="latest")
    return [np.asarray(p) for p in jax.tree.leaves(nnx.state(model, nnx.Param))]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, fashion_mnist):
    """The reference: this test process, 4 devices."""
    path = tmp_path_factory.mktemp("one_process")
    loop.train_and_evaluate(config(), path, progress=False)
    return path


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, fashion_mnist, launch_env):
    """The same config, 2 processes x 2 devices through launch_local.py."""
    path = tmp_path_factory.mktemp("two_processes")
    result = launch(path, config(), launch_env)
    assert result.returncode == 0, result.stderr[-3000:]
    return path, result


def test_two_processes_match_one_process_with_four_devices(one_process, two_processes):
    path, result = two_processes
    records, reference = files.read_metrics(path), files.read_metrics(one_process)
    assert [r["epoch"] for r in records] == list(range(1, NUM_EPOCHS + 1))  # one line each: process 0 writes
    for record, expected in zip(records, reference):
        assert set(record) == set(expected)
        for key, value in without_timing([expected])[0].items():
            expected_value = value if isinstance(value, str) else pytest.approx(value, rel=1e-5, abs=1e-6)
            assert record[key] == expected_value, key
    for a, b in zip(params_of(path), params_of(one_process)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    run = json.loads((path / "config.json").read_text())["run"]
    assert run["num_processes"] == 2 and run["num_devices"] == 4
    assert "--process_id=0" in run["command"]
    assert sorted(int(p.name) for p in (path / "best").iterdir() if p.name.isdigit()) == [
        files.read_metrics(path)[-1]["best/epoch"]]
    assert result.stderr.count(f"done: epoch {NUM_EPOCHS}") == 1  # process 0 prints, the others do not


def test_a_two_process_checkpoint_continues_in_one_process(tmp_path, two_processes):
    shutil.copytree(two_processes[0], tmp_path / "run")
    history = loop.train_and_evaluate(config(train__num_epochs=NUM_EPOCHS + 1), tmp_path / "run",
                                       progress=False)  # this process, 4 devices
    assert [r["epoch"] for r in history] == list(range(1, NUM_EPOCHS + 2))
    assert history[:-1] == files.read_metrics(two_processes[0])
    assert history[-1]["train/elbo"] < history[0]["train/elbo"]


def start_launch(path, cfg, env, *extra):
    """launch_local.py in the background; (its process, the pids of the run's processes)."""
    launcher = subprocess.Popen(launch_command(path, cfg, *extra), stderr=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, cwd=REPO, env=env)
    line = ""
    while not line.startswith("launch_local:"):  # its first line, unless a process printed before it
        line = launcher.stderr.readline()
        assert line, "the launcher ended without starting"
    return launcher, [int(p) for p in re.search(r"pids ([\d ]+);", line).group(1).split()]


def wait_for_checkpoint(path, epoch, launcher):
    deadline = time.monotonic() + 240
    while not (path / "checkpoints" / str(epoch)).is_dir():
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.stderr.read()[-3000:]
        time.sleep(0.02)


def test_interrupted_runs_stop_together_and_the_same_command_resumes_exactly(tmp_path, two_processes,
                                                                             launch_env):
    path = tmp_path / "run"
    # SIGTERM to process 1 only: both stop after the same epoch, which is checkpointed.
    launcher, pids = start_launch(path, config(), launch_env)
    wait_for_checkpoint(path, 1, launcher)
    os.kill(pids[1], signal.SIGTERM)
    _, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    stopped = int(re.search(r"stopped by SIGTERM after epoch (\d+)", stderr).group(1))  # process 0's words
    assert 2 <= stopped < NUM_EPOCHS
    assert [r["epoch"] for r in files.read_metrics(path)] == list(range(1, stopped + 1))
    assert (path / "checkpoints" / str(stopped)).is_dir()

    # SIGKILL to process 1 inside an epoch: process 0 stops by itself on the heartbeat timeout (the
    # launcher's grace is longer), with the runtime's message.
    launcher, pids = start_launch(path, config(), launch_env, "--grace_seconds", "120")
    wait_for_checkpoint(path, stopped + 1, launcher)
    os.kill(pids[1], signal.SIGKILL)
    killed = time.monotonic()
    _, stderr = launcher.communicate(timeout=120)
    stopped_after = time.monotonic() - killed
    assert launcher.returncode != 0
    assert "process 1 was killed by SIGKILL" in stderr
    assert "another task died" in stderr or "stopped sending heartbeats" in stderr, stderr[-3000:]
    assert stopped_after < HEARTBEAT + 30, stopped_after
    assert [r["epoch"] for r in files.read_metrics(path)][-1] < NUM_EPOCHS

    # The same command again: bit for bit the uninterrupted run.
    result = launch(path, config(), launch_env)
    assert result.returncode == 0, result.stderr[-3000:]
    reference = two_processes[0]
    assert without_timing(files.read_metrics(path)) == without_timing(files.read_metrics(reference))
    for a, b in zip(params_of(path), params_of(reference)):
        np.testing.assert_array_equal(a, b)


def test_a_one_process_checkpoint_evaluates_over_two_processes(tmp_path, one_process, launch_env):
    command = [sys.executable, os.path.join(REPO, "scripts", "launch_local.py"), "--num_processes", "2",
               "--local_devices", "2", "--script", os.path.join(REPO, "scripts", "evaluate.py"), "--",
               "--workdir", str(one_process), "--iw-samples", "10", "--max-examples", "64",
               "--out", str(tmp_path), "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=launch_env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("test NLL") == 1  # printed by process 0 only
    two = json.loads((tmp_path / "eval.json").read_text())
    one = iwae.evaluate_workdir(one_process, 10, max_examples=64, progress=False)
    assert two["epoch"] == one["epoch"] and two["checkpoint"] == one["checkpoint"] == "best"
    for key in ("test/nll", "test/elbo", "test/kl"):
        assert two[key] == pytest.approx(one[key], rel=1e-5), key
