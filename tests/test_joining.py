"""Joining a multi-process run without running one: flag checks, cluster detection, the rows each
process feeds, and scripts/launch_local.py's group handling (on stand-in scripts, no JAX)."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tests.conftest import REPO
from vae.train import distributed
from vae.train.distributed import JoinError, Settings

SLURM_STEP = {"SLURM_JOB_ID": "17", "SLURM_STEP_NODELIST": "node[01-02]", "SLURM_NTASKS": "4",
              "SLURM_PROCID": "1", "SLURM_LOCALID": "1"}


@pytest.mark.parametrize("environ, cluster", [
    ({}, None),
    (SLURM_STEP, "SLURM"),
    (SLURM_STEP | {"SLURM_NTASKS": "1"}, None),  # one task is one process: nothing to join
    ({"SLURM_JOB_ID": "17", "SLURM_NTASKS": "4"}, None),  # an allocation, but not inside srun
    ({"OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.0.0.1:34911", "OMPI_COMM_WORLD_SIZE": "2"}, "Open MPI"),
    ({"TPU_WORKER_HOSTNAMES": "t1,t2"}, "Cloud TPU"),
])
def test_detect_cluster(environ, cluster):
    assert distributed.detect_cluster(environ) == cluster


@pytest.mark.parametrize("settings, cluster, message", [
    (Settings(num_processes=2), None, "missing --coordinator_address, --process_id"),
    (Settings(coordinator_address="h:1", num_processes=2, process_id=2), None, "--process_id must be in"),
    (Settings(coordinator_address="h:1", num_processes=0, process_id=0), None, "--num_processes must be"),
    (Settings(coordinator_address="node001", num_processes=2, process_id=0), None, "host:port"),
    (Settings(heartbeat_timeout_seconds=0), None, "--heartbeat_timeout_seconds must be at least 1"),
])
def test_bad_joining_flags_are_refused(settings, cluster, message):
    with pytest.raises(JoinError, match=re.escape(message)):
        distributed.check_settings(settings, cluster)


def test_a_detected_cluster_fills_in_missing_flags():
    distributed.check_settings(Settings(coordinator_address="node01:1234"), "SLURM")  # no error


def test_no_flags_and_no_cluster_is_one_process():
    assert distributed.join(Settings(), environ={}) is None
    assert not jax.distributed.is_initialized()


def test_each_process_feeds_the_rows_its_devices_hold():
    mesh = distributed.make_mesh()
    shape = (3, 8, 5)  # steps x batch x pixels, the batch axis sharded
    rows = distributed.process_rows(NamedSharding(mesh, P(None, "data")), shape, axis=1)
    np.testing.assert_array_equal(rows, np.arange(8))  # one process holds every device
    assert list(distributed.process_rows(NamedSharding(mesh, P()), (6, 2))) == list(range(6))
    host = np.arange(16, dtype=np.int32).reshape(8, 2)
    batch = distributed.global_batch(host, NamedSharding(mesh, P("data")))
    assert len(batch.sharding.device_set) == 4
    np.testing.assert_array_equal(np.asarray(batch), host)


def test_train_script_refuses_partial_joining_flags(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "train.py"), "--workdir",
                             str(tmp_path), "--num_processes", "2"], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert "missing --coordinator_address, --process_id" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


# --- scripts/launch_local.py on a stand-in script ------------------------------------------------

STAND_IN = textwrap.dedent("""
    import argparse, os, pathlib, signal, sys, time
    parser = argparse.ArgumentParser()
    for name in ("--coordinator_address", "--num_processes", "--process_id", "--mode", "--dir"):
        parser.add_argument(name)
    args = parser.parse_args()
    print(f"process {args.process_id} of {args.num_processes} at {args.coordinator_address}, "
          f"{os.environ['XLA_FLAGS']}", flush=True)
    if args.mode == "fail" and args.process_id == "1":
        sys.exit(3)
    def stop(signum, frame):
        pathlib.Path(args.dir, f"stopped_{args.process_id}").touch()
        sys.exit(128 + signum)
    signal.signal(signal.SIGINT, stop)
    pathlib.Path(args.dir, f"ready_{args.process_id}").touch()
    time.sleep(60)
""")


def start_launcher(tmp_path, mode):
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    command = [sys.executable, os.path.join(REPO, "scripts", "launch_local.py"), "--num_processes", "3",
               "--local_devices", "2", "--grace_seconds", "0.5", "--script", str(script), "--",
               "--mode", mode, "--dir", str(tmp_path)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def pids_of(stderr: str) -> list[int]:
    return [int(p) for p in re.search(r"pids ([\d ]+);", stderr).group(1).split()]


def assert_gone(pids):
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_launcher_stops_the_group_when_one_process_fails(tmp_path):
    start = time.monotonic()
    launcher = start_launcher(tmp_path, "fail")
    stdout, stderr = launcher.communicate(timeout=60)
    assert launcher.returncode == 3 and time.monotonic() - start < 30
    assert re.search(r"process 0 of 3 at localhost:\d+, .*--xla_force_host_platform_device_count=2", stdout)
    assert "process 1 exited with status 3; stopping the others" in stderr
    assert "process 1 of 3" in stderr  # the tail of the failed process's output
    assert_gone(pids_of(stderr))


def test_launcher_passes_ctrl_c_to_every_process(tmp_path):
    launcher = start_launcher(tmp_path, "wait")
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("ready_*"))) < 3:
        assert time.monotonic() < deadline and launcher.poll() is None
        time.sleep(0.02)
    launcher.send_signal(signal.SIGINT)
    _, stderr = launcher.communicate(timeout=60)
    assert launcher.returncode == 128 + signal.SIGINT
    assert sorted(p.name for p in tmp_path.glob("stopped_*")) == ["stopped_0", "stopped_1", "stopped_2"]
    assert_gone(pids_of(stderr))
