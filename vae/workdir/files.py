"""The workdir, the interface between training and everything downstream.

    WORKDIR/config.json     the resolved config, plus a "run" section: library versions, devices
    WORKDIR/metrics.jsonl   one JSON object per evaluated epoch (nats per image)
    WORKDIR/checkpoints/N   Orbax checkpoint after epoch N (atomic; the last few kept)
    WORKDIR/best/N          the checkpoint of the epoch with the lowest validation negative ELBO

Every write is atomic (write to a temporary file, then rename) or a single appended line, and a
resumed run first drops metric lines newer than the checkpoint it restores, so a run killed at
any moment leaves a consistent workdir.
"""

import contextlib
import datetime
import errno
import json
import os
import platform
import shutil
import sys
from importlib import metadata
from pathlib import Path

import ml_collections

from vae import atomic

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"  # the names of the layout: `checkpoints` and `lock` use them too
BEST_DIR = "best"
BEST_METRIC = "val/elbo"  # lower is better
LOCK_FILE = ".train.lock"
EVENTS_GLOB = "events.out.tfevents.*"  # TensorBoard's event files, in the workdir itself
TENSORBOARD_DIR = "tensorboard"  # where earlier versions wrote them
EVAL_FILE = "eval.json"  # the headline evaluation: the strongest of those in EVALS_DIR
EVALS_DIR = "evals"  # every evaluation, one file each, named by k, checkpoint, epoch and images
SWEEP_FILE = "sweep.json"  # a sweep's directory: its members, each a workdir (`vae.sweep.spec`)
_VERSIONED = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow-datasets", "numpy")
# Config sections that change the parameters' shapes or the data's meaning: resuming with other
# values would restore parameters into the wrong model or continue on other data.
_RESUME_KEYS = ("model", "data.name", "data.binarize", "data.train_split", "seed")
# Config fields added after workdirs were first written, with the value an older run had without
# them: an old config.json reads (and resumes) as if it named them.
_ADDED_FIELDS = {"model.mixture_components": 5, "train.skip_threshold": 0.0, "data.channels": "keep",
                 "data.background": "", "model.num_layers": 8, "model.latent_dims": [],
                 "model.latent_channels": 8, "model.ladder_merge": "residual", "model.bottleneck": 0.5,
                 "model.decoder_stages": 1}
# Fields of that kind added later (a folder's image size, split fractions and conversions): compared
# where the workdir's config.json records them, so a workdir that predates them still resumes.
_RESUME_KEYS_WHERE_RECORDED = ("data.image_size", "data.folder_validation_fraction",
                               "data.folder_test_fraction", "data.channels", "data.background")


class WorkdirError(Exception):
    """A workdir that cannot be used as asked; the message says what to do."""


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def write_config(workdir: Path, config: ml_collections.ConfigDict,
                 image_shape: tuple[int, ...] | None = None) -> None:
    """config.json: the resolved config and the run section; `image_shape` (H, W, C) is recorded
    so that reading the run back (`read_image_shape`) needs no data set."""
    import jax  # here, not at the top: the scripts that only read workdirs start without JAX

    record = json.loads(config.to_json_best_effort())
    record["run"] = {
        "versions": library_versions(),
        "num_processes": jax.process_count(),
        "num_devices": jax.device_count(),  # of every process
        "platform": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "command": " ".join(sys.argv),
        "written": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    if image_shape:
        record["run"]["image_shape"] = [int(d) for d in image_shape]
    atomic.write_text(workdir / CONFIG_FILE, json.dumps(record, indent=2) + "\n")


def _config_record(workdir: Path) -> dict | None:
    """config.json as a dict (None if there is none); WorkdirError if it is damaged."""
    path = Path(workdir) / CONFIG_FILE
    try:
        record = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        reason = f"not JSON: {e}"
    else:
        missing = [k for k in ("data", "model", "train") if not isinstance(record, dict) or k not in record]
        if not missing:
            return _with_added_fields(record)
        reason = f"no {', '.join(missing)} section"
    raise WorkdirError(f"{path} is damaged ({reason}); the training command rewrites it: delete it and "
                       "run that command again (it resumes from the checkpoints)")


def _with_added_fields(record: dict) -> dict:
    for dotted, value in _ADDED_FIELDS.items():
        *sections, name = dotted.split(".")
        section = record
        for key in sections:
            section = section.setdefault(key, {})
        section.setdefault(name, value)
    return record


def read_image_shape(workdir: Path) -> tuple[int, ...] | None:
    """(H, W, C) of the run's images as its config.json records them; None where it does not
    (a workdir written before the record)."""
    record = _config_record(workdir)
    shape = (record or {}).get("run", {}).get("image_shape")
    return tuple(int(d) for d in shape) if isinstance(shape, list) and len(shape) == 3 else None


def read_config(workdir: Path) -> ml_collections.ConfigDict:
    """The config a run was trained with (its "run" section dropped)."""
    record = _config_record(workdir)
    if record is None:
        raise WorkdirError(f"{workdir} has no {CONFIG_FILE}: it is not a training workdir")
    record.pop("run", None)
    return ml_collections.ConfigDict(record)


def check_resumable(workdir: Path, config: ml_collections.ConfigDict) -> None:
    """Refuses to resume a run whose model or data differ from `config`'s."""
    record = _config_record(workdir)
    if record is None:
        return
    old = _flatten(record)
    new = _flatten(json.loads(config.to_json_best_effort()))
    for key in sorted(set(old) | set(new)):
        compared = key.startswith(_RESUME_KEYS) or (key in _RESUME_KEYS_WHERE_RECORDED and key in old)
        if compared and old.get(key) != new.get(key):
            raise WorkdirError(
                f"{workdir} holds a run with {key}={old.get(key)!r}, but this config has "
                f"{key}={new.get(key)!r}; use another --workdir, or pass --restart to start over")


def _flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay as values."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def clear_run(workdir: Path) -> None:
    """Deletes a run's checkpoints, metrics and TensorBoard events (for --restart); other files are
    left alone."""
    shutil.rmtree(workdir / CHECKPOINT_DIR, ignore_errors=True)
    shutil.rmtree(workdir / BEST_DIR, ignore_errors=True)
    shutil.rmtree(workdir / TENSORBOARD_DIR, ignore_errors=True)
    for events in workdir.glob(EVENTS_GLOB):
        events.unlink(missing_ok=True)
    (workdir / METRICS_FILE).unlink(missing_ok=True)


# --- metrics.jsonl ------------------------------------------------------------------------------


def read_metrics(workdir: Path) -> list[dict]:
    """The metric records, one per evaluated epoch. A torn last line (a kill mid-write) is skipped;
    other unreadable lines are skipped with one warning."""
    path = Path(workdir) / METRICS_FILE
    try:
        lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []
    records, damaged = [], []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("epoch"), int):
            records.append(record)
        elif number < len(lines) and line.strip():
            damaged.append(number)
    if damaged:
        print(f"warning: {path}: {len(damaged)} damaged line(s) skipped (line {damaged[0]}"
              f"{' ...' if len(damaged) > 1 else ''}); a resumed run rewrites the file without them",
              file=sys.stderr)
    return records


def append_metrics(workdir: Path, record: dict) -> None:
    """Appends one line; a failed write (a full disk) is undone, so no torn line is left."""
    line = (json.dumps(record) + "\n").encode()
    if not (Path(workdir) / CONFIG_FILE).exists():  # removed under the run (a checkpoint write recreates it)
        raise FileNotFoundError(errno.ENOENT, "the workdir was removed during the run", str(workdir))
    fd = os.open(Path(workdir) / METRICS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            written = 0
            while written < len(line):
                written += os.write(fd, line[written:])
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def truncate_metrics(workdir: Path, last_epoch: int, rewrite: bool = True) -> list[dict]:
    """Keeps one record per epoch up to last_epoch (the restored checkpoint's); returns them.
    `rewrite=False` only reads (the processes of a multi-process run other than the writer)."""
    by_epoch = {}
    for record in read_metrics(workdir):
        if record["epoch"] <= last_epoch:
            by_epoch[record["epoch"]] = record
    kept = [by_epoch[e] for e in sorted(by_epoch)]
    path = workdir / METRICS_FILE
    if rewrite and path.exists():
        atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


# --- evaluations ----------------------------------------------------------------------------------


def evaluation_strength(result: dict) -> tuple[int, int]:
    """How strong an evaluation is: more test images first, then more importance samples."""
    return int(result["num_examples"]), int(result["iw_samples"])


def evaluation_name(result: dict) -> str:
    """evals/k5000_best-e180_n10000.json: importance samples, checkpoint and epoch, test images."""
    return (f"k{result['iw_samples']}_{result.get('checkpoint', 'latest')}-e{result['epoch']}"
            f"_n{result['num_examples']}.json")


def read_evaluations(directory: Path) -> list[tuple[Path, dict]]:
    """Every evaluation kept in `directory` (EVALS_DIR's files and eval.json), weakest first."""
    paths = sorted((Path(directory) / EVALS_DIR).glob("*.json")) + [Path(directory) / EVAL_FILE]
    found = [(path, json.loads(path.read_text())) for path in paths if path.is_file()]
    return sorted(found, key=lambda item: evaluation_strength(item[1]))


def save_evaluation(directory: Path, result: dict) -> tuple[Path, dict]:
    """Keeps `result` in EVALS_DIR and makes eval.json the strongest evaluation kept (this one
    where it is at least as strong as the previous headline); returns (this result's file, the
    headline)."""
    directory = Path(directory)
    (directory / EVALS_DIR).mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2) + "\n"
    kept = directory / EVALS_DIR / evaluation_name(result)
    atomic.write_text(kept, text)
    headline_path = directory / EVAL_FILE
    headline = json.loads(headline_path.read_text()) if headline_path.is_file() else None
    if headline is None or evaluation_strength(result) >= evaluation_strength(headline):
        atomic.write_text(headline_path, text)
        headline = result
    return kept, headline


# --- a sweep's directory ------------------------------------------------------------------------


def is_sweep(path: str | Path) -> bool:
    return (Path(path) / SWEEP_FILE).is_file()


def member_workdirs(sweep_dir: str | Path) -> dict[str, Path]:
    """Member name -> workdir, in sweep order (from sweep.json)."""
    sweep_dir = Path(sweep_dir)
    if not is_sweep(sweep_dir):
        raise WorkdirError(f"{sweep_dir} has no {SWEEP_FILE}: it is not a sweep's workdir")
    record = json.loads((sweep_dir / SWEEP_FILE).read_text())
    return {m["name"]: sweep_dir / m["name"] for m in record["members"]}


def read_members(sweep_dir: str | Path) -> dict[str, list[dict]]:
    """Member name -> its metric records, for the members that have any."""
    runs = {name: read_metrics(path) for name, path in member_workdirs(sweep_dir).items()}
    return {name: records for name, records in runs.items() if records}
