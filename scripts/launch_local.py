"""Runs one multi-process run on this machine: N processes of a script, each with its own fake CPU
devices, joined by JAX's distributed runtime on a free localhost port. For tests and laptops.

    python scripts/launch_local.py --num_processes 2 --local_devices 2 -- \
        --config configs/default.py --workdir runs/two --config.train.num_epochs=5

Everything after `--` goes to every process (scripts/train.py unless --script says otherwise), each
with `--coordinator_address localhost:PORT --num_processes N --process_id i` appended. Process 0's
output is this command's output; the others' goes to files (their tails are shown if they fail).
If any process fails, the others are stopped and this command exits with its status. Ctrl-C (or
SIGTERM) is passed to every process, which stop together after the epoch's checkpoint; a second
Ctrl-C kills them at once.
"""

import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vae import cli_flags  # no JAX: the processes start it

REPO = Path(__file__).resolve().parent.parent
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port nobody listens on now (the coordinator binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def child_env(local_devices: int) -> dict[str, str]:
    """This environment, with JAX on `local_devices` fake CPU devices."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    xla_flags = [f for f in env.get("XLA_FLAGS", "").split()
                 if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join([*xla_flags, f"--xla_force_host_platform_device_count={local_devices}"])
    return env


def _die_with_parent() -> None:
    """In the child: SIGKILL when the launcher dies, so no process outlives it (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def describe(returncode: int) -> str:
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with status {returncode}"


def exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def start(script: str, script_flags: list[str], num_processes: int, local_devices: int, port: int,
          log_dir: Path) -> tuple[list[subprocess.Popen], dict[int, Path]]:
    """Starts the processes (process 0 writing to this terminal, the others to log files)."""
    env = child_env(local_devices)
    processes, logs = [], {}
    for process_id in range(num_processes):
        command = [sys.executable, script, *script_flags, f"--coordinator_address=localhost:{port}",
                   f"--num_processes={num_processes}", f"--process_id={process_id}"]
        output = None
        if process_id > 0:
            logs[process_id] = log_dir / f"process_{process_id}.log"
            output = open(logs[process_id], "w")
        # Their own session: Ctrl-C reaches the launcher only, which passes it on exactly once.
        processes.append(subprocess.Popen(command, env=env, stdout=output, stderr=output, cwd=REPO,
                                          start_new_session=True, preexec_fn=_die_with_parent))
        if output is not None:
            output.close()
    return processes, logs


def supervise(processes: list[subprocess.Popen], grace_seconds: float) -> tuple[int | None, bool]:
    """Waits for every process. The first to fail gets the others stopped (killed after
    `grace_seconds` if they do not stop by themselves). SIGINT/SIGTERM is passed on to every
    process, a second one kills them. Returns (the first failed process or None, whether signalled)."""
    signals = []

    def forward(signum, frame):
        signals.append(signum)
        for p in processes:
            if p.poll() is None:
                p.send_signal(signum if len(signals) == 1 else signal.SIGKILL)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, forward)
    failed, deadline = None, None
    while any(p.poll() is None for p in processes):
        if failed is None:
            failed = next((i for i, p in enumerate(processes) if p.poll() not in (None, 0)), None)
            if failed is not None and not signals:  # after a signal, each one stops by itself
                print(f"launch_local: process {failed} {describe(processes[failed].returncode)}; "
                      "stopping the others", file=sys.stderr, flush=True)
                deadline = time.monotonic() + grace_seconds
        if deadline is not None and time.monotonic() > deadline:
            for p in processes:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.05)
    if failed is None:
        failed = next((i for i, p in enumerate(processes) if p.returncode != 0), None)
        if failed is not None and not signals:
            print(f"launch_local: process {failed} {describe(processes[failed].returncode)}",
                  file=sys.stderr)
    return failed, bool(signals)


def build_parser() -> cli_flags.ArgumentParser:
    parser = cli_flags.ArgumentParser(description=__doc__.splitlines()[0], usage=(
        "%(prog)s --num_processes N --local_devices D [--script S] -- SCRIPT_FLAGS..."))
    parser.add_argument("--num_processes", type=cli_flags.integer(1), default=2)
    parser.add_argument("--local_devices", type=cli_flags.integer(1), default=1,
                        help="fake CPU devices per process")
    parser.add_argument("--script", default=str(REPO / "scripts" / "train.py"))
    parser.add_argument("--port", type=cli_flags.integer(0, 65535), default=0,
                        help="coordinator port (default: a free one)")
    parser.add_argument("--grace_seconds", type=cli_flags.real(0.0), default=5.0,
                        help="after one process fails, how long the others may take to stop on their own "
                             "before they are killed")
    parser.add_argument("--log_dir", default=None,
                        help="where processes 1.. write their output (default: a new temporary directory)")
    parser.add_argument("script_flags", nargs="*", metavar="SCRIPT_FLAGS",
                        help="after --: the flags every process's script gets")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    port = args.port or free_port()
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="launch_local_"))
    log_dir.mkdir(parents=True, exist_ok=True)
    processes, logs = start(args.script, args.script_flags, args.num_processes, args.local_devices, port,
                            log_dir)
    print(f"launch_local: {args.num_processes} processes x {args.local_devices} CPU devices on "
          f"localhost:{port}, pids {' '.join(str(p.pid) for p in processes)}; processes 1.. write "
          f"to {log_dir}", file=sys.stderr, flush=True)
    failed, signalled = supervise(processes, args.grace_seconds)
    if failed is None:
        return 0
    if failed in logs and not signalled:
        print(f"launch_local: the last lines of process {failed} ({logs[failed]}):\n{tail(logs[failed])}",
              file=sys.stderr)
    return exit_status(processes[failed].returncode)


if __name__ == "__main__":
    sys.exit(main())
