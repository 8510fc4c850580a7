"""Both notebooks run top to bottom (on small data), so they never rot."""

import os

import nbformat
import pytest

from tests.conftest import REPO, xla_flags

NOTEBOOKS = os.path.join(REPO, "notebooks")


def execute(name: str, env: dict[str, str], cwd: str = REPO) -> nbformat.NotebookNode:
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
def test_kl_divergence_notebook_runs_and_states_computed_numbers(fashion_mnist):
    notebook = execute("kl_divergence.ipynb", {"XLA_FLAGS": xla_flags(1), "TF_CPP_MIN_LOG_LEVEL": "3"})
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


def test_analyze_run_notebook_on_a_tiny_run(tiny_run):
    """From notebooks/, where `make notebook`'s JupyterLab starts its kernels."""
    notebook = execute("analyze_run.ipynb", {"VAE_WORKDIR": str(tiny_run), "VAE_IW_SAMPLES": "10",
                                             "VAE_IW_EXAMPLES": "64", "XLA_FLAGS": xla_flags(1),
                                             "TF_CPP_MIN_LOG_LEVEL": "3"}, cwd=NOTEBOOKS)
    text = outputs(notebook)
    assert "checkpoint of epoch 2" in text and "IWAE NLL (k=10)" in text
    assert images(notebook) >= 5


@pytest.mark.parametrize("name", ["kl_divergence", "analyze_run"])
def test_notebooks_are_committed_without_outputs_and_paired(name):
    notebook = nbformat.read(os.path.join(NOTEBOOKS, f"{name}.ipynb"), as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
    assert os.path.exists(os.path.join(NOTEBOOKS, f"{name}.py"))  # jupytext pair, for diffs


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
