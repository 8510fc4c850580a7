# Two commands do everything on a fresh machine with Python >= 3.11 (no TensorFlow is installed):
#   make train   set up .venv, prepare Fashion-MNIST offline, train configs/default.py into runs/default
#   make photos  real photographs of any size into $XDG_DATA_HOME/vae/photos, for configs/photos.py
#   make test    the same set-up, then the quick test suite (everything but the tests marked slow)
#   make test-all   the same, with the slow tests: the whole suite (.ci/run: make test, then make test-slow)
#   make lock    refresh requirements.lock on purpose (the only way it changes)
#   make test-latest   the quick suite in .venv-latest, on the newest versions pyproject.toml allows
#   make tensorboard   TensorBoard over every run in runs/
#   make notebook      JupyterLab over notebooks/ (installs it on first use)
#   make speed / make docs   the generated speed table / the docs' pictures and executed notebooks
#                            (docs/benchmarks.md, docs/figures.md, docs/notebooks/)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATASET ?= fashion_mnist
CONFIG ?= configs/default.py
WORKDIR ?= runs/default
PYTEST_ARGS ?=
# Tests run on 4 fake CPU devices (tests/conftest.py sets XLA_FLAGS before jax starts).
export TF_CPP_MIN_LOG_LEVEL := 2
# Python keeps each module it compiles in __pycache__ (the venv's and the repository's), so a
# process imports jax, flax and the rest from bytecode instead of compiling their source again:
# where the environment sets PYTHONDONTWRITEBYTECODE, every process of the suite (two workers, the
# scripts they start, notebook kernels) paid about 7 s of CPU for it.
unexport PYTHONDONTWRITEBYTECODE

# Two workers, each test file on one of them: a file's module-scoped fixtures (trained runs) are
# built once. (--dist loadgroup's xdist_group marks do nothing under pytest 9.2 with xdist 3.8:
# pytest-xdist issue #1386.) Files start heaviest first (tests/conftest.py's HEAVIEST_FILES),
# not xdist's default of the files with most tests first.
pytest_in = VAE_REQUIRE_REAL_DATA=1 $(1)/bin/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder
PYTEST := $(call pytest_in,$(VENV))

.PHONY: install lock data train photos test test-slow test-all test-latest tensorboard notebook lint speed docs clean

install: $(VENV)/.installed

# The environment is requirements.lock: every package of the project and its dev extra at one
# version, with the sha256 of each of its files, for every platform and Python >= 3.11 (one
# universal resolution, so a Mac and a Linux box get the same versions). uv installs it with
# --require-hashes (a file that differs from the one locked stops the install; about 6 s against
# pip's 33 s here), uv itself first installed by pip from requirements-uv.lock, also hashed. Then
# the project, without its dependencies (they are all in the lock) and with the locked setuptools
# as its build backend. uv writes the packages' bytecode at install (--compile-bytecode, as pip
# does by default; about 25 s of CPU and 185 MB once): where the shell sets PYTHONDONTWRITEBYTECODE,
# Python never writes it, and every script compiled matplotlib (and jax, flax, orbax, in a venv no
# make target had warmed) from source again at each start (benchmarks/startup.py, docs/speed.md).
$(VENV)/.installed: pyproject.toml requirements.lock requirements-uv.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r requirements-uv.lock
	$(VENV)/bin/uv pip install --quiet --python $(PY) --require-hashes --compile-bytecode -r requirements.lock
	$(VENV)/bin/uv pip install --quiet --python $(PY) --no-deps --no-build-isolation -e .
	touch $@

# Refreshes requirements.lock from pyproject.toml, resolved once for every platform and Python >=
# 3.11 (uv's universal resolver, one version of each package where it can: --fork-strategy
# fewest). `make lock` keeps every pin that pyproject.toml still allows and adds what is new at
# its newest version; `make lock UPGRADE=1` moves every package to the newest version allowed
# today. uv itself runs from .venv-lock, pinned here (UV_VERSION, also the version
# requirements-uv.lock pins for make install). Only this target writes the locks; commit them
# with the pyproject.toml change that needed it.
UV_VERSION := 0.13.10
LOCK_VENV := .venv-lock
lock:
	test -x $(LOCK_VENV)/bin/uv || ($(PYTHON) -m venv $(LOCK_VENV) && \
	  $(LOCK_VENV)/bin/python -m pip install --quiet uv==$(UV_VERSION))
	$(LOCK_VENV)/bin/uv pip compile pyproject.toml --extra dev --universal --fork-strategy fewest \
	  --python-version 3.11 --generate-hashes $(if $(UPGRADE),--upgrade) --quiet \
	  --custom-compile-command 'make lock' --output-file requirements.lock
	echo uv==$(UV_VERSION) | $(LOCK_VENV)/bin/uv pip compile - --universal --python-version 3.11 \
	  --generate-hashes --quiet --custom-compile-command 'make lock' --output-file requirements-uv.lock

# Debian's copy of Fashion-MNIST (the offline default); needs root or sudo once.
/usr/share/datasets/fashion-mnist:
	@if [ "$(DATASET)" = fashion_mnist ]; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	fi

data: install $(if $(filter fashion_mnist,$(DATASET)),/usr/share/datasets/fashion-mnist)
	$(PY) scripts/prepare_data.py --dataset $(DATASET)

train: data
	$(PY) scripts/train.py --config $(CONFIG) --workdir $(WORKDIR)

# 25 real photographs of different sizes from Debian's wallpaper packages (scripts/gather_photos.py:
# fetched with apt-get download, no root; network once), for configs/photos.py. Not in the repository.
PHOTOS ?= $(or $(XDG_DATA_HOME),$(HOME)/.local/share)/vae/photos
photos: install
	$(PY) scripts/gather_photos.py --out $(PHOTOS)

# The layer contracts of pyproject.toml's [tool.importlinter] first (a second), then the quick
# suite: every test not marked `slow`, among them the scripts end to end (train.py, sample.py,
# evaluate.py, ...) on a tiny slice and runs on 4 fake CPU devices. The slow tests (multi-process
# runs, kills, the TF-free build, long sweeps, the benchmark, the KL notebook, ...) are in
# `make test-slow`; `make test-all` runs both. docs/getting-started.md gives their times here.
test: data
	$(VENV)/bin/lint-imports --no-cache
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)

# The slow tests, and the property tests again under hypothesis's `explore` profile: the same
# derandomized search as in `make test`, with 10 times the examples (tests/conftest.py).
test-slow: data
	VAE_HYPOTHESIS_PROFILE=explore $(PYTEST) -m "slow or property" $(PYTEST_ARGS)

test-all: data
	$(VENV)/bin/lint-imports --no-cache
	$(PYTEST) $(PYTEST_ARGS)

# The quick suite against the newest versions pyproject.toml allows, in a venv of its own
# (.venv-latest, upgraded on every run): drift in a dependency shows here before a user meets it.
# Not part of .ci/run, whose verdict must not change with what PyPI serves that day.
LATEST_VENV := .venv-latest
test-latest: data
	test -x $(LATEST_VENV)/bin/python || $(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install --quiet --no-compile --upgrade --upgrade-strategy eager -e '.[dev]'
	$(LATEST_VENV)/bin/python -m pip list --format=freeze | grep -iE '^(jax|jaxlib|flax|optax|orbax-checkpoint|numpy|hypothesis|constriction)=='
	$(LATEST_VENV)/bin/lint-imports --no-cache
	$(call pytest_in,$(LATEST_VENV)) -m "not slow" $(PYTEST_ARGS)

tensorboard: install
	$(VENV)/bin/tensorboard --logdir runs

# JupyterLab over notebooks/ (installed on first use: the `notebook` extra).
notebook: install
	test -x $(VENV)/bin/jupyter-lab || $(PY) -m pip install --quiet -e '.[notebook]'
	$(VENV)/bin/jupyter-lab notebooks

lint: install
	$(VENV)/bin/ruff check .

# The speed table: one benchmark run over the five configs (with the PyTorch loops where torch is
# importable: `pip install -e '.[bench]'`), then docs/benchmarks.md and the README's table from it.
SPEED_CONFIGS := mlp_small vae paper_hvae paper_vampprior conv
speed: data
	$(PY) scripts/benchmark.py $$($(PY) -c 'import torch' 2>/dev/null && echo --torch) \
	  $(foreach c,$(SPEED_CONFIGS),--config configs/$(c).py) --iw_samples 1000,5000 --out docs/bench/speed.json
	$(PY) scripts/speed_table.py docs/bench/speed.json

# Every picture of the docs and the β table, from runs of the current configs (runs/docs/; about 45
# minutes on 2 cores); docs/figures.md says which run made each. Then both notebooks executed into
# docs/notebooks/ (analyze_run on runs/docs/default); alone, on make train's run:
# `python scripts/publish_notebooks.py`.
docs: data
	$(PY) scripts/make_docs.py

clean:
	rm -rf $(VENV) $(LATEST_VENV) $(LOCK_VENV) .pytest_cache
