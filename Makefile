# Two commands on a fresh machine: `make demo` and `make test`. Each sets itself up first.
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= demo-out

.PHONY: install system-deps demo lint docker test test-fast bench

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt torch torchvision
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

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

# The container image builds and answers --help where a Docker daemon runs (else a printed skip reason).
docker:
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
