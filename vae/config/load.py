"""Config files and their fields as text: loading a config file, setting a field from `FIELD=VALUE`
typed like the field's current value, and the comment each field carries in its file.

What the scripts' `--config FILE --config.FIELD=VALUE` (`vae.cli_flags`), a sweep's
`--sweep FIELD=V1,V2` (`vae.sweep.spec`) and the benchmark's `--set` share. A config file defines
`get_config() -> ml_collections.ConfigDict`; variants import `configs/default.py` and change a few
fields. Imports nothing of the package (and no JAX): loading a config is light.
"""

import ast
import difflib
import importlib.util
import io
import sys
import tokenize
from pathlib import Path

import ml_collections

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


class FieldError(ValueError):
    """A config file or field that cannot be used as asked; the message says what to change."""


def _config_roots(path: Path) -> list[Path]:
    """Where `import configs` finds the repository's config files while a config file loads (a
    variant imports the file it changes: `from configs import default`; the package installs no
    `configs`): the folder above the file's own `configs/`, and the checkout this package runs from."""
    candidates = [path.resolve().parent.parent, Path(__file__).resolve().parents[2]]
    return [root for root in candidates if (root / "configs" / "__init__.py").is_file()]


def load_config(path: str | Path) -> ml_collections.ConfigDict:
    """`get_config()` of the config file at `path`."""
    path = Path(path)
    if not path.is_file():
        raise FieldError(f"no config file {str(path)!r}")
    spec = importlib.util.spec_from_file_location(f"config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    added = [str(root) for root in _config_roots(path) if str(root) not in sys.path]
    sys.path[:0] = added
    try:
        spec.loader.exec_module(module)
    except (SyntaxError, ImportError, NameError, AttributeError, TypeError, ValueError) as e:
        raise FieldError(f"the config file {path} does not load: {type(e).__name__}: {e}") from None
    finally:
        for root in added:
            sys.path.remove(root)
    if not callable(getattr(module, "get_config", None)):
        raise FieldError(f"the config file {path} defines no get_config()")
    config = module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise FieldError(f"get_config() of {path} returns a {type(config).__name__}, not a ConfigDict")
    return config


def leaves(config: ml_collections.ConfigDict, prefix: str = ""):
    """(dotted field, value) of every field, in the config's order."""
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _node_and_leaf(config, field: str):
    *parents, leaf = field.split(".")
    node = config
    for parent in parents:
        node = node[parent]
    return node, leaf


def get_field(config, field: str):
    """The value of a dotted field; FieldError naming the closest fields if there is none."""
    try:
        node, leaf = _node_and_leaf(config, field)
        value = node[leaf]
    except (KeyError, AttributeError, TypeError):
        known = [name for name, _ in leaves(config)]
        close = difflib.get_close_matches(field, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise FieldError(f"unknown config field {field}{hint}") from None
    if isinstance(value, ml_collections.ConfigDict):
        raise FieldError(f"{field} is a section, not a field; name one of its fields")
    return value


def parse_value(field: str, text: str, current):
    """`text` as a value of the field whose value is now `current`: a string as it is; a bool from
    true/false (1/0, yes/no); an int; a float (ints widen, inf and nan pass: the config checks say
    what is allowed); a tuple from Python syntax or comma-separated items (`300,300`, `(300,)`,
    `()`, a single item)."""
    text = text.strip()
    if isinstance(current, str):
        return text
    if isinstance(current, bool):
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise FieldError(f"{field}: {text!r} is not a bool (true or false)")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            raise FieldError(f"{field}: {text!r} is not an integer (now {current!r})") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise FieldError(f"{field}: {text!r} is not a number (now {current!r})") from None
    if isinstance(current, tuple | list):
        if text in ("", "()", "[]"):
            return ()
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise FieldError(f"{field}: {text!r} is not a tuple of numbers or strings, e.g. 300,300 "
                             f"(now {current!r})") from None
        return tuple(value) if isinstance(value, tuple | list) else (value,)
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def set_field(config, field: str, value) -> None:
    """Sets an existing dotted field (a locked config refuses new ones)."""
    get_field(config, field)
    node, leaf = _node_and_leaf(config, field)
    try:
        node[leaf] = value
    except TypeError as e:  # ConfigDict keeps each field's type
        raise FieldError(f"{field}: {e}") from None


def override(config, assignment: str) -> None:
    """Sets one field from 'FIELD=VALUE', the value typed like the field's (`parse_value`)."""
    field, sep, text = assignment.partition("=")
    field = field.strip().removeprefix("config.")
    if not sep or not field:
        raise FieldError(f"{assignment!r}: expected FIELD=VALUE, e.g. train.beta=2")
    set_field(config, field, parse_value(field, text, get_field(config, field)))


# --- Each field's comment ------------------------------------------------------------------------


def _config_field(target) -> str | None:
    """'a.b' for an assignment target `config.a.b`, else None."""
    parts = []
    while isinstance(target, ast.Attribute):
        parts.append(target.attr)
        target = target.value
    if isinstance(target, ast.Name) and target.id == "config" and parts:
        return ".".join(reversed(parts))
    return None


def field_comments(path: str | Path) -> dict[str, str]:
    """Each field's comment in a config file and in the config files it imports
    (`from configs import default`): the comment lines just above `config.a.b = value`, the comment
    after it on its line, and the comment lines below it that are indented (`#   continued`)."""
    path = Path(path)
    if not path.is_file():
        return {}
    source = path.read_text()
    tree = ast.parse(source)
    comments: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "configs":
            for alias in node.names:
                comments |= field_comments(path.parent / f"{alias.name}.py")
    comment_at, code_lines = {}, set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comment_at[token.start[0]] = token.string[1:]
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                                tokenize.ENDMARKER):
            code_lines.update(range(token.start[0], token.end[0] + 1))
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            continue
        field = _config_field(node.targets[0])
        if field is None:
            continue
        above, line = [], node.lineno - 1
        while line in comment_at and line not in code_lines:
            above.insert(0, comment_at[line].strip())
            line -= 1
        after = [comment_at[n].strip() for n in range(node.lineno, node.end_lineno + 1) if n in comment_at]
        line = node.end_lineno + 1
        while line in comment_at and line not in code_lines and comment_at[line].startswith("  "):
            after.append(comment_at[line].strip())
            line += 1
        text = " ".join(above + after).strip()
        if text:
            comments[field] = text
    return comments
