"""scripts/make_docs.py: the docs' pictures from runs of the current configs, with provenance."""

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO, run_in_process, script_module

from scripts.docs import markdown

make_docs = script_module("make_docs.py")


def test_replace_section_rewrites_only_between_the_markers():
    text = "intro\n<!-- t:begin -->\nold\n<!-- t:end -->\noutro\n"
    expected = "intro\n<!-- t:begin -->\nnew\n<!-- t:end -->\noutro\n"
    assert markdown.replace_section(text, "t", "new\n") == expected
    for broken in ("no markers", "<!-- t:end --> <!-- t:begin -->", text + "<!-- t:begin -->"):
        with pytest.raises(ValueError, match="t:begin"):
            markdown.replace_section(broken, "t", "new")


def test_the_beta_table_is_in_order_of_beta_from_the_last_records():
    def last(elbo, kl):
        return [{"epoch": 1, "test/elbo": 999.0, "test/kl": 1.0, "test/rec": 998.0, "test/active_units": 0},
                {"epoch": 2, "test/elbo": elbo, "test/kl": kl, "test/rec": elbo - kl, "test/active_units": 3}]
    table = make_docs.beta_table({"beta=2": last(250.0, 10.0), "beta=0.5": last(246.0, 29.0)})
    rows = table.splitlines()[2:]
    assert rows == ["| 0.5 | 246.00 | 29.00 | 217.00 | 3 |", "| 2 | 250.00 | 10.00 | 240.00 | 3 |"]


def test_every_picture_comes_from_a_run_that_make_docs_trains():
    names = {run.name for run in make_docs.RUNS}
    assert {p.run for p in make_docs.PICTURES} == names
    docs = os.path.join(REPO, "docs")
    pages = [open(os.path.join(REPO, "README.md")).read()] + [
        open(os.path.join(docs, name)).read() for name in sorted(os.listdir(docs)) if name.endswith(".md")]
    shown = set()
    for page in pages:  # a picture is shown as docs/NAME.png (README) or NAME.png (a page in docs/)
        shown |= set(re.findall(r"\]\((?:docs/)?([\w-]+\.png)\)", page))
    assert {p.file for p in make_docs.PICTURES} <= shown  # every picture made is shown somewhere
    pictures = {name for name in os.listdir(docs) if name.endswith(".png")}
    assert pictures == {p.file for p in make_docs.PICTURES}  # and every picture there is made
    page = open(os.path.join(REPO, make_docs.build_parser().parse_args([]).readme)).read()
    assert page.count("<!-- beta-table:begin -->") == 1


def make_docs_z2(tmp_path) -> list[str]:
    """make_docs.py's arguments for the z2 run alone, 1 epoch on 512 images, into tmp_path."""
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- beta-table:begin -->\n<!-- beta-table:end -->\n")
    return ["--only", "z2", "--epochs_scale", "0.05", "--train_split", "train[:512]", "--runs_dir",
            str(tmp_path / "runs"), "--out", str(tmp_path / "docs"), "--readme", str(readme)]


def assert_z2_page(tmp_path):
    assert (tmp_path / "docs" / "manifold.png").stat().st_size > 1000
    page = (tmp_path / "docs" / "figures.md").read_text()
    assert "[manifold.png](manifold.png) | z2 |" in page
    assert "scripts/train.py --config configs/vae.py --config.model.latent_dim=2" in page
    assert "1 epochs" in page and "test −ELBO" in page
    assert (tmp_path / "README.md").read_text().count("| β |") == 0  # no β run made: its table is left alone


@pytest.mark.slow  # quick: each picture's run and page (test_every_picture_comes_from_a_run_...)
def test_make_docs_trains_draws_and_says_which_run_made_each_picture(tmp_path, fashion_mnist, monkeypatch):
    """Every step make_docs.py runs as a process (train.py, sample.py), run in this one instead:
    the slow test below runs them as processes."""
    calls = []

    def call_here(words):
        calls.append(words[0])
        result = run_in_process(os.path.basename(words[0]), *words[1:])
        assert result.returncode == 0, result.stderr[-2000:]
        return 1.0

    monkeypatch.setattr(make_docs, "_call", call_here)
    assert make_docs.main(make_docs_z2(tmp_path)) == 0
    assert calls == ["scripts/train.py", "scripts/sample.py"]
    assert_z2_page(tmp_path)
    # A second call trains nothing more (the run is finished) and draws again.
    assert make_docs.main(make_docs_z2(tmp_path)) == 0
    assert "1 epochs" in (tmp_path / "docs" / "figures.md").read_text()


@pytest.mark.slow  # make_docs.py and the scripts it runs, each a process; the same in process is quick above
def test_make_docs_as_processes(tmp_path, fashion_mnist):
    command = [sys.executable, "scripts/make_docs.py", *make_docs_z2(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_z2_page(tmp_path)
    # A second call trains nothing more (the run is finished) and draws again.
    again = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert again.returncode == 0 and "1 epochs" in (tmp_path / "docs" / "figures.md").read_text()


def test_make_docs_publishes_the_notebooks_with_its_default_run(tmp_path, monkeypatch):
    """The last step with the default run: scripts/publish_notebooks.py on RUNS_DIR/default, into
    --out's notebooks/. Every step is recorded here, none run (the pictures are stand-ins)."""
    calls = []

    def record(words):
        calls.append(words)
        if words[0] in ("scripts/sample.py", "scripts/plot_kl.py"):
            drawn = tmp_path / words[words.index("--out") + 1]
            drawn.mkdir(parents=True, exist_ok=True)
            for picture in make_docs.PICTURES:
                (drawn / picture.written).write_bytes(b"png")
        return 1.0

    monkeypatch.setattr(make_docs, "_call", record)
    assert make_docs.main(["--only", "default", "--runs_dir", str(tmp_path / "runs"),
                           "--out", str(tmp_path / "docs"), "--readme", ""]) == 0
    publish = [words for words in calls if words[0] == "scripts/publish_notebooks.py"]
    assert publish == [["scripts/publish_notebooks.py", "--workdir", str(tmp_path / "runs" / "default"),
                        "--out", str(tmp_path / "docs" / "notebooks")]]
    assert calls[-1] == publish[0]  # after the run it reads has trained
    flags = script_module("publish_notebooks.py").build_parser().parse_args(publish[0][1:])
    assert (flags.workdir, flags.only) == (str(tmp_path / "runs" / "default"), None)
    calls.clear()
    assert make_docs.main(["--only", "z2", "--runs_dir", str(tmp_path / "runs"),
                           "--out", str(tmp_path / "docs"), "--readme", ""]) == 0
    assert "scripts/publish_notebooks.py" not in [words[0] for words in calls]
