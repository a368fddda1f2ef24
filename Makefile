# Two commands on a fresh machine: `make demo` and `make test`. Each sets itself up first.
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= demo-out

.PHONY: install lock system-deps demo lint docker test test-fast bench

install: $(STAMP)

# constraints.txt is the lock: every package of the tree at one version (`make lock` writes it);
# PIP_CONSTRAINT, unlike -c, also holds the isolated build of slideaudit itself (setuptools).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || python3 -m venv $(VENV)
	PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Rewrite the lock from pyproject.toml (after adding or changing a dependency): resolve the
# dependencies, the dev and dashboard extras, the build requirements and torch's pins in a
# throwaway venv, then freeze it (pip and setuptools included: `pip install` builds with them).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
LOCK_VENV  := .venv-lock
BUILD_REQS := python3 -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires'])"
lock:
	rm -rf $(LOCK_VENV) && python3 -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q $(TORCH_PINS) $$($(BUILD_REQS)) -e '.[dev,dashboard]'
	{ echo "# The lock, written by \`make lock\` from pyproject.toml on Python $$($(LOCK_VENV)/bin/python -c 'import platform; print(platform.python_version())'); do not edit."; \
	  $(LOCK_VENV)/bin/python -m pip freeze --all --exclude-editable; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt
	rm -rf $(LOCK_VENV)

# Debian packages the browser tests need (the README names them); installed when missing.
system-deps:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }

# Airflow's own venv for the DAG test (its pins differ from ours); rebuilt when the pins change.
.PHONY: airflow
airflow: .venv-airflow/.installed

.venv-airflow/.installed: dags/requirements.txt
	test -x .venv-airflow/bin/python || python3 -m venv .venv-airflow
	.venv-airflow/bin/python -m pip install -q -r dags/requirements.txt
	touch $@

demo: install
	$(BIN)/slideaudit demo $(DEMO)

# Static checks: ruff on the whole tree, mypy on the four packages (settings in pyproject.toml).
lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy tiling explainers reports pipeline

# hadolint on the Dockerfile, then, where a Docker daemon runs, the image is built and checked
# (else a printed skip reason).
docker: install
	.ci/docker

# Everything: lint, the image, then every test tier (browser tests need chromium, the DAG test .venv-airflow).
test: install system-deps airflow lint docker
	$(BIN)/python -m pytest --durations=15

# The quick tier (< 3 min on 2 cores): no slow, browser or Airflow tests, no extra setup.
FAST := not slow and not browser and not airflow
test-fast: install
	$(BIN)/python -m pytest -m "$(FAST)" --durations=15

bench: install
	for b in bench/*.py; do [ $$b = bench/common.py ] || $(BIN)/python $$b; done
