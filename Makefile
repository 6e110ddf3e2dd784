# Two commands: `make demo` and `make test`. Both set up what is missing (venv, dependencies,
# PostgreSQL + TimescaleDB, Mosquitto, database, migrations) and are idempotent: the second run's
# set-up takes seconds.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test setup services venv migrate lint typecheck bench clean

demo: setup
	$(BIN)/lishui demo $(ARGS)

test: setup
	$(BIN)/pytest $(ARGS)

setup: services venv migrate

services:
	@bash scripts/setup-services.sh

venv: $(STAMP)

$(STAMP): pyproject.toml
	@bash scripts/setup-python.sh "$(PYTHON)" "$(VENV)"
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

migrate: venv services
	$(BIN)/lishui db migrate

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check . || true
	$(BIN)/mypy

bench: setup
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/ingest.py --quick

clean:
	rm -rf $(VENV) .lishui .pytest_cache .mypy_cache .ruff_cache
