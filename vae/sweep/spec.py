"""What a sweep is: its axes (`--sweep FIELD=V1,V2,...`), their cross product as named members, the
groups that can share one compiled program, and the sweep's directory.

    SWEEP/sweep.json              the axes, the members (name, values, group) and the command
    SWEEP/beta=0.5,seed=1/        a member: exactly a single run's workdir (`vae.workdir.files`)
    SWEEP/rate_distortion.png     test KL against test reconstruction, one point per member

Members that differ only in the numbers of `state.Hyper` (β, free bits, KL warm-up, learning
rate, EMA decay, weight decay, clipping norm, seed) share a program. Any other difference (latent
size, widths, architecture, epochs, data) needs a program of its own, and so does switching the
EMA or gradient clipping off (0): the optimizer's state has another structure.
"""

import copy
import dataclasses
import datetime
import itertools
import json
import sys
from pathlib import Path

import ml_collections

from vae import atomic
from vae.config import ConfigError, FieldError, get_field, parse_value, set_field
from vae.train import state
from vae.workdir import files

_NAME_UNSAFE = str.maketrans({"/": "_", " ": "", "'": "", '"': ""})


class SweepError(ConfigError):
    """A sweep that cannot be run as asked; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class Member:
    name: str  # its directory under the sweep's, e.g. "beta=0.5,seed=1"
    values: dict  # config field -> this member's value
    config: ml_collections.ConfigDict


def _node_and_leaf(record: dict, field: str):
    """The dict holding a dotted field of a config's JSON record, and the field's last name."""
    *parents, leaf = field.split(".")
    for parent in parents:
        record = record[parent]
    return record, leaf


def _split_values(text: str) -> list[str]:
    """'0.5,1,(400,),(200,200)' -> ['0.5', '1', '(400,)', '(200,200)']: commas outside brackets."""
    items, depth, current = [], 0, ""
    for char in text:
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    return [item.strip() for item in [*items, current]]


def parse_axis(spec: str, config: ml_collections.ConfigDict) -> tuple[str, list]:
    """'train.beta=0.5,1,2' -> ('train.beta', [0.5, 1.0, 2.0]), typed like the config's field."""
    field, sep, text = spec.partition("=")
    field = field.strip().removeprefix("config.")
    if not sep or not field or not text.strip():
        raise SweepError(f"--sweep {spec!r}: expected FIELD=V1,V2,..., e.g. train.beta=0.5,1,2")
    texts = _split_values(text)
    if "" in texts:
        raise SweepError(f"--sweep {spec!r}: an empty value")
    try:
        current = get_field(config, field)
        values = [parse_value(field, t, current) for t in texts]
    except FieldError as e:
        raise SweepError(f"--sweep {e}") from None
    if len(set(map(repr, values))) < len(values):
        raise SweepError(f"--sweep {spec!r}: a value is repeated")
    return field, values


def _format(value) -> str:
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)
    if isinstance(value, tuple | list):
        return "-".join(_format(v) for v in value)
    return str(value)


def member_name(values: dict) -> str:
    """'beta=0.5,seed=1': the fields' last parts (whole paths where two share a last part)."""
    lasts = [field.rsplit(".", 1)[-1] for field in values]
    parts = []
    for field, last in zip(values, lasts):
        key = last if lasts.count(last) == 1 else field
        parts.append(f"{key}={_format(values[field])}".translate(_NAME_UNSAFE))
    return ",".join(parts)


def make_members(config: ml_collections.ConfigDict, axes: list[tuple[str, list]]) -> list[Member]:
    """The cross product of the axes (the first one outermost), each a copy of `config`."""
    fields = [field for field, _ in axes]
    if len(set(fields)) < len(fields):
        raise SweepError(f"a field is swept twice: {', '.join(fields)}")
    members = []
    for combination in itertools.product(*(values for _, values in axes)):
        values = dict(zip(fields, combination))
        member_config = copy.deepcopy(config)
        for field, value in values.items():
            set_field(member_config, field, value)
        members.append(Member(member_name(values), values, member_config))
    names = [m.name for m in members]
    if len(set(names)) < len(names):
        raise SweepError(f"two members get the same name among {names}; give distinct values")
    return members


def axes_of(members: list[Member]) -> dict[str, list]:
    """Each swept field with its values, in sweep order."""
    axes: dict[str, list] = {}
    for member in members:
        for field, value in member.values.items():
            if value not in axes.setdefault(field, []):
                axes[field].append(value)
    return axes


def group_members(members: list[Member]) -> list[list[Member]]:
    """The members that can train as one compiled program (`state.program_key`), in their order."""
    groups: dict[str, list[Member]] = {}
    for m in members:
        groups.setdefault(state.program_key(m.config), []).append(m)
    return list(groups.values())


def plan(groups: list[list[Member]], loop: str = "vmap") -> str:
    """One line on how the members are trained (`loop`: the member loop, see `vae.sweep.program`)."""
    count = sum(len(g) for g in groups)
    how = ("the step vmapped over the members' stacked states" if loop == "vmap"
           else "each member's step in turn")
    if len(groups) == 1:
        return f"{count} member{'s' * (count > 1)} train together as one compiled program, {how}"
    keys = [json.loads(state.program_key(g[0].config)) for g in groups]

    def in_key(key, field):
        node, leaf = _node_and_leaf(key, field)
        return json.dumps(node[leaf])

    splitting = [field for field in axes_of([m for g in groups for m in g])
                 if len({in_key(key, field) for key in keys}) > 1]
    return (f"{count} members in {len(groups)} groups of {'/'.join(str(len(g)) for g in groups)}, one "
            f"compiled program each, trained one after another: {', '.join(splitting)} changes the "
            f"program (shapes or structure); in each, {how}")


def write_sweep_file(sweep_dir: Path, groups: list[list[Member]]) -> None:
    record = {
        "axes": axes_of([m for g in groups for m in g]),
        "members": [{"name": m.name, "values": m.values, "group": g}
                    for g, group in enumerate(groups) for m in group],
        "command": " ".join(sys.argv),
        "written": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(sweep_dir / files.SWEEP_FILE, json.dumps(record, indent=2) + "\n")


def curves(sweep_dir: str | Path) -> dict[str, list[str]]:
    """Members joined by a line in the rate-distortion plot: along the first axis, one line for
    each combination of the other axes' values."""
    record = json.loads((Path(sweep_dir) / files.SWEEP_FILE).read_text())
    first = next(iter(record["axes"]))
    lines: dict[str, list[str]] = {}
    for m in record["members"]:
        rest = {f: v for f, v in m["values"].items() if f != first}
        lines.setdefault(member_name(rest) if rest else first, []).append(m["name"])
    return lines
