"""What pip installs: the library alone (no top-level `configs` or `benchmarks` in site-packages),
its license, and the kernels' sources; the repository's configs load from anywhere."""

import os
import subprocess
import sys
import zipfile

from tests.conftest import REPO
from vae.config import load_config


def test_the_wheel_holds_the_vae_package_its_license_and_the_kernel_source(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path), REPO], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("vae-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")} == {"vae"}
    assert "vae/native/mixture.cc" in names
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "License-Expression: Apache-2.0" in text
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_a_config_variant_finds_the_file_it_changes_from_any_folder(tmp_path, monkeypatch):
    """configs/ladder_8bit.py imports configs.ladder, which imports configs.cifar10 ...: found in the
    repository, from another working directory, with no `configs` installed."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if os.path.abspath(p or ".") != REPO])
    for name in [n for n in list(sys.modules) if n == "configs" or n.startswith("configs.")]:
        monkeypatch.delitem(sys.modules, name)
    config = load_config(os.path.join(REPO, "configs", "ladder_8bit.py"))
    assert config.model.arch == "ladder" and config.model.likelihood == "logistic_mixture"
    assert os.path.abspath(REPO) not in [os.path.abspath(p or ".") for p in sys.path]  # put back


def test_a_config_file_of_ones_own_outside_configs_finds_the_checkouts_defaults(tmp_path, monkeypatch):
    """A config file in any folder may change configs/default.py (`from configs import default`):
    `configs` is found in the checkout the package runs from."""
    (tmp_path / "mine.py").write_text("from configs import default\n\n\ndef get_config():\n"
                                      "    config = default.get_config()\n    config.train.beta = 3.0\n"
                                      "    return config\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if os.path.abspath(p or ".") != REPO])
    for name in [n for n in list(sys.modules) if n == "configs" or n.startswith("configs.")]:
        monkeypatch.delitem(sys.modules, name)
    config = load_config(tmp_path / "mine.py")
    default = load_config(os.path.join(REPO, "configs", "default.py"))
    assert config.train.beta == 3.0 and config.model.to_dict() == default.model.to_dict()


def test_the_citation_file_agrees_with_pyproject():
    import tomllib

    import yaml

    project = tomllib.loads(open(os.path.join(REPO, "pyproject.toml")).read())["project"]
    citation = yaml.safe_load(open(os.path.join(REPO, "CITATION.cff")))
    assert citation["cff-version"] == "1.2.0" and citation["title"].startswith(project["name"])
    assert (citation["version"], citation["license"]) == (project["version"], project["license"])


def test_the_lock_pins_every_dependency_pyproject_names_within_its_bounds():
    """requirements.lock (make lock) holds each dependency of the project and its dev extra at a
    version pyproject.toml allows, with hashes: a dependency added without `make lock` fails here."""
    import re
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads(open(os.path.join(REPO, "pyproject.toml")).read())["project"]
    lock = open(os.path.join(REPO, "requirements.lock")).read()
    pinned = {canonicalize_name(name): version
              for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)", lock, re.M)}
    assert lock.count("--hash=sha256:") >= len(pinned)
    for text in project["dependencies"] + project["optional-dependencies"]["dev"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement.name} is not in requirements.lock: run make lock"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (text, pinned[name])
    uv = open(os.path.join(REPO, "requirements-uv.lock")).read()
    makefile = open(os.path.join(REPO, "Makefile")).read()
    version = re.search(r"^UV_VERSION := (\S+)", makefile, re.M).group(1)
    assert f"uv=={version} " in uv and "--hash=sha256:" in uv
