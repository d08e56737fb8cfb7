# dengine_trio: `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOG_LEVEL ?= info
export LOG_LEVEL

.DEFAULT_GOAL := help

.PHONY: help install lint test chaos clean

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the project with its test extras

lint: $(STAMP) ## ruff and mypy
	$(BIN)/ruff check dengine_trio tests bench
	$(BIN)/ruff format --check dengine_trio tests bench
	$(BIN)/mypy

test: lint ## lint, then the whole test suite (bounded hypothesis budget)
	$(BIN)/pytest -q -m "not chaos"

chaos: $(STAMP) ## long randomized campaigns (minutes)
	DENGINE_CHAOS=1 $(BIN)/pytest -q -m chaos -s

clean: ## remove logs, databases and snapshots
	rm -rf logs db snapshots
