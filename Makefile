# Two commands on a fresh clone: `make demo` and `make test`. The first target that needs it
# creates .venv with the system Python and installs exactly the versions in requirements.lock
# (uv's lock of pyproject.toml with the dev extras, hashes checked), then retrain itself; it
# is reinstalled whenever pyproject.toml, the lock or this Makefile changes. A new release of
# a dependency changes nothing until `make lock` is run and its result committed. Nothing
# else needs installing by hand.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
UV = $(BIN)/uv
PYTEST_ARGS ?=

.PHONY: help .venv test lint demo bench lock clean

help: ## Show the targets.
	@echo "usage: make TARGET"
	@grep -hE '^[.a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'
	@echo "  make test PYTEST_ARGS='-k name -x'   passes arguments to pytest"

.venv: $(STAMP) ## Create .venv and install retrain with its dev tools (automatic).

$(STAMP): pyproject.toml $(LOCK) Makefile
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "error: retrain needs Python >= 3.11; '$(PYTHON)' is $$($(PYTHON) -V 2>&1)." \
	       "Run: make PYTHON=/path/to/python3.1x ..." >&2; exit 1; }
	@if [ ! -x $(BIN)/python ]; then \
	  echo "creating $(VENV) with $$($(PYTHON) -V 2>&1)"; \
	  $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	    echo "error: '$(PYTHON) -m venv' failed (on Debian/Ubuntu: apt install python3-venv)" >&2; \
	    exit 1; }; \
	fi
	@# pip brings the locked uv into a new venv; from then on uv installs the lock (keeping
	@# itself at the locked version) and removes whatever the lock does not list.
	@[ -x $(UV) ] || $(BIN)/python -m pip install --quiet "$$(sed -n 's/^\(uv==[^ ]*\).*/\1/p' $(LOCK))"
	@# Bytecode is written at install time, for the dependencies and for retrain's own modules:
	@# without it every process compiles each module it imports from source (where
	@# PYTHONDONTWRITEBYTECODE is set, or the venv is read-only, on every start), which was
	@# most of `retrain scheduler`'s 2.9 s from exec to its first poll (issue 15).
	$(UV) pip sync --quiet --compile-bytecode --python $(BIN)/python --require-hashes $(LOCK)
	$(UV) pip install --quiet --python $(BIN)/python --no-deps -e .
	$(BIN)/python -m compileall -q -j 0 orchestrator workers >/dev/null
	@touch $@

lock: $(STAMP) ## Re-resolve requirements.lock from pyproject.toml (then commit both).
	$(UV) pip compile pyproject.toml --extra dev --universal --generate-hashes \
	  --custom-compile-command "make lock" --quiet -o $(LOCK)

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
