# transferops: `make demo` and `make test` are the two commands a newcomer needs.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

# Telemetry off in every library, for everything make runs.
export DO_NOT_TRACK := 1
export ITERATIVE_DO_NOT_TRACK := 1
export DVC_NO_ANALYTICS := 1
export BENTOML_DO_NOT_TRACK := True
export GX_ANALYTICS_ENABLED := False
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export HF_HUB_DISABLE_TELEMETRY := 1

.DEFAULT_GOAL := help
CHROMIUM := /usr/bin/chromium
# Offline image sources of the benchmark suite, each licence-checked in benchmarks/tasks.py.
BENCH_PACKAGES := openclipart-png oxygen-icon-theme fonts-noto-core fonts-dejavu-core \
	fonts-liberation fonts-urw-base35 fonts-freefont-ttf
CHROMEDRIVER := /usr/bin/chromedriver
.PHONY: help install lock check data browser bench-data demo test lint format clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP) ## create or refresh .venv, exactly as requirements.lock says

# The interpreter: the first of python3.11, python3.12, python3 that is 3.11 or 3.12 (the
# versions requirements.lock is resolved for). `make PYTHON=/path/to/python3.12` overrides.
SUPPORTED := import sys; sys.exit(sys.version_info[:2] not in ((3, 11), (3, 12)))
PYTHON ?= $(shell for p in python3.11 python3.12 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c '$(SUPPORTED)' >/dev/null 2>&1 && { echo $$p; break; }; \
	done)
UV := $(VENV)/bin/uv
UV_VERSION := $(shell sed -n 's/^uv==\([0-9.]*\).*/\1/p' requirements.lock)

# uv installs the lock; pip (in every venv) installs uv itself, at the lock's version.
$(UV): requirements.lock
	@if [ -z "$(PYTHON)" ]; then \
		echo "transferops needs Python 3.11 or 3.12, and none is on PATH"; \
		echo "(python3 here: $$(python3 --version 2>&1 || echo none))."; \
		echo "Install one (Debian/Ubuntu: apt install python3.11-venv; pyenv: pyenv install 3.11)"; \
		echo "or name it: make PYTHON=/path/to/python3.11 $(MAKECMDGOALS)"; \
		exit 1; \
	fi
	@if ! [ -x $(PY) ] || ! $(PY) -c '$(SUPPORTED)' 2>/dev/null; then \
		rm -rf $(VENV); echo "creating $(VENV) with $(PYTHON) ($$($(PYTHON) --version))"; \
		$(PYTHON) -m venv $(VENV); \
	fi
	$(PY) -m pip install -qq --disable-pip-version-check uv==$(UV_VERSION)
	touch $(UV)

# Bytecode: uv, unlike pip, writes no .pyc at install. Compiling the whole environment there
# (--compile-bytecode: 41,000 files) took a minute of a fresh install; transferops imports
# about 5,000 of them. So Python compiles a module the first time a command make runs
# imports it, and keeps the .pyc: PYTHONDONTWRITEBYTECODE (set on this machine and many CI
# images) is not passed on. Had no process written them, every one would compile torch,
# timm, Prefect... from source: `import pipelines.train` 10.6 s instead of 4.5.
unexport PYTHONDONTWRITEBYTECODE
$(STAMP): pyproject.toml requirements.lock $(UV)
	$(UV) pip sync --quiet --python $(PY) requirements.lock
	$(UV) pip install --quiet --python $(PY) --no-deps -e .
	@$(PY) -m pip check || { echo "pyproject.toml asks for more than requirements.lock pins:"; \
		echo "run 'make lock', then 'make install'"; exit 1; }
	@# An activated shell (`source .venv/bin/activate`) has telemetry off too.
	@grep -q "transferops: telemetry off" $(VENV)/bin/activate || \
		$(PY) -c "from transferops.runtime import activate_lines; print(activate_lines())" \
		>> $(VENV)/bin/activate
	touch $(STAMP)

lock: $(UV) ## re-resolve requirements.lock from pyproject.toml (Python 3.11 and 3.12, every platform)
	$(UV) pip compile --quiet --universal --python-version 3.11 --extra dev \
		--output-file requirements.lock pyproject.toml
	$(VENV)/bin/python -c "from flows.models import write_service_requirements as w; w()"
	@echo "requirements.lock and services/requirements.txt written: review the diff, then 'make install'"

data: ## make sure Debian's Fashion-MNIST is present (installs it with apt when possible)
	@if [ -f $(FASHION_MNIST) ]; then exit 0; fi; \
	if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "installing dataset-fashion-mnist with apt-get"; \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	elif command -v apt-get >/dev/null && command -v sudo >/dev/null; then \
		sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "Fashion-MNIST is missing: install Debian's 'dataset-fashion-mnist', or copy the"; \
		echo "four *-ubyte.gz files into a folder and set data.source to it in params.yaml."; \
		exit 1; \
	fi

browser: ## make sure Debian's chromium + chromium-driver are present (the report page's test)
	@if [ -x $(CHROMIUM) ] && [ -x $(CHROMEDRIVER) ]; then exit 0; fi; \
	if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "installing chromium and chromium-driver with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	elif command -v apt-get >/dev/null && command -v sudo >/dev/null; then \
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	else \
		echo "chromium is missing: install Debian's 'chromium' and 'chromium-driver'"; \
		echo "(the test that opens the report page in a headless browser needs them)."; \
		exit 1; \
	fi

bench-data: data ## the Debian packages behind the benchmark task suite (benchmarks/tasks.py)
	@if [ -d /usr/share/openclipart/png ] && [ -d /usr/share/icons/oxygen ] && \
		[ -d /usr/share/fonts/opentype/urw-base35 ]; then exit 0; fi; \
	if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then SUDO=; \
	elif command -v sudo >/dev/null; then SUDO=sudo; \
	else echo "install Debian's $(BENCH_PACKAGES)"; exit 1; fi; \
	$$SUDO apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(BENCH_PACKAGES)

demo: install data ## install, then run the whole loop on the bundled Fashion-MNIST
	$(VENV)/bin/transferops demo

test: install data browser lint ## install, lint, then run the whole test suite (a worker per core)
	$(PY) -m pytest -n auto --dist loadgroup --durations=15

check: install lint ## the edit-test loop: lint, then the tests that start no server and train nothing big
	$(PY) -m pytest -n auto --dist loadgroup -q -m "not slow and not integration"

lint: install ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean: ## remove pipeline outputs (DVC cache and remote are kept)
	rm -rf artifacts reports logs data/prepared
