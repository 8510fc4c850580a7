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

import ast
import copy
import dataclasses
import datetime
import itertools
import json
import sys
from pathlib import Path

import ml_collections

from vae.train import config_checks, state
from vae.workdir import files

# Hyper fields where 0 switches a transform off, which changes the state's structure.
_SWITCHES = ("ema_decay", "grad_clip_norm")
_NAME_UNSAFE = str.maketrans({"/": "_", " ": "", "'": "", '"': ""})


class SweepError(config_checks.ConfigError):
    """A sweep that cannot be run as asked; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class Member:
    name: str  # its directory under the sweep's, e.g. "beta=0.5,seed=1"
    values: dict  # config field -> this member's value
    config: ml_collections.ConfigDict


def _node_and_leaf(config, field: str):
    *parents, leaf = field.split(".")
    node = config
    for parent in parents:
        node = node[parent]
    return node, leaf


def _field_value(config, field: str):
    try:
        node, leaf = _node_and_leaf(config, field)
        value = node[leaf]
    except (KeyError, AttributeError, TypeError):
        raise SweepError(f"{field}: unknown config field") from None
    if isinstance(value, ml_collections.ConfigDict):
        raise SweepError(f"{field}: a section, not a field; name one of its fields")
    return value


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


def _coerce(field: str, text: str, current):
    """One value typed like the field's current one: ints widen to floats, lists become tuples."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if isinstance(current, str):
        return text
    if isinstance(current, bool):
        ok = isinstance(value, bool)
    elif isinstance(current, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(current, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(current, tuple | list):
        ok = isinstance(value, tuple | list)
        value = tuple(value) if ok else value
    else:
        ok = False
    if not ok:
        raise SweepError(f"{field}: {text!r} does not fit the field's type "
                         f"({type(current).__name__}, now {current!r})")
    return value


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
        current = _field_value(config, field)
        values = [_coerce(field, t, current) for t in texts]
    except SweepError as e:
        raise SweepError(f"--sweep {e}") from None
    if len(set(map(repr, values))) < len(values):
        raise SweepError(f"--sweep {spec!r}: a value is repeated")
    return field, values


def override(config: ml_collections.ConfigDict, assignment: str) -> None:
    """Sets one field from 'FIELD=VALUE', the value typed like the field's (`_coerce`)."""
    field, sep, text = assignment.partition("=")
    if not sep or not field.strip():
        raise SweepError(f"{assignment!r}: expected FIELD=VALUE, e.g. train.beta=2")
    field = field.strip()
    current = _field_value(config, field)
    node, leaf = _node_and_leaf(config, field)
    node[leaf] = _coerce(field, text.strip(), current)


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
            node, leaf = _node_and_leaf(member_config, field)
            node[leaf] = value
        members.append(Member(member_name(values), values, member_config))
    names = [m.name for m in members]
    if len(set(names)) < len(names):
        raise SweepError(f"two members get the same name among {names}; give distinct values")
    return members


def program_key(config: ml_collections.ConfigDict) -> str:
    """What a compiled program fixes: the whole config but the numbers of `state.Hyper` (of which
    only whether the EMA and clipping are on counts)."""
    record = json.loads(config.to_json_best_effort())
    for name, field in state.HYPER_FIELDS.items():
        node, leaf = _node_and_leaf(record, field)
        node[leaf] = node[leaf] > 0 if name in _SWITCHES else None
    return json.dumps(record, sort_keys=True)


def group_members(members: list[Member]) -> list[list[Member]]:
    """Members that can train as one vmapped program, in sweep order."""
    groups: dict[str, list[Member]] = {}
    for member in members:
        groups.setdefault(program_key(member.config), []).append(member)
    return list(groups.values())


def axes_of(members: list[Member]) -> dict[str, list]:
    """Each swept field with its values, in sweep order."""
    axes: dict[str, list] = {}
    for member in members:
        for field, value in member.values.items():
            if value not in axes.setdefault(field, []):
                axes[field].append(value)
    return axes


def plan(groups: list[list[Member]], loop: str = "vmap") -> str:
    """One line on how the members are trained (`loop`: the member loop, see `program.py`)."""
    count = sum(len(g) for g in groups)
    how = f"the step {'vmapped' if loop == 'vmap' else 'unrolled'} over the members' stacked states"
    if len(groups) == 1:
        return f"{count} member{'s' * (count > 1)} train together as one compiled program, {how}"
    keys = [json.loads(program_key(g[0].config)) for g in groups]

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
    files.atomic_write_text(sweep_dir / files.SWEEP_FILE, json.dumps(record, indent=2) + "\n")


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
