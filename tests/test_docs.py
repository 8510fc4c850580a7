"""The docs (README.md and docs/**/*.md) against the code: every relative link and anchor
resolves, every configs/*.py named exists, every `scripts/X.py --flag` named is a flag that script
accepts (every --config.FIELD a field of its config), every command in a fenced `sh` block parses
through its script's parser (nothing runs), `make` targets exist, the README stays within 200
lines, no page tells the project's history or names an absolute path of a machine (a reader has
none of them), the workdir's metrics table names every key a training writes, the README's results
figures agree with the JSON they come from, and the generated tables are what their generators
write from the committed JSON.

The checks are pure functions of a page's text that return the problems they find, so the tests
below can show each one failing on a broken page as well as passing on the real ones. Flags are
checked through each script's `build_parser()`; a script without one yet is reported as skipped.
"""

import contextlib
import functools
import importlib.util
import io
import json
import re
import shlex
from pathlib import Path

import pytest
from conftest import REPO, run_in_process, script_module

from scripts.docs import markdown

ROOT = Path(REPO)
README_MAX_LINES = 200
# What the project did rather than what is true now: rounds, a coder that was replaced, a goal
# missed, a measurement still to come. ("the earlier format" of a file a user may hold is a fact.)
HISTORY = re.compile(
    r"last round|this round|previous round|when I "
    r"|\b(?:the|an?) (?:earlier|merged|previous|former|old|current|new) coder\b"
    r"|\b(?:is|are|was|were) missed\b"
    r"|\b(?:meant|built|designed) to reach\b"
    r"|\b(?:has|have) (?:not )?(?:been )?(?:measured|run|tested|trained|timed|evaluated|tried)\b"
    r"[^.\n]{0,20}\byet\b"
    r"|\bto be filled in\b",
    re.IGNORECASE)
# A folder of one machine: a Unix home, root's, /work, /tmp or a macOS user folder (not inside a URL
# or a relative path: runs/tmp/ is fine), or a drive letter. (A mount every host of a distributed
# run shares, /mnt/shared, is the reader's own.)
ABSOLUTE_PATH = re.compile(r"(?<![\w.~/-])/(?:work|home|root|tmp|Users)/[^\s`'\")|]*"
                           r"|(?<![\w/])[A-Za-z]:[\\/][^\s`'\")|]*")
FENCE = re.compile(r"^(```|~~~)[ \t]*([\w+-]*)[^\n]*\n(.*?)^\1[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_LINK = re.compile(r"\b(?:src|href)=\"([^\"]+)\"")
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
EXPLICIT_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")
CONFIG_FILE = re.compile(r"(?<![\w/.-])configs/([\w-]+)\.py\b")
SCRIPT_FILE = re.compile(r"(?<![\w/.-])scripts/([\w-]+)\.py\b")
FIELD = re.compile(r"^(?:seed|(?:data|model|train|eval)(?:\.\w+)+)(?==|$)")
NOT_FIELDS = (".py", ".json", ".jsonl", ".md", ".png", ".npy", ".npz")
SHELL_SEPARATORS = ("&&", "||", ";", "|")
REDIRECTIONS = (">", ">>", "<", "2>", "2>&1", "&>")
CONFIG_SCRIPTS = ("train.py", "sweep.py")  # take --config FILE and --config.FIELD=VALUE
DEFAULT_CONFIG = "configs/default.py"


def pages(root: Path = ROOT) -> list[Path]:
    """README.md and every Markdown page under docs/."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def without_fences(text: str) -> str:
    """The text with its fenced code blocks blanked (line numbers kept)."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def prose(text: str) -> str:
    """The text outside code: fenced blocks and inline code blanked."""
    return INLINE_CODE.sub(lambda m: " " * len(m.group(0)), without_fences(text))


def sh_blocks(text: str) -> list[str]:
    """The bodies of the fenced blocks marked `sh` (or `bash`, `shell`)."""
    return [m.group(3) for m in FENCE.finditer(text) if m.group(2) in ("sh", "bash", "shell")]


def inline_code(text: str) -> list[str]:
    """The inline code spans outside the fenced blocks, on one line each."""
    return [" ".join(m.group(2).split()) for m in INLINE_CODE.finditer(without_fences(text))]


# Links and anchors


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: its text, lower case, without punctuation, spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors a page defines: one per heading (duplicates get -1, -2, ...), and <a id=...>."""
    found, seen = set(EXPLICIT_ANCHOR.findall(text)), {}
    for match in HEADING.finditer(without_fences(text)):
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def link_problems(page: Path, text: str, root: Path = ROOT) -> list[str]:
    """Relative links (and images) of `text` whose file or anchor does not exist."""
    problems = []
    body = prose(text)
    for target in [*LINK.findall(body), *HTML_LINK.findall(body)]:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            problems.append(f"{page.relative_to(root)}: link {target}: {path} does not exist")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            problems.append(f"{page.relative_to(root)}: link {target}: {file.relative_to(root)} has no "
                            f"heading with the anchor #{anchor}")
    return problems


# Configs and their fields


@functools.cache
def load_config(relative: str):
    """The ConfigDict of a config file, by its path from the repository root."""
    spec = importlib.util.spec_from_file_location(f"docs_config_{Path(relative).stem}", ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def has_field(config, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        if not hasattr(node, "keys") or part not in node.keys():
            return False
        node = node[part]
    return True


def any_config_has(dotted: str, root: Path = ROOT) -> bool:
    return any(has_field(load_config(str(p.relative_to(root))), dotted)
               for p in sorted((root / "configs").glob("*.py")) if p.name != "__init__.py")


def config_problems(page: Path, text: str, root: Path = ROOT) -> list[str]:
    """configs/*.py files named that do not exist, and `data.x`-style fields named in inline code
    that no config has."""
    problems = [f"{page.relative_to(root)}: configs/{name}.py does not exist"
                for name in sorted(set(CONFIG_FILE.findall(text)))
                if not (root / "configs" / f"{name}.py").is_file()]
    for span in inline_code(text):
        match = FIELD.match(span)
        if match and not match.group(0).endswith(NOT_FIELDS) and not any_config_has(match.group(0), root):
            problems.append(f"{page.relative_to(root)}: `{span}`: no config has the field {match.group(0)}")
    return problems


# Scripts and their flags


def script_names(root: Path = ROOT) -> set[str]:
    return {p.name for p in (root / "scripts").glob("*.py")}


def script_problems(page: Path, text: str, root: Path = ROOT) -> list[str]:
    """scripts/*.py files named that do not exist."""
    return [f"{page.relative_to(root)}: scripts/{name}.py does not exist"
            for name in sorted(set(SCRIPT_FILE.findall(text)))
            if not (root / "scripts" / f"{name}.py").is_file()]


def script_of(word: str, names: set[str]) -> str | None:
    """The script a command word names (`scripts/train.py`, `./scripts/train.py`, `train.py`)."""
    name = word.removeprefix("./").removeprefix("scripts/")
    return name if name in names and "/" not in name else None


def parser_of(name: str, root: Path = ROOT):
    """scripts/<name>'s build_parser(), or None where the script has none yet."""
    if "def build_parser(" not in (root / "scripts" / name).read_text():
        return None
    return script_module(name).build_parser()


def option_names(parser) -> set[str]:
    return set(parser._option_string_actions)  # every spelling of every option


def config_path_of(args: list[str]) -> str:
    """The --config FILE among `args` (the scripts' default where none is given)."""
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return DEFAULT_CONFIG


def flag_name_problems(name: str, args: list[str], parsers, where: str) -> list[str]:
    """The flags among `args` (words of a command, placeholders allowed) that script `name` does
    not accept, and --config.FIELD overrides that its config lacks."""
    if name == "launch_local.py" and "--" in args:  # the rest goes to scripts/train.py
        split = args.index("--")
        return (flag_name_problems(name, args[:split], parsers, where)
                + flag_name_problems("train.py", args[split + 1:], parsers, where))
    problems = []
    for word in args:
        word = word.strip("[]()|,;")
        if not word.startswith("--") or word == "--":
            continue
        flag = word.split("=", 1)[0]
        if flag.startswith("--config.") and name in CONFIG_SCRIPTS:
            config = config_path_of(args)
            if (ROOT / config).is_file() and not has_field(load_config(config), flag[len("--config."):]):
                problems.append(f"{where}: {name} {flag}: {config} has no field {flag[len('--config.'):]}")
            continue
        parser = parsers(name)
        if parser is not None and flag not in option_names(parser):
            problems.append(f"{where}: {name} has no flag {flag}")
    return problems


def parse_problem(name: str, args: list[str], parsers, where: str) -> list[str]:
    """What `build_parser().parse_args(args)` of script `name` says against `args`, if anything."""
    if name == "launch_local.py" and "--" in args:
        split = args.index("--")
        return (parse_problem(name, args[:split], parsers, where)
                + parse_problem("train.py", args[split + 1:], parsers, where))
    parser = parsers(name)
    if parser is None:
        return flag_name_problems(name, args, parsers, where)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            parser.parse_args(args)
        except SystemExit as e:
            if e.code not in (0, None):  # --help exits 0
                message = err.getvalue().strip().splitlines() or [f"exit status {e.code}"]
                return [f"{where}: python scripts/{name} {shlex.join(args)}: {message[-1]}"]
    return []


def commands(block: str) -> list[list[str]]:
    """The commands of an sh block: continuation lines joined, comments dropped, split at ;, &&,
    || and |; quoted arguments that are commands themselves (ssh --command "...") added."""
    found = []
    for line in block.replace("\\\n", " ").splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            words = line.split()
        command = []
        for word in [*words, ";"]:
            if word in SHELL_SEPARATORS:
                if command:
                    found.append(command)
                command = []
            else:
                command.append(word)
            if " " in word and "scripts/" in word:
                found.extend(commands(word))
    return found


def command_problems(words: list[str], parsers, makefile_targets: set[str], where: str,
                     names: set[str]) -> list[str]:
    """A shell command's problems: its script's parser refuses its arguments, or `make TARGET`
    names no target of the Makefile."""
    while words and re.match(r"^[A-Za-z_]\w*=", words[0]):  # VAR=value before the command
        words = words[1:]
    if not words:
        return []
    if words[0] == "make":
        return [f"{where}: make {t}: no such target in the Makefile"
                for t in words[1:] if "=" not in t and not t.startswith("-") and t not in makefile_targets]
    for i, word in enumerate(words):
        name = script_of(word, names)
        if name is None:
            continue
        args = []
        for arg in words[i + 1:]:
            if arg in REDIRECTIONS or arg.startswith((">", "2>")):
                break
            args.append(arg)
        # Exact names first: argparse would take an abbreviation (--iw_sample) for the flag.
        return flag_name_problems(name, args, parsers, where) or parse_problem(name, args, parsers, where)
    return []


def makefile_targets(root: Path = ROOT) -> set[str]:
    return set(re.findall(r"^([\w.-]+)\s*:(?!=)", (root / "Makefile").read_text(), re.M))


def flag_problems(page: Path, text: str, parsers, root: Path = ROOT) -> list[str]:
    """Every command of the page's sh blocks parsed by its script's parser, and every flag named
    in inline code after a script's name accepted by that script."""
    names, targets, where = script_names(root), makefile_targets(root), str(page.relative_to(root))
    problems = []
    for block in sh_blocks(text):
        for words in commands(block):
            problems += command_problems(words, parsers, targets, where, names)
    for span in inline_code(text):
        try:
            words = shlex.split(span)
        except ValueError:
            words = span.split()
        for i, word in enumerate(words):
            name = script_of(word, names)
            if name is not None:
                problems += flag_name_problems(name, words[i + 1:], parsers, where)
                break
    return problems


# Absolute paths


def absolute_path_problems(page: str, text: str) -> list[str]:
    """Every absolute path of a machine in `text`, prose and code blocks alike, with its line."""
    return [f"{page}: line {text[:m.start()].count(chr(10)) + 1}: {m.group(0)}"
            for m in ABSOLUTE_PATH.finditer(text)]


# The README's results figures against the JSON they come from


def json_value(record, path: tuple):
    """The value at `path` in a JSON record: each step a key, a list index, or {field: value} for
    the one item of a list that has it."""
    for step in path:
        if isinstance(step, dict):
            (field, value), = step.items()
            matches = [item for item in record if item.get(field) == value]
            if len(matches) != 1:
                raise KeyError(f"{len(matches)} items with {field} = {value!r}")
            record = matches[0]
        else:
            record = record[step]
    return record


def _codec(name: str) -> tuple:
    return ("codecs", {"codec": name}, "whole_bits_per_dim")


_SPEED_RUN = ("configs", {"config_file": "configs/mlp_small.py"}, "runs", 0)
# Each figure of a README results row (the row by its first cell, exactly) that a committed JSON
# holds: the JSON and the path to each of the row's figures, in the order the row shows them.
# The binarised table's rows come from the results pages (scripts/results.py, workdirs not kept);
# the 8-bit -ELBO of configs/fmnist_8bit.py and the cjxl row were measured at the commit the README
# names, not by a JSON-writing command.
README_FIGURES = {
    "the same with imagecodecs (effort 10)": (
        "docs/codecs_8bit.json", [_codec("JPEG XL lossless (effort 10)")]),
    "the same model's IWAE bound (k = 1000, the 10,000 test images)": (
        "docs/codecs_8bit_model.json", [("model", {"figure": "iwae_nll"}, "bits_per_dim")]),
    "its bits-back file of the 10,000 test images (`scripts/compress.py`)": (
        "docs/codecs_8bit_model.json", [("bits_back", "compress", "bits_per_dim")]),
    "`configs/ladder_8bit.py` (4 latent layers, 158 epochs, 65.5 min): test negative ELBO": (
        "docs/codecs_8bit_ladder.json", [("model", {"figure": "neg_elbo"}, "bits_per_dim")]),
    "its bits-back file of the 10,000 test images": (
        "docs/codecs_8bit_ladder.json", [("bits_back", "compress", "bits_per_dim")]),
    "xz -9e / WebP lossless / PNG of the 10,000 test images": (
        "docs/codecs_8bit.json", [_codec("xz -9e (raw bytes)"), _codec("WebP lossless (method 6)"),
                                  _codec("PNG (optimize, level 9)")]),
    "**this project**": ("docs/bench/speed.json", [(*_SPEED_RUN, "train", "images_per_sec")]),
    "PyTorch, idiomatic (DataLoader, `torch.bernoulli`, Adam)": (
        "docs/bench/speed.json", [(*_SPEED_RUN, "torch", "idiomatic_images_per_sec"),
                                  (*_SPEED_RUN, "torch", "jax_over_idiomatic")]),
    "PyTorch, tuned (one tensor + `randperm`, fused Adam, 2 threads)": (
        "docs/bench/speed.json", [(*_SPEED_RUN, "torch", "tuned_images_per_sec"),
                                  (*_SPEED_RUN, "torch", "jax_over_tuned")]),
}
NUMBER = re.compile(r"(?<![\w.])\d{1,3}(?:,\d{3})+(?:\.\d+)?|(?<![\w.])\d+(?:\.\d+)?")


def table_rows(text: str) -> dict[str, list[list[str]]]:
    """The rows of the page's tables outside code, by their first cell: the other cells of each."""
    rows = {}
    for line in without_fences(text).splitlines():
        if line.startswith("|") and not re.match(r"^\|[\s:|-]*$", line):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            rows.setdefault(cells[0], []).append(cells[1:])
    return rows


def figure_problems(text: str, figures: dict, read_json) -> list[str]:
    """Each mapped row's figures against its JSON's, to the digits the row shows."""
    rows, problems = table_rows(text), []
    for label, (source, paths) in figures.items():
        found = rows.get(label, [])
        if len(found) != 1:
            problems.append(f"{len(found)} rows labelled {label!r}: one expected")
            continue
        shown = NUMBER.findall(" ".join(found[0]))
        if len(shown) != len(paths):
            problems.append(f"{label!r}: {len(shown)} figures {shown}, {len(paths)} in the mapping")
            continue
        record = read_json(source)
        for written, path in zip(shown, paths):
            value = json_value(record, path)
            digits = len(written.partition(".")[2])
            if abs(float(written.replace(",", "")) - value) > 0.5 * 10 ** -digits + 1e-12:
                problems.append(f"{label!r}: {written}, but {source} has {value:.{digits + 2}f}")
    return problems


def read_repo_json(relative: str) -> dict:
    return json.loads((ROOT / relative).read_text())


# The metrics table of docs/training.md


def table_keys(text: str, heading: str) -> set[str]:
    """The names in backticks in the first column of the table under `heading`."""
    section = text.split(heading, 1)[1]
    section = re.split(r"^#{1,6} ", section, maxsplit=1, flags=re.M)[0]
    keys = set()
    for line in section.splitlines():
        if line.startswith("|") and not line.startswith("| ---"):
            first = re.split(r"(?<!\\)\|", line)[1]
            keys.update(re.findall(r"`([^`]+)`", first))
    return keys


METRICS_PAGE = ROOT / "docs" / "training.md"
METRICS_HEADING = "## metrics.jsonl: one line per epoch"


# The tests


def _script_parsers():
    cache = {}

    def parsers(name):
        if name not in cache:
            cache[name] = parser_of(name)
        return cache[name]

    return parsers


def test_the_readme_is_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; at most {README_MAX_LINES}"


def test_the_readme_reaches_every_topic_page_in_one_click():
    readme = (ROOT / "README.md").read_text()
    index = (ROOT / "docs" / "README.md").read_text()
    topics_section = re.split(r"^## ", index.split("## Topics", 1)[1], maxsplit=1, flags=re.M)[0]
    topics = {t for t in LINK.findall(prose(topics_section)) if t.endswith(".md") and "/" not in t}
    assert topics, "docs/README.md lists no pages"
    for name in sorted(topics):
        assert f"(docs/{name}" in readme, f"README.md does not link docs/{name}, which docs/README.md lists"


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    assert link_problems(page, page.read_text()) == []


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_config_and_config_field_named_exists(page):
    assert config_problems(page, page.read_text()) == []


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_script_flag_named_is_accepted_and_every_sh_command_parses(page):
    text = page.read_text()
    assert script_problems(page, text) == []
    assert flag_problems(page, text, _script_parsers()) == []


def test_every_script_has_a_parser_the_docs_check():
    """Every script's flags are checked through its build_parser()."""
    missing = sorted(name for name in script_names()
                     if "def build_parser(" not in (ROOT / "scripts" / name).read_text())
    assert missing == []


def test_every_flag_has_the_dashed_spelling_the_docs_promise():
    """docs/configs.md: flags are spelt with underscores, and the dashed spelling is accepted too."""
    assert "the dashed spelling (`--iw-samples`" in (ROOT / "docs" / "configs.md").read_text()
    for name in sorted(script_names()):
        parser = parser_of(name)
        if parser is None:
            continue
        options = option_names(parser)
        missing = [o for o in sorted(options) if o.startswith("--") and "_" in o
                   and "--" + o[2:].replace("_", "-") not in options]
        assert missing == [], f"scripts/{name}: no dashed spelling of {missing}"


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_page_tells_the_projects_history(page):
    text = page.read_text()
    found = [f"line {text[:m.start()].count(chr(10)) + 1}: {m.group(0)!r}" for m in HISTORY.finditer(text)]
    assert found == []


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_page_names_an_absolute_path_of_a_machine(page):
    assert absolute_path_problems(str(page.relative_to(ROOT)), page.read_text()) == []


def test_every_readme_results_figure_agrees_with_its_json():
    assert figure_problems((ROOT / "README.md").read_text(), README_FIGURES, read_repo_json) == []


CODEC_TABLES = sorted(p.stem for p in (ROOT / "docs").glob("codecs_*.json") if p.stem != "codecs_photos")


@pytest.mark.parametrize("name", CODEC_TABLES)
def test_each_codec_table_is_what_its_generator_writes_from_its_json(name):
    """docs/codecs_*.md as `scripts/benchmark_codecs.py --render_only` writes it from the JSON
    beside it: no figure typed by hand, the template's text current."""
    benchmark_codecs = script_module("benchmark_codecs.py")
    assert benchmark_codecs.rendered(ROOT / "docs" / name) == (ROOT / "docs" / f"{name}.md").read_text()


def test_the_photo_table_is_what_benchmark_photos_writes_from_its_json():
    """docs/codecs_photos.md as `benchmarks/benchmark_photos.py --render_only` writes it."""
    from benchmarks import benchmark_photos

    result = json.loads((ROOT / "docs" / "codecs_photos.json").read_text())
    written = (ROOT / "docs" / "codecs_photos.md").read_text()
    assert benchmark_photos.markdown(result, result["command"]) == written


def test_the_speed_tables_are_what_speed_table_writes_from_its_json():
    speed_table = script_module("speed_table.py")
    source = "docs/bench/speed.json"
    result = read_repo_json(source)
    assert speed_table.page(result, source) == (ROOT / "docs" / "benchmarks.md").read_text()
    begin, end = markdown.markers(speed_table.SECTION)
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index(begin) + len(begin):readme.index(end)].strip()
    assert section == speed_table.readme_section(result, source, "docs/benchmarks.md")


def test_the_speed_ratio_says_it_is_a_median_of_epoch_ratios():
    """The "JAX is" column is a median of per-epoch ratios, not the ratio of the rates beside it:
    the README's table says so, and gives that ratio too."""
    readme = (ROOT / "README.md").read_text()
    run = json_value(read_repo_json("docs/bench/speed.json"), _SPEED_RUN)
    ratio = run["train"]["images_per_sec"] / run["torch"]["tuned_images_per_sec"]
    assert abs(ratio - run["torch"]["jax_over_tuned"]) > 0.005  # the two differ here
    assert "is the median, over the alternated epochs" in readme and f"{ratio:.2f}x" in readme


def test_one_file_per_image_pays_the_header_of_a_file_of_one_image():
    """codecs_binarised.md: each image's own file has the header a file of one image starts with in
    the format it was measured in (recorded in its JSON; format 2's was 3 bytes), not the whole
    set's header (which adds the count, blocks, bins and ramp); the generator records today's."""
    codecs_script = script_module("benchmark_codecs.py")
    from vae.coding import container

    result = read_repo_json("docs/codecs_binarised.json")
    one = result["bits_back_per_image"]["header_bytes"]
    whole = result["bits_back"]["compress"]["header_bytes"]
    page = (ROOT / "docs" / "codecs_binarised.md").read_text()
    assert whole > one
    assert f"pays the {one}-byte header of a file of one image (file format " in page
    assert f"its {whole}-byte" not in page
    assert codecs_script.one_image_header_bytes() == 8 and container.FORMAT_3 == 3  # 6 bytes and a check


def test_the_generators_show_a_workdir_without_this_machines_folders(tmp_path, monkeypatch):
    """The commands and workdirs the generators write, given absolute paths outside the current
    directory: relative ones, runs/NAME (or from the path's runs/ folder on)."""
    from benchmarks import codecs_8bit
    from vae.analysis.results import reproducing_command

    monkeypatch.chdir(tmp_path)
    elsewhere = "/work/elsewhere/runs/fmnist_8bit"
    assert markdown.shown_path(str(tmp_path / "runs" / "x")) == "runs/x"  # under the current directory
    assert markdown.shown_path("runs/x") == "runs/x" and markdown.shown_path("/data/r21/x") == "runs/x"
    recorded = reproducing_command(f"scripts/train.py --workdir={elsewhere} --noprogress")
    assert markdown.shown_command(recorded) == "scripts/train.py --workdir=runs/fmnist_8bit"
    assert script_module("results.py").shown({"command": f"train.py --workdir {elsewhere}"}) == {
        "command": "train.py --workdir runs/fmnist_8bit"}
    eight_bit = read_repo_json("docs/codecs_8bit_model.json")
    eight_bit = eight_bit | {"workdir": elsewhere, "run": eight_bit["run"] | {
        "command": f"python scripts/benchmark_codecs.py --eight_bit --workdir {elsewhere}"}}
    binarised = read_repo_json("docs/codecs_binarised.json")
    binarised |= {"workdir": elsewhere, "trained_by": f"scripts/train.py --workdir {elsewhere}"}
    pages = {"8-bit": codecs_8bit.markdown(eight_bit),
             "binarised": script_module("benchmark_codecs.py").markdown(binarised)}
    for name, text in pages.items():
        assert absolute_path_problems(name, text) == [] and "`runs/fmnist_8bit" in text, name
    make_docs = script_module("make_docs.py")
    commands = make_docs.shown_commands({"z2"}, Path("/work/elsewhere/runs/docs"), 1.0, None)
    assert commands["z2"][commands["z2"].index("--workdir") + 1] == "runs/docs/z2"


# The notebooks' published copies (docs/notebooks/, scripts/publish_notebooks.py)

publish_notebooks = script_module("publish_notebooks.py")


@pytest.mark.parametrize("name", publish_notebooks.NOTEBOOKS)
def test_each_published_notebook_was_made_from_its_notebooks_cells_as_they_are(name):
    """A page records the SHA-256 of the cells it was executed from; nothing runs here. Its
    pictures are the PNG files beside it, each shown."""
    problem = publish_notebooks.stale(name)
    assert problem is None, problem
    folder = ROOT / "docs" / "notebooks"
    shown = re.findall(rf"!\[\]\(({name}_\d+\.png)\)", (folder / f"{name}.md").read_text())
    assert shown and sorted(shown) == sorted(p.name for p in folder.glob(f"{name}_*.png"))


def test_a_notebook_changed_since_its_page_was_made_is_found(tmp_path):
    import nbformat

    (tmp_path / "notebooks").mkdir()
    (tmp_path / "docs" / "notebooks").mkdir(parents=True)
    notebook_file = tmp_path / "notebooks" / "analyze_run.ipynb"
    notebook = nbformat.read(ROOT / "notebooks" / "analyze_run.ipynb", as_version=4)
    assert publish_notebooks.stale("analyze_run", tmp_path) == (
        "docs/notebooks/analyze_run.md is missing: run `python scripts/publish_notebooks.py --only "
        "analyze_run` (or `make docs`)")
    page, _ = publish_notebooks.render("analyze_run", notebook, "on 2026-01-01")
    (tmp_path / "docs" / "notebooks" / "analyze_run.md").write_text(page)
    nbformat.write(notebook, notebook_file)
    assert publish_notebooks.stale("analyze_run", tmp_path) is None
    notebook.cells[-1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="an output\n")]
    notebook.cells[-1].metadata["tags"] = ["a tag"]
    nbformat.write(notebook, notebook_file)
    assert publish_notebooks.stale("analyze_run", tmp_path) is None  # outputs and metadata do not count
    notebook.cells[-1].source += "\nprint('one more line')"
    nbformat.write(notebook, notebook_file)
    assert publish_notebooks.stale("analyze_run", tmp_path) == (
        "docs/notebooks/analyze_run.md was made from other cells than notebooks/analyze_run.ipynb's: "
        "run `python scripts/publish_notebooks.py --only analyze_run` (or `make docs`)")
    result = run_in_process("publish_notebooks.py", "--check", "--out", str(tmp_path / "elsewhere"))
    assert result.returncode == 1
    assert "python scripts/publish_notebooks.py --only kl_divergence" in result.stdout


def test_the_metrics_table_names_every_key_a_training_writes(tiny_run):
    from vae.workdir import files

    documented = table_keys(METRICS_PAGE.read_text(), METRICS_HEADING)
    written = {key for record in files.read_metrics(tiny_run) for key in record}
    assert {"epoch", "train/elbo", "test/elbo", "test/kl_per_dim"} <= written
    missing = sorted(written - documented)
    assert missing == [], f"docs/training.md's metrics table lacks {missing}"


def test_the_metrics_table_names_the_keys_of_validation_the_kl_split_and_sweeps():
    """Keys a tiny run does not write: from the names the code builds them of."""
    from vae.train import evaluate
    from vae.workdir import files

    documented = table_keys(METRICS_PAGE.read_text(), METRICS_HEADING)
    expected = {files.BEST_METRIC, "best/epoch", f"best/{files.BEST_METRIC}", "train/iwae",
                "train/ema_decay", "compile_time_sec", "sweep/members", "sweep/images_per_sec"}
    for prefix in ("test", "val"):
        expected |= {f"{prefix}/{name}" for name in (*evaluate.KL_SPLIT_FIELDS, "dimwise_kl",
                                                      "dimwise_kl_per_dim", "split_kl", "split_examples")}
    assert expected - documented == set()
    program_source = (ROOT / "vae" / "sweep" / "program.py").read_text()
    assert '"sweep/members"' in program_source and '"sweep/images_per_sec"' in program_source


# The checks catch what they should: each on a broken page.


def _page(tmp_path, text, name="page.md"):
    (tmp_path / "docs").mkdir(exist_ok=True)
    (tmp_path / "configs").mkdir(exist_ok=True)
    (tmp_path / "scripts").mkdir(exist_ok=True)
    (tmp_path / "Makefile").write_text("train: data\n\tpython x\ntest:\n")
    page = tmp_path / "docs" / name
    page.write_text(text)
    return page


def test_a_broken_link_or_anchor_is_found(tmp_path):
    page = _page(tmp_path, "# Title\n\n## A section: with `code`\n\n"
                           "[ok](#a-section-with-code) [ok](other.md#two)\n"
                           "[missing](nowhere.md) [bad anchor](other.md#three) ![pic](gone.png)\n"
                           "`[in code](nowhere.md)`\n\n```sh\n# [in a block](nowhere.md)\n```\n")
    (tmp_path / "docs" / "other.md").write_text("# One\n\n## Two\n")
    problems = link_problems(page, page.read_text(), tmp_path)
    assert len(problems) == 3, problems
    assert "nowhere.md does not exist" in problems[0]
    assert "docs/other.md has no heading with the anchor #three" in problems[1]
    assert "gone.png does not exist" in problems[2]


def test_a_history_phrase_is_found():
    told = ["the earlier coder 27 ms", "[the merged coder's speed](#speed)", "the goal of 3.10 is missed",
            "No GPU has measured it yet.", "the 226.0 this config was meant to reach",
            "1.0 above the 226.0 it was built to reach", "seed 1 to be filled in", "The current coder (c)"]
    for phrase in told:
        assert HISTORY.search(phrase), phrase
    true_now = ["a file of the earlier format (96-byte header)", "a split no longer fits in one host",
                "the float64 coder 27 ms", "what has never been run", "its speed on a GPU is not measured",
                "the run has not validated yet", "the coder's counts"]
    for sentence in true_now:
        assert not HISTORY.search(sentence), sentence


def test_an_absolute_path_is_found():
    text = ("Run in `/work/runs/vae` or /home/me/runs/x.\n\n```sh\npython scripts/train.py --workdir=/tmp/r\n"
            "cd /root/vae && ls /Users/me\n```\n| C:\\runs\\x | D:/data |\n")
    problems = absolute_path_problems("page.md", text)
    assert [p.split(": ", 2)[2] for p in problems] == [
        "/work/runs/vae", "/home/me/runs/x.", "/tmp/r", "/root/vae", "/Users/me", "C:\\runs\\x", "D:/data"]
    lines = ["line 1", "line 1", "line 4", "line 5", "line 5", "line 7", "line 7"]
    assert [p.split(": ")[1] for p in problems] == lines
    fine = ("runs/tmp/x, ~/runs/x, ../work/x, https://example.com/home/x, `--workdir runs/vae`, "
            "(docs/README.md), https://pypi.org/project/x/, a:b, log_var/work/")
    assert absolute_path_problems("page.md", fine) == []


def test_a_readme_figure_that_disagrees_with_its_json_is_found():
    record = {"codecs": [{"codec": "xz", "bits": 3.85449}, {"codec": "png", "bits": 4.15881}],
              "run": {"rate": 39021.7, "ratio": 1.6920}}
    figures = {"xz / png": ("r.json", [("codecs", {"codec": "xz"}, "bits"),
                                       ("codecs", {"codec": "png"}, "bits")]),
               "**rate**": ("r.json", [("run", "rate"), ("run", "ratio")]),
               "missing row": ("r.json", [("run", "rate")])}
    good = ("| row | bits |\n| --- | ---: |\n| xz / png | 3.8545 / 4.1588 |\n"
            "| **rate** | **39,022** | 1.69x |\n")
    assert figure_problems(good, {k: v for k, v in figures.items() if k != "missing row"},
                           lambda _: record) == []
    bad = good.replace("3.8545", "3.8546").replace("1.69x", "2.03x")
    assert figure_problems(bad, figures, lambda _: record) == [
        "'xz / png': 3.8546, but r.json has 3.854490",
        "'**rate**': 2.03, but r.json has 1.6920",
        "0 rows labelled 'missing row': one expected"]
    assert figure_problems(good.replace(" / 4.1588", ""), figures, lambda _: record)[0] == (
        "'xz / png': 1 figures ['3.8545'], 2 in the mapping")


def test_recorded_commands_lose_only_their_progress_flag():
    """The results tables show commands that run with today's scripts (`vae.analysis.results`)."""
    from vae.analysis.results import reproducing_command

    for flag in ("--progress=false", "--noprogress", "--no-progress", "--no_progress", "--progress"):
        assert reproducing_command(f"scripts/train.py --config c.py {flag} --workdir w --config.x=1") == (
            "scripts/train.py --config c.py --workdir w --config.x=1")
    kept = "scripts/train.py --config.train.progress=1 --progress_bar 'a b'"
    assert reproducing_command(kept) == kept


def test_github_anchors():
    assert slug("Compression: the KL term in real bits") == "compression-the-kl-term-in-real-bits"
    assert slug("metrics.jsonl: one line per epoch") == "metricsjsonl-one-line-per-epoch"
    assert slug("Sweeps: K VAEs at once, and the rate–distortion picture") == (
        "sweeps-k-vaes-at-once-and-the-ratedistortion-picture")
    assert slug("`make train` and **β**") == "make-train-and-β"
    assert anchors("# A\n## A\n```sh\n# not a heading\n```\n") == {"a", "a-1"}


def test_a_missing_config_or_field_is_found(tmp_path):
    page = _page(tmp_path, "`configs/default.py`, `configs/nonesuch.py`; `train.beta=4`, `train.betta`, "
                           "`eval.json`, `train.py`\n")
    (tmp_path / "configs" / "default.py").write_text((ROOT / "configs" / "default.py").read_text())
    problems = config_problems(page, page.read_text(), tmp_path)
    assert problems == ["docs/page.md: configs/nonesuch.py does not exist",
                        "docs/page.md: `train.betta`: no config has the field train.betta"]


class _Parsers:
    """Parsers of two made-up scripts: `tool.py --workdir W [--iw_samples K]` and `train.py`."""

    def __call__(self, name):
        from vae import cli_flags

        parser = cli_flags.ArgumentParser(prog=name)
        parser.add_argument("--workdir", required=True)
        if name == "tool.py":
            parser.add_argument("--iw_samples", type=cli_flags.integer(1), default=5)
        return parser


def test_an_unknown_flag_a_bad_value_or_a_missing_target_is_found(tmp_path):
    page = _page(tmp_path, "Run `scripts/tool.py --workdir W --iw_sample K` or `tool.py --iw-samples 3`.\n\n"
                           "```sh\npython scripts/tool.py --workdir runs/x --iw_samples 0   # out of range\n"
                           "python scripts/tool.py --iw_samples 3 && make train WORKDIR=x\n"
                           "python scripts/tool.py --workdir runs/x \\\n    --iw-samples 7 > out.json\n"
                           "make tests\n"
                           "ssh host --command \"cd x && python scripts/tool.py --workdir y --bad\"\n```\n")
    for name in ("tool.py", "train.py"):
        (tmp_path / "scripts" / name).write_text("")
    problems = flag_problems(page, page.read_text(), _Parsers(), tmp_path)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "python scripts/tool.py --workdir runs/x --iw_samples 0: error: argument --iw_samples/--iw-samples: "
        "must be an integer >= 1, got '0'; run with --help for usage",
        "python scripts/tool.py --iw_samples 3: error: the following arguments are required: --workdir; "
        "run with --help for usage",
        "make tests: no such target in the Makefile",
        "tool.py has no flag --bad",
        "tool.py has no flag --iw_sample"], problems


def test_config_overrides_are_checked_against_the_config_named(tmp_path):
    page = _page(tmp_path, "`scripts/train.py --config configs/mlp_small.py --config.train.beta=2 "
                           "--config.train.betta=2`\n")
    (tmp_path / "scripts" / "train.py").write_text("")
    problems = flag_problems(page, page.read_text(), lambda name: None, tmp_path)
    assert problems == [
        "docs/page.md: train.py --config.train.betta: configs/mlp_small.py has no field train.betta"]


def test_the_metrics_table_is_read_from_its_first_column():
    text = ("## metrics.jsonl: one line per epoch\n\n| key | in | what |\n| --- | --- | --- |\n"
            "| `epoch` | all | the `step` is not a key here |\n"
            "| `test/rec`, `val/rec` | x | −log p(x \\| z) |\n"
            "\n## Next\n\n| `not/this` | x | y |\n")
    assert table_keys(text, "## metrics.jsonl: one line per epoch") == {"epoch", "test/rec", "val/rec"}


def _defaults(module, argv):
    """A script's parsed flags for `argv`: through build_parser() where it has one, else parse()."""
    if hasattr(module, "build_parser"):
        return module.build_parser().parse_args(argv)
    return module.parse(argv)


def test_the_generators_write_into_pages_that_have_their_markers():
    """make_docs.py's β table and speed_table.py's README table land between their markers."""
    make_docs = script_module("make_docs.py")
    speed_table = script_module("speed_table.py")
    beta_page = ROOT / _defaults(make_docs, []).readme
    assert beta_page.read_text().count(f"<!-- {make_docs.BETA_TABLE}:begin -->") == 1
    speed = _defaults(speed_table, ["docs/bench/speed.json"])
    assert (ROOT / speed.readme).read_text().count(f"<!-- {speed_table.SECTION}:begin -->") == 1
    assert (ROOT / speed.out).is_file()


# --- docs/api.md runs -------------------------------------------------------------------------


def python_blocks(text: str) -> list[str]:
    """The bodies of the fenced blocks marked `python`, in order."""
    return [m.group(3) for m in FENCE.finditer(text) if m.group(2) == "python"]


def test_the_api_page_runs_as_written(tmp_path, tiny_run, monkeypatch):
    """Every python block of docs/api.md, in order, in one namespace, from a folder laid out as
    the repository after `make train` (runs/default: a small trained run; configs/)."""
    import shutil

    import numpy as np

    shutil.copytree(tiny_run, tmp_path / "runs" / "default")
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks((ROOT / "docs" / "api.md").read_text())
    assert len(blocks) >= 6
    namespace = {}
    with contextlib.redirect_stdout(io.StringIO()):
        for block in blocks:
            exec(compile(block, "docs/api.md", "exec"), namespace)
    ns = namespace
    assert ns["mean"].shape == (8, ns["m"].model.latent_dim) and ns["pixels"].shape == (8, 28, 28, 1)
    assert np.array_equal(ns["back"], ns["x"])  # compress, decompress: exact
    assert np.array_equal(ns["m"].decompress(ns["as_set"]), ns["x"][ns["order"]])  # a set: sorted
    assert len(ns["data"]) < 8 * 784 / 8  # below a bit per pixel
    assert np.all(ns["elbo"] < 0) and ns["elbo"].mean() <= ns["log_p"].mean()
    assert ns["records"][-1]["epoch"] == 1 and (tmp_path / "runs" / "api_example" / "metrics.jsonl").is_file()
