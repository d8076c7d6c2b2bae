# Each target makes its own virtual environment (.venv) from pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

$(BIN)/chute: pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("chute needs Python 3.11+") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/chute

.PHONY: run test lint unit bench
run: $(BIN)/chute  ## the demo pipeline on the embedded defaults
	$(BIN)/chute run configs/demo.toml --until-idle

lint: $(BIN)/chute
	$(BIN)/ruff check runtime plugins tests bench configs
	$(BIN)/ruff format --check runtime plugins tests bench configs
	$(BIN)/mypy

test: lint  ## everything CI runs: lint, types, the whole suite (slow tests included)
	$(BIN)/pytest -q

unit: $(BIN)/chute  ## the quick loop: skip the slow chaos, soak and multi-process tests
	$(BIN)/pytest -q -m 'not slow'

BENCH ?=
bench: $(BIN)/chute  ## chute against its peers (bench/README.md); BENCH=--quick for the short run
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m bench.peers
	$(BIN)/python -m bench $(BENCH)
