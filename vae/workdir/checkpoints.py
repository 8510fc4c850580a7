"""Orbax checkpoints of a workdir: WORKDIR/checkpoints/N (the last few) and WORKDIR/best/N, written
atomically, restored for resuming (read-write) or for reading (read-only, also from a workdir
that cannot be written). Orbax is imported where a checkpoint is opened, saved or restored: which
epochs a workdir holds, and why a restore failed, are read without it."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from vae.workdir.files import BEST_DIR, BEST_METRIC, CHECKPOINT_DIR, WorkdirError

if TYPE_CHECKING:
    import orbax.checkpoint as ocp


def checkpoint_manager(workdir: Path, keep: int = 3, read_only: bool = False,
                       subdir: str | None = None) -> ocp.CheckpointManager:
    """The latest `keep` checkpoints in WORKDIR/checkpoints, or with subdir=BEST_DIR the one with
    the lowest validation negative ELBO (Orbax keeps it by the metric saved with it)."""
    import orbax.checkpoint as ocp

    best = subdir == BEST_DIR
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep, create=not read_only, read_only=read_only,
        save_interval_steps=0 if read_only else 1,
        best_fn=(lambda metrics: metrics[BEST_METRIC]) if best else None, best_mode="min")
    directory = (Path(workdir) / (subdir or CHECKPOINT_DIR)).absolute()
    try:
        with _quiet_read_only_notes():
            return ocp.CheckpointManager(directory, options=options)
    except (ValueError, KeyError, TypeError) as e:  # Orbax reads every step's metadata
        damaged = [p.name for p in sorted(directory.iterdir()) if p.name.isdigit() and not _metadata_ok(p)]
        raise WorkdirError(
            f"{directory} holds damaged checkpoints (epochs {', '.join(damaged) or '?'}: "
            f"{type(e).__name__}: {str(e).splitlines()[0][:120]}); move them away and run again") from None


class _ReadOnlyNotes(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "read only" not in record.getMessage() and "read_only=True" not in record.getMessage()


@contextlib.contextmanager
def _quiet_read_only_notes():
    """Orbax notes that a manager opened read-only is read-only (through absl's logger, once per
    manager): what sampling, evaluating and the notebooks ask for, so not worth a line."""
    note_filter = _ReadOnlyNotes()
    logger = logging.getLogger("absl")
    logger.addFilter(note_filter)
    try:
        yield
    finally:
        logger.removeFilter(note_filter)


def _metadata_ok(step_dir: Path) -> bool:
    try:
        json.loads((step_dir / "_CHECKPOINT_METADATA").read_bytes())
        return True
    except (OSError, ValueError):
        return False


def latest_checkpoint(workdir: Path, subdir: str = CHECKPOINT_DIR) -> int:
    """The newest finished checkpoint's epoch in WORKDIR/subdir (0 if none or unreadable)."""
    try:
        return max((int(p.name) for p in (Path(workdir) / subdir).iterdir() if p.name.isdigit()), default=0)
    except OSError:
        return 0


def has_checkpoints(workdir: Path, subdir: str = CHECKPOINT_DIR) -> bool:
    path = Path(workdir) / subdir
    return path.is_dir() and any(p.name.isdigit() for p in path.iterdir())


def close_managers(*managers: ocp.CheckpointManager) -> None:
    """Waits for every manager's saves and closes them all, even when one failed (then raises the
    first failure): a manager left open keeps threads that outlive the run."""
    failures = []
    for manager in managers:
        try:
            manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - re-raised below, after every manager is closed
            failures.append(e)
        try:
            manager.close()
        except Exception as e:  # noqa: BLE001
            failures.append(e)
    if failures:
        raise failures[0]


def save_checkpoint(manager: ocp.CheckpointManager, epoch: int, state: dict,
                    metrics: dict | None = None) -> None:
    """Starts an atomic save of `state` as checkpoint `epoch` (written in the background)."""
    import orbax.checkpoint as ocp

    manager.save(epoch, args=ocp.args.StandardSave(state), metrics=metrics)


class CheckpointReadError(WorkdirError):
    """A checkpoint could not be read for a reason that does not show it is damaged (an I/O or
    memory error, say): nothing was changed, and the same command may succeed."""


# How tensorstore (through Orbax) reports a checkpoint whose files are cut short, missing or
# overwritten: the status code that starts its ValueError. An error of the operating system
# carries os_error_code='N' as well; those are not damage unless N is ENOENT (a missing file).
_DAMAGE_CODES = ("DATA_LOSS:", "OUT_OF_RANGE:", "NOT_FOUND:", "FAILED_PRECONDITION:")
# How Orbax reports a checkpoint that is whole but of another train state (another optimizer,
# parameter average or model size).
_MISMATCH = ("Structure mismatch", "tree structures do not match", "is not compatible with the stored shape")


def _chain(error: BaseException) -> list[BaseException]:
    chain = []
    while error is not None and all(error is not seen for seen in chain):
        chain.append(error)
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return chain


def restore_failure(error: BaseException, step_dir: Path) -> str:
    """Why a checkpoint in `step_dir` did not restore: "damaged" only where the error shows its files
    are (metadata that is not JSON or not text, a file missing from a checkpoint that is there,
    tensorstore's data-loss, out-of-range, not-found or failed-precondition status without an OS
    error behind it), "mismatch" where it is whole but of another train state, else "unknown"
    (an I/O or memory error, or anything else: the checkpoint may well be fine)."""
    chain = _chain(error)
    if any(isinstance(e, MemoryError) or (isinstance(e, OSError) and not isinstance(e, FileNotFoundError))
           for e in chain):
        return "unknown"
    os_codes = {int(code) for e in chain for code in re.findall(r"os_error_code='?(\d+)", str(e))}
    if os_codes - {errno.ENOENT}:
        return "unknown"
    for e in chain:
        text = str(e)
        if isinstance(e, ValueError) and any(marker in text for marker in _MISMATCH):
            return "mismatch"
        if isinstance(e, json.JSONDecodeError | UnicodeDecodeError):
            return "damaged"
        if isinstance(e, FileNotFoundError) and step_dir.is_dir():
            return "damaged"
        if isinstance(e, ValueError) and text.startswith(_DAMAGE_CODES):
            return "damaged"
    return "unknown"


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:200]}"


def restore_latest(manager: ocp.CheckpointManager, abstract_state, step: int | None = None):
    """(epoch, state) of the newest checkpoint that restores (or of `step`), or (0, None) if there
    is none.

    A checkpoint whose files are damaged (`restore_failure`) is reported on stderr and skipped for
    the one before it; if none restores, WorkdirError (training on would overwrite the run). Any
    other failure to read one (an I/O or memory error, say) is CheckpointReadError at once, with
    nothing skipped: the caller has changed nothing and the same command may succeed. A checkpoint
    of another train state is WorkdirError at once.
    """
    import orbax.checkpoint as ocp

    steps = sorted(manager.all_steps(), reverse=True)
    if step is not None:
        if step not in steps:
            raise WorkdirError(f"no checkpoint for epoch {step}; available: {sorted(steps)}")
        steps = [step]
    first_error = None
    for candidate in steps:
        try:
            state = manager.restore(candidate, args=ocp.args.StandardRestore(abstract_state))
        except Exception as e:  # noqa: BLE001 - sorted below: damaged, of another state, or unknown
            reason = _reason(e)
            failure = restore_failure(e, Path(manager.directory) / str(candidate))
            if failure == "unknown":
                raise CheckpointReadError(
                    f"checkpoint {candidate} in {manager.directory} could not be read ({reason}); nothing "
                    "in the workdir was changed: run the same command again") from e
            if failure == "mismatch":
                raise WorkdirError(
                    f"checkpoint {candidate} in {manager.directory} does not restore into this config's "
                    f"train state ({reason}): train.optimizer, train.lr_schedule, train.ema_decay, "
                    "train.grad_clip_norm or the model differ from the run's; pass --restart to start "
                    "over") from None
            first_error = first_error or reason
            if step is not None:
                raise WorkdirError(f"checkpoint {candidate} is damaged ({reason})") from None
            print(f"warning: checkpoint {candidate} is damaged ({reason}); trying an older one",
                  file=sys.stderr)
            continue
        return candidate, state
    if steps:
        raise WorkdirError(
            f"every checkpoint in {manager.directory} (epochs {sorted(steps)}) is damaged ({first_error}); "
            "pass --restart to start over")
    return 0, None


def restore_for_reading(workdir: Path, abstract_state, epoch: int | None, best: bool):
    """(epoch, state) for sampling and evaluating: the best checkpoint (falling back to the latest,
    with a warning, if it cannot be restored), the latest, or one epoch's."""
    if best:
        try:
            return _restore_read_only(workdir, abstract_state, None, BEST_DIR)
        except CheckpointReadError:
            raise
        except WorkdirError as e:
            print(f"warning: the best checkpoint cannot be used ({e}); using the latest", file=sys.stderr)
    return _restore_read_only(workdir, abstract_state, epoch, None)


def _restore_read_only(workdir: Path, abstract_state, epoch: int | None, subdir: str | None):
    manager = checkpoint_manager(workdir, read_only=True, subdir=subdir)
    try:
        return restore_latest(manager, abstract_state, step=epoch)
    finally:
        manager.close()
