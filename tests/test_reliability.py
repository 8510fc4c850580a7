"""Runs that survive: SIGKILL mid-epoch and mid-checkpoint, graceful SIGINT/SIGTERM, exact resume."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from tests.conftest import REPO, copy_run, tiny_run_config, xla_flags
from vae.train import loop, trained
from vae.workdir import files

NUM_EPOCHS = 4
# Big enough that an epoch takes a noticeable time, so kills land inside epochs and saves.
OVERRIDES = [
    "--config=configs/mlp_small.py", "--config.data.train_split=train[:6144]",
    "--config.data.test_split=test[:512]",
    "--config.model.hidden_dims=(64,)", "--config.model.latent_dim=4", "--config.train.batch_size=32",
    "--config.eval.batch_size=128", f"--config.train.num_epochs={NUM_EPOCHS}",
]
TIMING = {"images_per_sec", "epoch_time_sec", "eval_time_sec", "wall_time_sec", "compile_time_sec"}


def start(path: Path) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS=xla_flags(1))
    return subprocess.Popen(
        [sys.executable, os.path.join(REPO, "scripts", "train.py"), "--workdir", str(path),
         "--noprogress", *OVERRIDES],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(path: Path) -> None:
    process = start(path)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-2000:]


def metrics_lines(path: Path) -> list[str]:
    return (path / files.METRICS_FILE).read_text().splitlines()


def wait_for(condition, timeout=120.0, interval=0.002):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False


def completed_epochs(path: Path) -> int:
    try:
        return len(metrics_lines(path))
    except FileNotFoundError:
        return 0


def saving_now(path: Path) -> bool:
    ckpt = path / files.CHECKPOINT_DIR
    return ckpt.is_dir() and any("tmp" in p.name for p in ckpt.iterdir())


def final_params(path: Path, num_epochs: int = NUM_EPOCHS):
    _, model, epoch = trained.load_trained(path)
    assert epoch == num_epochs
    return jax.tree.leaves(nnx.state(model, nnx.Param))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, fashion_mnist):
    path = tmp_path_factory.mktemp("uninterrupted")
    finish(path)
    return path


def assert_same_run(path: Path, reference: Path, num_epochs: int = NUM_EPOCHS) -> None:
    lines = metrics_lines(path)
    records = [json.loads(line) for line in lines]  # no torn line
    assert [r["epoch"] for r in records] == list(range(1, num_epochs + 1))  # one line per epoch
    strip = lambda rs: [{k: v for k, v in r.items() if k not in TIMING} for r in rs]  # noqa: E731
    assert strip(records) == strip(files.read_metrics(reference))
    for a, b in zip(final_params(path, num_epochs), final_params(reference, num_epochs)):
        np.testing.assert_array_equal(a, b)  # bit for bit on CPU


# Quick: Ctrl-C in this process (how a run is usually stopped) and a damaged checkpoint. Slow: the
# same signals sent to a training process of its own (its exit status and last line), and SIGKILL;
# a resume after a kill is also the quick in-process resume tests of test_train.py,
# test_selection.py (killed between two saves) and test_faults.py (damaged checkpoints).
def test_sigint_stops_after_the_epochs_checkpoint_and_the_run_resumes_exactly(tmp_path, tiny_run,
                                                                               monkeypatch):
    """SIGINT while epoch 1 trains (sent to this process): the epoch ends, is checkpointed, and the
    run stops with Interrupted (exit status 130); run again, it ends where the uninterrupted run did."""
    assert threading.current_thread() is threading.main_thread()  # where the handler is installed
    run_epoch = loop.run_epoch
    sent = []

    def with_sigint(train_epoch, carry, number, stop):
        if not sent:
            sent.append(number)
            os.kill(os.getpid(), signal.SIGINT)
        return run_epoch(train_epoch, carry, number, stop)

    monkeypatch.setattr(loop, "run_epoch", with_sigint)
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the suite runs in the background
    stopped = "stopped by SIGINT after epoch 1, which is checkpointed"
    with pytest.raises(loop.Interrupted, match=stopped) as stop:
        loop.train_and_evaluate(tiny_run_config(), tmp_path, progress=False)
    assert stop.value.exit_code == 128 + signal.SIGINT and sent == [1]
    assert signal.getsignal(signal.SIGINT) is handler_before  # the handler is put back
    assert completed_epochs(tmp_path) == 1
    assert sorted(int(p.name) for p in (tmp_path / files.CHECKPOINT_DIR).iterdir() if p.name.isdigit()) == [1]
    monkeypatch.undo()
    loop.train_and_evaluate(tiny_run_config(), tmp_path, progress=False)
    assert_same_run(tmp_path, tiny_run, num_epochs=2)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, reference):
    process = start(tmp_path)
    assert wait_for(lambda: completed_epochs(tmp_path) >= 1)
    time.sleep(0.05)  # inside epoch 2
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert completed_epochs(tmp_path) < NUM_EPOCHS
    finish(tmp_path)
    assert_same_run(tmp_path, reference)


@pytest.mark.slow
def test_sigkill_while_a_checkpoint_is_written_then_resume(tmp_path, reference):
    process = start(tmp_path)
    caught = wait_for(lambda: completed_epochs(tmp_path) >= 1 and saving_now(tmp_path), interval=0.0005)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert caught, "never saw a checkpoint being written"
    finish(tmp_path)
    assert_same_run(tmp_path, reference)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_stop_gracefully_with_a_checkpoint(tmp_path, reference, signum):
    process = start(tmp_path)
    assert wait_for(lambda: completed_epochs(tmp_path) >= 1)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum
    assert stderr.strip().splitlines()[-1].startswith("interrupted: stopped by")
    assert "Traceback" not in stderr
    stopped_at = completed_epochs(tmp_path)
    assert 1 <= stopped_at < NUM_EPOCHS
    steps = sorted(int(p.name) for p in (tmp_path / files.CHECKPOINT_DIR).iterdir() if p.name.isdigit())
    assert steps[-1] == stopped_at  # the epoch it stopped after was checkpointed
    finish(tmp_path)
    assert_same_run(tmp_path, reference)


def test_a_corrupted_checkpoint_falls_back_to_the_previous_one(tmp_path, tiny_run, capfd):
    run = copy_run(tiny_run, tmp_path / "run")  # 2 epochs
    latest = run / files.CHECKPOINT_DIR / "2"
    data_files = [p for p in latest.rglob("*") if p.is_file() and p.stat().st_size > 1000]
    assert data_files
    rng = np.random.default_rng(0)
    for path in data_files:  # overwrite bytes in the middle of every array file
        raw = bytearray(path.read_bytes())
        middle = len(raw) // 2
        raw[middle:middle + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
        path.write_bytes(bytes(raw))
    _, _, epoch = trained.load_trained(run)
    assert epoch == 1
    assert "warning: checkpoint 2 is damaged (" in capfd.readouterr().err
