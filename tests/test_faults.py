"""Faults end in one line and a resumable workdir: one training per workdir (the lock), a full
disk while checkpoints or metrics are written, a read-only or removed workdir, damaged
config.json / metrics.jsonl / checkpoints."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from tests.conftest import REPO, copy_run, run_in_process, tiny_config, tiny_run_config, xla_flags
from vae import atomic
from vae.train import loop, trained
from vae.train import state as train_state
from vae.workdir import checkpoints, faults, files, lock

TIMING = {"images_per_sec", "epoch_time_sec", "eval_time_sec", "wall_time_sec", "compile_time_sec"}
# A run whose checkpoints (about 1.2 MB each) fill a 3 MB disk at its third save.
SMALL_RUN = ["--noprogress", "--config=configs/mlp_small.py", "--config.data.train_split=train[:2048]",
             "--config.data.test_split=test[:256]",
             "--config.model.hidden_dims=(64,)", "--config.model.latent_dim=4",
             "--config.train.batch_size=64", "--config.train.num_epochs=6", "--config.eval.batch_size=128"]


def run_train(path, *args, timeout=300):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS=xla_flags(1))
    return subprocess.run([sys.executable, os.path.join(REPO, "scripts", "train.py"), "--workdir", str(path),
                           *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    return lines[0]


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def params_of(path, checkpoint="latest"):
    _, model, epoch = trained.load_trained(path, checkpoint=checkpoint)
    return epoch, jax.tree.leaves(nnx.state(model, nnx.Param))


def assert_same_run(path, reference):
    assert without_timing(files.read_metrics(path)) == without_timing(files.read_metrics(reference))
    (epoch_a, a), (epoch_b, b) = params_of(path), params_of(reference)
    assert epoch_a == epoch_b
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, fashion_mnist):
    path = tmp_path_factory.mktemp("reference")
    result = run_train(path, *SMALL_RUN)
    assert result.returncode == 0, result.stderr[-2000:]
    return path


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs (root only; skipped elsewhere)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


# --- the lock ---------------------------------------------------------------------------------------

HOLD = ("import sys, time; from vae.workdir import lock; from pathlib import Path\n"
        "with lock.training_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(600)")


def test_a_second_training_is_refused_at_once_naming_the_first(tmp_path, tiny_run):
    trained = copy_run(tiny_run, tmp_path / "run")  # 2 epochs
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(trained)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.monotonic()
        result = run_train(trained)
        line = one_error_line(result.stderr)
        assert result.returncode == 2 and time.monotonic() - start < 60
        assert f"is being trained by process {holder.pid} " in line and "sampling" in line
        with pytest.raises(files.WorkdirError, match=f"process {holder.pid}"):  # in-process too
            loop.train_and_evaluate(tiny_run_config(train__num_epochs=3), trained, progress=False)
        # Reading a workdir while it trains is allowed.
        sample = run_in_process("sample.py", "--workdir", trained, "--out", tmp_path / "out")
        assert sample.returncode == 0, sample.stderr[-2000:]
        assert len(files.read_metrics(trained)) == 2
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    # The kernel dropped the lock with its killed holder: training goes on.
    history = loop.train_and_evaluate(tiny_run_config(train__num_epochs=3), trained, progress=False)
    assert [r["epoch"] for r in history] == [1, 2, 3]


def test_the_lock_is_released_after_a_failure(tmp_path):
    with pytest.raises(RuntimeError), lock.training_lock(tmp_path):
        raise RuntimeError("boom")
    with lock.training_lock(tmp_path):
        with pytest.raises(files.WorkdirError, match=f"process {os.getpid()} "):
            with lock.training_lock(tmp_path):
                pass


# --- full disk, read-only, removed -------------------------------------------------------------------


# Slow: three script runs (the reference, then the full disk and the resume on a tmpfs). Quick tests
# below cover the rest of the claim in process: every write fault's one line, and a full disk while
# the metrics are written, then an exact resume.
@pytest.mark.slow
def test_a_full_disk_while_checkpointing_is_one_line_and_resumes_exactly(small_disk, reference):
    run = small_disk / "run"
    result = run_train(run, *SMALL_RUN)
    # Which write meets the full disk first depends on timing: where it is TensorBoard's, training
    # goes on without events (one warning line) until the checkpoint's write stops it.
    board_full = "warning: TensorBoard events are no longer written ("
    stderr = "\n".join(line for line in result.stderr.splitlines()
                       if not (line.startswith(board_full) and "No space left on device" in line))
    line = one_error_line(stderr)
    assert result.returncode == 2 and "the disk is full" in line, line
    epoch = checkpoints.latest_checkpoint(run)
    assert epoch >= 1 and f"resumes from epoch {epoch} once there is room" in line
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    result = run_train(run, *SMALL_RUN)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_same_run(run, reference)


def test_a_full_disk_while_appending_metrics_leaves_no_torn_line(small_disk):
    run = small_disk / "run"
    run.mkdir()
    (run / files.CONFIG_FILE).write_text("{}")
    files.append_metrics(run, {"epoch": 1})
    with open(small_disk / "filler", "wb", buffering=0) as f:  # fill the disk to its last bytes
        with pytest.raises(OSError):
            while True:
                f.write(b"\0" * 4096)
    before = (run / files.METRICS_FILE).read_bytes()
    with pytest.raises(OSError) as error:
        files.append_metrics(run, {"epoch": 2, "payload": "x" * 20000})
    assert error.value.errno == errno.ENOSPC
    assert (run / files.METRICS_FILE).read_bytes() == before
    with pytest.raises(OSError):
        atomic.write_text(run / files.CONFIG_FILE, "x" * 20000)
    assert (run / files.CONFIG_FILE).read_text() == "{}" and not list(run.glob(".*.tmp"))


@pytest.mark.parametrize("code, what, when", [
    (errno.ENOSPC, "the disk is full", "resumes from epoch 3 once there is room"),
    (errno.EROFS, "the file system is read-only", "resumes from epoch 3 once it is writable"),
    (errno.EACCES, "permission denied", "resumes from epoch 3 once the workdir is writable"),
    (errno.ENOENT, "the workdir or a file in it was removed", "resumes from epoch 3 when you want"),
])
def test_each_write_fault_is_one_line_saying_how_the_run_resumes(tmp_path, code, what, when):
    (tmp_path / files.CHECKPOINT_DIR / "3").mkdir(parents=True)
    path = str(tmp_path / files.METRICS_FILE)
    with pytest.raises(files.WorkdirError) as error, faults.write_errors(tmp_path):
        try:
            raise OSError(code, os.strerror(code), path)
        except OSError as e:  # as Orbax wraps tensorstore's errors
            raise ValueError(f"RESOURCE_EXHAUSTED: Failed writing [os_error_code='{code}']") from e
    expected = f"training stopped writing to {tmp_path}: {what} ({path}); the same command {when}"
    assert str(error.value) == expected
    with pytest.raises(KeyError), faults.write_errors(tmp_path):  # not a write fault: as it was
        raise KeyError("x")


def test_a_failed_metrics_write_is_one_error_and_the_run_resumes_exactly(tmp_path, monkeypatch,
                                                                         fashion_mnist):
    config = tiny_config(train__num_epochs=3)
    straight = loop.train_and_evaluate(config, tmp_path / "straight", progress=False)
    real_append = files.append_metrics

    def fail_at_epoch_2(path, record):
        if record["epoch"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path / files.METRICS_FILE))
        real_append(path, record)

    monkeypatch.setattr(files, "append_metrics", fail_at_epoch_2)
    with pytest.raises(files.WorkdirError, match="disk is full.*resumes from epoch 1 once there is room"):
        loop.train_and_evaluate(config, tmp_path / "run", progress=False)
    monkeypatch.setattr(files, "append_metrics", real_append)
    resumed = loop.train_and_evaluate(config, tmp_path / "run", progress=False)
    assert without_timing(resumed) == without_timing(straight)


@pytest.mark.slow  # a process killed mid-run; quick: the other faults in this file
def test_a_workdir_removed_mid_run_stops_it_in_one_line(tmp_path, fashion_mnist):
    run = tmp_path / "run"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS=xla_flags(1))
    args = [a.replace("num_epochs=6", "num_epochs=50") for a in SMALL_RUN]
    process = subprocess.Popen([sys.executable, "scripts/train.py", "--workdir", str(run), *args], cwd=REPO,
                               env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 120
    while not (run / files.METRICS_FILE).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    shutil.rmtree(run, ignore_errors=True)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 2 and "was removed" in one_error_line(stderr)


# --- damaged files -----------------------------------------------------------------------------------


@pytest.fixture
def two_epochs(tmp_path, tiny_run):
    """A copy of the shared 2-epoch run: (its workdir, its config, its metrics)."""
    path = copy_run(tiny_run, tmp_path / "run")
    return path, tiny_run_config(train__num_epochs=2), files.read_metrics(path)


@pytest.mark.parametrize("damage, reason", [
    (b'{"seed": 0, "data": {"na', "not JSON: Unterminated string"), (b"\x89PNG\x00\xff", "not JSON"),
    (b"[1, 2]", "no data, model, train section"), (b'{"seed": 0, "model": {}}', "no data, train section")])
def test_a_damaged_config_json_is_named_in_one_line(tmp_path, damage, reason):
    (tmp_path / files.CONFIG_FILE).write_bytes(damage)
    for read in (files.read_config, lambda path: files.check_resumable(path, tiny_config())):
        with pytest.raises(files.WorkdirError, match=f"config.json is damaged \\({reason}"):
            read(tmp_path)


def test_a_damaged_config_json_is_one_line_and_the_run_resumes(two_epochs):
    path, config, history = two_epochs
    (path / files.CONFIG_FILE).write_bytes(b'{"seed": 0, "data": {"na')  # truncated
    with pytest.raises(files.WorkdirError, match="config.json is damaged.*delete it and run that command"):
        loop.train_and_evaluate(config, path, progress=False)
    result = run_in_process("sample.py", "--workdir", path)
    assert result.returncode == 2 and "config.json is damaged" in one_error_line(result.stderr)
    (path / files.CONFIG_FILE).unlink()  # as the message says
    config.train.num_epochs = 3
    resumed = loop.train_and_evaluate(config, path, progress=False)
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    assert without_timing(resumed[:2]) == without_timing(history)
    assert json.loads((path / files.CONFIG_FILE).read_text())["train"]["num_epochs"] == 3


def test_damaged_metrics_lines_are_skipped_with_one_warning_and_rewritten(two_epochs, capfd):
    path, config, history = two_epochs
    lines = (path / files.METRICS_FILE).read_bytes().splitlines(keepends=True)
    (path / files.METRICS_FILE).write_bytes(b"\xff\xfe not json\n" + lines[0] + b"[3]\n" + lines[1]
                                              + b'{"epoch": 3, "train/elb')  # torn last line
    assert without_timing(files.read_metrics(path)) == without_timing(history)
    err = capfd.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "2 damaged line(s) skipped (line 1 ...)" in err
    config.train.num_epochs = 3
    resumed = loop.train_and_evaluate(config, path, progress=False)
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    assert [json.loads(line)["epoch"] for line in (path / files.METRICS_FILE).read_text().splitlines()] == [
        1, 2, 3]


def damage_checkpoint(directory: Path, how: str) -> None:
    """Damages a checkpoint as a crash or a bad disk does: every file cut to a third ("truncated"),
    64 bytes in the middle of every large file replaced ("overwritten"), its largest data file
    removed ("missing"), or the metadata of its arrays cut short ("bad_metadata")."""
    data = sorted((p for p in directory.rglob("*") if p.is_file()), key=lambda p: (-p.stat().st_size, str(p)))
    if how == "missing":
        data[0].unlink()
        return
    if how == "bad_metadata":
        metadata = directory / "default" / "_METADATA"
        metadata.write_bytes(metadata.read_bytes()[: metadata.stat().st_size // 2])
        return
    rng = np.random.default_rng(0)
    for file in data:
        if how == "truncated":
            file.write_bytes(file.read_bytes()[: file.stat().st_size // 3])
        elif file.stat().st_size > 1000:
            raw = bytearray(file.read_bytes())
            raw[len(raw) // 2: len(raw) // 2 + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
            file.write_bytes(bytes(raw))


@pytest.mark.parametrize("how", ["truncated", "overwritten", "missing", "bad_metadata"])
def test_damaged_checkpoints(two_epochs, how, capfd):
    path, config, history = two_epochs
    damage_checkpoint(path / files.CHECKPOINT_DIR / "2", how)
    config.train.num_epochs = 3  # the newest is skipped for the one before, which resumes
    resumed = loop.train_and_evaluate(config, path, progress=False)
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    assert "warning: checkpoint 2 is damaged (" in capfd.readouterr().err
    for epoch in checkpoints.checkpoint_manager(path, read_only=True).all_steps():
        damage_checkpoint(path / files.CHECKPOINT_DIR / str(epoch), how)
    config.train.num_epochs = 4  # none restores: refused rather than starting over on top of the run
    with pytest.raises(files.WorkdirError, match="every checkpoint in .* is damaged.*pass --restart"):
        loop.train_and_evaluate(config, path, progress=False)


@pytest.fixture(scope="module")
def run_with_best(tmp_path_factory, fashion_mnist):
    """A 2-epoch run with a validation split, so that it has a best checkpoint: (workdir, config)."""
    config = tiny_config(train__num_epochs=2)
    config.data.train_split, config.data.validation_split = "train[:1024]", "train[1024:1280]"
    path = tmp_path_factory.mktemp("with_best") / "run"
    loop.train_and_evaluate(config, path, progress=False)
    return path, config


def workdir_snapshot(path: Path) -> dict:
    """Every file of a workdir with its bytes, but its lock, TensorBoard events and config.json (which
    each training start writes, with the time it started)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name not in (".train.lock", files.CONFIG_FILE)
            and "tensorboard" not in p.parts}


@pytest.mark.parametrize("failure", [
    OSError(errno.EIO, "Input/output error"), MemoryError(),
    ValueError("UNKNOWN: Error reading local file \"x\": Input/output error [os_error_code='5']"),
    ValueError("NOT_FOUND: Error reading local file \"x\" [os_error_code='116']")])  # a stale NFS handle
def test_a_failure_to_read_the_newest_checkpoint_that_is_not_damage_changes_nothing(
        tmp_path, run_with_best, monkeypatch, failure):
    path = copy_run(run_with_best[0], tmp_path / "run")
    config = run_with_best[1].copy_and_resolve_references()
    assert checkpoints.latest_checkpoint(path, files.BEST_DIR) == 2  # a best newer than the older checkpoint
    before = workdir_snapshot(path)
    real_restore = ocp.CheckpointManager.restore

    def newest_fails(self, step, *args, **kwargs):
        if step == 2:
            raise failure
        return real_restore(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "restore", newest_fails)
    config.train.num_epochs = 3
    with pytest.raises(checkpoints.CheckpointReadError) as error:
        loop.train_and_evaluate(config, path, progress=False)
    message = str(error.value)
    assert "\n" not in message and message.startswith("checkpoint 2 in ")
    assert message.endswith("could not be read (" + checkpoints._reason(failure) + "); nothing in the "
                            "workdir was changed: run the same command again")
    assert workdir_snapshot(path) == before  # metrics.jsonl, the best and latest checkpoints as they were
    monkeypatch.setattr(ocp.CheckpointManager, "restore", real_restore)
    assert [r["epoch"] for r in loop.train_and_evaluate(config, path, progress=False)] == [1, 2, 3]


def test_a_checkpoint_of_another_train_state_is_refused_without_changing_anything(tmp_path, run_with_best):
    path = copy_run(run_with_best[0], tmp_path / "run")
    before = workdir_snapshot(path)
    config = run_with_best[1].copy_and_resolve_references()
    config.train.ema_decay = 0.99
    tx = train_state.make_optimizer(config.train, 16)
    _, abstract = train_state.abstract_state(config, (28, 28, 1), tx)
    manager = checkpoints.checkpoint_manager(path, read_only=True)
    refused = "checkpoint 2 in .* does not restore into this config's train state .*pass --restart"
    with pytest.raises(files.WorkdirError, match=refused):
        checkpoints.restore_latest(manager, abstract._asdict())
    manager.close()
    assert workdir_snapshot(path) == before


def test_a_damaged_best_checkpoint_falls_back_to_the_latest(tmp_path, fashion_mnist, capfd):
    config = tiny_config(train__num_epochs=2)
    config.data.train_split, config.data.validation_split = "train[:1024]", "train[1024:1280]"
    loop.train_and_evaluate(config, tmp_path, progress=False)
    best = checkpoints.latest_checkpoint(tmp_path, files.BEST_DIR)
    assert best >= 1
    damage_checkpoint(tmp_path / files.BEST_DIR / str(best), "truncated")
    _, _, epoch = trained.load_trained(tmp_path)
    assert epoch == 2 and "the best checkpoint cannot be used" in capfd.readouterr().err
    config.train.num_epochs = 3  # training names the damaged checkpoint instead of a traceback
    with pytest.raises(files.WorkdirError, match=f"holds damaged checkpoints \\(epochs {best}: "):
        loop.train_and_evaluate(config, tmp_path, progress=False)
    shutil.rmtree(tmp_path / files.BEST_DIR / str(best))  # moved away, as the message says
    assert [r["epoch"] for r in loop.train_and_evaluate(config, tmp_path, progress=False)] == [1, 2, 3]


def test_faults_outside_the_workdir_are_not_reported_as_the_workdir_s(tmp_path):
    with pytest.raises(FileNotFoundError), faults.write_errors(tmp_path / "run"):
        raise FileNotFoundError(errno.ENOENT, "No such file", str(tmp_path / "data" / "x"))
    with pytest.raises(RuntimeError), faults.write_errors(tmp_path / "run"):
        try:
            raise PermissionError(errno.EACCES, "Permission denied")
        except PermissionError:
            raise RuntimeError("a data problem, reported as such") from None
