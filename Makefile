# Two commands on a fresh machine: `make demo` and `make test`. Each sets itself up first.
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= demo-out

.PHONY: install system-deps demo test bench

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt torch
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

test: install system-deps airflow
	$(BIN)/python -m pytest

bench: install
	for b in bench/*.py; do $(BIN)/python $$b; done
