"""Both notebooks run top to bottom (on small data), so they never rot; each is published with
its outputs by scripts/publish_notebooks.py (its pages' staleness is checked by tests/test_docs.py)."""

import base64
import os

import jupytext
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from tests.conftest import REPO, run_in_process, script_module, xla_flags

NOTEBOOKS = os.path.join(REPO, "notebooks")
publish_notebooks = script_module("publish_notebooks.py")


@pytest.fixture(scope="module")
def library_only(tmp_path_factory) -> str:
    """A PYTHONPATH that holds this repository's `vae` and nothing else of it, as `make install`'s
    editable install: a kernel started in notebooks/ imports the library, not configs/ or scripts/."""
    folder = tmp_path_factory.mktemp("library_only")
    os.symlink(os.path.join(REPO, "vae"), folder / "vae")
    return str(folder)


def execute(name: str, env: dict[str, str], cwd: str = NOTEBOOKS) -> nbformat.NotebookNode:
    """The notebook run top to bottom in a python3 kernel started in `cwd` (notebooks/, where
    `make notebook`'s JupyterLab starts its kernels)."""
    from nbclient import NotebookClient  # a second of imports (jupyter_client, zmq): only to run one

    notebook = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits the environment
    try:
        client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": cwd}})
        client.execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return notebook


def outputs(notebook) -> str:
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", "") or output.get("data", {}).get("text/plain", ""))
    return "\n".join(texts)


def images(notebook) -> int:
    return sum("image/png" in o.get("data", {}) for c in notebook.cells for o in c.get("outputs", []))


@pytest.mark.slow  # under a minute, its ANS sections most of it; analyze_run.ipynb runs in the quick suite
def test_kl_divergence_notebook_runs_and_states_computed_numbers(fashion_mnist, library_only):
    """From notebooks/ with only the library importable: configs/mlp_small.py is found in the repository."""
    notebook = execute("kl_divergence.ipynb", {"XLA_FLAGS": xla_flags(1), "TF_CPP_MIN_LOG_LEVEL": "3",
                                               "PYTHONPATH": library_only})
    text = outputs(notebook)
    assert "KL(P‖Q_poor) = 1.737 bits" in text
    assert "KL(P‖Q_good) = 0.152 bits" in text
    assert "KL(P‖Q) = 0.0231 nats,  KL(Q‖P) = 0.0239 nats" in text
    assert "log 6 = 1.7918" in text and "H(fair) = 1.7918" in text
    # Section 8, measured with an ANS coder: a million animals, dogs, and a VAE's images.
    assert "extra bits within 3 standard errors of KL(P‖Q): True" in text
    assert "below 0.1%: True" in text
    assert "1.7369 bits per dog (KL(P‖Q_poor) = 1.7370 bits)" in text
    assert "0.1520 bits per dog (KL(P‖Q_good) = 0.1520 bits)" in text
    assert "within 0.5%: True" in text
    assert images(notebook) >= 9


def test_analyze_run_notebook_on_a_tiny_run(tiny_run, library_only):
    """From notebooks/ with only the library importable; it names the run without this machine's
    folders (its published copy is read by everyone)."""
    notebook = execute("analyze_run.ipynb", {"VAE_WORKDIR": str(tiny_run), "VAE_IW_SAMPLES": "10",
                                             "VAE_IW_EXAMPLES": "64", "XLA_FLAGS": xla_flags(1),
                                             "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": library_only})
    text = outputs(notebook)
    assert "checkpoint of epoch 2" in text and "IWAE NLL (k=10)" in text
    assert f"\nruns/{tiny_run.name}: fashion_mnist" in f"\n{text}" and str(tiny_run.parent) not in text
    assert images(notebook) >= 5


@pytest.mark.parametrize("name", ["kl_divergence", "analyze_run"])
def test_notebooks_are_committed_without_outputs_and_paired(name):
    notebook = nbformat.read(os.path.join(NOTEBOOKS, f"{name}.ipynb"), as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
    assert os.path.exists(os.path.join(NOTEBOOKS, f"{name}.py"))  # jupytext pair, for diffs


@pytest.mark.parametrize("name", ["kl_divergence", "analyze_run"])
def test_each_notebook_has_the_cells_of_its_paired_py_file(name):
    """The .py (what a diff shows) and the .ipynb (what runs and is published) say the same:
    `jupytext --sync notebooks/NAME.py` after editing either."""
    paired = jupytext.read(os.path.join(NOTEBOOKS, f"{name}.py"))
    notebook = nbformat.read(os.path.join(NOTEBOOKS, f"{name}.ipynb"), as_version=4)
    assert publish_notebooks.cells_digest(paired) == publish_notebooks.cells_digest(notebook), (
        f"notebooks/{name}.py and .ipynb differ: run `jupytext --sync notebooks/{name}.py`")


def test_a_published_page_shows_the_cells_stdout_and_pictures_and_records_the_digest():
    picture = b"\x89PNG\r\n\x1a\n not a real picture"
    notebook = new_notebook(cells=[
        new_markdown_cell("# A title"),
        new_code_cell("print('nats')", outputs=[
            new_output("stream", name="stdout", text="228.70 nats\n"),
            new_output("stream", name="stderr", text="a warning from a library\n")]),
        new_code_cell("fig = plot()", outputs=[new_output("display_data", data={
            "image/png": base64.b64encode(picture).decode(), "text/plain": "<Figure size 640x480>"})]),
        new_code_cell("", outputs=[])])
    text, pictures = publish_notebooks.render("demo", notebook, "on 2026-01-01")
    assert pictures == {"demo_1.png": picture}
    body = text.split("# A title\n", 1)[1]
    assert body == ("\n```python\nprint('nats')\n```\n\n```text\n228.70 nats\n```\n\n"
                    "```python\nfig = plot()\n```\n\n![](demo_1.png)\n")
    assert "executed on 2026-01-01 by `python scripts/publish_notebooks.py`" in text
    assert publish_notebooks.DIGEST.search(text).group(1) == publish_notebooks.cells_digest(notebook)
    notebook.cells[1].outputs = [new_output("error", ename="ValueError", evalue="bad", traceback=[])]
    with pytest.raises(ValueError, match="notebooks/demo.ipynb failed: ValueError: bad"):
        publish_notebooks.render("demo", notebook, "")


def test_publishing_analyze_run_without_a_trained_run_says_what_to_run(tmp_path):
    result = run_in_process("publish_notebooks.py", "--only", "analyze_run", "--workdir", tmp_path / "none",
                            "--out", tmp_path / "out")
    assert result.returncode == 1 and not (tmp_path / "out").exists()
    assert result.stderr.strip().splitlines() == [
        f"error: no trained run in {tmp_path / 'none'}: run `make train` first "
        "(or give --workdir a trained run)"]


@pytest.mark.slow  # a notebook kernel of its own; the notebook runs from notebooks/ in the quick test above
def test_analyze_run_takes_a_relative_workdir_from_the_repository_and_names_a_missing_one():
    """Started in notebooks/ (as JupyterLab starts it) with a relative WORKDIR such as its default
    runs/default: the run is looked for in the repository, and a missing one is one line saying
    what to run."""
    from nbclient.exceptions import CellExecutionError

    missing = "runs/no_such_run_for_the_test"
    with pytest.raises(CellExecutionError) as error:
        execute("analyze_run.ipynb", {"VAE_WORKDIR": missing, "TF_CPP_MIN_LOG_LEVEL": "3"}, cwd=NOTEBOOKS)
    assert error.value.ename == "SystemExit"
    assert error.value.evalue == (f"no trained run in {os.path.join(REPO, missing)}: run `make train` first, "
                                  "or set WORKDIR to a workdir")


def test_a_notebook_that_stops_is_one_line_naming_it_and_its_message(tmp_path, monkeypatch):
    """What publish_notebooks.py prints when a notebook stops (a missing run, missing data): the
    notebook's own one-line message, not the kernel's traceback."""
    stop = "raise SystemExit('no trained run in runs/x: run `make train`')"
    nbformat.write(new_notebook(cells=[new_code_cell(stop)]), tmp_path / "stops.ipynb")
    monkeypatch.setattr(publish_notebooks, "notebook_path", lambda name: tmp_path / f"{name}.ipynb")
    monkeypatch.setenv("VAE_WORKDIR", "")  # execute sets it for the kernel; put back after the test
    with pytest.raises(SystemExit) as stopped:
        publish_notebooks.execute("stops", "runs/x", timeout=60)
    assert stopped.value.code == (
        "error: notebooks/stops.ipynb stopped: SystemExit: no trained run in runs/x: run `make train`")


def test_a_page_names_the_run_it_read_and_the_machine_without_this_machines_folders(tiny_run):
    said = publish_notebooks.provenance_of("analyze_run", str(tiny_run))
    assert "reading the run `runs/tiny_run` (trained for 2 epochs)" in said
    assert str(tiny_run.parent) not in said and f"on {os.cpu_count()} CPU cores" in said
    trains = publish_notebooks.provenance_of("kl_divergence", "unread")
    assert trains.endswith("(it trains its own small models)")
