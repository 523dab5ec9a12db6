# Two commands on a fresh clone: `make demo` and `make test`. The first target that needs it
# creates .venv with the system Python and installs the project with its dev extras; it is
# reinstalled whenever pyproject.toml changes. Nothing else needs installing by hand.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help .venv test lint demo bench clean

help: ## Show the targets.
	@echo "usage: make TARGET"
	@grep -hE '^[.a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'
	@echo "  make test PYTEST_ARGS='-k name -x'   passes arguments to pytest"

.venv: $(STAMP) ## Create .venv and install retrain with its dev tools (automatic).

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { \
	  echo "error: retrain needs Python >= 3.10; '$(PYTHON)' is $$($(PYTHON) -V 2>&1)." \
	       "Run: make PYTHON=/path/to/python3.1x ..." >&2; exit 1; }
	@if [ ! -x $(BIN)/python ]; then \
	  echo "creating $(VENV) with $$($(PYTHON) -V 2>&1)"; \
	  $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	    echo "error: '$(PYTHON) -m venv' failed (on Debian/Ubuntu: apt install python3-venv)" >&2; \
	    exit 1; }; \
	fi
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $@

test: $(STAMP) ## Lint, type-check and run the tests (PostgreSQL ones need RETRAIN_TEST_POSTGRES_URL).
	$(BIN)/ruff check .
	$(BIN)/mypy
	MYPYPATH=orchestrator/demo_project $(BIN)/mypy --explicit-package-bases orchestrator/demo_project/*.py
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP) ## ruff and mypy only.
	$(BIN)/ruff check .
	$(BIN)/mypy
	MYPYPATH=orchestrator/demo_project $(BIN)/mypy --explicit-package-bases orchestrator/demo_project/*.py

demo: $(STAMP) ## The whole retraining loop (retrain up, two versions, trainings, evaluations), in a temporary RETRAIN_HOME.
	$(BIN)/python -m orchestrator.demo

bench: $(STAMP) ## Run the benchmarks (benchmarks/__main__.py).
	@if [ ! -f benchmarks/__main__.py ]; then \
	  echo "error: benchmarks/__main__.py does not exist yet" >&2; exit 1; fi
	$(BIN)/python -m benchmarks

clean: ## Remove .venv, build output and caches.
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
