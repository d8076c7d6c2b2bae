# Each target makes its own virtual environment (.venv) from pyproject.toml:
# `make run` installs only what chute needs to run; the other targets add the
# dev tools (pytest, mypy, ruff, fakeredis, mkdocs, ...) on first use.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
RUNTIME = $(VENV)/.runtime-installed
DEV = $(VENV)/.dev-installed
PIP_FLAGS = -q --disable-pip-version-check --no-compile

.DEFAULT_GOAL := help

# A venv without pip, filled by the interpreter's own pip (`--python`, pip 22.3+),
# saves the 3 s that ensurepip takes; older pips get a venv with its own pip.
$(RUNTIME): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("chute needs Python 3.11+") if sys.version_info < (3, 11) else None'
	@if $(PYTHON) -c 'import pip, sys; sys.exit(tuple(map(int, pip.__version__.split(".")[:2])) < (22, 3))' 2>/dev/null; then \
	  $(PYTHON) -m venv --without-pip $(VENV) && \
	  $(PYTHON) -m pip --python $(BIN)/python install $(PIP_FLAGS) -e .; \
	else \
	  $(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install $(PIP_FLAGS) -e .; \
	fi
	touch $@

$(DEV): $(RUNTIME)
	$(BIN)/python -m pip --version >/dev/null 2>&1 || $(BIN)/python -m ensurepip >/dev/null
	$(BIN)/python -m pip install $(PIP_FLAGS) -e '.[dev]'
	touch $@

.PHONY: help run test unit lint docs bench clean
help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 8

run: $(RUNTIME)  ## the demo pipeline on the embedded defaults (nothing else to install)
	$(BIN)/chute run configs/demo.toml --until-idle

lint: $(DEV)  ## ruff and mypy (strict) over the engine, the plugins, tests and benches
	$(BIN)/ruff check runtime plugins tests bench configs docs
	$(BIN)/ruff format --check runtime plugins tests bench configs docs
	$(BIN)/mypy

docs: $(DEV)  ## build the reference site into site/ (strict: a broken link fails)
	$(BIN)/mkdocs build --strict --quiet

test: lint docs  ## everything CI runs: lint, types, docs, the whole suite (slow tests included)
	$(BIN)/pytest -q

unit: $(DEV)  ## the quick loop: skip the slow chaos, soak and multi-process tests
	$(BIN)/pytest -q -m 'not slow'

BENCH ?=
bench: $(DEV)  ## chute against its peers, one table (bench/README.md); BENCH=--quick for the short run
	$(BIN)/python -m pip install $(PIP_FLAGS) -e '.[bench]'
	$(BIN)/python -m bench.peers
	$(BIN)/python -m bench $(BENCH)

clean:  ## start over: remove every config's working folder (state, queued work) and the venv
	rm -rf $(VENV) .chute configs/.chute site
