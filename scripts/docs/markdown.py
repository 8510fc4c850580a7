"""Generated sections of the docs' Markdown pages: the block between a `<!-- NAME:begin -->` and a
`<!-- NAME:end -->` marker is rewritten by the command that owns it (scripts/speed_table.py,
scripts/make_docs.py), and the text around it is left as it is. And how a generated page shows a
folder or a command (`shown_path`, `shown_command`): never with an absolute path of the machine
that made it, which a reader does not have.

A tool of the scripts and benchmarks that write the docs, not of the library: they import it as
`scripts.docs.markdown` with the repository's root on sys.path. Imports nothing of the package.
"""

import os
import re
import shlex

RUNS = "runs"  # where the docs' commands put workdirs: runs/NAME
# A workdir in a recorded command: --workdir W or --workdir=W (also make_docs' --runs_dir).
_WORKDIR_FLAG = re.compile(r"^--(?:workdir|runs_dir|runs-dir)(?:=(.*))?$")


def markers(name: str) -> tuple[str, str]:
    """The begin and end markers of the generated section `name`."""
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def replace_section(text: str, name: str, block: str, path: str = "the page") -> str:
    """`text` with the section `name` (markers included) replaced by the markers around `block`.
    Refuses (ValueError) a page without exactly one pair of the markers in order."""
    begin, end = markers(name)
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ValueError(f"{path} needs one {begin} ... {end} pair around its generated section")
    return text[:text.index(begin)] + f"{begin}\n{block.strip()}\n{end}" + text[text.index(end) + len(end):]


def shown_path(path: str, cwd: str | None = None) -> str:
    """A folder as a page shows it: a relative path as given; an absolute one relative to the
    current directory (`cwd`) where it lies under it, else from its last folder named runs on
    (/data/runs/docs/x: runs/docs/x), else as runs/NAME: the folder the docs' commands use."""
    if not os.path.isabs(path):
        return path
    path, cwd = os.path.normpath(path), os.path.abspath(cwd or os.getcwd())
    if path != cwd and os.path.commonpath([path, cwd]) == cwd:
        return os.path.relpath(path, cwd)
    parts = path.split(os.sep)
    if RUNS in parts:
        return "/".join(parts[len(parts) - 1 - parts[::-1].index(RUNS):])
    return f"{RUNS}/{os.path.basename(path)}"


def shown_command(command: str, cwd: str | None = None) -> str:
    """A recorded command as a page shows it: its workdir (--workdir, --runs_dir) as `shown_path`
    gives it, every other word as recorded."""
    try:
        words = shlex.split(command)
    except ValueError:  # unbalanced quotes: not a command to rewrite
        return command
    shown = []
    for i, word in enumerate(words):
        flag = _WORKDIR_FLAG.match(word)
        if flag and flag.group(1) is not None:
            word = word[:word.index("=") + 1] + shown_path(flag.group(1), cwd)
        elif i > 0 and _WORKDIR_FLAG.match(words[i - 1]) and "=" not in words[i - 1]:
            word = shown_path(word, cwd)
        shown.append(word)
    return shlex.join(shown) if shown != words else command
