"""Executes the notebooks and publishes each with its outputs as a Markdown page beside its pictures
(docs/notebooks/NAME.md, NAME_1.png, ...), so a reader sees them without starting Jupyter.

    python scripts/publish_notebooks.py                        # both; analyze_run on runs/default
    python scripts/publish_notebooks.py --only analyze_run --workdir runs/docs/default
    python scripts/publish_notebooks.py --check                # which published pages are stale

Each notebook runs as under `make notebook`: a python3 kernel started in notebooks/, with the
notebook's own defaults but for the run analyze_run reads (--workdir, passed as VAE_WORKDIR).
`make docs` runs this on its default run. Each page records the SHA-256 of its notebook's cells
(`cells_digest`) and the run it read; tests/test_docs.py recomputes the digest, so a notebook
changed since its page was made fails the docs test until this script runs again. Output a cell
writes to stderr (library warnings) is not published.
"""

import datetime
import hashlib
import json
import os
import platform
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
# scripts/docs/markdown.py is the repository's, imported as scripts.docs.markdown from its root
sys.path.insert(0, str(ROOT))

from scripts.docs import markdown  # noqa: E402
from vae import cli_flags  # noqa: E402
from vae.workdir import files  # noqa: E402

NOTEBOOKS = ("analyze_run", "kl_divergence")
READS_A_RUN = ("analyze_run",)  # the notebooks that read --workdir
COMMAND = "python scripts/publish_notebooks.py"
DIGEST = re.compile(r"^<!-- notebook cells sha256: ([0-9a-f]{64}) -->$", re.M)


def build_parser() -> cli_flags.ArgumentParser:
    parser = cli_flags.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/default",
                        help="the trained run analyze_run reads (default runs/default, make train's)")
    parser.add_argument("--out", default="docs/notebooks", help="where the pages and pictures go")
    parser.add_argument("--only", nargs="+", choices=NOTEBOOKS, default=None, help="these notebooks only")
    parser.add_argument("--timeout", type=cli_flags.integer(1), default=1800,
                        help="seconds one cell may run")
    parser.add_argument("--check", action="store_true",
                        help="execute nothing: name the pages that are missing or stale (exit 1 if any)")
    return parser


def notebook_path(name: str, root: Path = ROOT) -> Path:
    return root / "notebooks" / f"{name}.ipynb"


def cells_digest(notebook: nbformat.NotebookNode) -> str:
    """SHA-256 of the notebook's cells (type and source, in order): outputs and metadata left out."""
    cells = [[cell.cell_type, cell.source] for cell in notebook.cells]
    return hashlib.sha256(json.dumps(cells, ensure_ascii=False).encode()).hexdigest()


def stale(name: str, root: Path = ROOT, out: str = "docs/notebooks") -> str | None:
    """Why the published page of notebook `name` is not of its cells as they are now; None if it is."""
    page = root / out / f"{name}.md"
    rerun = f"run `{COMMAND} --only {name}` (or `make docs`)"
    if not page.is_file():
        return f"{out}/{name}.md is missing: {rerun}"
    recorded = DIGEST.search(page.read_text())
    if recorded is None:
        return f"{out}/{name}.md records no digest of its notebook's cells: {rerun}"
    if recorded.group(1) != cells_digest(nbformat.read(notebook_path(name, root), as_version=4)):
        return f"{out}/{name}.md was made from other cells than notebooks/{name}.ipynb's: {rerun}"
    return None


def execute(name: str, workdir: str, timeout: int) -> nbformat.NotebookNode:
    """The notebook run top to bottom in a python3 kernel started in notebooks/, as JupyterLab does."""
    from nbclient import NotebookClient  # a second of imports (jupyter_client, zmq): only to run one
    from nbclient.exceptions import CellExecutionError

    notebook = nbformat.read(notebook_path(name), as_version=4)
    os.environ["VAE_WORKDIR"] = workdir  # the kernel inherits the environment
    try:
        NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    except CellExecutionError as error:  # the notebook's own one-line message, not the kernel's traceback
        raise SystemExit(f"error: notebooks/{name}.ipynb stopped: {error.ename}: {error.evalue}") from None
    return notebook


def _fenced(text: str, language: str) -> list[str]:
    return [f"```{language}", text.rstrip("\n"), "```", ""]


def render(name: str, notebook: nbformat.NotebookNode, provenance: str) -> tuple[str, dict[str, bytes]]:
    """The page of an executed notebook, and its pictures by file name (NAME_1.png, ...)."""
    import base64

    lines = [f"<!-- Made by `{COMMAND}` from notebooks/{name}.ipynb: edit the notebook, not this page. -->",
             f"<!-- notebook cells sha256: {cells_digest(notebook)} -->", "",
             f"> The notebook [notebooks/{name}.ipynb](../../notebooks/{name}.ipynb) executed {provenance} "
             f"by `{COMMAND}`; its pictures are the PNG files beside this page.", ""]
    pictures = {}
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            lines += [cell.source.rstrip("\n"), ""]
            continue
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        lines += _fenced(cell.source, "python")
        text = ""
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                text += output.text if output.name == "stdout" else ""
            elif output.output_type in ("display_data", "execute_result"):
                data = output.get("data", {})
                if "image/png" in data:
                    if text:
                        lines += _fenced(text, "text")
                        text = ""
                    file = f"{name}_{len(pictures) + 1}.png"
                    pictures[file] = base64.b64decode(data["image/png"])
                    lines += [f"![]({file})", ""]
                elif "text/plain" in data:
                    text += data["text/plain"] + "\n"
            elif output.output_type == "error":
                raise ValueError(f"notebooks/{name}.ipynb failed: {output.ename}: {output.evalue}")
        if text:
            lines += _fenced(text, "text")
    return "\n".join(lines).rstrip("\n") + "\n", pictures


def provenance_of(name: str, workdir: str) -> str:
    """When and where the notebook ran, and the run it read (shown without this machine's folders)."""
    when = f"on {datetime.date.today().isoformat()} on {os.cpu_count()} CPU cores ({platform.machine()})"
    if name not in READS_A_RUN:
        return f"{when} (it trains its own small models)"
    epochs = files.read_metrics(Path(workdir))[-1]["epoch"]
    return f"{when}, reading the run `{markdown.shown_path(workdir)}` (trained for {epochs} epochs),"


def publish(name: str, workdir: str, out: Path, timeout: int) -> Path:
    """Executes notebook `name` and writes its page and pictures into `out` (the old pictures go)."""
    executed = execute(name, workdir, timeout)
    text, pictures = render(name, executed, provenance_of(name, workdir))
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"{name}_*.png"):
        old.unlink()
    for file, data in pictures.items():
        (out / file).write_bytes(data)
    page = out / f"{name}.md"
    page.write_text(text)
    return page


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    names = args.only or NOTEBOOKS
    if args.check:
        problems = [p for p in (stale(name, ROOT, args.out) for name in names) if p]
        print("\n".join(problems) or "every published notebook is of its notebook's cells")
        return 1 if problems else 0
    workdir = Path(args.workdir).expanduser().absolute()
    if any(name in READS_A_RUN for name in names) and not (workdir / files.METRICS_FILE).is_file():
        raise SystemExit(f"error: no trained run in {args.workdir}: run `make train` first "
                         "(or give --workdir a trained run)")
    for name in names:
        print(publish(name, str(workdir), Path(args.out), args.timeout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
