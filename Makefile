# Two commands for a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast lint typecheck unit bench clean

# Tests without a marker: no torchrun, no torch.compile, no real data, none slower than ~2 s.
FAST := not slow and not distributed and not compile and not data

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

test-fast: setup
	$(BIN)/python -m pytest -q -m "$(FAST)" tests

bench: setup
	$(BIN)/python -m bench.peak
	$(BIN)/python -m bench.encoders
	$(BIN)/python -m bench.linear_probe
	$(BIN)/python -m bench.multimodal_pretrain

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
