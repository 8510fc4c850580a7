"""One training per workdir at a time: an exclusive flock on WORKDIR/.train.lock."""

import contextlib
import fcntl
import os
import platform
import sys
from pathlib import Path

from vae.workdir.files import LOCK_FILE, WorkdirError


@contextlib.contextmanager
def training_lock(workdir: Path):
    """Holds WORKDIR/.train.lock (an exclusive flock) while a run trains the workdir.

    A second training on the same workdir is refused at once, naming the process that holds the
    lock. The kernel drops the lock when its holder exits in any way (SIGKILL included), so it
    never outlives a run. Sampling and evaluating only read a workdir and take no lock. A run
    that wrote nothing (it failed before its first file) leaves no workdir behind where it made it.
    """
    workdir = Path(workdir)
    created = not workdir.exists()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(workdir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise WorkdirError(f"cannot use {workdir} as a workdir: {e.strerror or e}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            raise WorkdirError(
                f"{workdir} is being trained by {holder}; wait for it to finish or stop it "
                "(sampling and evaluating it meanwhile is fine)") from None
        holder = f"process {os.getpid()} on {platform.node()} ({' '.join(sys.argv)[:200]})"
        with contextlib.suppress(OSError):  # the lock holds even where its note cannot be written
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.encode(), 0)
        yield
    finally:
        if created and [p.name for p in workdir.iterdir()] == [LOCK_FILE]:  # a failed start
            with contextlib.suppress(OSError):
                os.unlink(workdir / LOCK_FILE)
                workdir.rmdir()
        os.close(fd)  # releases the flock
