# The two commands of the README: `make demo` (set up + run the demo) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint install clean-cache

$(BIN)/amnesiac: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0   # the CPU wheel; an unpinned torch pulls GBs of CUDA packages
	$(BIN)/pip install -q -e ".[test]" torch==2.13.0   # pin again so no extra can upgrade torch
	touch $(BIN)/amnesiac

install: $(BIN)/amnesiac

demo: install
	$(BIN)/amnesiac demo

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check amnesiac tests benchmarks scripts

clean-cache:
	rm -rf $${AMNESIAC_HOME:-$$HOME/.cache/amnesiac}
