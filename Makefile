# Two commands for a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/skysense demo

lint: setup
	$(BIN)/ruff check skysense tests bench
	$(BIN)/ruff format --check skysense tests bench

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/python -m pytest -q -n 2 tests

test: lint typecheck unit

bench: setup
	$(BIN)/python bench/peak.py
	$(BIN)/python bench/encoders.py
	$(BIN)/python bench/linear_probe.py
	$(BIN)/python bench/multimodal_pretrain.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
