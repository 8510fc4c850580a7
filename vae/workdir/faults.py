"""Faults while a run writes its workdir (a full disk, a read-only file system, a removed
directory) become one line that says how the run resumes, never a page of tracebacks.

Every write keeps the workdir consistent on its own (atomic files, whole metric lines, Orbax's
atomic checkpoints), so the same command resumes from the last checkpoint once the fault is
mended; `write_errors` only finds the fault behind an exception and says so.
"""

import contextlib
import errno
import os
import re
from pathlib import Path

from vae.workdir.checkpoints import latest_checkpoint
from vae.workdir.files import WorkdirError

_WRITE_FAULTS = {  # errno: (what happened, when the run can go on)
    errno.ENOSPC: ("the disk is full", "once there is room"),
    errno.EDQUOT: ("the disk quota is exceeded", "once there is room"),
    errno.EROFS: ("the file system is read-only", "once it is writable"),
    errno.EACCES: ("permission denied", "once the workdir is writable"),
    errno.EPERM: ("permission denied", "once the workdir is writable"),
    errno.ENOENT: ("the workdir or a file in it was removed", "when you want"),
    errno.EIO: ("an I/O error", "once the disk works"),
}


def write_fault(error: BaseException) -> tuple[int, str | None] | None:
    """(errno, file) of the failed write behind `error`, looking through the exceptions that wrap
    it (Orbax reports tensorstore's as ValueError("... [os_error_code='28']")), or None."""
    chain = []
    while error is not None and all(error is not seen for seen in chain):
        chain.append(error)
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    for error in chain:  # an OSError names its file
        if isinstance(error, OSError) and error.errno in _WRITE_FAULTS:
            return error.errno, error.filename
    for error in chain:
        code = re.search(r"os_error_code='(\d+)'", str(error))
        if code and int(code.group(1)) in _WRITE_FAULTS:
            return int(code.group(1)), None
    return None


@contextlib.contextmanager
def write_errors(workdir: Path):
    """Turns a failed write to the workdir (full disk, removed or read-only directory) into one
    WorkdirError line that says where the run resumes once the fault is mended."""
    try:
        yield
    except WorkdirError:
        raise
    except Exception as e:
        fault = write_fault(e)
        if fault is None or (fault[1] and not _inside(fault[1], workdir)):  # not the workdir's
            raise
        code, filename = fault
        where = f" ({filename})" if filename else ""
        what, when = _WRITE_FAULTS[code]
        epoch = latest_checkpoint(Path(workdir))
        resume = f"resumes from epoch {epoch}" if epoch else "starts the run again"
        raise WorkdirError(f"training stopped writing to {workdir}: {what}{where}; the same command "
                           f"{resume} {when}") from None


def _inside(path: str, directory: Path) -> bool:
    return os.path.abspath(path).startswith(os.path.abspath(directory) + os.sep) or (
        os.path.abspath(path) == os.path.abspath(directory))
